"""R-RP-3: the platform's industry-value audience, recipients who are not customers of the shop, and tags.

Hand-built shops where each consumer's membership is known: shops A and B of one industry, C of
another. The industry-value audience is who the definition says (audiences/industry.py); the
refresh and the send path reach a consumer without a shop row through the platform's row
(contact and opt-outs, R-EXC-1), while a consumer's shop row, when there is one, decides alone;
tags narrow any audience to the shop's customers holding one of them. A K-REPURCHASE custom
audience joined with the industry-value audience is previewed, then run: the preview is the run.
Bad tags and misplaced fields are refused naming the field and R-RP-3.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from pydantic import TypeAdapter, ValidationError
from sluice.activities.audience import AudienceActivities, checked_refresh_sql
from sluice.activities.send import SendActivities
from sluice.api.service import preview_campaign, start_campaign
from sluice.audiences import AUDIENCES, CUSTOM, INDUSTRY_VALUE, TAGS, WITH_INDUSTRY_VALUE, reaches_non_customers
from sluice.audiences.industry import INDUSTRY_VALUE_DAYS, INDUSTRY_VALUE_MIN_AMOUNT, INDUSTRY_VALUE_MIN_ORDERS
from sluice.audiences.tags import MAX_TAGS
from sluice.channels.registry import ChannelRegistry
from sluice.kinds import CampaignSpec
from sluice.kinds.base import Shop
from sluice.kinds.repurchase import Repurchase, RepurchaseSpec
from sluice.schemas import activities as A
from sluice.schemas.activities import RefreshAudienceInput, SendSliceInput
from sluice.schemas.rules import error_details
from sluice.schemas.settings import Settings
from sluice.workers.worker import build_worker
from sluice.workflows.calendar import local_day, local_instant
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from tests.factories import make_campaign, make_shop
from tests.test_crash import pick_zone

SHOP, SAME_INDUSTRY, OTHER_INDUSTRY = "iv-a", "iv-b", "iv-c"
D = timedelta(days=1)
US = timedelta(microseconds=1)
WINDOW = INDUSTRY_VALUE_DAYS * D
HALF = Decimal(INDUSTRY_VALUE_MIN_AMOUNT) / 2
assert INDUSTRY_VALUE_MIN_ORDERS == 2, "the orders below are written for two orders"

# consumer -> paid orders (shop, age before the snapshot, amount[, status]); the comment says why in or out.
ORDERS: dict[int, list[tuple]] = {
    1: [(SAME_INDUSTRY, 10 * D, HALF), (SHOP, 20 * D, HALF)],  # in: a customer of A, value over A and B
    2: [(SAME_INDUSTRY, 10 * D, HALF - 50), (SAME_INDUSTRY, 40 * D, HALF + 50)],  # in: exactly the minimum amount
    3: [(SAME_INDUSTRY, 5 * D, 400), (SAME_INDUSTRY, 6 * D, 400)],  # in: opted out at the platform
    4: [(OTHER_INDUSTRY, 5 * D, 900)] * 3,  # out: another industry only
    5: [(SAME_INDUSTRY, 5 * D, 900)],  # out: one order
    6: [(SAME_INDUSTRY, 5 * D, HALF - Decimal("0.01")), (SAME_INDUSTRY, 6 * D, HALF)],  # out: a cent short
    7: [(SAME_INDUSTRY, 5 * D, 400), (SAME_INDUSTRY, 6 * D, 400, "refunded")],  # out: one paid order
    8: [(SAME_INDUSTRY, WINDOW, HALF), (SAME_INDUSTRY, US, HALF)],  # in: the window's two ends
    9: [(SAME_INDUSTRY, WINDOW + US, HALF), (SAME_INDUSTRY, 0 * D, HALF), (SAME_INDUSTRY, -D, HALF)],  # out: outside
    10: [(SAME_INDUSTRY, 5 * D, 400), (SAME_INDUSTRY, 6 * D, 400)],  # in: no platform contact for the channel
    11: [(SAME_INDUSTRY, 5 * D, 400), (SAME_INDUSTRY, 6 * D, 400)],  # in: blacklisted by A
    12: [(SAME_INDUSTRY, 5 * D, 400), (SAME_INDUSTRY, 6 * D, 400)],  # in: opted out of A's channel
    13: [(SAME_INDUSTRY, 5 * D, 400), (SAME_INDUSTRY, 6 * D, 400)],  # in: opted out at the platform, A's row fine
    14: [(SAME_INDUSTRY, 5 * D, 400), (SAME_INDUSTRY, 6 * D, 400)],  # in: no platform row at all
    15: [(SAME_INDUSTRY, 5 * D, 400, "pending"), (SAME_INDUSTRY, 6 * D, 400, "pending")],  # out: not paid
}
INDUSTRY_VALUE_OF_A = {1, 2, 3, 8, 10, 11, 12, 13, 14}
# A's customers: some of the industry-value consumers, and the merchant's own (101..103).
CUSTOMERS = {1: {"tags": ["vip"]}, 11: {"blacklisted": True}, 12: {"unsub": True}, 13: {},
             101: {"is_member": True, "tags": ["vip", "skincare"]}, 102: {"is_member": True}, 103: {"tags": ["vip"]}}
NO_PLATFORM_ROW = {14}
PLATFORM_OPT_OUT = {3, 13}
NO_PLATFORM_CONTACT = {10}
CHANNELS = ("chat", "sms", "email", "inbox")


def shop_address(channel: str, c: int) -> str:
    return {"chat": f"tb_{c}", "sms": f"138{c:08d}", "email": f"shop{c}@example.com", "inbox": str(c)}[channel]


def platform_address(channel: str, c: int) -> str:
    return {"chat": f"pf_{c}", "sms": f"139{c:08d}", "email": f"pf{c}@example.com", "inbox": str(c)}[channel]


async def build(pool, snapshot: datetime, channel: str, tz: str = "Asia/Shanghai") -> None:
    await make_shop(pool, SHOP, tz, industry="beauty")
    await make_shop(pool, SAME_INDUSTRY, tz, industry="beauty")
    await make_shop(pool, OTHER_INDUSTRY, tz, industry="food")
    everyone = sorted({*ORDERS, *CUSTOMERS} - NO_PLATFORM_ROW)
    unsub = f"unsub_{channel}"
    # The platform's rows: contacts for every channel, but 10 has none usable on `channel`.
    no_contact = {"chat": {"chat_id": None}, "sms": {"phone_valid": False}, "email": {"email": None}, "inbox": {}}[channel]
    platform = []
    for c in everyone:
        row = {"chat_id": platform_address("chat", c), "phone": platform_address("sms", c),
               "email": platform_address("email", c), "phone_valid": True, unsub: c in PLATFORM_OPT_OUT}
        platform.append(tuple({**row, **(no_contact if c in NO_PLATFORM_CONTACT else {})}.values()))
    await pool.executemany(
        f"INSERT INTO consumers (consumer_id, chat_id, phone, email, phone_valid, {unsub}) VALUES ($1, $2, $3, $4, $5, $6)",
        [(c, *row) for c, row in zip(everyone, platform, strict=True)])
    for c, cols in CUSTOMERS.items():
        await pool.execute(
            f"INSERT INTO shop_customers (shop_id, consumer_id, chat_id, phone, email, is_member, blacklisted, {unsub}, tags)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            SHOP, c, shop_address("chat", c), shop_address("sms", c), shop_address("email", c),
            cols.get("is_member", False), cols.get("blacklisted", False), cols.get("unsub", False),
            cols.get("tags", []))  # fmt: skip
    rows = []
    for c, orders in ORDERS.items():
        for shop, age, amount, *status in orders:
            rows.append((len(rows) + 1, shop, c, snapshot - age, amount, status[0] if status else "paid"))
    await pool.executemany(
        "INSERT INTO orders (order_id, shop_id, consumer_id, created_at, amount, status) VALUES ($1, $2, $3, $4, $5, $6)", rows
    )


def expected_reasons(channel: str) -> dict[int, str | None]:
    """Each industry-value consumer's refresh verdict on A: None (eligible) or the R-EXC-1 reason."""
    return {
        1: None,
        2: None,  # not a customer: reached at the platform's address
        3: A.SUPPRESS_UNSUBSCRIBED,  # the platform's opt-out, no shop row
        8: None,
        10: None if channel == "inbox" else A.SUPPRESS_NO_CONTACT,  # the inbox needs no contact
        11: A.SUPPRESS_BLACKLISTED,  # the shop's row decides
        12: A.SUPPRESS_UNSUBSCRIBED,  # the shop's opt-out
        13: None,  # opted out at the platform, but A's row exists and decides: A's address
        14: A.SUPPRESS_NO_CONTACT,  # neither a shop row nor a platform row
    }


