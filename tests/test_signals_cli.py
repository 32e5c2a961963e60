"""Pause, resume and cancel a running campaign with the real `temporal` CLI.

The operator's path: `temporal workflow signal --name pause|resume|cancel`
against the dev server, while an in-process worker sends through a provider
that takes 0.1 s per batch (a slow but real outbox), so there is time to act.
"""

from __future__ import annotations

import asyncio
import time as walltime
import uuid
from datetime import UTC, datetime, time, timedelta

import pytest
from sluice.api.service import start_campaign
from sluice.channels.outbox import OutboxChannel
from sluice.channels.registry import ChannelRegistry
from sluice.kinds.oldcust import OldCustomerSpec
from sluice.schemas import activities as A
from sluice.schemas.settings import Settings
from sluice.workers.binaries import temporal_cli
from sluice.workers.worker import build_worker
from sluice.workflows.calendar import local_day
from sluice.workflows.campaign import CampaignWorkflow

from tests.factories import add_customers, make_shop
from tests.ledger_checks import assert_fatigue_matches_ledger, assert_ledger_exact, ledger_counts
from tests.test_crash import pick_zone

pytestmark = pytest.mark.devserver

# About 360 recipients/s: two slices of 1,000 in flight (each outlives the heartbeat throttle, so
# a pause or cancel reaches it mid-slice), 20 recipients a chunk, 0.1 s a provider call.
SLOW = dict(slice_size=1_000, chunk_size=20, concurrency=2, heartbeat_timeout_s=2)
PROVIDER_DELAY_S = 0.1


class SlowProvider:
    """A provider outside the database (so the send path commits `reserved`, then calls it)
    that takes PROVIDER_DELAY_S per call; its inbox is the outbox table, for counting."""

    def __init__(self, pool, name: str):
        self.name = name
        self._outbox = OutboxChannel(pool, name)

    async def send(self, messages):
        await asyncio.sleep(PROVIDER_DELAY_S)
        return await self._outbox.send(messages)

    async def reconcile(self, messages):
        return await self._outbox.reconcile(messages)


