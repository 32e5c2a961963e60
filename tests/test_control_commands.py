"""No accepted control command is lost, whenever it arrives (reliability suite).

Each campaign gets its command(s) through the API's own path
(`api.service.control`) the instant `start_campaign` returns: before the
workflow's first task has run, with the worker stopped, running, or stopped
and started again in the middle of the burst. Every command that was accepted
must take effect: a cancelled campaign ends cancelled, a paused one is paused
(in the progress query and in Postgres), a pause followed by a resume is
waiting again. A second test sends pause/resume storms while K-PHASED
campaigns run through their past days and continue as new at the phase
boundary: the last command always wins.

Real parts: the Temporal dev server, Postgres, an in-process worker.
"""

from __future__ import annotations

import asyncio
import random
import time as walltime
import uuid
from datetime import UTC, date, datetime, time, timedelta

import pytest
from sluice.api import service
from sluice.kinds.oldcust import OldCustomerSpec
from sluice.kinds.phased import PhasedSpec, PhaseSpec
from sluice.schemas.settings import Settings
from sluice.workers.worker import build_worker
from sluice.workflows.calendar import local_day
from sluice.workflows.campaign import CampaignWorkflow
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from tests.factories import make_shop

pytestmark = pytest.mark.devserver

TZ = "Asia/Shanghai"
PER_ROUND = 100
# The command sequences sent right after the start, and what the campaign must show once a worker ran it.
SEQUENCES: dict[tuple[str, ...], str] = {
    ("pause",): "paused",
    ("cancel",): "cancelled",
    ("pause", "resume"): "waiting",
    ("resume", "pause"): "paused",
    ("pause", "cancel"): "cancelled",
}


def _settings() -> Settings:
    return Settings(SLUICE_PLATFORM_TZ=TZ)


def oldcust(shop: str, ref: str, send_date: date) -> OldCustomerSpec:
    return OldCustomerSpec(
        kind="K-OLDCUST", shop_id=shop, campaign_id=ref, scene="Control", card_text="Hello again",
        send_date=send_date, send_time=time(10, 0),
    )


async def _start_and_command(pool, client, queue: str, spec, commands: tuple[str, ...]) -> str:
    plan, _ = await service.start_campaign(pool, client, spec, task_queue=queue)
    for action in commands:
        await service.control(client, plan.workflow_id, action)  # raises on anything but acceptance
    return plan.workflow_id


async def _final(pool, client, workflow_id: str) -> str:
    """The campaign's settled state as the workflow and Postgres both show it, or '' while unsettled (a query
    that timed out on a loaded machine is asked again by _settle until its deadline)."""
    handle = client.get_workflow_handle_for(CampaignWorkflow.run, workflow_id)
    desc = await handle.describe()
    row = await pool.fetchval("SELECT state FROM campaigns WHERE workflow_id = $1", workflow_id)
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        result = await handle.result()
        return "cancelled" if result.cancel_requested and result.state == "cancelled" == row else ""
    try:
        st = (await handle.query(CampaignWorkflow.progress_query)).progress
    except RPCError as exc:
        if exc.status != RPCStatusCode.DEADLINE_EXCEEDED and "Timeout expired" not in exc.message:
            raise
        return ""
    if st.state == row and st.state in ("paused", "waiting") and st.paused == (st.state == "paused"):
        return st.state
    return ""


async def _settle(pool, client, expected: dict[str, str], timeout: float) -> dict[str, str]:
    """Wait until every campaign shows its expected state; returns those that never did (id -> seen)."""
    deadline = walltime.monotonic() + timeout
    left = dict(expected)
    while left and walltime.monotonic() < deadline:
        seen = await asyncio.gather(*(_final(pool, client, wf) for wf in left))
        left = {wf: exp for (wf, exp), got in zip(left.items(), seen, strict=True) if got != exp}
        if left:
            await asyncio.sleep(0.5)
    return {wf: await _final(pool, client, wf) for wf in left}


