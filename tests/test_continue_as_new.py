"""Continue-as-new inside a phase, when the server suggests it (docs/design.md,
"Continue-as-new at phase boundaries" and "History limits").

A dev server whose suggestion threshold is lowered to a handful of events (as
the SDK's own tests do) and a promote phase that began three days ago: its
first three days are past their 22:00 (docs/design.md, "No stale sends") and the
server suggests continue-as-new after each, so the campaign walks the phase in
several runs, carrying only its small progress record, and sends today to
every recipient exactly once.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta

import pytest
from sluice.api.service import start_campaign
from sluice.kinds.phased import PhasedSpec, PhaseSpec
from sluice.schemas.settings import Settings
from sluice.workers.binaries import temporal_cli
from sluice.workers.worker import build_worker
from sluice.workflows.calendar import local_day
from sluice.workflows.search_attributes import ALL
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from tests.conftest import DEV_SERVER_ARGS
from tests.factories import add_customers, make_shop
from tests.ledger_checks import assert_fatigue_matches_ledger, assert_ledger_exact
from tests.test_crash import pick_zone

pytestmark = pytest.mark.devserver

SUGGEST_AFTER_EVENTS = 5


async def test_a_long_phase_continues_as_new_when_suggested_and_sends_once(clean_db):
    pool = clean_db
    now = datetime.now(UTC)
    tz = pick_zone(now)
    shop = f"can-{uuid.uuid4().hex[:6]}"
    await make_shop(pool, shop, tz)
    n = 500
    await add_customers(pool, shop, list(range(1, n + 1)), ordered_at=now - timedelta(days=40),
                        inquiry_at=now - timedelta(days=5))
    today = local_day(now, tz)
    spec = PhasedSpec(kind="K-PHASED", shop_id=shop, campaign_id="long", phases=[
        PhaseSpec(name="promote", start_date=today - timedelta(days=3), end_date=today, send_time=time(8, 0),
                  text="sale")])  # fmt: skip
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=pydantic_data_converter,
        ui=False,
        search_attributes=ALL,
        dev_server_extra_args=[
            *DEV_SERVER_ARGS,
            "--dynamic-config-value",
            f"limit.historyCount.suggestContinueAsNew={SUGGEST_AFTER_EVENTS}",
        ],
    )
    try:
        settings = Settings(SLUICE_TASK_QUEUE=f"can-{uuid.uuid4().hex[:6]}", SLUICE_PLATFORM_TZ="Asia/Shanghai")
        async with build_worker(env.client, pool, settings):
            plan, handle = await start_campaign(pool, env.client, spec, task_queue=settings.task_queue,
                                                tuning={"slice_size": 100, "chunk_size": 50})
            result = await handle.result()
            last_run = await handle.fetch_history()
    finally:
        await env.shutdown()

    assert result.state == "completed"
    # Three past days, each followed by a suggested continue-as-new, then today: four runs.
    assert result.runs == 4, result.runs
    # The last run holds only today: it was continued from the third past day.
    started = last_run.events[0].workflow_execution_started_event_attributes
    assert started.continued_execution_run_id
    assert len(last_run.events) < 200, len(last_run.events)
    assert result.totals["promote"]["days"] == 4
    assert result.totals["promote"]["sent"] == n
    counts = await assert_ledger_exact(pool, plan.campaign_db_id)
    assert counts == {"sent": n}
    await assert_fatigue_matches_ledger(pool)
    # The past days sent nothing stale: every delivery is on today's snapshot.
    assert await pool.fetchval("SELECT count(DISTINCT day) FROM deliveries WHERE campaign_id = $1",
                               plan.campaign_db_id) == 1