SNAP = datetime(2025, 6, 1, tzinfo=UTC) - timedelta(hours=8)  # 00:00 in Asia/Shanghai


async def members(pool, sql: str, shop: str) -> set[int]:
    return {r[0] for r in await pool.fetch(f"SELECT consumer_id FROM ({sql}) a", shop, SNAP, SNAP)}


async def test_the_industry_value_audience_is_who_the_definition_says(clean_db):
    await build(clean_db, SNAP, "chat")
    sql = AUDIENCES[INDUSTRY_VALUE].sql
    assert await members(clean_db, sql, SHOP) == INDUSTRY_VALUE_OF_A
    assert await members(clean_db, sql, SAME_INDUSTRY) == INDUSTRY_VALUE_OF_A  # the industry's, not the shop's
    assert await members(clean_db, sql, OTHER_INDUSTRY) == {4}
    assert AUDIENCES[INDUSTRY_VALUE].reaches_non_customers


def _refresh_input(cid: int, audience: str, channel: str, **params) -> RefreshAudienceInput:
    return RefreshAudienceInput(
        campaign_db_id=cid, shop_id=SHOP, kind="K-REPURCHASE", phase_index=0, audience=audience, audience_params=params,
        channel=channel, day=SNAP.date(), snapshot_at=SNAP, campaign_started_at=SNAP,
    )  # fmt: skip


