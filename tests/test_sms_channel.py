"""SMS through a fault-injecting gateway (tests/gateway.py), end to end through the workflow: E.164,
signature and unsubscribe text, segments and prices (R-AQ-4..6), credits that run out or expired
(R-AQ-5), per-number permanent refusals, 429 with Retry-After. The gateway's own counts are the check."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

from sluice.api.service import start_campaign
from sluice.channels.base import INVALID_CONTACT, OPTED_OUT_AT_PROVIDER, Backoff
from sluice.channels.outbox import OutboxChannel
from sluice.channels.registry import ChannelRegistry
from sluice.channels.sms import UNSUBSCRIBE_TEXT, SmsGatewayChannel, industry_signature, recharge
from sluice.kinds.oldcust import OldCustomerSpec
from sluice.schemas.activities import SUPPRESS_NO_CREDIT
from sluice.schemas.campaign import Channel
from sluice.schemas.settings import Settings
from sluice.workers.worker import build_worker
from sluice.workflows.calendar import local_day

from tests.factories import add_customers, make_shop
from tests.gateway import Chaos, Gateway

TITLE = "春季会员日专享福利提醒"  # 11 characters
CARD = "亲爱的会员,您的专属优惠券已到账,点击进店即可使用,本周内有效,数量有限先到先得,欢迎选购新品"  # 47 characters


async def _run(pool, ts_env, gw: Gateway, ref: str, now, tz):
    sms = SmsGatewayChannel("sms", gw.url, timeout_s=0.5, batch_size=10, backoff=Backoff(attempts=6, base_s=0.01))
    channels = ChannelRegistry({"sms": sms, "chat": OutboxChannel(pool, "chat")})
    settings = Settings(SLUICE_TASK_QUEUE=f"sms-{uuid.uuid4().hex[:6]}")
    spec = OldCustomerSpec(kind="K-OLDCUST", shop_id="s1", campaign_id=ref, scene="x", title=TITLE, card_text=CARD,
                           channel=Channel.sms, send_date=local_day(now, tz) + timedelta(days=1), send_time=time(9))
    try:
        async with build_worker(ts_env.client, pool, settings, channels=channels):
            _, handle = await start_campaign(pool, ts_env.client, spec, task_queue=settings.task_queue, now=now,
                                             tuning={"slice_size": 100, "chunk_size": 40, "concurrency": 2})
            return await handle.result()
    finally:
        await sms.aclose()


async def test_sms_segments_costs_credits_and_refusals(clean_db, ts_env):
    pool = clean_db
    now = await ts_env.get_current_time()
    tz = "Asia/Shanghai"
    await make_shop(pool, "s1", tz, industry="beauty", sms_credits=0)
    # An expired recharge (bought three years ago) pays for nothing; the valid one pays for 2-segment
    # messages until it runs out (R-AQ-5).
    expired = await recharge(pool, "s1", 100_000, datetime.now(UTC) - timedelta(days=3 * 365))
    valid = await recharge(pool, "s1", 400, datetime.now(UTC) - timedelta(days=1))
    ids = list(range(1, 301))
    await add_customers(pool, "s1", ids, ordered_at=now - timedelta(days=10), visited_at=now - timedelta(days=1))
    await pool.execute("UPDATE shop_customers SET phone = '12345' WHERE consumer_id IN (3, 33)")  # not a number
    opted_out = {f"138{c:08d}" for c in (8, 80)}
    gw = Gateway(Chaos(throttle=0.15, retry_after_s=1, fail_before=0.1, fail_after=0.1, opted_out=opted_out,
                       seed=5)).start()
    try:
        result = await _run(pool, ts_env, gw, "sms1", now, tz)
    finally:
        gw.stop()
    assert result.state == "completed"
    assert gw.requests["429"] and gw.requests["503"] and gw.requests["500-after-accept"]  # the faults happened

    rows = await pool.fetch(
        "SELECT d.consumer_id, d.state, d.reason, d.cost, c.phone FROM deliveries d"
        " JOIN shop_customers c USING (shop_id, consumer_id) WHERE d.campaign_id = 1"
    )
    by = {r["consumer_id"]: r for r in rows}
    assert len(rows) == len(ids)
    assert by[3]["state"] == by[33]["state"] == "failed" and by[3]["reason"] == INVALID_CONTACT
    # The opted-out numbers fail at the provider when a credit paid for their message; which messages the
    # credits paid for depends on the order the chaos' retries settle in: one of the two outcomes, never sent.
    for c in (8, 80):
        assert (by[c]["state"], by[c]["reason"]) in {("failed", OPTED_OUT_AT_PROVIDER), ("suppressed", SUPPRESS_NO_CREDIT)}
    assert any(by[c]["state"] == "failed" for c in (8, 80)), "no opted-out number reached the gateway"
    sent = [r for r in rows if r["state"] == "sent"]
    no_credit = [r for r in rows if r["state"] == "suppressed" and r["reason"] == SUPPRESS_NO_CREDIT]
    failed = [r for r in rows if r["state"] == "failed"]
    assert {r["reason"] for r in failed} <= {INVALID_CONTACT, OPTED_OUT_AT_PROVIDER}
    assert sent and no_credit and len(sent) + len(no_credit) + len(failed) == len(ids)

    # The text as the gateway received it: industry signature + title + card + unsubscribe text; billed
    # by the gateway's own count (R-AQ-4).
    text = industry_signature("beauty") + f"{TITLE}\n{CARD}" + UNSUBSCRIBE_TEXT
    assert 70 < len(text) <= 134  # two segments
    assert {p: n for p, n in gw.deliveries.items() if n != 1} == {}
    assert set(gw.deliveries) == {r["phone"] for r in sent}
    # Each sent delivery costs the gateway's segments at the recharge's tier price (4.8 fen, R-AQ-5).
    for r in sent:
        assert r["cost"] == Decimal(gw.segments[r["phone"]]) * Decimal("0.048")
    assert all(r["cost"] is None for r in rows if r["state"] != "sent")
    # Credits: the expired recharge untouched; the valid one spent exactly by what was sent (the
    # refused ones gave theirs back).
    left = dict(await pool.fetch("SELECT credit_id, remaining FROM sms_credits WHERE shop_id = 's1'"))
    assert left[expired] == 100_000
    assert left[valid] == 400 - sum(gw.segments.values())
    assert left[valid] < 2  # no credit left for one more message: the rest were refused for it


async def test_no_credit_no_send(clean_db, ts_env):
    pool = clean_db
    now = await ts_env.get_current_time()
    tz = "Asia/Shanghai"
    await make_shop(pool, "s1", tz, sms_credits=0)
    await add_customers(pool, "s1", list(range(1, 121)), ordered_at=now - timedelta(days=10),
                        visited_at=now - timedelta(days=1))
    gw = Gateway().start()
    try:
        result = await _run(pool, ts_env, gw, "sms0", now, tz)
    finally:
        gw.stop()
    assert result.state == "completed"
    states = await pool.fetch("SELECT state, reason, count(*) AS n FROM deliveries GROUP BY 1, 2")
    assert [(r["state"], r["reason"], r["n"]) for r in states] == [("suppressed", SUPPRESS_NO_CREDIT, 120)]
    assert gw.requests["batch"] == 0 and not gw.deliveries
    # No caps were taken for messages that did not go out.
    assert await pool.fetchval("SELECT coalesce(sum(sent), 0) FROM fatigue_day") == 0
