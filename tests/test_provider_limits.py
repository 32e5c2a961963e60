"""Provider rate limits over every worker, shops sharing the send queues, and the error-rate halt.

Pure parts (the error-rate decision, the providers' definitions) on their own; then on the dev server
(the time-skipping server has no task-queue rate limit) with real workers and Postgres:
- one provider's queue limited to 2 activities/s, polled by two workers: the hand-offs of 12 slices
  are spread over both workers and over at least the time the rate allows;
- a small shop's campaign started while a big shop's day is sending completes while the big one
  still has most of its recipients undecided (its slices do not queue behind the big day's);
- a provider that refuses every message: the campaign halts itself after its error window with the
  rate and the threshold in `halt_reason` (state "halted": query, search attribute, Postgres);
  resume clears it and a healthy provider sends the rest.
"""

from __future__ import annotations

import asyncio
import time as walltime
import uuid
from datetime import UTC, datetime

import pytest
from sluice.api.service import start_campaign
from sluice.channels.base import REJECTED_BY_PROVIDER, Outcome
from sluice.channels.outbox import OutboxChannel
from sluice.channels.registry import CHANNELS, ChannelRegistry
from sluice.schemas import providers, rules
from sluice.schemas.settings import Settings
from sluice.workers.worker import build_send_workers, build_worker
from sluice.workflows import policies
from sluice.workflows import search_attributes as SA
from sluice.workflows.campaign import CampaignWorkflow
from temporalio import activity
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime, TelemetryConfig

from tests.ledger_checks import ledger_counts
from tests.test_signals_cli import seed_shop, spec_for, wait_for

# ---------------------------------------------------------------- pure parts


def test_error_rate_halts_only_past_the_threshold_over_the_last_window_of_sends():
    halt = policies.error_rate_halt
    assert halt([], 100, 0.5) is None
    assert halt([(10, 40)], 100, 0.5) is None  # 50 sends: too few to judge
    assert halt([(50, 50)], 100, 0.5) is None  # exactly at the threshold: not past it
    reason = halt([(49, 51)], 100, 0.5)
    assert reason and "51.0%" in reason and "50.0%" in reason and "100 sends" in reason
    # Only the most recent slices covering the window count: an old bad streak is forgotten ...
    assert halt([(0, 100), (100, 0)], 100, 0.5) is None
    # ... and a recent one is seen whatever came before it.
    assert halt([(1000, 0), (0, 60), (0, 60)], 100, 0.5) is not None
    assert halt([(0, 0), (0, 100)], 100, 0.99) is not None
    assert halt([(100, 0)], 100, 1.0) is None


def test_every_channel_has_one_provider_and_rates_parse_with_clear_errors():
    assert set(providers.PROVIDERS) == set(CHANNELS)
    assert providers.send_queue("sluice", "sms") == "sluice-send-sms"
    rates = providers.rates("sms=500, email=none")
    assert rates["sms"] == 500 and rates["email"] is None and rates["chat"] == providers.PROVIDERS["chat"].messages_per_second
    for bad, words in (("fax=3", "fax"), ("sms", "sms"), ("sms=fast", "not a number"), ("sms=0", "positive")):
        with pytest.raises(ValueError, match="SLUICE_PROVIDER_RATES") as err:
            providers.parse_rates(bad)
        assert words in str(err.value)
    sms = providers.PROVIDERS["sms"]
    assert providers.queue_rate(1_000, sms.slice_max) * sms.slice_max == 1_000
    assert providers.queue_rate(None, sms.slice_max) is None
    assert providers.slice_size("sms", 20_000) == sms.slice_max and providers.slice_size("sms", 10) == 10


# ---------------------------------------------------------------- on the dev server

RATE = 2.0  # activities/s on the chat provider's queue in these tests
RATES = f"chat={RATE * providers.PROVIDERS['chat'].slice_max:g}"


class Recording:
    """The outbox, taking `delay_s` per batch, noting when, on which worker and by which send activity (a slice)
    each batch was handed over."""

    def __init__(self, pool, name: str, worker: str, log: list, delay_s: float = 0.0):
        self.name, self._outbox, self._worker, self._log, self._delay = name, OutboxChannel(pool, name), worker, log, delay_s

    async def send(self, messages):
        self._log.append((walltime.monotonic(), self._worker, len(messages), activity.info().activity_id))
        await asyncio.sleep(self._delay)
        return await self._outbox.send(messages)

    async def reconcile(self, messages):
        return await self._outbox.reconcile(messages)