async def refresh(pool, inp: RefreshAudienceInput):
    result = await ActivityEnvironment().run(AudienceActivities(pool, parts=2).refresh_audience, inp)
    rows = await pool.fetch("SELECT consumer_id FROM audience_snapshots WHERE campaign_id = $1", inp.campaign_db_id)
    return result, {r[0] for r in rows}


@pytest.mark.parametrize("channel", CHANNELS)
async def test_non_customers_are_reached_through_the_platform_row_with_their_exclusions(clean_db, channel):
    pool = clean_db
    await build(pool, SNAP, channel)
    cid = await make_campaign(pool, SHOP, "iv")
    result, snapshot = await refresh(pool, _refresh_input(cid, INDUSTRY_VALUE, channel))
    verdicts = expected_reasons(channel)
    eligible = {c for c, why in verdicts.items() if why is None}
    assert snapshot == eligible
    assert (result.matched, result.eligible) == (len(INDUSTRY_VALUE_OF_A), len(eligible))
    assert result.excluded == {why: sum(1 for w in verdicts.values() if w == why)
                               for why in set(verdicts.values()) - {None}}  # fmt: skip

    # After the 00:00 snapshot: 8 opts out at the platform, 2's platform address moves (R-EXC-1 at send time).
    unsub = f"unsub_{channel}"
    await pool.execute(f"UPDATE consumers SET {unsub} = true WHERE consumer_id = 8")
    await pool.execute("UPDATE consumers SET chat_id = 'pf_2_new', phone = '13900000099', email = 'new2@example.com'"
                       " WHERE consumer_id = 2")  # fmt: skip
    now = datetime.now(UTC)
    send = SendActivities(pool, ChannelRegistry.outbox_for_all(pool), platform_timezone="Asia/Shanghai")
    inp = SendSliceInput(
        campaign_db_id=cid, shop_id=SHOP, phase_index=0, day=SNAP.date(), channel=channel, text="hello",
        template_cap=None, seq_lo=0, seq_hi=result.seq_end, budget=100, decided_at=now,
        window_end=now + timedelta(hours=1), chunk_size=3,
        reaches_non_customers=reaches_non_customers(INDUSTRY_VALUE, {}),
    )  # fmt: skip
    sent = await ActivityEnvironment().run(send.send_slice, inp)

    ledger = dict(await pool.fetch("SELECT consumer_id, coalesce(reason, state) FROM deliveries WHERE campaign_id = $1", cid))
    assert ledger == {c: A.SUPPRESS_UNSUBSCRIBED if c == 8 else "sent" for c in eligible}
    assert sent.sent == len(eligible) - 1
    outbox = dict(await pool.fetch("SELECT consumer_id, address FROM outbox_messages WHERE campaign_id = $1", cid))
    moved = {"chat": "pf_2_new", "sms": "13900000099", "email": "new2@example.com", "inbox": "2"}[channel]
    # A customer at the shop's address (13 too, whatever the platform says); the non-customer at the platform's.
    assert outbox == {c: moved if c == 2 else (shop_address if c in CUSTOMERS else platform_address)(channel, c)
                      for c in eligible - {8}}  # fmt: skip
    assert 2 in outbox and 3 not in outbox


