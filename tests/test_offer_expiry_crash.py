"""A worker lost around an offer's end (R-RP-5): the offers end once, the report equals the claims table.

On the time-skipping server with a real Postgres: a K-REPURCHASE campaign sends countdown offers and its
workflow waits on a durable timer until the last one ends. Two ways to lose the worker there:

- it is stopped a minute before the timer fires, the timer fires with no worker at all, and a new worker
  picks the workflow up: it replays and runs the expiry;
- it runs the expiry (every unclaimed offer ends, its unit goes back to the stock, committed) and is lost
  before the workflow learns of it: an activity interceptor on the first worker runs the real expiry, then
  fails the attempt as a lost worker would, and the first worker is shut down; the retry runs on a second
  worker and finds nothing more to end.

Either way: one offer claimed in time stays claimed, the others end exactly once, the coupon's stock is
given back exactly once, and the day report's claimed and expired counts equal the claims table.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from sluice.activities.offers import CLAIMED, EXPIRED, HELD, claim
from sluice.api.service import start_campaign
from sluice.schemas.settings import Settings
from sluice.workers.worker import build_worker
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.exceptions import ApplicationError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor, Worker

from tests.test_repurchase import SHOP, _sent, _shop, _spec

N = 30
STOCK = 1000
EXPIRE = "expire_offers"


def _first_worker(env, pool, settings: Settings, queue: str, interceptors=()) -> Worker:
    """The worker as built, without a workflow cache: its workflow tasks then go to the task queue, not to a
    queue of its own. (A real server moves a task off a lost worker's own queue after the sticky timeout;
    the time-skipping server never does, and the workflow would wait for the lost worker forever.)"""
    # Its configuration from a worker built (never run) on a queue of its own: one queue, one worker of a kind.
    config = build_worker(env.client, pool, settings, task_queue=f"{queue}-config").config()
    interceptors = [*config.get("interceptors", []), *interceptors]
    return Worker(**{**config, "task_queue": queue, "max_cached_workflows": 0, "interceptors": interceptors})


async def _sending_done(env, pool, queue: str, tz: str):
    """Start the campaign; wait until every offer is out and the workflow sleeps on the offers' timer."""
    now = await env.get_current_time()
    plan, handle = await start_campaign(pool, env.client, _spec(), task_queue=queue, now=now)
    for _ in range(600):
        if await _sent(pool, plan.campaign_db_id) == N and await _offer_timer_started(handle):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the campaign did not reach the offers' timer")
    return plan, handle


async def _offer_timer_started(handle) -> bool:
    # The only timer of an offer's length (the send-now campaign has no other long one).
    async for e in handle.fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED and (
            e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta() >= timedelta(hours=1)
        ):
            return True
    return False


async def _states(pool) -> dict[str, int]:
    return dict(await pool.fetch("SELECT state, count(*)::int FROM claims GROUP BY 1"))


async def _claim_one(pool, env) -> int:
    """One offer claimed in time; the rest still held."""
    offer = await pool.fetchval("SELECT min(id) FROM claims")
    answer = await claim(pool, offer, SHOP, await env.get_current_time())
    assert answer.state == CLAIMED
    assert await _states(pool) == {CLAIMED: 1, HELD: N - 1}
    return offer


async def _expiry_attempts(handle) -> list[int]:
    """The attempt number of each expire_offers activity that completed, from the workflow's history."""
    scheduled, completed = {}, []
    async for e in handle.fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs = e.activity_task_started_event_attributes
            if scheduled.get(attrs.scheduled_event_id) == EXPIRE:
                completed.append(attrs.attempt)
    return completed


async def _assert_ended_once(pool, plan, result, offer: int) -> None:
    assert result.state == "completed"
    states = await _states(pool)
    assert states == {CLAIMED: 1, EXPIRED: N - 1}, states
    assert await pool.fetchval("SELECT state FROM claims WHERE id = $1", offer) == CLAIMED
    # Each expired unit back once: only the claimed one is gone from the stock.
    assert await pool.fetchval("SELECT stock FROM coupons WHERE coupon_id = 'tea5'") == STOCK - 1
    assert await pool.fetchval("SELECT stock FROM coupons WHERE coupon_id = 'soap2'") == STOCK
    [report] = await pool.fetch("SELECT counts FROM campaign_day_reports WHERE campaign_id = $1", plan.campaign_db_id)
    counts = report["counts"]
    assert (counts["offers_claimed"], counts["offers_expired"]) == (states[CLAIMED], states[EXPIRED])
    assert (result.totals["offer"]["offers_claimed"], result.totals["offer"]["offers_expired"]) == (1, N - 1)
    assert counts["sent"] == N