class Refusing(Recording):
    """A provider that refuses every recipient for good (as an invalid contact would be)."""

    async def send(self, messages):
        self._log.append((walltime.monotonic(), self._worker, len(messages), activity.info().activity_id))
        return [Outcome(m.consumer_id, "failed", None, REJECTED_BY_PROVIDER) for m in messages]


def registry(kind, pool, worker: str, log: list, **kw) -> ChannelRegistry:
    return ChannelRegistry({name: kind(pool, name, worker, log, **kw) for name in CHANNELS})


def settings(**env) -> Settings:
    return Settings(SLUICE_PLATFORM_TZ="Asia/Shanghai", SLUICE_PROVIDER_RATES=RATES, **env)


async def _own_client(env) -> Client:
    """A client with a runtime of its own, as a second worker process would have."""
    return await Client.connect(env.client.service_client.config.target_host, namespace=env.client.namespace,
                                data_converter=pydantic_data_converter, runtime=Runtime(telemetry=TelemetryConfig()))  # fmt: skip


@pytest.mark.devserver
async def test_a_provider_rate_limit_holds_across_two_workers(clean_db, dev_env):
    pool = clean_db
    slices, size = 12, 10
    now = datetime.now(UTC)
    shop = f"rate-{uuid.uuid4().hex[:6]}"
    tz = await seed_shop(pool, shop, slices * size, now)
    queue = f"rate-{uuid.uuid4().hex[:8]}"
    log: list = []
    # Each worker takes one slice at a time for 0.3 s: together ~6 slices/s, three times the queue's rate.
    # Two processes' workers: each has its own connection and runtime (one runtime takes one poller per queue).
    workers = [
        w
        for tag in ("w1", "w2")
        for w in build_send_workers(await _own_client(dev_env), pool, settings(SLUICE_MAX_ACTIVITIES=1), task_queue=queue,
                                    channels=registry(Recording, pool, tag, log, delay_s=0.3), only=["chat"])
    ]  # fmt: skip
    assert {w.task_queue for w in workers} == {providers.send_queue(queue, "chat")}
    tuning = {"slice_size": size, "chunk_size": size, "concurrency": slices, "provider_queues": True}
    async with build_worker(dev_env.client, pool, settings(), task_queue=queue), workers[0], workers[1]:
        plan, handle = await start_campaign(pool, dev_env.client, spec_for(shop, tz, now), task_queue=queue, tuning=tuning)
        result = await asyncio.wait_for(handle.result(), timeout=120)
    assert result.state == "completed"
    assert await ledger_counts(pool, plan.campaign_db_id) == {"sent": slices * size}
    # A slice may hand over in two batches (the snapshot's numbering leaves a few empty positions).
    assert len(log) >= slices and {tag for _, tag, _, _ in log} == {"w1", "w2"}  # both workers sent
    # Each slice (send activity) counts once, at its first hand-off: a slice's second batch, 0.3 s after its first,
    # is not a task the server handed out.
    first: dict[str, float] = {}
    for t, _, _, slice_id in sorted(log):
        first.setdefault(slice_id, t)
    assert len(first) >= slices  # the refresh numbers its parts interleaved: a few more, smaller slices
    times = sorted(first.values())
    print("slices' first hand-offs (s after the first):", [round(t - times[0], 2) for t in times])
    # The server hands out at most RATE slices a second over both workers (a burst of up to RATE first):
    # unlimited, these two workers would hand all twelve over in ~1.8 s.
    assert times[-1] - times[0] >= (slices - 1 - RATE) / RATE, times
    per_second = max(sum(1 for t in times if t0 <= t < t0 + 1) for t0 in times)
    assert per_second <= 2 * RATE, times


async def _decided(pool, cid: int) -> int:
    return sum((await ledger_counts(pool, cid)).values())