async def test_reconcile_settles_a_non_customers_delivery(clean_db):
    """A delivery to a non-customer left `reserved` (its answer lost) is settled like any other: the provider
    (the outbox) never got it, so it fails and gives its caps back, instead of staying reserved for ever."""
    from sluice.schemas.activities import ReconcileInput

    pool = clean_db
    await build(pool, SNAP, "chat")
    cid = await make_campaign(pool, SHOP, "rec")
    await pool.execute(
        "INSERT INTO deliveries (campaign_id, phase, consumer_id, day, channel, shop_id, template_group, fatigue_day,"
        " state, decided_at) VALUES ($1, 0, 2, $2, 'chat', $3, '', $2, 'reserved', now())", cid, SNAP.date(), SHOP)
    await pool.execute("INSERT INTO fatigue_day (consumer_id, day, sent, shops, per_shop) VALUES (2, $1, 1, 1, $2)",
                       SNAP.date(), {SHOP: 1})  # fmt: skip
    send = SendActivities(pool, ChannelRegistry.outbox_for_all(pool), platform_timezone="Asia/Shanghai")
    inp = ReconcileInput(campaign_db_id=cid, shop_id=SHOP, channel="chat")
    res = await ActivityEnvironment().run(send.reconcile_pending, inp)
    assert res.failed == 1
    assert await pool.fetchval("SELECT state FROM deliveries WHERE campaign_id = $1", cid) == "failed"
    assert await pool.fetchval("SELECT sent FROM fatigue_day WHERE consumer_id = 2") == 0


async def test_tags_narrow_any_audience_to_the_customers_holding_one(clean_db):
    pool = clean_db
    await build(pool, SNAP, "chat")
    cid = await make_campaign(pool, SHOP, "tags")
    is_member = {"op": "eq", "field": "is_member", "value": True}
    cases = [
        # (audience, params, snapshot)
        ("shop_all", {}, {1, 11, 12, 13, 101, 102, 103} - {11, 12}),
        ("shop_all", {TAGS: ["vip"]}, {1, 101, 103}),
        ("shop_all", {TAGS: ["skincare", "nobody-has-it"]}, {101}),
        ("shop_all", {TAGS: ["nobody-has-it"]}, set()),
        # the industry-value audience: its non-customers hold no tag of the shop
        (INDUSTRY_VALUE, {TAGS: ["vip"]}, {1}),
        # an audience with its own parameters: the tags are bound after them (here no coupon, nobody)
        ("repurchase_cycle", {"coupon_ids": [], TAGS: ["vip"]}, set()),
        ("cross_sell", {"coupon_ids": [], TAGS: ["vip"]}, set()),
        # the merchant's filter joined with the industry-value audience (R-RP-3), then the tags
        (CUSTOM, {"filter": is_member}, {101, 102}),
        (CUSTOM, {"filter": is_member, WITH_INDUSTRY_VALUE: True}, {101, 102} | {1, 2, 8, 13}),
        (CUSTOM, {"filter": is_member, WITH_INDUSTRY_VALUE: True, TAGS: ["vip"]}, {101, 1}),
        (CUSTOM, {"filter": {"op": "tags", "match": "none", "value": ["vip"]}, TAGS: ["skincare", "vip"]}, set()),
    ]
    for audience, params, expected in cases:
        _, snapshot = await refresh(pool, _refresh_input(cid, audience, "chat", **params))
        assert snapshot == expected, (audience, params)