async def test_a_worker_stopped_before_the_offers_end_is_replaced_and_they_end_once(clean_db, ts_env):
    pool = clean_db
    tz = await _shop(pool, await ts_env.get_current_time(), N, stock=STOCK)
    settings = Settings(SLUICE_PLATFORM_TZ=tz)
    queue = f"rp-{uuid.uuid4().hex[:6]}"
    async with _first_worker(ts_env, pool, settings, queue):
        plan, handle = await _sending_done(ts_env, pool, queue, tz)
        offer = await _claim_one(pool, ts_env)
        last = await pool.fetchval("SELECT max(expires_at) FROM claims")
        # To a minute before the timer fires, the first worker still running.
        await ts_env.sleep(last - await ts_env.get_current_time() - timedelta(minutes=1))
        assert await _states(pool) == {CLAIMED: 1, HELD: N - 1}
    # The timer fires while no worker runs: nothing ends. (Past the timer the server holds its clock while
    # the workflow task it made waits for a worker, so this sleeps only just past it.)
    await ts_env.sleep(last - await ts_env.get_current_time() + timedelta(seconds=1))
    assert await ts_env.get_current_time() > last
    assert await _states(pool) == {CLAIMED: 1, HELD: N - 1}
    assert await pool.fetchval("SELECT stock FROM coupons WHERE coupon_id = 'tea5'") == STOCK - N
    async with build_worker(ts_env.client, pool, settings, task_queue=queue):
        result = await asyncio.wait_for(handle.result(), timeout=60)
    await _assert_ended_once(pool, plan, result, offer)
    assert await _expiry_attempts(handle) == [1]


class _LoseWorkerAfterExpiry(Interceptor):
    """On the first worker: the expiry runs for real, then the attempt fails as if the worker died before
    reporting it. Attempts that reach this worker afterwards (it is being shut down) fail without running."""

    def __init__(self):
        self.ran = asyncio.Event()
        self.real_runs = 0

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        outer = self

        class _Inbound(ActivityInboundInterceptor):
            async def execute_activity(self, input: ExecuteActivityInput):
                if activity.info().activity_type != EXPIRE:
                    return await super().execute_activity(input)
                if outer.real_runs == 0:
                    outer.real_runs += 1
                    await super().execute_activity(input)  # committed: the offers ended, the stock went back
                    outer.ran.set()
                raise ApplicationError("worker lost before reporting the expiry", next_retry_delay=timedelta(minutes=5))

        return _Inbound(next)


async def test_a_worker_lost_after_running_the_expiry_is_retried_elsewhere_without_double_counting(clean_db, ts_env):
    pool = clean_db
    tz = await _shop(pool, await ts_env.get_current_time(), N, stock=STOCK)
    settings = Settings(SLUICE_PLATFORM_TZ=tz)
    queue = f"rp-{uuid.uuid4().hex[:6]}"
    lose = _LoseWorkerAfterExpiry()
    async with _first_worker(ts_env, pool, settings, queue, [lose]):
        plan, handle = await _sending_done(ts_env, pool, queue, tz)
        offer = await _claim_one(pool, ts_env)
        last = await pool.fetchval("SELECT max(expires_at) FROM claims")
        await ts_env.sleep(last - await ts_env.get_current_time() + timedelta(minutes=1))
        await asyncio.wait_for(lose.ran.wait(), timeout=60)
        # The first run's work is committed: the unclaimed offers ended and their units are back.
        assert await _states(pool) == {CLAIMED: 1, EXPIRED: N - 1}
        assert await pool.fetchval("SELECT stock FROM coupons WHERE coupon_id = 'tea5'") == STOCK - 1
    assert lose.real_runs == 1
    async with build_worker(ts_env.client, pool, settings, task_queue=queue):
        result = await asyncio.wait_for(handle.result(), timeout=60)
    await _assert_ended_once(pool, plan, result, offer)
    # The expiry the workflow recorded is a retry (the first worker's attempt never reported success).
    [attempt] = await _expiry_attempts(handle)
    assert attempt >= 2
