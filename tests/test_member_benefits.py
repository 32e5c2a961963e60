"""R-RP-4 member benefits: each recipient is told the shop's benefit for their membership.

Pure: which of the shop's benefits is used (the newest in force) and who gets which (members the
member offer, the others the join gift), without a database. End to end, on the time-skipping server
with a real worker and Postgres: a hand-built cross-sell shop whose audience holds members and
non-members, each sent exactly their benefit's text, the ledger and the day report naming the benefit,
the join gift's limited coupon held per delivery and given back when unclaimed; a custom audience with
the member discount (everyone told it) or a member coupon with less stock than recipients (never
oversold). Missing, expired or ending-too-soon benefits are refused at start, 422 naming R-RP-4.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sluice.activities.report import BENEFIT_COUNT
from sluice.api.service import start_campaign
from sluice.kinds.repurchase import CROSS_SELL_TEXT, MEMBER_BENEFITS, Benefit, RepurchaseSpec
from sluice.schemas.activities import SUPPRESS_BENEFIT
from sluice.schemas.benefits import MEMBER_OFFER, BenefitChoice, BenefitPlan, MemberBenefit, MemberBenefitKind, pick_benefit
from sluice.schemas.settings import Settings
from sluice.workers.worker import build_worker
from sluice.workflows.calendar import local_day, local_instant

from tests.api_helpers import client, running_app, shop_key
from tests.factories import make_shop
from tests.test_crash import pick_zone

SHOP = "mb"
SHAMPOO, CONDITIONER, FILLER = 21, 22, 23
MEMBERS, OTHERS = [1, 3, 5], [2, 4, 6]
K = MemberBenefitKind
T0 = datetime(2025, 6, 1, 10, tzinfo=UTC)


def _b(bid: str, kind: K, start_days: float, end_days: float, coupon: str | None = None) -> MemberBenefit:
    return MemberBenefit(bid, kind, f"title of {bid}", T0 + timedelta(days=start_days), T0 + timedelta(days=end_days), coupon)


# ------------------------------------------------------------------------------------------- pure


def test_the_newest_benefit_in_force_is_used():
    old = _b("old", K.member_discount, -10, 30)
    new = _b("new", K.member_coupon, -1, 30, "c1")
    ended = _b("ended", K.member_discount, -2, -0.5)
    later = _b("later", K.member_discount, 0.5, 30)
    gift = _b("gift", K.join_gift, -1, 30)
    rows = [old, new, ended, later, gift]
    assert pick_benefit(rows, MEMBER_OFFER, T0, T0) == new
    assert pick_benefit(rows, [K.member_discount], T0, T0) == old  # the ended and the not yet started are not in force
    assert pick_benefit(rows, [K.join_gift], T0, T0) == gift
    assert pick_benefit(rows, [K.join_gift], T0 + timedelta(days=30), T0 + timedelta(days=30)) is None  # ends at valid_to
    # Through a window: the benefit must last to its end.
    assert pick_benefit([_b("short", K.join_gift, -1, 0.05)], [K.join_gift], T0, T0 + timedelta(hours=2)) is None
    # Same start: the larger id, whatever the order given.
    twin = _b("twin", K.member_discount, -10, 30)
    for rows in ([twin, old], [old, twin]):
        assert pick_benefit(rows, [K.member_discount], T0, T0) == twin


def test_members_get_the_member_offer_and_the_others_the_join_gift():
    plan = BenefitPlan(members=list(MEMBER_OFFER), non_members=[K.join_gift], hours=2)
    offer, gift = _b("md", K.member_discount, -1, 30), _b("jg", K.join_gift, -1, 30, "gift")
    choice = BenefitChoice.of(plan, [gift, offer], T0)
    assert choice.per_recipient({1: True, 2: False, 3: None}) == {1: offer, 2: gift, 3: gift}
    # Without a join gift in force the others get nothing (the send suppresses them).
    assert BenefitChoice.of(plan, [offer], T0).per_recipient({1: True, 2: False}) == {1: offer, 2: None}
    assert offer.text() == "Member price: title of md"
    assert gift.text() == "Join our membership for title of jg"


def test_each_spec_benefit_names_its_member_benefit_kinds():
    spec = RepurchaseSpec.model_validate({
        "kind": "K-REPURCHASE", "shop_id": SHOP, "campaign_id": "c", "audience": "cross_sell",
        "benefit": "member_benefit", "coupon_ids": ["cond3"], "offer_hours": 3})
    plan = spec.benefit_plan()
    assert (set(plan.members), plan.non_members, plan.hours, plan.coupon_ids) == (
        {K.member_discount, K.member_coupon}, [K.join_gift], 3, ["cond3"])
    assert set(MEMBER_BENEFITS) == {Benefit.member_benefit, Benefit.member_discount, Benefit.member_coupon}
    # A custom audience's pick is told to everyone.
    for b in (Benefit.member_discount, Benefit.member_coupon):
        assert MEMBER_BENEFITS[b] == ((K(b.value),), (K(b.value),))


async def test_the_table_takes_exactly_the_python_kinds(clean_db):
    pool = clean_db
    await make_shop(pool, SHOP, "UTC")
    for kind in K:
        await pool.execute("INSERT INTO member_benefits (benefit_id, shop_id, kind, title, valid_from, valid_to)"
                           " VALUES ($1, $2, $1, 't', $3, $4)", kind.value, SHOP, T0, T0 + timedelta(days=1))
    with pytest.raises(Exception, match="check constraint"):
        await pool.execute("INSERT INTO member_benefits (benefit_id, shop_id, kind, title, valid_from, valid_to)"
                           " VALUES ('x', $1, 'vip_lounge', 't', $2, $3)", SHOP, T0, T0 + timedelta(days=1))


# ------------------------------------------------------------------------------------ end to end


async def _shop(pool, now: datetime, *, gift_stock: int = 100) -> str:
    """A shop where it is afternoon. Its cross-sell (R-RP-2): shampoo and conditioner are bought together
    (customers 101..103), customers 1..6 bought shampoo without conditioner, 201..210 bought a filler
    (lift of the pair 19 x 3 / (9 x 3) = 2.1). 1, 3 and 5 are members. Member benefits: a member
    discount in force, an older member coupon (not the newest: not used), an ended member discount, and
    a join gift handing out the limited coupon `gift`. Everyone visited the shop yesterday."""
    tz = pick_zone(now)
    await make_shop(pool, SHOP, tz)
    snapshot = local_instant(local_day(now, tz), datetime.min.time(), tz)
    await pool.execute(
        "INSERT INTO products (product_id, shop_id, title, category, price) VALUES"
        " ($1, $4, 'Shampoo', 'hair', 9), ($2, $4, 'Conditioner', 'hair care', 9), ($3, $4, 'Filler', 'misc', 1)",
        SHAMPOO, CONDITIONER, FILLER, SHOP)
    await pool.execute(
        "INSERT INTO coupons (coupon_id, shop_id, name, valid_from, valid_to, stock, product_id) VALUES"
        " ('cond3', $1, '3 off conditioner', $2, $3, 50, $4), ('gift', $1, 'travel kit', $2, $3, $5, NULL),"
        " ('mcoup', $1, '5 off', $2, $3, 2, NULL)",
        SHOP, now - timedelta(days=30), now + timedelta(days=30), CONDITIONER, gift_stock)
    baskets = {**{c: [SHAMPOO] for c in MEMBERS + OTHERS}, **{c: [SHAMPOO, CONDITIONER] for c in (101, 102, 103)},
               **{c: [FILLER] for c in range(201, 211)}}
    await pool.executemany("INSERT INTO consumers (consumer_id) VALUES ($1) ON CONFLICT DO NOTHING", [(c,) for c in baskets])
    await pool.executemany(
        "INSERT INTO shop_customers (shop_id, consumer_id, nick, chat_id, is_member) VALUES ($1, $2, $3, $4, $5)",
        [(SHOP, c, f"Mei{c}", f"tb_{c}", c in MEMBERS) for c in baskets])
    await pool.executemany(
        "INSERT INTO orders (order_id, shop_id, consumer_id, created_at, paid_at, amount, status)"
        " VALUES ($1, $2, $1, $3, $3, 10, 'paid')", [(c, SHOP, snapshot - timedelta(days=20)) for c in baskets])
    await pool.executemany("INSERT INTO order_items (order_id, product_id, quantity, price) VALUES ($1, $2, 1, 9)",
                           [(c, p) for c, items in baskets.items() for p in items])
    await pool.executemany(
        "INSERT INTO behaviour_events (shop_id, consumer_id, kind, occurred_at) VALUES ($1, $2, 'visit', $3)",
        [(SHOP, c, snapshot - timedelta(days=1)) for c in MEMBERS + OTHERS])
    await pool.executemany(
        "INSERT INTO member_benefits (benefit_id, shop_id, kind, title, valid_from, valid_to, coupon_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [("md10", SHOP, "member_discount", "10% off everything", now - timedelta(days=1), now + timedelta(days=30), None),
         ("mc-old", SHOP, "member_coupon", "5 off your next order", now - timedelta(days=9), now + timedelta(days=30),
          "mcoup"),
         ("md-ended", SHOP, "member_discount", "20% off", now - timedelta(days=20), now - timedelta(days=2), None),
         ("kit", SHOP, "join_gift", "a free travel kit", now - timedelta(days=1), now + timedelta(days=30), "gift")])
    return tz


def _spec(**over) -> RepurchaseSpec:
    body = {"kind": "K-REPURCHASE", "shop_id": SHOP, "campaign_id": "xs", "audience": "cross_sell",
            "benefit": "member_benefit", "coupon_ids": ["cond3"], "offer_hours": 2, **over}
    return RepurchaseSpec.model_validate(body)


def _custom(benefit: str) -> RepurchaseSpec:
    return _spec(campaign_id="own", audience="custom", benefit=benefit, coupon_ids=[], text="Hi {{ name }}, {{ benefit }}",
                 custom_filter={"op": "behaviour", "kind": "visit", "within_days": 30, "at_least": 1})


async def _run(pool, ts_env, spec: RepurchaseSpec, tz: str, now: datetime) -> int:
    queue = f"mb-{uuid.uuid4().hex[:6]}"
    async with build_worker(ts_env.client, pool, Settings(SLUICE_PLATFORM_TZ=tz), task_queue=queue):
        plan, handle = await start_campaign(pool, ts_env.client, spec, task_queue=queue, now=now)
        result = await asyncio.wait_for(handle.result(), timeout=120)
    assert result.state == "completed"
    return plan.campaign_db_id


async def _texts(pool, cid: int) -> dict[int, str]:
    return dict(await pool.fetch(
        "SELECT m.consumer_id, o.bodies[m.i] FROM outbox o, unnest(o.consumer_ids) WITH ORDINALITY AS m(consumer_id, i)"
        " WHERE o.campaign_id = $1", cid))


async def _report(pool, cid: int) -> dict:
    return await pool.fetchval("SELECT counts FROM campaign_day_reports WHERE campaign_id = $1", cid)


async def test_cross_sell_members_get_the_member_offer_and_the_others_the_join_gift(clean_db, ts_env):
    pool = clean_db
    now = await ts_env.get_current_time()
    tz = await _shop(pool, now)
    cid = await _run(pool, ts_env, _spec(), tz, now)

    pushed = CROSS_SELL_TEXT.replace("{{ product }}", "Conditioner")
    member_text = pushed.replace("{{ benefit }}", "Member price: 10% off everything")
    other_text = pushed.replace("{{ benefit }}", "Join our membership for a free travel kit")
    assert await _texts(pool, cid) == {**dict.fromkeys(MEMBERS, member_text), **dict.fromkeys(OTHERS, other_text)}
    # The ledger names each delivery's benefit; the day report counts them per kind.
    ledger = dict(await pool.fetch("SELECT consumer_id, benefit_id FROM deliveries WHERE campaign_id = $1 AND state = 'sent'",
                                   cid))
    assert ledger == {**dict.fromkeys(MEMBERS, "md10"), **dict.fromkeys(OTHERS, "kit")}
    report = await _report(pool, cid)
    assert report[f"{BENEFIT_COUNT}member_discount"] == 3 and report[f"{BENEFIT_COUNT}join_gift"] == 3
    assert f"{BENEFIT_COUNT}member_coupon" not in report
    # The join gift's coupon was held per delivery (claims), then given back unclaimed; the product's
    # exclusive coupon only named the product: its stock was never taken.
    claims = await pool.fetch("SELECT consumer_id, coupon_id, product_id, state FROM claims WHERE campaign_id = $1", cid)
    assert sorted((r["consumer_id"], r["coupon_id"], r["product_id"], r["state"]) for r in claims) == [
        (c, "gift", CONDITIONER, "expired") for c in OTHERS]
    assert report["offers_expired"] == 3
    stock = dict(await pool.fetch("SELECT coupon_id, stock FROM coupons"))
    assert stock == {"cond3": 50, "gift": 100, "mcoup": 2}


@pytest.mark.parametrize(("benefit", "sent", "text"), [
    ("member_discount", MEMBERS + OTHERS, "Member price: 10% off everything"),
    # The member coupon hands out `mcoup`, 2 units for 6 recipients: the first two in consumer order.
    ("member_coupon", [1, 2], "Member coupon: 5 off your next order"),
])
async def test_custom_tells_every_recipient_the_picked_benefit(clean_db, ts_env, benefit, sent, text):
    pool = clean_db
    now = await ts_env.get_current_time()
    tz = await _shop(pool, now)
    cid = await _run(pool, ts_env, _custom(benefit), tz, now)
    assert await _texts(pool, cid) == {c: f"Hi Mei{c}, {text}" for c in sent}
    rows = await pool.fetch("SELECT consumer_id, state, reason, benefit_id FROM deliveries WHERE campaign_id = $1", cid)
    bid = "md10" if benefit == "member_discount" else "mc-old"
    assert {r["consumer_id"]: (r["state"], r["reason"], r["benefit_id"]) for r in rows} == {
        c: ("sent", None, bid) if c in sent else ("suppressed", SUPPRESS_BENEFIT, None) for c in MEMBERS + OTHERS}
    held = await pool.fetchval("SELECT count(*) FROM claims WHERE campaign_id = $1 AND coupon_id = 'mcoup'", cid)
    assert held == (2 if benefit == "member_coupon" else 0)
    assert (await _report(pool, cid))[f"{BENEFIT_COUNT}{benefit}"] == len(sent)
    assert await pool.fetchval("SELECT stock FROM coupons WHERE coupon_id = 'mcoup'") == 2  # given back after the window


@pytest.mark.parametrize(("change", "what"), [
    ("DELETE FROM member_benefits WHERE kind = 'join_gift'", "no join gift in force"),
    ("UPDATE member_benefits SET valid_to = now() - interval '1 hour' WHERE benefit_id = 'kit'", "no join gift in force"),
    ("UPDATE member_benefits SET valid_to = now() + interval '1 hour' WHERE benefit_id = 'kit'", "ends before"),
    ("DELETE FROM member_benefits WHERE kind <> 'join_gift'", "no member discount or member coupon in force"),
    ("UPDATE member_benefits SET valid_from = now() + interval '1 day' WHERE kind = 'join_gift'", "no join gift in force"),
])
async def test_a_missing_or_expired_benefit_is_refused_at_start_through_the_api(clean_db, ts_env, change, what):
    pool = clean_db
    now = datetime.now(UTC)
    tz = await _shop(pool, now)
    await pool.execute(change)
    key = await shop_key(pool, SHOP, tz)
    async with running_app(pool, ts_env, worker=False) as app, client(app, key) as http:
        res = await http.post("/campaigns", json=_spec().model_dump(mode="json", exclude_none=True))
    assert res.status_code == 422, res.text
    detail = res.json()["detail"]
    assert [(d["field"], d["rule"]) for d in detail] == [("benefit", "R-RP-4")], detail
    assert what in detail[0]["message"], detail
    assert await pool.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_custom_benefit_must_exist_and_its_coupon_be_in_stock(clean_db, ts_env):
    pool = clean_db
    now = datetime.now(UTC)
    tz = await _shop(pool, now)
    key = await shop_key(pool, SHOP, tz)
    async with running_app(pool, ts_env, worker=False) as app, client(app, key) as http:
        await pool.execute("DELETE FROM member_benefits WHERE kind = 'member_discount'")
        res = await http.post("/campaigns", json=_custom("member_discount").model_dump(mode="json", exclude_none=True))
        assert res.status_code == 422 and res.json()["detail"][0]["rule"] == "R-RP-4", res.text
        assert "no member discount in force" in res.json()["detail"][0]["message"]
        await pool.execute("UPDATE coupons SET stock = 0 WHERE coupon_id = 'mcoup'")
        res = await http.post("/campaigns", json=_custom("member_coupon").model_dump(mode="json", exclude_none=True))
        assert res.status_code == 422, res.text
        assert [(d["field"], d["rule"]) for d in res.json()["detail"]] == [("benefit", "R-BEN-1")]