def test_which_audiences_reach_non_customers():
    assert reaches_non_customers(INDUSTRY_VALUE, {})
    assert reaches_non_customers(CUSTOM, {WITH_INDUSTRY_VALUE: True})
    assert not reaches_non_customers(CUSTOM, {})
    assert not reaches_non_customers(CUSTOM, {WITH_INDUSTRY_VALUE: "yes"})
    # The platform's audiences: the industry-value one and K-ACQUIRE's (R-AQ-1); no other.
    from sluice.audiences import acquire

    wide = {INDUSTRY_VALUE, *acquire.AUDIENCES}
    assert all(reaches_non_customers(name, {}) for name in wide)
    assert not any(reaches_non_customers(name, {}) for name in AUDIENCES if name not in wide)
    assert not reaches_non_customers("no-such-audience", {})


def test_an_audience_without_the_flag_keeps_the_inner_join_of_the_shops_customers():
    """The hot path is unchanged: no platform row, no LEFT JOIN (the benchmark's statement)."""
    plain = checked_refresh_sql(_refresh_input(1, "shop_all", "chat")).sql
    assert "JOIN shop_customers c ON c.shop_id = $1 AND c.consumer_id = m.consumer_id" in plain
    assert "LEFT JOIN shop_customers" not in plain and "consumers pc" not in plain
    wide = checked_refresh_sql(_refresh_input(1, INDUSTRY_VALUE, "chat")).sql
    assert "LEFT JOIN shop_customers c" in wide and "consumers pc" in wide


@pytest.mark.parametrize(("tags", "message"), [
    ([], "at least 1 item"),
    ([""], "tags.0: a tag is a non-empty string"),
    (["vip", "   "], "tags.1: a tag is a non-empty string"),
    ([f"t{i}" for i in range(MAX_TAGS + 1)], f"at most {MAX_TAGS} items"),
    ("vip", "valid list"),
])
def test_bad_tags_are_refused_by_the_spec_and_by_the_refresh(tags, message):
    body = {"kind": "K-REPURCHASE", "shop_id": SHOP, "campaign_id": "c", "audience": "repurchase_cycle",
            "benefit": "exclusive_coupon", "coupon_ids": ["tea5"], "tags": tags}
    with pytest.raises(ValidationError) as exc:
        TypeAdapter(CampaignSpec).validate_python(body)
    [d] = error_details(exc.value.errors())
    assert (d["field"], d["rule"]) == ("tags", "R-RP-3") and message in d["message"], d
    # The refresh checks again what a plan hands it.
    with pytest.raises(ApplicationError) as err:
        checked_refresh_sql(_refresh_input(1, "shop_all", "chat", tags=tags))
    assert err.value.details[0] == {"field": "audience_params.tags"} and "R-RP-3" in str(err.value)
    assert message in str(err.value)


@pytest.mark.parametrize(("over", "field", "message"), [
    ({"custom_filter": {"op": "tags", "match": "some", "value": ["vip"]}}, "custom_filter", "'any', 'all' or 'none'"),
    ({"custom_filter": {"op": "tags", "match": "any", "value": [""]}}, "custom_filter", "a tag is a non-empty string"),
    ({"custom_filter": {"op": "tags", "match": "all", "value": ["v"] * (MAX_TAGS + 1)}}, "custom_filter", "at most"),
    ({"audience": "repurchase_cycle", "benefit": "exclusive_coupon", "text": None, "custom_filter": None,
      "industry_value": True}, "industry_value", "custom audience only"),
    ({"industry_value": "yes"}, "industry_value", "valid boolean"),
])
def test_bad_custom_audience_fields_are_refused_naming_the_field(over, field, message):
    body = {"kind": "K-REPURCHASE", "shop_id": SHOP, "campaign_id": "c", "audience": "custom",
            "benefit": "exclusive_coupon", "coupon_ids": ["tea5"], "text": "{{ coupon }} for you",
            "custom_filter": {"op": "eq", "field": "is_member", "value": True}, **over}
    with pytest.raises(ValidationError) as exc:
        TypeAdapter(CampaignSpec).validate_python(body)
    [d] = error_details(exc.value.errors())
    assert d["field"] == field and message in d["message"], d
    if field == "custom_filter" or over.get("industry_value") is True:
        assert d["rule"] == "R-RP-3"