@pytest.mark.devserver
async def test_a_small_shops_campaign_is_not_held_behind_a_big_shops_day(clean_db, dev_env):
    pool = clean_db
    now = datetime.now(UTC)
    big_shop, small_shop = f"big-{uuid.uuid4().hex[:6]}", f"small-{uuid.uuid4().hex[:6]}"
    big_n, small_n, size = 400, rules.OLDCUST_MIN_AUDIENCE, 10
    tz = await seed_shop(pool, big_shop, big_n, now)
    await seed_shop(pool, small_shop, small_n, now)
    queue = f"fair-{uuid.uuid4().hex[:8]}"
    log: list = []
    [send] = build_send_workers(dev_env.client, pool, settings(), task_queue=queue,
                                channels=registry(Recording, pool, "w", log), only=["chat"])  # fmt: skip
    # The big day: 40 slices on a queue that hands out 2 a second, at most 2 of them queued at a time.
    tuning = {"slice_size": size, "chunk_size": size, "concurrency": 2, "provider_queues": True}
    async with build_worker(dev_env.client, pool, settings(), task_queue=queue), send:
        big, big_handle = await start_campaign(pool, dev_env.client, spec_for(big_shop, tz, now), task_queue=queue,
                                               tuning=tuning)  # fmt: skip
        await wait_for(lambda: _decided(pool, big.campaign_db_id), 60, "the big day to start sending")
        small, small_handle = await start_campaign(pool, dev_env.client, spec_for(small_shop, tz, now),
                                                   task_queue=queue, tuning={**tuning, "slice_size": 200})  # fmt: skip
        result = await asyncio.wait_for(small_handle.result(), timeout=60)
        big_decided = await _decided(pool, big.campaign_db_id)
        await big_handle.signal(CampaignWorkflow.cancel, "test over")
        await asyncio.wait_for(big_handle.result(), timeout=60)
    assert result.state == "completed"
    assert await ledger_counts(pool, small.campaign_db_id) == {"sent": small_n}
    # The small shop's slice waited for at most the big day's few queued slices, not for its day.
    assert big_decided <= big_n // 2, big_decided


@pytest.mark.devserver
async def test_a_campaign_whose_error_rate_passes_the_threshold_halts_itself_and_resume_clears_it(clean_db, dev_env):
    pool = clean_db
    n, size, window = rules.OLDCUST_MIN_AUDIENCE + 19, 10, 30
    now = datetime.now(UTC)
    shop = f"errs-{uuid.uuid4().hex[:6]}"
    tz = await seed_shop(pool, shop, n, now)
    queue = f"errs-{uuid.uuid4().hex[:8]}"
    log: list = []
    tuning = {"slice_size": size, "chunk_size": size, "concurrency": 1, "error_window": window, "error_rate_max": 0.5}
    refusing = registry(Refusing, pool, "w", log)
    async with build_worker(dev_env.client, pool, settings(), task_queue=queue, channels=refusing):
        plan, handle = await start_campaign(pool, dev_env.client, spec_for(shop, tz, now), task_queue=queue, tuning=tuning)

        async def halted():
            st = await handle.query(CampaignWorkflow.progress_query)
            return st if st.progress.state == "halted" else None

        status = await wait_for(halted, 60, "the campaign to halt")
        reason = status.progress.halt_reason
        assert reason and "error rate 100.0%" in reason and f"last {window} sends" in reason and "50.0%" in reason, reason
        desc = await handle.describe()
        assert desc.typed_search_attributes.get(SA.CAMPAIGN_STATE) == "halted"
        assert await pool.fetchval("SELECT state FROM campaigns WHERE id = $1", plan.campaign_db_id) == "halted"
        # One slice at a time: it stopped right after the window's worth of refusals.
        assert await ledger_counts(pool, plan.campaign_db_id) == {"failed": window}
    async with build_worker(dev_env.client, pool, settings(), task_queue=queue):
        await handle.signal(CampaignWorkflow.resume)
        result = await asyncio.wait_for(handle.result(), timeout=120)
    assert result.state == "completed" and result.halt_reason is None
    # The refused stay refused (never resent); everyone else is sent once.
    assert await ledger_counts(pool, plan.campaign_db_id) == {"failed": window, "sent": n - window}