async def cli_signal(env, workflow_id: str, name: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        temporal_cli(),
        "workflow",
        "signal",
        "--address",
        env.client.service_client.config.target_host,
        "--namespace",
        env.client.namespace,
        "--workflow-id",
        workflow_id,
        "--name",
        name,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, out.decode(errors="replace")


async def wait_for(predicate, timeout: float, what: str, every: float = 0.05):
    deadline = walltime.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert walltime.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(every)


async def seed_shop(pool, shop: str, n: int, now: datetime) -> str:
    tz = pick_zone(now)
    await make_shop(pool, shop, tz)
    await add_customers(
        pool, shop, list(range(1, n + 1)), ordered_at=now - timedelta(days=30), visited_at=now - timedelta(days=3)
    )
    return tz


def spec_for(shop: str, tz: str, now: datetime) -> OldCustomerSpec:
    return OldCustomerSpec(
        kind="K-OLDCUST", shop_id=shop, campaign_id="signals", scene="Signals", card_text="Hello again",
        send_date=local_day(now, tz), send_time=time(8, 0),
    )


def slow_worker(env, pool, queue: str):
    channels = ChannelRegistry({name: SlowProvider(pool, name) for name in ("chat", "sms", "email", "inbox")})
    return build_worker(env.client, pool, Settings(SLUICE_PLATFORM_TZ="Asia/Shanghai"), channels=channels,
                        task_queue=queue)


async def decided(pool, cid: int) -> int:
    return sum((await ledger_counts(pool, cid)).values())


async def test_cli_pause_holds_the_ledger_and_resume_finishes_exactly_once(clean_db, dev_env):
    pool = clean_db
    n = 3_000
    now = datetime.now(UTC)
    shop = f"pause-{uuid.uuid4().hex[:6]}"
    tz = await seed_shop(pool, shop, n, now)
    queue = f"signals-{uuid.uuid4().hex[:8]}"
    t0 = walltime.monotonic()
    async with slow_worker(dev_env, pool, queue):
        plan, handle = await start_campaign(pool, dev_env.client, spec_for(shop, tz, now), task_queue=queue,
                                            tuning=SLOW)
        cid = plan.campaign_db_id
        await wait_for(lambda: _at_least(pool, cid, n // 10), 60, "the first sends")

        await cli_signal(dev_env, plan.workflow_id, "pause")
        t_pause = walltime.monotonic()

        async def paused():
            st = await handle.query(CampaignWorkflow.progress_query)
            return st if st.progress.paused and st.progress.state == "paused" else None

        status = await wait_for(paused, 30, "the progress query to say paused")
        settled_s = walltime.monotonic() - t_pause
        await wait_for(
            lambda: _campaign_state_is(pool, cid, "paused"), 10, "campaigns.state to say paused"
        )
        held = await ledger_counts(pool, cid)
        # Slices stop at a chunk boundary: nothing is left reserved while paused.
        assert held.get("reserved", 0) == 0, held
        assert 0 < sum(held.values()) < n, held
        await asyncio.sleep(3)
        assert await ledger_counts(pool, cid) == held, "the ledger grew while paused"
        assert await pool.fetchval("SELECT count(*) FROM outbox_messages WHERE campaign_id = $1", cid) == held["sent"]
        assert (await handle.query(CampaignWorkflow.progress_query)).progress.state == "paused"

        await cli_signal(dev_env, plan.workflow_id, "resume")
        result = await asyncio.wait_for(handle.result(), timeout=120)
        seconds = walltime.monotonic() - t0

    assert result.state == "completed" and not result.paused
    counts = await assert_ledger_exact(pool, cid)
    await assert_fatigue_matches_ledger(pool)
    # Every eligible recipient exactly once: none skipped by the pause, none sent twice by the resume.
    assert await pool.fetchval("SELECT count(*) FROM audience_snapshots WHERE campaign_id = $1", cid) == n
    assert counts == {"sent": n}
    assert await pool.fetchval("SELECT count(DISTINCT consumer_id) FROM outbox_messages WHERE campaign_id = $1", cid) == n
    assert result.totals["reach"]["sent"] == n
    assert await pool.fetchval("SELECT state FROM campaigns WHERE id = $1", cid) == "completed"
    print(
        f"\npause/resume: {n:,} recipients, paused at {sum(held.values()):,} decided ({status.progress.day_done:,}"
        f" counted by the workflow), settled {settled_s:.1f} s after the signal, held 3 s, {seconds:.1f} s in all"
    )


async def test_cli_cancel_records_the_rest_as_not_sent(clean_db, dev_env):
    pool = clean_db
    n = 5_000
    now = datetime.now(UTC)
    shop = f"cancel-{uuid.uuid4().hex[:6]}"
    tz = await seed_shop(pool, shop, n, now)
    queue = f"signals-{uuid.uuid4().hex[:8]}"
    t0 = walltime.monotonic()
    async with slow_worker(dev_env, pool, queue):
        plan, handle = await start_campaign(pool, dev_env.client, spec_for(shop, tz, now), task_queue=queue,
                                            tuning=SLOW)
        cid = plan.campaign_db_id
        await wait_for(lambda: _at_least(pool, cid, n // 5), 60, "the first sends")
        sent_at_signal = (await ledger_counts(pool, cid)).get("sent", 0)
        await cli_signal(dev_env, plan.workflow_id, "cancel")
        result = await asyncio.wait_for(handle.result(), timeout=60)
        seconds = walltime.monotonic() - t0
        status = await handle.query(CampaignWorkflow.progress_query)

    assert result.state == "cancelled" and result.cancel_requested
    assert status.progress.state == "cancelled"
    assert await pool.fetchval("SELECT state FROM campaigns WHERE id = $1", cid) == "cancelled"
    counts = await assert_ledger_exact(pool, cid)
    await assert_fatigue_matches_ledger(pool)
    assert set(counts) == {"sent", "not_sent"}, counts
    assert counts["sent"] + counts["not_sent"] == n
    assert counts["sent"] >= sent_at_signal
    assert await pool.fetchval(
        "SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND state = 'not_sent' AND reason <> $2",
        cid,
        A.NOT_SENT_CANCELLED,
    ) == 0
    # Nothing went out after the cancel took effect: every outbox row and every sent delivery
    # is older than the not_sent rows the cancellation wrote.
    closed_at = await pool.fetchval(
        "SELECT min(updated_at) FROM deliveries WHERE campaign_id = $1 AND state = 'not_sent'", cid
    )
    assert await pool.fetchval("SELECT max(created_at) FROM outbox WHERE campaign_id = $1", cid) < closed_at
    assert await pool.fetchval(
        "SELECT max(updated_at) FROM deliveries WHERE campaign_id = $1 AND state = 'sent'", cid
    ) < closed_at
    # ... and the ledger stays still afterwards.
    await asyncio.sleep(1)
    assert await ledger_counts(pool, cid) == counts
    # Chunks in flight when the signal came finish (a reservation is never left without its
    # send); the slices stop at their next heartbeat (within 0.8 x heartbeat_timeout_s), well
    # before the audience is done: without the cancel all 5,000 would go in about 14 s.
    after_signal = counts["sent"] - sent_at_signal
    assert counts["not_sent"] >= n // 2, counts
    print(
        f"\ncancel: {n:,} recipients, {sent_at_signal:,} sent at the signal, {after_signal:,} finished after it"
        f" (chunks in flight), {counts['not_sent']:,} not_sent/{A.NOT_SENT_CANCELLED}, {seconds:.1f} s in all"
    )


async def _at_least(pool, cid: int, n: int) -> bool:
    return await decided(pool, cid) >= n


async def _campaign_state_is(pool, cid: int, state: str) -> bool:
    return await pool.fetchval("SELECT state FROM campaigns WHERE id = $1", cid) == state
