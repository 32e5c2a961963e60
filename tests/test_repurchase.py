"""K-REPURCHASE end to end: the repurchase-cycle audience, per-recipient content, countdown-bounded offers.

On the time-skipping server with a real worker and Postgres: a campaign sent now
pushes each due buyer the product of their exclusive coupon (R-RP-10) in their
own text (name, product, coupon, the offer's end), holds one unit of stock per
sent offer, lets a claim before the end succeed (idempotently) and refuses one
after it with the state "ended"; the workflow's durable timer runs to the last
offer's end, then the unclaimed offers end and give their stock back, and the
day report counts claimed and expired. Expiry run twice changes nothing more.
Slices racing for a coupon with too little stock never oversell it. Every
R-RP rule that can be broken at submission is refused with its rule id.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from sluice.activities.offers import OfferActivities, claim
from sluice.api.service import start_campaign
from sluice.content.render import format_ends_at
from sluice.kinds import CampaignSpec
from sluice.kinds.repurchase import RepurchaseSpec
from sluice.schemas.activities import OffersInput
from sluice.schemas.rules import RuleViolation, error_details
from sluice.schemas.settings import Settings
from sluice.workers.worker import build_worker
from sluice.workflows.calendar import local_day, local_instant
from temporalio.testing import ActivityEnvironment

from tests.api_helpers import client, running_app, shop_key
from tests.factories import make_shop
from tests.test_crash import pick_zone

SHOP = "rp"
TEA, SOAP = 10, 11


async def _shop(pool, now: datetime, n: int, *, stock: int = 1000) -> str:
    """A shop where it is afternoon, a tea with a 30-day cycle (merchant's) and its coupon; buyers 1..n
    last bought it 22 days before today's snapshot and browsed teas 4 times in the last 14 days."""
    tz = pick_zone(now)
    await make_shop(pool, SHOP, tz)
    snapshot = local_instant(local_day(now, tz), datetime.min.time(), tz)
    await pool.execute(
        "INSERT INTO products (product_id, shop_id, title, category, price, repurchase_cycle_days) VALUES"
        " ($1, $3, 'Oolong tea', 'tea', 30, 30), ($2, $3, 'Olive soap', 'soap', 9, 30)", TEA, SOAP, SHOP)
    await pool.execute(
        "INSERT INTO coupons (coupon_id, shop_id, name, valid_from, valid_to, stock, product_id) VALUES"
        " ('tea5', $1, '5 off tea', $2, $3, $4, $5), ('soap2', $1, '2 off soap', $2, $3, 1000, $6)",
        SHOP, now - timedelta(days=30), now + timedelta(days=30), stock, TEA, SOAP)
    ids = list(range(1, n + 1))
    await pool.executemany("INSERT INTO consumers (consumer_id) VALUES ($1) ON CONFLICT DO NOTHING", [(c,) for c in ids])
    await pool.executemany(
        "INSERT INTO shop_customers (shop_id, consumer_id, nick, chat_id) VALUES ($1, $2, $3, $4)",
        [(SHOP, c, f"Mei{c}", f"tb_{c}") for c in ids])
    await pool.executemany(
        "INSERT INTO orders (order_id, shop_id, consumer_id, created_at, paid_at, amount, status)"
        " VALUES ($1, $2, $1, $3, $3, 30, 'paid')", [(c, SHOP, snapshot - timedelta(days=22)) for c in ids])
    await pool.executemany("INSERT INTO order_items (order_id, product_id, quantity, price) VALUES ($1, $2, 1, 30)",
                           [(c, TEA) for c in ids])
    await pool.executemany(
        "INSERT INTO behaviour_events (shop_id, consumer_id, kind, product_id, occurred_at) VALUES ($1, $2, 'view', $3, $4)",
        [(SHOP, c, TEA, snapshot - timedelta(days=d)) for c in ids for d in (1, 3, 5, 9)])
    return tz


def _spec(**over) -> RepurchaseSpec:
    body = {"kind": "K-REPURCHASE", "shop_id": SHOP, "campaign_id": "tea", "audience": "repurchase_cycle",
            "benefit": "exclusive_coupon", "coupon_ids": ["tea5", "soap2"], "offer_hours": 2, **over}
    return RepurchaseSpec.model_validate(body)


async def _sent(pool, cid: int) -> int:
    return await pool.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND state = 'sent'", cid)


async def test_offers_are_sent_claimed_in_time_refused_after_and_expired_by_the_workflow(clean_db, ts_env):
    pool, n = clean_db, 40
    now = await ts_env.get_current_time()
    tz = await _shop(pool, now, n)
    queue = f"rp-{uuid.uuid4().hex[:6]}"
    async with build_worker(ts_env.client, pool, Settings(SLUICE_PLATFORM_TZ=tz), task_queue=queue):
        plan, handle = await start_campaign(pool, ts_env.client, _spec(), task_queue=queue, now=now)
        cid = plan.campaign_db_id
        for _ in range(300):
            if await _sent(pool, cid) == n and await pool.fetchval("SELECT count(*) FROM claims") == n:
                break
            await asyncio.sleep(0.1)
        assert await _sent(pool, cid) == n
        # One unit of the tea coupon held per sent offer; the soap's untouched (nobody is due for soap).
        assert await pool.fetchval("SELECT stock FROM coupons WHERE coupon_id = 'tea5'") == 1000 - n
        assert await pool.fetchval("SELECT stock FROM coupons WHERE coupon_id = 'soap2'") == 1000
        offers = await pool.fetch("SELECT id, consumer_id, coupon_id, product_id, held_at, expires_at FROM claims ORDER BY id")
        assert {(o["coupon_id"], o["product_id"]) for o in offers} == {("tea5", TEA)}
        assert all(o["expires_at"] - o["held_at"] == timedelta(hours=2) for o in offers)
        # Each recipient's own text: the product, the coupon and the offer's end in the shop's zone.
        first = offers[0]
        text = await pool.fetchval(
            "SELECT bodies[array_position(consumer_ids, $1)] FROM outbox WHERE campaign_id = $2 AND $1 = ANY(consumer_ids)",
            first["consumer_id"], cid)
        assert text == (f"Oolong tea is due again: your exclusive coupon 5 off tea is yours until "
                        f"{format_ends_at(first['expires_at'], tz)}"), text
        assert await pool.fetchval("SELECT count(DISTINCT b) FROM outbox, unnest(bodies) b WHERE campaign_id = $1", cid) >= 1

        # A claim in time succeeds, and again (idempotent); through the API with the shop's key.
        key = await shop_key(pool, SHOP, tz)
        async with running_app(pool, ts_env, worker=False) as app, client(app, key) as c:
            # Another consumer's claim is unknown to them and changes nothing.
            wrong = await c.post(f"/offers/{first['id']}/claim", json={"consumer_id": first["consumer_id"] + 10_000})
            assert wrong.status_code == 404
            assert await pool.fetchval("SELECT state FROM claims WHERE id = $1", first["id"]) == "held"
            r1 = await c.post(f"/offers/{first['id']}/claim", json={"consumer_id": first["consumer_id"]})
            r2 = await c.post(f"/offers/{first['id']}/claim")
            assert r1.status_code == r2.status_code == 200, r1.text
            assert r1.json()["state"] == r2.json()["state"] == "claimed"
            assert (await c.post(f"/offers/{first['id']}/claim", json={"consumer_id": 999999})).status_code == 404
            assert (await c.post("/offers/999999/claim")).status_code == 404
        # At the very end instant it is over, even before the workflow's sweep ran.
        second = offers[1]
        at_end = await claim(pool, second["id"], SHOP, second["expires_at"])
        assert at_end.state == "ended"

        # The workflow holds a durable timer to the last offer's end, then ends the unclaimed ones.
        result = await asyncio.wait_for(handle.result(), timeout=60)
    assert result.state == "completed"
    assert result.totals["offer"]["offers_claimed"] == 1 and result.totals["offer"]["offers_expired"] == n - 1
    assert await pool.fetchval("SELECT stock FROM coupons WHERE coupon_id = 'tea5'") == 1000 - 1
    assert dict(await pool.fetch("SELECT state, count(*) FROM claims GROUP BY 1")) == {"claimed": 1, "expired": n - 1}
    # After the end: refused with the state "ended"; the claimed one stays claimed.
    async with running_app(pool, ts_env, worker=False) as app, client(app, key) as c:
        late = await c.post(f"/offers/{second['id']}/claim")
        assert late.status_code == 409 and late.json()["state"] == "ended"
        assert (await c.post(f"/offers/{first['id']}/claim")).json()["state"] == "claimed"
    # A worker killed around the expiry runs it again: nothing more ends, no stock counted twice.
    again = await ActivityEnvironment().run(OfferActivities(pool).expire_offers,
        OffersInput(campaign_db_id=plan.campaign_db_id, phase_index=0, day=plan.phases[0].start_date,
                    now=datetime.now(UTC) + timedelta(days=1)))
    assert again.counts == {"claimed": 1, "expired": n - 1}
    assert await pool.fetchval("SELECT stock FROM coupons WHERE coupon_id = 'tea5'") == 1000 - 1
    report = await pool.fetchval("SELECT counts FROM campaign_day_reports WHERE campaign_id = $1", plan.campaign_db_id)
    assert report["offers_claimed"] == 1 and report["offers_expired"] == n - 1


async def test_slices_racing_for_a_coupon_never_oversell_it(clean_db, ts_env):
    pool, n, stock = clean_db, 200, 37
    now = await ts_env.get_current_time()
    tz = await _shop(pool, now, n, stock=stock)
    queue = f"rp-{uuid.uuid4().hex[:6]}"
    async with build_worker(ts_env.client, pool, Settings(SLUICE_PLATFORM_TZ=tz), task_queue=queue):
        plan, handle = await start_campaign(pool, ts_env.client, _spec(), task_queue=queue, now=now,
                                            tuning={"slice_size": 10, "chunk_size": 3, "concurrency": 8})
        await asyncio.wait_for(handle.result(), timeout=120)
    cid = plan.campaign_db_id
    counts = dict(await pool.fetch(
        "SELECT coalesce(reason, state), count(*)::int FROM deliveries WHERE campaign_id = $1 GROUP BY 1", cid))
    assert counts == {"sent": stock, "benefit_unavailable": n - stock}, counts
    # Every unit went to exactly one offer; the unclaimed ones came back when their window ended.
    assert await pool.fetchval("SELECT count(*) FROM claims WHERE state = 'expired'") == stock
    assert await pool.fetchval("SELECT stock FROM coupons WHERE coupon_id = 'tea5'") == stock


def _refusal(**over) -> tuple[str, str]:
    with pytest.raises(ValidationError) as exc:
        from pydantic import TypeAdapter

        body = {"kind": "K-REPURCHASE", "shop_id": SHOP, "campaign_id": "c", "audience": "repurchase_cycle",
                "benefit": "exclusive_coupon", "coupon_ids": ["tea5"], **over}
        TypeAdapter(CampaignSpec).validate_python(body)
    d = error_details(exc.value.errors())[0]
    return d["field"], d["rule"]


@pytest.mark.parametrize(("over", "rule"), [
    ({"coupon_ids": []}, "R-RP-4"),  # the repurchase-cycle audience needs exclusive coupons
    ({"benefit": "member_benefit"}, "R-RP-4"),
    ({"audience": "cross_sell"}, "R-RP-4"),  # cross-sell uses member benefits
    ({"audience": "custom", "benefit": "member_discount", "coupon_ids": [], "custom_filter": {"op": "nope"},
      "text": "Hi"}, "R-RP-3"),
    ({"audience": "custom", "benefit": "member_discount", "coupon_ids": []}, "R-RP-3"),  # custom needs its filter
    ({"offer_hours": 1}, "schema:greater_than_equal"),  # R-RP-5: 2..24 hours
    ({"offer_hours": 25}, "schema:less_than_equal"),
    ({"text": "Buy now"}, "R-RP-6"),  # the algorithmic audiences send the default text
    ({"coupon_ids": ["a", "a"]}, "R-RP-4"),
])
def test_repurchase_rules_refused_at_submission_with_their_ids(over, rule):
    assert _refusal(**over)[1] == rule


def test_custom_text_is_at_most_50_characters_and_names_known_placeholders():
    custom = {"audience": "custom", "benefit": "member_discount", "coupon_ids": [],
              "custom_filter": {"op": "behaviour", "kind": "visit", "within_days": 30, "at_least": 1}}
    assert _refusal(**custom, text="x" * 51)[1] == "R-RP-6"
    assert _refusal(**custom, text="Hi {{ product }}")[1] == "R-RP-6"  # no product without a coupon offer
    assert _refusal(**custom, text="Hi {{ config }}")[1] == "R-RP-6"
    ok = RepurchaseSpec.model_validate({"kind": "K-REPURCHASE", "shop_id": SHOP, "campaign_id": "c", **custom,
                                        "text": "Hi {{ name }}, members save today"})
    assert ok.text


async def test_send_at_is_now_or_at_least_two_hours_ahead_and_coupons_must_fit(clean_db, ts_env):
    from sluice.api.service import check_spec

    pool = clean_db
    now = datetime.now(UTC)
    await _shop(pool, now, 1)
    async with pool.acquire() as conn:
        with pytest.raises(RuleViolation) as exc:
            await check_spec(conn, _spec(send_at=(now + timedelta(minutes=90)).isoformat()), now)
        assert (exc.value.field, exc.value.rule) == ("send_at", "R-RP-7")
        with pytest.raises(RuleViolation) as exc:
            await check_spec(conn, _spec(coupon_ids=["tea5", "nope"]), now)
        assert (exc.value.field, exc.value.rule) == ("coupon_ids.1", "R-BEN-1")
        await conn.execute("UPDATE coupons SET valid_to = $1 WHERE coupon_id = 'soap2'", now + timedelta(hours=1))
        with pytest.raises(RuleViolation) as exc:
            await check_spec(conn, _spec(), now)
        assert exc.value.rule == "R-RP-5"


def test_offers_are_allocated_in_consumer_order_while_each_coupon_lasts():
    from sluice.activities.send import OfferItem, allocate_offers

    tea, soap = OfferItem("tea5", "5 off tea", "Oolong tea"), OfferItem("soap2", "2 off soap", "Olive soap")
    items = {1: TEA, 2: SOAP, 3: TEA, 4: None, 5: TEA, 6: 999}
    offered, taken = allocate_offers([1, 2, 3, 4, 5, 6], items, {TEA: tea, SOAP: soap}, {"tea5": 2, "soap2": -1})
    # Tea runs out after two; soap has no usable stock; no product, or one without a coupon: no offer.
    assert offered == {1: tea, 3: tea} and taken == {"tea5": 2}
