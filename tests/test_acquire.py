"""K-ACQUIRE (R-AQ-1..3, R-AQ-5): acquisition of the industry's prospects by SMS with the shop's join gift.

A hand-built industry where each consumer's verdict is known: shops A and B of one industry, C of
another. Each audience yields exactly who its definition says (audiences/acquire.py), the shop's
members and buyers are dropped by name (R-AQ-1), a custom filter is joined with the industry-value
audience. A campaign runs end to end on the time-skipping server, reaching a non-customer at the
platform's phone with the join gift; its preview is the run; a second campaign within the repeat
cycle is held back by it until the cycle is over (R-AQ-3). A join gift that lapses stops the
sending (R-BEN-1). Every R-AQ rule a spec can break is refused through the API naming field and rule.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest
from pydantic import TypeAdapter, ValidationError
from sluice.activities.audience import AudienceActivities
from sluice.activities.send import SendActivities
from sluice.api.service import preview_campaign, start_campaign
from sluice.audiences import AUDIENCES, CUSTOM, INDUSTRY_VALUE, WITH_INDUSTRY_VALUE, reaches_non_customers
from sluice.audiences import acquire as AQ
from sluice.audiences.filters import NON_MEMBERS_NON_BUYERS
from sluice.channels.registry import ChannelRegistry
from sluice.kinds import CampaignSpec, compile_plan
from sluice.kinds.acquire import JOIN_GIFT, TEMPLATE_GROUP, AcquireSpec
from sluice.kinds.base import Shop
from sluice.schemas import activities as A
from sluice.schemas.activities import RefreshAudienceInput, SendSliceInput
from sluice.schemas.benefits import required_benefit_problem
from sluice.schemas.campaign import Channel
from sluice.schemas.rules import error_details
from sluice.schemas.settings import Settings
from sluice.workers.worker import build_worker
from sluice.workflows.calendar import local_day, local_instant
from temporalio.testing import ActivityEnvironment

from tests.api_helpers import client, running_app, shop_key
from tests.factories import make_campaign, make_shop
from tests.test_crash import pick_zone

SHOP, SAME, OTHER = "aq-a", "aq-b", "aq-c"
D = timedelta(days=1)
assert (AQ.ACTIVE_DAYS, AQ.ACTIVE_MIN_ACTIONS, AQ.SWITCHER_MIN_DEEP) == (90, 5, 3), "the data below is written for these"
assert set(AQ.ACTIVE_KINDS) <= set(AQ.SHOP_INTERACTION_KINDS)

# consumer -> behaviour (shop, kind, count, age before the snapshot); the comment says who they are.
EVENTS: dict[int, list[tuple]] = {
    1: [(SAME, "cart", 3, 10 * D), (SHOP, "visit", 2, 5 * D)],  # active 5, visits A, deep 3 at B: both
    2: [(SAME, "view", 5, 10 * D)],  # active, never at A, nothing deep: neither
    3: [(SAME, "view", 4, 10 * D), (SHOP, "inquiry", 1, 5 * D)],  # an inquiry is no activity: 4, neither
    4: [(SAME, "view", 4, 10 * D), (SHOP, "visit", 1, 5 * D)],  # active 5, visits A: industry_active
    5: [(SAME, "cart", 2, 10 * D), (SAME, "view", 2, 10 * D)],  # + an order at B below: switcher, not at A
    6: [(OTHER, "cart", 10, 10 * D), (SHOP, "visit", 1, 5 * D)],  # active in another industry: neither
    7: [(SHOP, "visit", 5, 5 * D), (SAME, "cart", 3, 10 * D)],  # A's member: both, then dropped
    8: [(SHOP, "visit", 5, 5 * D)],  # A's customer who bought 200 days ago: industry_active, then dropped
    9: [(SHOP, "visit", 5, 5 * D)],  # A's customer, only a pending order: industry_active, kept
    10: [(SAME, "cart", 5, 91 * D), (SHOP, "visit", 1, 5 * D)],  # the carts are too old: neither
    11: [(SHOP, "view", 5, 5 * D)],  # no shop row, a refunded order at A: industry_active, dropped as a buyer
}
# consumer -> orders (shop, age, amount, status)
ORDERS: dict[int, list[tuple]] = {
    5: [(SAME, 3 * D, 100, "paid")],
    8: [(SHOP, 200 * D, 100, "paid")],
    9: [(SHOP, 3 * D, 100, "pending")],
    11: [(SHOP, 40 * D, 100, "refunded")],
    15: [(SAME, 10 * D, 200, "paid"), (SAME, 20 * D, 200, "paid")],  # the industry-value audience only
}
# consumer -> (shop, matched before the snapshot by)
EXTERNAL = {7: (SHOP, 30 * D), 12: (SHOP, 1 * D), 13: (SHOP, -D), 14: (SAME, 30 * D)}
CUSTOMERS = {7: {"is_member": True}, 8: {}, 9: {}}  # A's customers, with a shop phone
RAW = {
    "industry_active": {1, 4, 7, 8, 9, 11},
    "brand_switchers": {1, 5, 7},
    "external_members": {7, 12},
}
DROPPED = {7: A.EXCLUDED_MEMBER, 8: A.EXCLUDED_BUYER, 11: A.EXCLUDED_BUYER}
GIFT = "aq-a-join"
GIFT_TITLE = "a 10 yuan voucher"


def shop_phone(c: int) -> str:
    return f"138{c:08d}"


def platform_phone(c: int) -> str:
    return f"139{c:08d}"


async def build(pool, snapshot: datetime, tz: str = "Asia/Shanghai", *, gift: bool = True) -> None:
    await make_shop(pool, SHOP, tz, industry="beauty")
    await make_shop(pool, SAME, tz, industry="beauty")
    await make_shop(pool, OTHER, tz, industry="food")
    everyone = sorted({*EVENTS, *ORDERS, *EXTERNAL})
    await pool.executemany("INSERT INTO consumers (consumer_id, phone) VALUES ($1, $2)",
                           [(c, platform_phone(c)) for c in everyone])
    await pool.executemany(
        "INSERT INTO shop_customers (shop_id, consumer_id, phone, is_member) VALUES ($1, $2, $3, $4)",
        [(SHOP, c, shop_phone(c), cols.get("is_member", False)) for c, cols in CUSTOMERS.items()])  # fmt: skip
    events = [(shop, c, kind, snapshot - age - i * timedelta(minutes=1))
              for c, rows in EVENTS.items() for shop, kind, n, age in rows for i in range(n)]  # fmt: skip
    await pool.executemany(
        "INSERT INTO behaviour_events (shop_id, consumer_id, kind, occurred_at) VALUES ($1, $2, $3, $4)", events)
    orders = [(shop, c, snapshot - age, amount, status) for c, rows in ORDERS.items() for shop, age, amount, status in rows]
    await pool.executemany(
        "INSERT INTO orders (order_id, shop_id, consumer_id, created_at, amount, status)"
        " SELECT coalesce(max(order_id), 0) + 1, $1, $2, $3, $4, $5 FROM orders", orders)  # fmt: skip
    await pool.executemany("INSERT INTO external_members (shop_id, consumer_id, matched_at) VALUES ($1, $2, $3)",
                           [(shop, c, snapshot - age) for c, (shop, age) in EXTERNAL.items()])  # fmt: skip
    if gift:
        await add_gift(pool, snapshot - 30 * D, snapshot + 60 * D)


async def add_gift(pool, valid_from: datetime, valid_to: datetime, benefit_id: str = GIFT, coupon_id: str | None = None):
    await pool.execute(
        "INSERT INTO member_benefits (benefit_id, shop_id, kind, title, valid_from, valid_to, coupon_id)"
        " VALUES ($1, $2, 'join_gift', $3, $4, $5, $6)", benefit_id, SHOP, GIFT_TITLE, valid_from, valid_to, coupon_id)


SNAP = datetime(2025, 6, 1, tzinfo=UTC) - timedelta(hours=8)  # 00:00 in Asia/Shanghai


async def members(pool, name: str, shop: str = SHOP) -> set[int]:
    return {r[0] for r in await pool.fetch(f"SELECT consumer_id FROM ({AUDIENCES[name].sql}) a", shop, SNAP, SNAP)}


async def test_each_audience_is_who_its_definition_says(clean_db):
    await build(clean_db, SNAP)
    for name, expected in RAW.items():
        assert await members(clean_db, name) == expected, name
        assert AUDIENCES[name].reaches_non_customers
    # The industry is the shop's: C's active consumer interacted with C; B's switchers are deep at A or C.
    assert await members(clean_db, "industry_active", OTHER) == {6}
    assert await members(clean_db, "brand_switchers", SAME) == set()  # the industry's deep actions are all at B
    assert await members(clean_db, "external_members", SAME) == {14}


def _refresh_input(cid: int, audience: str, **params) -> RefreshAudienceInput:
    return RefreshAudienceInput(
        campaign_db_id=cid, shop_id=SHOP, kind="K-ACQUIRE", phase_index=0, audience=audience, audience_params=params,
        filters=[NON_MEMBERS_NON_BUYERS], channel=Channel.sms, day=SNAP.date(), snapshot_at=SNAP, campaign_started_at=SNAP,
    )  # fmt: skip


@pytest.mark.parametrize(("audience", "params", "raw"), [
    *[(name, {}, raw) for name, raw in RAW.items()],
    # the merchant's filter over A's customers (not fans: all three), then joined with the industry-value audience
    (CUSTOM, {"filter": {"op": "eq", "field": "is_fan", "value": False}}, {7, 8, 9}),
    (CUSTOM, {"filter": {"op": "eq", "field": "is_fan", "value": False}, WITH_INDUSTRY_VALUE: True}, {7, 8, 9, 15}),
], ids=[*RAW, "custom", "custom-industry-value"])
async def test_the_refresh_drops_the_shops_members_and_buyers_by_name(clean_db, audience, params, raw):
    await build(clean_db, SNAP)
    cid = await make_campaign(clean_db, SHOP, "aq")
    inp = _refresh_input(cid, audience, **params)
    result = await ActivityEnvironment().run(AudienceActivities(clean_db, parts=2).refresh_audience, inp)
    snapshot = {r[0] for r in await clean_db.fetch("SELECT consumer_id FROM audience_snapshots WHERE campaign_id = $1", cid)}
    assert snapshot == raw - set(DROPPED)
    assert result.matched == len(raw)
    assert result.excluded == Counter(DROPPED[c] for c in raw if c in DROPPED)
    assert {A.REASON_RULES[why] for why in result.excluded} <= {"R-AQ-1"}


# ---------------------------------------------------------------- the spec, the check and the compile step


def _spec(**over) -> dict:
    return {"kind": "K-ACQUIRE", "shop_id": SHOP, "campaign_id": "aq", "audience": "industry_active", **over}


def test_the_plan_is_one_phase_per_cycle_on_sms_with_the_join_gift_and_the_cycle_cap():
    start = date(2025, 6, 2)
    spec = AcquireSpec.model_validate(_spec(start_date=start.isoformat(), end_date=(start + 15 * D).isoformat(),
                                            daily_cap=300))  # fmt: skip
    plan = compile_plan(spec, campaign_db_id=1, shop=Shop(SHOP, "Asia/Shanghai", False), now=SNAP - 10 * D)
    assert [(p.name, p.start_date, p.end_date) for p in plan.phases] == [
        ("cycle-1", start, start + 6 * D), ("cycle-2", start + 7 * D, start + 13 * D),
        ("cycle-3", start + 14 * D, start + 15 * D)]  # fmt: skip
    for p in plan.phases:
        assert p.channel == Channel.sms and p.audience == "industry_active" and p.filters == [NON_MEMBERS_NON_BUYERS]
        assert (p.template_cap.group, p.template_cap.count, p.template_cap.days) == (TEMPLATE_GROUP, 1, 7)
        assert p.daily_cap == 300 and p.benefit == JOIN_GIFT and p.benefit.required and p.text_is_template
        assert "{{ benefit }}" in p.text
        assert reaches_non_customers(p.audience, p.audience_params)
    # Defaults: the first open day, one cycle of 7 days; a custom audience takes its filter and the industry value.
    custom = AcquireSpec.model_validate(_spec(audience="custom", custom_filter={"op": "eq", "field": "is_fan", "value": True},
                                              industry_value=True, text="Hi! {{ benefit }}", cycle_days=3))  # fmt: skip
    nine = SNAP + timedelta(hours=9)  # 09:00 on 2025-06-01 in Asia/Shanghai: that day's window is open
    [p] = compile_plan(custom, campaign_db_id=1, shop=Shop(SHOP, "Asia/Shanghai", False), now=nine).phases
    assert (p.start_date, p.end_date, p.template_cap.days) == (date(2025, 6, 1), date(2025, 6, 3), 3)
    assert p.audience_params == {"filter": custom.custom_filter, WITH_INDUSTRY_VALUE: True} and p.text == "Hi! {{ benefit }}"
    assert reaches_non_customers(p.audience, p.audience_params) and INDUSTRY_VALUE in AUDIENCES


def _refused(body: dict) -> tuple[str, str]:
    with pytest.raises(ValidationError) as exc:
        TypeAdapter(CampaignSpec).validate_python(body)
    [d] = error_details(exc.value.errors())
    return d["field"], d["rule"]


# (id, spec fields, field, rule): what the spec alone refuses.
SPEC_CASES = [
    ("aq1-custom-without-filter", {"audience": "custom"}, "body", "R-AQ-1"),
    ("aq1-filter-without-custom", {"custom_filter": {"op": "eq", "field": "is_fan", "value": True}}, "body", "R-AQ-1"),
    ("aq1-bad-filter", {"audience": "custom", "custom_filter": {"op": "eq", "field": "phone", "value": "1"}},
     "custom_filter", "R-AQ-1"),
    ("aq1-industry-value-not-custom", {"industry_value": True}, "industry_value", "R-AQ-1"),
    ("aq1-text-not-custom", {"text": "Hi {{ benefit }}"}, "text", "R-AQ-1"),
    ("aq1-unknown-placeholder", {"audience": "custom", "custom_filter": {"op": "eq", "field": "is_fan", "value": True},
                                 "text": "Hi {{ name }}, {{ benefit }}"}, "text", "R-AQ-1"),
    ("aq2-text-without-gift", {"audience": "custom", "custom_filter": {"op": "eq", "field": "is_fan", "value": True},
                               "text": "Come and see us"}, "text", "R-AQ-2"),
    ("aq3-cycle-zero", {"cycle_days": 0}, "cycle_days", "R-AQ-3"),
    ("aq3-cycle-31", {"cycle_days": 31}, "cycle_days", "R-AQ-3"),
    ("aq3-daily-cap-zero", {"daily_cap": 0}, "daily_cap", "R-AQ-3"),
]


@pytest.mark.parametrize(("over", "field", "rule"), [c[1:] for c in SPEC_CASES], ids=[c[0] for c in SPEC_CASES])
def test_the_spec_refuses_naming_field_and_rule(over, field, rule):
    assert _refused(_spec(**over)) == (field, rule)


def test_a_required_benefit_is_judged_at_an_instant():
    def row(**over):
        return {"benefit_id": "g", "kind": "join_gift", "title": "t", "valid_from": SNAP - D, "valid_to": SNAP + D,
                "coupon_id": None, "coupon_stock": None, "coupon_from": None, "coupon_to": None, **over}  # fmt: skip

    assert required_benefit_problem(JOIN_GIFT, [row()], SNAP) is None
    assert "no join gift" in required_benefit_problem(JOIN_GIFT, [], SNAP)
    assert "no join gift" in required_benefit_problem(JOIN_GIFT, [row()], SNAP + D)  # ended
    assert "no join gift" in required_benefit_problem(JOIN_GIFT, [row(kind="member_coupon")], SNAP)
    limited = {"coupon_id": "cp", "coupon_stock": 5, "coupon_from": SNAP - D, "coupon_to": SNAP + D}
    assert required_benefit_problem(JOIN_GIFT, [row(**limited)], SNAP) is None
    assert "out of stock" in required_benefit_problem(JOIN_GIFT, [row(**{**limited, "coupon_stock": 0})], SNAP)
    assert "not valid" in required_benefit_problem(JOIN_GIFT, [row(**{**limited, "coupon_to": SNAP})], SNAP)
    assert "not this shop's" in required_benefit_problem(JOIN_GIFT, [row(**{**limited, "coupon_stock": None})], SNAP)


# ---------------------------------------------------------------- through the API


async def test_every_acquire_rule_is_refused_through_the_api_and_nothing_is_written(clean_db, ts_env):
    pool = clean_db
    now = datetime.now(UTC)
    key = await shop_key(pool, SHOP, "Asia/Shanghai")
    await pool.execute("INSERT INTO coupons (coupon_id, shop_id, name, valid_from, valid_to, stock)"
                       " VALUES ('empty', $1, 'gift voucher', $2, $3, 0)", SHOP, now - D, now + 30 * D)  # fmt: skip

    async def expect(http, body: dict, field: str, rule: str) -> None:
        res = await http.post("/campaigns", json=body)
        assert res.status_code == 422, res.text
        assert any(d["field"] == field and d["rule"] == rule and d["message"] for d in res.json()["detail"]), res.text
        assert await pool.fetchval("SELECT count(*) FROM campaigns") == 0

    async with running_app(pool, ts_env, worker=False) as app, client(app, key) as http:
        for _, over, field, rule in SPEC_CASES:
            await expect(http, _spec(**over), field, rule)
        # R-AQ-2: no join gift, one that has ended, one whose coupon is used up.
        await expect(http, _spec(), "benefit", "R-AQ-2")
        await add_gift(pool, now - 30 * D, now - D, "ended")
        await expect(http, _spec(), "benefit", "R-AQ-2")
        await add_gift(pool, now - D, now + 30 * D, "used-up", coupon_id="empty")
        await expect(http, _spec(), "benefit", "R-AQ-2")
        await pool.execute("UPDATE coupons SET stock = 10 WHERE coupon_id = 'empty'")
        # R-AQ-5: a shop of a virtual category cannot send SMS, whatever else is right.
        await pool.execute("UPDATE shops SET virtual_category = true WHERE shop_id = $1", SHOP)
        await expect(http, _spec(), "shop_id", "R-AQ-5")
        await pool.execute("UPDATE shops SET virtual_category = false WHERE shop_id = $1", SHOP)
        # The control: the same spec is accepted now.
        res = await http.post("/campaigns", json=_spec())
        assert res.status_code == 201, res.text
    await ts_env.client.get_workflow_handle(f"{SHOP}.aq").terminate("test over")


# ---------------------------------------------------------------- end to end


async def _run(pool, ts_env, spec: AcquireSpec, tz: str, now: datetime):
    queue = f"aq-{uuid.uuid4().hex[:6]}"
    async with build_worker(ts_env.client, pool, Settings(SLUICE_PLATFORM_TZ=tz), task_queue=queue):
        plan, handle = await start_campaign(pool, ts_env.client, spec, task_queue=queue, now=now)
        result = await asyncio.wait_for(handle.result(), timeout=180)
    assert result.state == "completed"
    return plan.campaign_db_id


async def test_a_campaign_reaches_non_customers_with_the_gift_and_the_cycle_holds_the_next_one(clean_db, ts_env):
    pool = clean_db
    now = await ts_env.get_current_time()
    tz = pick_zone(now)
    today = local_day(now, tz)
    await build(pool, local_instant(today, datetime.min.time(), tz), tz)
    eligible = RAW["industry_active"] - set(DROPPED)
    assert eligible == {1, 4, 9}
    first = AcquireSpec.model_validate(_spec(campaign_id="first", start_date=today.isoformat(), end_date=today.isoformat()))

    [preview] = (await preview_campaign(pool, first, platform_tz=tz, now=now)).phases
    assert (preview.matched, preview.would_send) == (len(RAW["industry_active"]), len(eligible))
    assert preview.removed == {A.EXCLUDED_MEMBER: 1, A.EXCLUDED_BUYER: 2}
    assert preview.rules == dict.fromkeys(preview.removed, "R-AQ-1")

    cid = await _run(pool, ts_env, first, tz, now)
    ledger = await pool.fetch("SELECT consumer_id, state, channel, benefit_id FROM deliveries WHERE campaign_id = $1", cid)
    assert {r["consumer_id"]: (r["state"], r["channel"], r["benefit_id"]) for r in ledger} == dict.fromkeys(
        eligible, ("sent", "sms", GIFT))
    refresh = await pool.fetchrow("SELECT matched, eligible, excluded FROM audience_refreshes WHERE campaign_id = $1", cid)
    assert (refresh["matched"], refresh["eligible"], refresh["excluded"]) == (preview.matched, len(eligible), preview.removed)
    assert len(ledger) == preview.would_send
    outbox = {r["consumer_id"]: (r["address"], r["body"]) for r in await pool.fetch(
        "SELECT m.consumer_id, m.address, o.bodies[m.i] AS body FROM outbox o,"
        " unnest(o.consumer_ids, o.addresses) WITH ORDINALITY AS m(consumer_id, address, i) WHERE o.campaign_id = $1",
        cid)}  # fmt: skip
    # Non-customers at the platform's phone, the shop's customer at the shop's; every message tells the gift.
    assert {c: a for c, (a, _) in outbox.items()} == {1: platform_phone(1), 4: platform_phone(4), 9: shop_phone(9)}
    assert all(f"Join our membership for {GIFT_TITLE}" in body for _, body in outbox.values()), outbox

    # R-AQ-3: a second campaign over the next 7 days finds everyone held by the repeat cycle until the 7th day.
    second = AcquireSpec.model_validate(_spec(campaign_id="second", start_date=(today + D).isoformat(),
                                              end_date=(today + 7 * D).isoformat()))  # fmt: skip
    cid2 = await _run(pool, ts_env, second, tz, await ts_env.get_current_time())
    rows = await pool.fetch("SELECT consumer_id, day, state, reason FROM deliveries WHERE campaign_id = $1", cid2)
    for c in eligible:
        mine = {r["day"]: (r["state"], r["reason"]) for r in rows if r["consumer_id"] == c}
        held = {today + i * D: ("suppressed", A.SUPPRESS_TEMPLATE) for i in range(1, 7)}
        assert mine == {**held, today + 7 * D: ("sent", None)}, (c, mine)


async def test_a_join_gift_that_lapses_stops_the_sending(clean_db):
    """R-BEN-1: the message exists for the gift; once no gift is in force, the slice sends nothing more."""
    pool = clean_db
    await build(pool, SNAP, gift=False)
    cid = await make_campaign(pool, SHOP, "lapse")
    inp = _refresh_input(cid, "industry_active")
    refreshed = await ActivityEnvironment().run(AudienceActivities(pool, parts=1).refresh_audience, inp)
    now = datetime.now(UTC)
    await add_gift(pool, now - 30 * D, now - timedelta(minutes=1))  # ended a minute ago
    send = SendActivities(pool, ChannelRegistry.outbox_for_all(pool), platform_timezone="Asia/Shanghai")
    slice_inp = SendSliceInput(
        campaign_db_id=cid, shop_id=SHOP, phase_index=0, day=SNAP.date(), channel="sms", text="{{ benefit }}",
        text_is_template=True, benefit=JOIN_GIFT, template_cap=None, seq_lo=0, seq_hi=refreshed.seq_end, budget=100,
        decided_at=now, window_end=now + timedelta(hours=1), chunk_size=2, reaches_non_customers=True,
    )  # fmt: skip
    result = await ActivityEnvironment().run(send.send_slice, slice_inp)
    assert result.stopped_reason == A.SUPPRESS_BENEFIT and result.sent == 0
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1", cid) == 0
    # With a gift in force the same slice sends to everyone.
    await add_gift(pool, now - D, now + D, "fresh")
    result = await ActivityEnvironment().run(send.send_slice, slice_inp)
    assert result.stopped_reason is None and result.sent == len(RAW["industry_active"] - set(DROPPED))
