"""Fatigue policy per channel (R-FAT-2, R-FAT-3) on each consumer's own natural day (R-FAT-DAY).

The pure part: each channel's policy and `cap_verdict` under it. The database part drives the send
activity directly: a New York shop whose 08:00-22:00 straddles two Shanghai days counts its messages
on each consumer's own day, and a channel's caps never stop another channel's message.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from sluice.activities.audience import AudienceActivities
from sluice.activities.send import SendActivities, cap_verdict
from sluice.channels.registry import ChannelRegistry
from sluice.schemas import activities as A
from sluice.schemas import rules
from sluice.schemas.activities import RefreshAudienceInput, SendSliceInput
from sluice.schemas.campaign import Channel
from sluice.schemas.fatigue import CHAT, EMAIL, NO_LIMIT, POLICIES, SMS, FatiguePolicy, policy_for
from sluice.workflows.calendar import local_day, local_instant
from temporalio.testing import ActivityEnvironment

from tests.factories import add_customers, make_campaign, make_shop
from tests.ledger_checks import assert_fatigue_matches_ledger

PLATFORM_TZ = "Asia/Shanghai"
NY = "America/New_York"


def _today(day_sent=0, day_shops=0, shop_sent=0, template_today=0) -> dict:
    return {"id": 1, "day_sent": day_sent, "day_shops": day_shops, "shop_sent": shop_sent, "template_today": template_today}


def test_every_channel_has_a_policy_and_chat_is_the_seeds():
    assert set(POLICIES) == {c.value for c in Channel}
    assert (CHAT.shop_day, CHAT.global_day, CHAT.global_shops) == (
        rules.SHOP_DAY_MAX, rules.GLOBAL_DAY_MAX, rules.GLOBAL_SHOPS_MAX)  # fmt: skip
    assert policy_for("inbox") == CHAT
    assert CHAT.limits == (rules.GLOBAL_DAY_MAX, rules.SHOP_DAY_MAX, rules.GLOBAL_SHOPS_MAX)
    assert SMS.limits == (NO_LIMIT, 1, NO_LIMIT)
    with pytest.raises(KeyError, match="fax"):
        policy_for("fax")
    with pytest.raises(ValueError, match="shop_day"):
        FatiguePolicy(shop_day=0, global_day=None, global_shops=None)


@pytest.mark.parametrize(
    "today, chat, sms",
    [
        (_today(), None, None),
        (_today(day_sent=10, day_shops=5, shop_sent=1), A.SUPPRESS_GLOBAL_DAY, A.SUPPRESS_SHOP_DAY),
        (_today(day_sent=9, day_shops=5, shop_sent=0), A.SUPPRESS_GLOBAL_SHOPS, None),
        (_today(day_sent=9, day_shops=5, shop_sent=1), None, A.SUPPRESS_SHOP_DAY),
        (_today(day_sent=2, day_shops=1, shop_sent=2), A.SUPPRESS_SHOP_DAY, A.SUPPRESS_SHOP_DAY),
        (_today(day_sent=40, day_shops=40, shop_sent=0), A.SUPPRESS_GLOBAL_DAY, None),
    ],
)
def test_cap_verdict_follows_the_channels_policy(today, chat, sms):
    assert cap_verdict(today, 0, None, CHAT) == chat
    assert cap_verdict(today, 0, None, SMS) == sms
    assert cap_verdict(today, 0, None, EMAIL) == sms


def _input(cid: int, shop: str, channel: str, day: date, at: datetime, n: int) -> SendSliceInput:
    return SendSliceInput(
        campaign_db_id=cid, shop_id=shop, phase_index=0, day=day, channel=channel, text="hello", template_cap=None,
        seq_lo=0, seq_hi=n, budget=100, decided_at=at, window_end=at + timedelta(hours=1), chunk_size=50,
    )  # fmt: skip


async def _snapshot(pool, cid: int, day: date, ids: list[int]) -> None:
    await pool.execute(
        "INSERT INTO audience_snapshots (campaign_id, phase, day, seq, consumer_id)"
        " SELECT $1, 0, $2, i - 1, c FROM unnest($3::bigint[]) WITH ORDINALITY AS u(c, i)",
        cid, day, ids,
    )  # fmt: skip


async def _refresh(pool, cid: int, shop: str, day: date, tz: str) -> None:
    """The day's snapshot by the real refresh: it resolves each recipient's zone (R-FAT-DAY)."""
    at = local_instant(day, time(0), tz)
    inp = RefreshAudienceInput(
        campaign_db_id=cid, shop_id=shop, kind="K-PHASED", phase_index=0, audience="shop_all", channel="chat",
        day=day, snapshot_at=at, campaign_started_at=at,
    )  # fmt: skip
    await ActivityEnvironment().run(AudienceActivities(pool, parts=2).refresh_audience, inp)


async def test_a_new_york_shop_counts_on_each_consumers_own_day(clean_db):
    """Six chat messages of one New York shop over two of its days (EDT, 12 hours behind Shanghai): 08:00,
    08:30, 20:30 and 21:00 on D, 08:00 and 21:00 on D+1. The last two of D fall on Shanghai's D+1.

    Consumers 1 (the shop's zone for them: Shanghai) and 4 (no zone anywhere: the platform's) count on
    Shanghai days: D gets 2, D+1 gets 3 (the fifth message is the third: fatigue_shop_day), D+2 gets 1.
    Consumers 2 (the shop's zone for them: New York) and 3 (the platform's record: New York) count on
    New York days: 4 messages on D, 2 sent and 2 stopped; both of D+1 sent. Counted on the platform's
    day, as before, they would get four messages inside one of their days."""
    pool = clean_db
    shop = "ny-shop"
    await make_shop(pool, shop, NY)
    ids = [1, 2, 3, 4]
    await add_customers(pool, shop, ids, ordered_at=datetime(2030, 6, 1, tzinfo=UTC))
    await pool.execute("UPDATE shop_customers SET timezone = $2 WHERE shop_id = $1 AND consumer_id = 1", shop, PLATFORM_TZ)
    await pool.execute("UPDATE shop_customers SET timezone = $2 WHERE shop_id = $1 AND consumer_id = 2", shop, NY)
    await pool.execute("UPDATE consumers SET timezone = $1 WHERE consumer_id = 3", NY)
    # Consumer 1: the shop's zone wins over the platform's record of them.
    await pool.execute("UPDATE consumers SET timezone = $1 WHERE consumer_id = 1", NY)
    d = date(2030, 6, 10)
    sends = [(d, time(8)), (d, time(8, 30)), (d, time(20, 30)), (d, time(21)), (d + timedelta(days=1), time(8)),
             (d + timedelta(days=1), time(21))]  # fmt: skip
    # A clock in the past: each chunk's hand-off instant is its slice's decision instant.
    send = SendActivities(pool, ChannelRegistry.outbox_for_all(pool), platform_timezone=PLATFORM_TZ,
                          clock=lambda: datetime(2000, 1, 1, tzinfo=UTC))  # fmt: skip
    for i, (day, at) in enumerate(sends):
        cid = await make_campaign(pool, shop, f"ny-{i}", state="sending")
        await _refresh(pool, cid, shop, day, NY)
        await ActivityEnvironment().run(send.send_slice, _input(cid, shop, "chat", day, local_instant(day, at, NY), len(ids) + 1))

    rows = await pool.fetch(
        "SELECT d.consumer_id, c.campaign_ref, d.state, d.reason, d.fatigue_day, d.decided_at FROM deliveries d"
        " JOIN campaigns c ON c.id = d.campaign_id ORDER BY d.consumer_id, c.campaign_ref"
    )
    sent = {c: [int(r["campaign_ref"][3:]) for r in rows if r["consumer_id"] == c and r["state"] == "sent"] for c in ids}
    assert sent == {1: [0, 1, 2, 3, 5], 2: [0, 1, 4, 5], 3: [0, 1, 4, 5], 4: [0, 1, 2, 3, 5]}
    assert {r["reason"] for r in rows if r["state"] != "sent"} == {A.SUPPRESS_SHOP_DAY}
    zone_of = {1: PLATFORM_TZ, 2: NY, 3: NY, 4: PLATFORM_TZ}
    for r in rows:  # each delivery's fatigue day is the recipient's own date of the hand-off
        assert r["fatigue_day"] == local_day(r["decided_at"], zone_of[r["consumer_id"]]), dict(r)
    # Never more than 2 from the shop inside one of the consumer's own days.
    per_day = await pool.fetch(
        "SELECT consumer_id, fatigue_day, count(*) AS n FROM deliveries WHERE state = 'sent' GROUP BY 1, 2"
    )
    assert max(r["n"] for r in per_day) == rules.SHOP_DAY_MAX
    await assert_fatigue_matches_ledger(pool)


async def test_chat_caps_do_not_block_an_email_and_email_has_its_own(clean_db):
    """Consumers at every chat cap of the day (10 messages from 5 shops, 2 of them from this shop) get no chat
    message but do get an email; a second email of the shop that day is stopped by the email policy's own
    one-a-day cap (fatigue_shop_day), counted on the email row only."""
    pool = clean_db
    shop = "chan-shop"
    await make_shop(pool, shop, PLATFORM_TZ)
    ids = [1, 2, 3]
    now = datetime.now(UTC)
    await add_customers(pool, shop, ids, ordered_at=now - timedelta(days=3))
    fday = local_day(now, PLATFORM_TZ)
    await pool.execute(
        "INSERT INTO fatigue_day (consumer_id, day, channel, sent, shops, per_shop)"
        " SELECT c, $2, 'chat', 10, 5, jsonb_build_object($3::text, 2, 'o1', 2, 'o2', 2, 'o3', 2, 'o4', 2)"
        " FROM unnest($1::bigint[]) c",
        ids, fday, shop,
    )  # fmt: skip
    send = SendActivities(pool, ChannelRegistry.outbox_for_all(pool), platform_timezone=PLATFORM_TZ)
    outcomes = {}
    for ref, channel in (("chat", "chat"), ("email-1", "email"), ("email-2", "email")):
        cid = await make_campaign(pool, shop, ref, state="sending")
        await _snapshot(pool, cid, now.date(), ids)
        res = await ActivityEnvironment().run(send.send_slice, _input(cid, shop, channel, now.date(), now, len(ids)))
        outcomes[ref] = (res.sent, res.suppressed)
    assert outcomes == {
        "chat": (0, {A.SUPPRESS_GLOBAL_DAY: 3}),
        "email-1": (3, {}),
        "email-2": (0, {A.SUPPRESS_SHOP_DAY: 3}),
    }
    counters = {(r["channel"], r["sent"]) for r in await pool.fetch("SELECT channel, sent FROM fatigue_day WHERE day = $1", fday)}
    assert counters == {("chat", 10), ("email", 1)}
