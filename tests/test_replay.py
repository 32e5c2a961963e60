"""Determinism: a campaign's history replays against the current workflow code.

Every history committed under tests/histories/ (recorded from earlier
versions) must still replay; a change that breaks one needs workflow.patched().
A fresh multi-day run with pause and resume is replayed too.
"""

from __future__ import annotations

import json
import uuid
from datetime import time, timedelta
from pathlib import Path

import pytest
from sluice.api.service import start_campaign
from sluice.kinds.oldcust import OldCustomerSpec
from sluice.schemas.campaign import Pacing
from sluice.schemas.settings import Settings
from sluice.workers.worker import build_worker
from sluice.workflows.calendar import local_day
from sluice.workflows.campaign import CampaignWorkflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from tests.factories import add_customers, make_shop

HISTORIES = Path(__file__).parent / "histories"


def _replayer() -> Replayer:
    return Replayer(workflows=[CampaignWorkflow], data_converter=pydantic_data_converter)


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.name)
async def test_committed_histories_replay(path):
    history = WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))
    await _replayer().replay_workflow(history)


async def test_fresh_two_day_paced_run_replays(clean_db, ts_env):
    pool = clean_db
    now = await ts_env.get_current_time()
    tz = "Europe/Berlin"
    await make_shop(pool, "s1", tz)
    await add_customers(pool, "s1", list(range(1, 401)), ordered_at=now - timedelta(days=5),
                        visited_at=now - timedelta(days=1))
    day = local_day(now, tz) + timedelta(days=1)
    spec = OldCustomerSpec(kind="K-OLDCUST", shop_id="s1", campaign_id="r1", scene="x", card_text="hi",
                           send_date=day, end_date=day + timedelta(days=1), send_time=time(20, 30),
                           pacing=Pacing(per_hour=240))
    settings = Settings(SLUICE_TASK_QUEUE=f"replay-{uuid.uuid4().hex[:6]}")
    async with build_worker(ts_env.client, pool, settings):
        _, handle = await start_campaign(pool, ts_env.client, spec, task_queue=settings.task_queue, now=now,
                                         tuning={"slice_size": 50, "chunk_size": 25})
        await handle.result()
    history = await handle.fetch_history()
    assert len(history.events) > 50
    await _replayer().replay_workflow(history)
    if (HISTORIES / "RECORD").exists():  # touch tests/histories/RECORD to refresh the committed sample
        (HISTORIES / "oldcust_two_day_paced.json").write_text(history.to_json())
