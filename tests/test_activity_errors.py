"""Activities raise typed errors; retry policies bound retrying; the campaign halts instead of looping.

Pure parts (the error types, the policies' limits) are checked on their own;
then two campaigns on the dev server with a real worker and Postgres:
- a worker without an adapter for the campaign's channel: the send fails with
  the non-retryable `ChannelNotConfigured` once (not forever), the campaign
  halts (state "halted" in the query, the search attribute and Postgres, the
  reason in `halt_reason`), and a `resume` on a correctly configured worker
  sends everyone exactly once;
- an audience the worker does not know (bad activity input): the refresh fails
  once with `InvalidActivityInput`, the campaign halts, `cancel` ends it.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sluice.activities import errors
from sluice.api.service import start_campaign
from sluice.channels.outbox import OutboxChannel
from sluice.channels.registry import ChannelRegistry
from sluice.schemas.settings import Settings
from sluice.schemas.workflow import CampaignInput
from sluice.workers.worker import build_worker
from sluice.workflows import policies
from sluice.workflows import search_attributes as SA
from sluice.workflows.campaign import CampaignWorkflow
from temporalio.api.enums.v1 import EventType
from temporalio.exceptions import ApplicationError

from tests.ledger_checks import assert_fatigue_matches_ledger, assert_ledger_exact
from tests.test_signals_cli import seed_shop, spec_for, wait_for


def test_bad_input_errors_are_typed_and_not_retryable():
    err = errors.invalid_input("audience", "unknown audience 'x'")
    assert isinstance(err, ApplicationError) and err.non_retryable and err.type == errors.INVALID_INPUT
    assert "audience" in str(err)
    assert errors.not_configured("sms").non_retryable
    assert not errors.cap_reading_raced("race").non_retryable  # a concurrent commit: worth another attempt
    assert set(policies.RETRY.non_retryable_error_types) == set(errors.NOT_WORTH_RETRYING)


def test_every_policy_bounds_how_long_retrying_lasts():
    now = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    close = now + timedelta(hours=3)
    for limits in (policies.BOOKKEEPING, policies.STATE, policies.until_window_closes(now, close),
                   policies.send_limits(now, close)):
        opts = limits.options()
        assert opts["schedule_to_close_timeout"] > timedelta(0)
        assert opts["start_to_close_timeout"] <= opts["schedule_to_close_timeout"]
        assert opts["retry_policy"].non_retryable_error_types
    assert policies.until_window_closes(now, close).schedule_to_close_timeout == timedelta(hours=3) + policies.WINDOW_GRACE
    # Scheduled after the window closed: still a short, bounded grace, never zero or negative.
    late = policies.send_limits(close + timedelta(hours=1), close)
    assert late.schedule_to_close_timeout == policies.WINDOW_GRACE == late.start_to_close_timeout


async def _halted(handle):
    """The campaign's status once it shows state "halted" (waiting up to a minute)."""

    async def halted():
        st = await handle.query(CampaignWorkflow.progress_query)
        return st if st.progress.state == "halted" else None

    return await wait_for(halted, 60, "the campaign to halt")


async def _failed_attempts(handle, activity_type: str) -> int:
    """How many attempts of the activity failed, read from the workflow's history."""
    scheduled, failed = {}, 0
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            attrs = event.activity_task_failed_event_attributes
            if scheduled.get(attrs.scheduled_event_id) == activity_type:
                failed += 1
    return failed


@pytest.mark.devserver
async def test_a_worker_without_the_channel_halts_the_campaign_and_resume_sends_exactly_once(clean_db, dev_env):
    pool = clean_db
    n = 400
    now = datetime.now(UTC)
    shop = f"halt-{uuid.uuid4().hex[:6]}"
    tz = await seed_shop(pool, shop, n, now)
    queue = f"halt-{uuid.uuid4().hex[:8]}"
    settings = Settings(SLUICE_PLATFORM_TZ="Asia/Shanghai")
    spec = spec_for(shop, tz, now).model_copy(update={"campaign_id": "halt"})
    no_chat = ChannelRegistry({"sms": OutboxChannel(pool, "sms")})
    async with build_worker(dev_env.client, pool, settings, channels=no_chat, task_queue=queue):
        plan, handle = await start_campaign(pool, dev_env.client, spec, task_queue=queue)
        status = await _halted(handle)
        assert "ChannelNotConfigured" in status.progress.halt_reason, status.progress.halt_reason
        assert status.progress.paused
        desc = await handle.describe()
        assert desc.typed_search_attributes.get(SA.CAMPAIGN_STATE) == "halted"
        assert await pool.fetchval("SELECT state FROM campaigns WHERE id = $1", plan.campaign_db_id) == "halted"
        await asyncio.sleep(2)  # halted means still: no attempt after the first failure
        assert await _failed_attempts(handle, "send_slice") == 1
        assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1", plan.campaign_db_id) == 0
    # Fixed worker; the operator resumes.
    async with build_worker(dev_env.client, pool, settings, task_queue=queue):
        await handle.signal(CampaignWorkflow.resume)
        result = await asyncio.wait_for(handle.result(), timeout=120)
    assert result.state == "completed" and result.halt_reason is None
    assert await assert_ledger_exact(pool, plan.campaign_db_id) == {"sent": n}
    await assert_fatigue_matches_ledger(pool)


@pytest.mark.devserver
async def test_bad_activity_input_fails_once_halts_and_cancel_ends_the_campaign(clean_db, dev_env):
    pool = clean_db
    now = datetime.now(UTC)
    shop = f"badin-{uuid.uuid4().hex[:6]}"
    tz = await seed_shop(pool, shop, 150, now)
    queue = f"badin-{uuid.uuid4().hex[:8]}"
    spec = spec_for(shop, tz, now).model_copy(update={"campaign_id": "bad"})

    # A plan the API would never compile (it checks audience names): an audience no worker knows.
    async with build_worker(dev_env.client, pool, Settings(), task_queue=queue):
        plan, handle = await start_campaign(pool, dev_env.client, spec, task_queue=f"{queue}-unused")
        await handle.terminate("replaced by the bad plan below")
        bad = plan.model_copy(update={"phases": [plan.phases[0].model_copy(update={"audience": "no_such_audience"})]})
        handle = await dev_env.client.start_workflow(
            CampaignWorkflow.run, CampaignInput(plan=bad), id=f"{plan.workflow_id}-bad", task_queue=queue
        )
        status = await _halted(handle)
        assert "InvalidActivityInput" in status.progress.halt_reason and "no_such_audience" in status.progress.halt_reason
        assert await _failed_attempts(handle, "refresh_audience") == 1
        await handle.signal(CampaignWorkflow.cancel, "bad plan")
        result = await asyncio.wait_for(handle.result(), timeout=60)
    assert result.state == "cancelled" and result.cancel_reason == "bad plan"
