"""R-RP-9: a merchant's custom repurchase task takes priority over the shop's algorithmic ones.

On the time-skipping server with a real worker and Postgres: while a custom task
of the shop runs (here: it sent, and its offers' countdown is still open), an
algorithmic repurchase task of the same shop sends nothing, shows the state
"yielding" with the holder named, and sends its day once the custom task has
ended. When the custom task outlasts the day's window, the algorithmic task's
recipients are recorded as not sent for R-RP-9, consuming no cap. Another
shop's custom task holds nothing here. The decisions are unit-tested below.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from sluice.api.service import start_campaign
from sluice.kinds import KINDS
from sluice.kinds.repurchase import PRECEDENCE_GROUP, RepurchaseSpec
from sluice.schemas.activities import NOT_SENT_YIELDED
from sluice.schemas.campaign import Precedence
from sluice.schemas.settings import Settings
from sluice.schemas.workflow import CampaignProgress, CampaignStatus
from sluice.workers.worker import build_worker
from sluice.workflows import precedence as P

from tests.factories import make_shop
from tests.test_repurchase import SHOP, _sent, _shop, _spec

MEMBERS = list(range(101, 111))  # the custom task's audience: members who bought no tea (disjoint from the tea buyers)
CUSTOM = {"audience": "custom", "campaign_id": "mine", "coupon_ids": ["soap2"],
          "custom_filter": {"op": "eq", "field": "is_member", "value": True},
          "text": "Hi {{ name }}: {{ coupon }} until {{ ends_at }}"}


async def _members(pool, shop: str = SHOP) -> None:
    await pool.executemany("INSERT INTO consumers (consumer_id) VALUES ($1) ON CONFLICT DO NOTHING", [(c,) for c in MEMBERS])
    await pool.executemany(
        "INSERT INTO shop_customers (shop_id, consumer_id, nick, chat_id, is_member) VALUES ($1, $2, $3, $4, true)",
        [(shop, c, f"M{c}", f"tb_{c}") for c in MEMBERS])


async def _progress(handle) -> CampaignProgress:
    return (await handle.query("progress", result_type=CampaignStatus)).progress


async def _until(predicate, ts_env, *, tries: int = 300, skip: timedelta | None = None):
    for _ in range(tries):
        if await predicate():
            return
        if skip is not None:
            await ts_env.sleep(skip)
        await asyncio.sleep(0.1)
    raise AssertionError(f"never true: {predicate.__name__}")


async def test_an_algorithmic_task_yields_while_the_custom_task_runs_and_sends_after_it_ends(clean_db, ts_env):
    pool, n = clean_db, 30
    now = await ts_env.get_current_time()
    tz = await _shop(pool, now, n)
    await _members(pool)
    queue = f"prec-{uuid.uuid4().hex[:6]}"
    async with build_worker(ts_env.client, pool, Settings(SLUICE_PLATFORM_TZ=tz), task_queue=queue):
        mine_plan, mine = await start_campaign(pool, ts_env.client, _spec(**CUSTOM), task_queue=queue, now=now)
        assert mine_plan.precedence == Precedence(group=PRECEDENCE_GROUP, takes=True)

        async def custom_sent():
            return await _sent(pool, mine_plan.campaign_db_id) == len(MEMBERS)

        await _until(custom_sent, ts_env)
        # The custom task now holds the group: its offers stay open for 2 hours (R-RP-5).
        algo_plan, algo = await start_campaign(pool, ts_env.client, _spec(), task_queue=queue, now=now)
        assert algo_plan.precedence == Precedence(group=PRECEDENCE_GROUP, takes=False)

        async def yielding():
            return (await _progress(algo)).state == P.YIELDING

        await _until(yielding, ts_env)
        status = await _progress(algo)
        assert "R-RP-9" in status.yield_reason and mine_plan.workflow_id in status.yield_reason
        assert await pool.fetchval("SELECT state FROM campaigns WHERE id = $1", algo_plan.campaign_db_id) == P.YIELDING
        # Time passes and it keeps looking: the custom task still runs, nothing is sent.
        await ts_env.sleep(P.CHECK_EVERY * 2 + timedelta(seconds=30))
        assert await _sent(pool, algo_plan.campaign_db_id) == 0
        assert (await _progress(algo)).state == P.YIELDING

        # The custom task ends (its offers' countdown over); the algorithmic one sends its whole day.
        await mine.result()
        assert await pool.fetchval("SELECT state FROM campaigns WHERE id = $1", mine_plan.campaign_db_id) == "completed"

        async def algo_sent():
            return await _sent(pool, algo_plan.campaign_db_id) == n

        await _until(algo_sent, ts_env, skip=timedelta(minutes=1))
        done = await algo.result()
        assert done.totals["offer"]["sent"] == n and done.yield_reason is None
        # Nobody got two messages of the repurchase template, nobody was suppressed for it.
        assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE state <> 'sent'") == 0


async def test_a_custom_task_outlasting_the_window_leaves_the_day_unsent_for_r_rp_9(clean_db, ts_env):
    pool, n = clean_db, 20
    now = await ts_env.get_current_time()
    tz = await _shop(pool, now, n)
    await _members(pool)
    # Another shop's custom task holds nothing in this shop.
    await make_shop(pool, "other", tz)
    await pool.execute(
        "INSERT INTO coupons (coupon_id, shop_id, name, valid_from, valid_to, stock, product_id) VALUES"
        " ('o1', 'other', 'other', $1, $2, 100, 99)", now - timedelta(days=1), now + timedelta(days=3))
    await pool.execute("INSERT INTO products (product_id, shop_id, title, category, price) VALUES (99, 'other', 'x', 'x', 1)")
    await _members(pool, "other")
    queue = f"prec-{uuid.uuid4().hex[:6]}"
    async with build_worker(ts_env.client, pool, Settings(SLUICE_PLATFORM_TZ=tz), task_queue=queue):
        other_spec = RepurchaseSpec.model_validate({**_spec(**CUSTOM).model_dump(mode="json"), "shop_id": "other",
                                                    "coupon_ids": ["o1"], "offer_hours": 24})
        other_plan, _ = await start_campaign(pool, ts_env.client, other_spec, task_queue=queue, now=now)
        mine_plan, mine = await start_campaign(pool, ts_env.client, _spec(**CUSTOM, offer_hours=24), task_queue=queue,
                                               now=now)

        async def both_sent():
            return (await _sent(pool, mine_plan.campaign_db_id) == len(MEMBERS)
                    and await _sent(pool, other_plan.campaign_db_id) == len(MEMBERS))

        await _until(both_sent, ts_env)
        algo_plan, algo = await start_campaign(pool, ts_env.client, _spec(), task_queue=queue, now=now)
        done = await algo.result()  # time skips to 22:00: the custom task (24 h offers) still runs
        assert done.totals["offer"]["sent"] == 0
        rows = await pool.fetch("SELECT state, reason, count(*) AS n FROM deliveries WHERE campaign_id = $1 GROUP BY 1, 2",
                                algo_plan.campaign_db_id)
        assert [(r["state"], r["reason"], r["n"]) for r in rows] == [("not_sent", NOT_SENT_YIELDED, n)]
        # Not sent consumes no cap (R-OC-8): no fatigue rows for the tea buyers.
        assert await pool.fetchval("SELECT count(*) FROM fatigue_day WHERE consumer_id <= $1", n) == 0
        await mine.cancel()


def test_who_yields_and_when_to_look_again():
    assert P.yields(Precedence(group="g", takes=False))
    assert not P.yields(Precedence(group="g", takes=True)) and not P.yields(None)
    t = datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert P.check_due(None, t)
    assert not P.check_due(t, t + P.SENDING_CHECK_EVERY - timedelta(seconds=1))
    assert P.check_due(t, t + P.SENDING_CHECK_EVERY)
    # The kinds: only K-REPURCHASE has a group today, custom takes it, the algorithmic audiences yield.
    spec = _spec()
    assert KINDS["K-REPURCHASE"].precedence(spec) == Precedence(group=PRECEDENCE_GROUP, takes=False)
    assert KINDS["K-REPURCHASE"].precedence(_spec(**CUSTOM)).takes
    assert KINDS["K-PHASED"].precedence(None) is None and KINDS["K-OLDCUST"].precedence(None) is None