def test_the_spec_hands_industry_value_and_tags_to_the_plan():
    spec = RepurchaseSpec.model_validate({
        "kind": "K-REPURCHASE", "shop_id": SHOP, "campaign_id": "c", "audience": "custom", "benefit": "exclusive_coupon",
        "coupon_ids": ["tea5"], "text": "{{ coupon }} for you", "custom_filter": {"op": "eq", "field": "is_fan", "value": True},
        "industry_value": True, "tags": ["vip"]})  # fmt: skip
    [phase] = Repurchase().compile(spec, Shop(SHOP, "Asia/Shanghai", False), datetime(2025, 6, 1, 6, tzinfo=UTC))
    assert phase.audience_params[WITH_INDUSTRY_VALUE] is True and phase.audience_params[TAGS] == ["vip"]
    assert reaches_non_customers(phase.audience, phase.audience_params)
    plain = RepurchaseSpec.model_validate({**spec.model_dump(mode="json"), "industry_value": False, "tags": None})
    [phase] = Repurchase().compile(plain, Shop(SHOP, "Asia/Shanghai", False), datetime(2025, 6, 1, 6, tzinfo=UTC))
    assert WITH_INDUSTRY_VALUE not in phase.audience_params and TAGS not in phase.audience_params


TEA = 10


async def test_the_preview_of_a_custom_audience_with_industry_value_is_the_run(clean_db, ts_env):
    pool = clean_db
    now = await ts_env.get_current_time()
    tz = pick_zone(now)
    snapshot = local_instant(local_day(now, tz), datetime.min.time(), tz)
    await build(pool, snapshot, "chat", tz)
    await pool.execute("INSERT INTO products (product_id, shop_id, title, category, price) VALUES ($1, $2, 'Tea', 'tea', 30)",
                       TEA, SHOP)  # fmt: skip
    await pool.execute(
        "INSERT INTO coupons (coupon_id, shop_id, name, valid_from, valid_to, stock, product_id)"
        " VALUES ('tea5', $1, '5 off tea', $2, $3, 1000, $4)", SHOP, now - 30 * D, now + 30 * D, TEA)  # fmt: skip
    spec = RepurchaseSpec.model_validate({
        "kind": "K-REPURCHASE", "shop_id": SHOP, "campaign_id": "iv", "audience": "custom", "benefit": "exclusive_coupon",
        "coupon_ids": ["tea5"], "offer_hours": 2, "text": "{{ coupon }} for you", "industry_value": True,
        "custom_filter": {"op": "eq", "field": "is_member", "value": True}})  # fmt: skip
    verdicts = expected_reasons("chat")
    expected_sent = {c for c, why in verdicts.items() if why is None} | {101, 102}
    removed = {why: sum(1 for w in verdicts.values() if w == why) for why in set(verdicts.values()) - {None}}

    [phase] = (await preview_campaign(pool, spec, platform_tz=tz, now=now)).phases
    assert phase.matched == len(INDUSTRY_VALUE_OF_A) + 2
    assert phase.removed == removed and phase.would_send == len(expected_sent)

    queue = f"iv-{uuid.uuid4().hex[:6]}"
    async with build_worker(ts_env.client, pool, Settings(SLUICE_PLATFORM_TZ=tz), task_queue=queue):
        plan, handle = await start_campaign(pool, ts_env.client, spec, task_queue=queue, now=now)
        result = await asyncio.wait_for(handle.result(), timeout=120)
    assert result.state == "completed"
    cid = plan.campaign_db_id
    ledger = dict(await pool.fetch("SELECT consumer_id, coalesce(reason, state) FROM deliveries WHERE campaign_id = $1", cid))
    assert ledger == dict.fromkeys(expected_sent, "sent")
    refresh = await pool.fetchrow("SELECT matched, excluded FROM audience_refreshes WHERE campaign_id = $1", cid)
    assert (refresh["matched"], refresh["excluded"]) == (phase.matched, phase.removed)
    assert len(ledger) == phase.would_send
    outbox = dict(await pool.fetch("SELECT consumer_id, address FROM outbox_messages WHERE campaign_id = $1", cid))
    assert outbox[2] == "pf_2" and outbox[13] == "tb_13" and 3 not in outbox  # the non-customer, the platform's opt-out