@pytest.mark.parametrize("worker_mode", ["stopped", "running", "restarted"])
async def test_every_accepted_command_takes_effect_right_after_the_start(clean_db, dev_env, worker_mode):
    pool, client = clean_db, dev_env.client
    shop = f"ctl-{uuid.uuid4().hex[:6]}"
    await make_shop(pool, shop, TZ)
    queue = f"control-{uuid.uuid4().hex[:8]}"
    send_date = local_day(datetime.now(UTC), TZ) + timedelta(days=3)  # the campaigns wait for their day
    sequences = list(SEQUENCES)
    jobs = [(oldcust(shop, f"c{i}", send_date), sequences[i % len(sequences)]) for i in range(PER_ROUND)]
    worker = build_worker(client, pool, _settings(), task_queue=queue)
    gate = asyncio.Semaphore(20)

    async def one(spec, commands):
        async with gate:
            return await _start_and_command(pool, client, queue, spec, commands)

    t0 = walltime.monotonic()
    if worker_mode == "stopped":
        ids = await asyncio.gather(*(one(s, c) for s, c in jobs))
        async with worker:
            lost = await _settle(pool, client, _expected(ids, jobs), timeout=180)
    elif worker_mode == "running":
        async with worker:
            ids = await asyncio.gather(*(one(s, c) for s, c in jobs))
            lost = await _settle(pool, client, _expected(ids, jobs), timeout=180)
    else:
        half = len(jobs) // 2
        async with worker:
            first = await asyncio.gather(*(one(s, c) for s, c in jobs[:half]))
        # The worker is gone (its workflow tasks and activities for these campaigns wait on the server).
        rest = await asyncio.gather(*(one(s, c) for s, c in jobs[half:]))
        async with build_worker(client, pool, _settings(), task_queue=queue):
            ids = [*first, *rest]
            lost = await _settle(pool, client, _expected(ids, jobs), timeout=180)
    seconds = walltime.monotonic() - t0
    assert lost == {}, f"{len(lost)} of {len(jobs)} campaigns lost a command: {dict(list(lost.items())[:5])}"
    commands = sum(len(c) for _, c in jobs)
    print(f"\ncontrol ({worker_mode}): {len(jobs)} campaigns, {commands} commands right after the start, 0 lost,"
          f" {seconds:.1f} s")


def _expected(ids: list[str], jobs) -> dict[str, str]:
    return {wf: SEQUENCES[commands] for wf, (_, commands) in zip(ids, jobs, strict=True)}


async def test_the_last_command_wins_across_continue_as_new(clean_db, dev_env):
    """Pause/resume storms while campaigns walk past days (each a report activity) and continue as new
    at the phase boundary; the last command of each storm is what the campaign shows."""
    pool, client = clean_db, dev_env.client
    shop = f"can-{uuid.uuid4().hex[:6]}"
    await make_shop(pool, shop, TZ)
    queue = f"control-can-{uuid.uuid4().hex[:8]}"
    today = local_day(datetime.now(UTC), TZ)
    rng = random.Random(8)
    n = 16

    def spec(i: int) -> PhasedSpec:
        return PhasedSpec(
            kind="K-PHASED", shop_id=shop, campaign_id=f"p{i}",
            phases=[
                PhaseSpec(name="preheat", start_date=today - timedelta(days=12), end_date=today - timedelta(days=7),
                          text="soon"),
                PhaseSpec(name="promote", start_date=today - timedelta(days=6), end_date=today - timedelta(days=1),
                          text="now"),
                PhaseSpec(name="recall", start_date=today + timedelta(days=3), end_date=today + timedelta(days=3),
                          text="last chance"),
            ],
        )

    async def storm(i: int) -> tuple[str, str]:
        plan, _ = await service.start_campaign(pool, client, spec(i), task_queue=queue)
        last = "resume"
        for _ in range(rng.randint(3, 12)):
            last = "pause" if last == "resume" else "resume"
            await service.control(client, plan.workflow_id, last)
            await asyncio.sleep(rng.uniform(0, 0.15))
        return plan.workflow_id, "paused" if last == "pause" else "waiting"

    async with build_worker(client, pool, _settings(), task_queue=queue):
        expected = dict(await asyncio.gather(*(storm(i) for i in range(n))))
        lost = await _settle(pool, client, expected, timeout=120)
        runs = [
            (await client.get_workflow_handle_for(CampaignWorkflow.run, wf).query(CampaignWorkflow.progress_query))
            for wf in expected
        ]
    assert lost == {}, lost
    # Every campaign walked into its recall phase through continue-as-new (one run per phase).
    assert all(st.phase == "recall" and st.progress.runs == 3 for st in runs), [(s.phase, s.progress.runs) for s in runs]
