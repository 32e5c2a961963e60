"""R-EXC-1 checked again at send time (R-OC-5): the snapshot is from 00:00, people change after it.

A consumer deleted, blacklisted, unsubscribed from the channel or without a
usable contact after the snapshot is recorded `suppressed` with that reason,
consumes no cap and gets no outbox message; everyone else is sent, at the
address the shop holds at send time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sluice.activities.send import SendActivities
from sluice.channels.registry import ChannelRegistry
from sluice.schemas import activities as A
from sluice.schemas.activities import SendSliceInput
from temporalio.testing import ActivityEnvironment

from tests.factories import add_customers, make_campaign, make_shop
from tests.ledger_checks import assert_fatigue_matches_ledger

# consumer -> the change after the snapshot (shop_customers columns) and the expected reason
OTHER_CHANNEL = {"chat": "unsub_sms", "sms": "unsub_email", "email": "unsub_chat", "inbox": "unsub_chat"}
NO_CONTACT = {"chat": {"chat_id": None}, "sms": {"phone_valid": False}, "email": {"email": None}}


def _changes(channel: str) -> dict[int, tuple[dict, str | None]]:
    changes = {
        1: ({"deleted": True}, A.SUPPRESS_DELETED),
        2: ({"blacklisted": True}, A.SUPPRESS_BLACKLISTED),
        3: ({f"unsub_{channel}": True}, A.SUPPRESS_UNSUBSCRIBED),
        4: ({OTHER_CHANNEL[channel]: True}, None),  # another channel's opt-out does not stop this one
        5: ({"deleted": True, "blacklisted": True, f"unsub_{channel}": True}, A.SUPPRESS_DELETED),
        6: ({"blacklisted": True, f"unsub_{channel}": True}, A.SUPPRESS_BLACKLISTED),
        7: ({"phone": "13900000007", "email": "new7@example.com", "chat_id": "tb_new7"}, None),  # address moved
    }
    if channel in NO_CONTACT:
        changes[8] = (NO_CONTACT[channel], A.SUPPRESS_NO_CONTACT)
        changes[9] = ({**NO_CONTACT[channel], f"unsub_{channel}": True}, A.SUPPRESS_UNSUBSCRIBED)
    return changes


ADDRESS = {"chat": "chat_id", "sms": "phone", "email": "email", "inbox": "consumer_id::text"}


@pytest.mark.parametrize("channel", ["chat", "sms", "email", "inbox"])
async def test_exclusions_are_checked_again_at_send_time(clean_db, channel):
    pool = clean_db
    now = datetime.now(UTC)
    shop = f"exc-{channel}"
    ids = list(range(1, 13))
    await make_shop(pool, shop, "Asia/Shanghai")
    await add_customers(pool, shop, ids, ordered_at=now - timedelta(days=3))
    cid = await make_campaign(pool, shop, "exclusions", state="sending")
    await pool.execute(
        "INSERT INTO audience_snapshots (campaign_id, phase, day, seq, consumer_id)"
        " SELECT $1, 0, $2, i - 1, c FROM unnest($3::bigint[]) WITH ORDINALITY AS u(c, i)",
        cid, now.date(), ids,
    )  # fmt: skip
    changes = _changes(channel)
    for consumer, (columns, _reason) in changes.items():
        sets = ", ".join(f"{col} = ${i + 3}" for i, col in enumerate(columns))
        await pool.execute(
            f"UPDATE shop_customers SET {sets} WHERE shop_id = $1 AND consumer_id = $2", shop, consumer, *columns.values()
        )
    send = SendActivities(pool, ChannelRegistry.outbox_for_all(pool), platform_timezone="Asia/Shanghai")
    inp = SendSliceInput(
        campaign_db_id=cid, shop_id=shop, phase_index=0, day=now.date(), channel=channel, text="hello", template_cap=None,
        seq_lo=0, seq_hi=len(ids), budget=100, decided_at=now, window_end=now + timedelta(hours=1), chunk_size=5,
    )  # fmt: skip

    result = await ActivityEnvironment().run(send.send_slice, inp)

    expected = {c: changes[c][1] if c in changes else None for c in ids}
    ledger = {
        r["consumer_id"]: (r["state"], r["reason"])
        for r in await pool.fetch("SELECT consumer_id, state, reason FROM deliveries WHERE campaign_id = $1", cid)
    }
    assert ledger == {c: ("sent", None) if why is None else ("suppressed", why) for c, why in expected.items()}
    live = sorted(c for c, why in expected.items() if why is None)
    assert result.sent == len(live)
    assert result.suppressed == {
        why: sum(1 for w in expected.values() if w == why) for why in set(expected.values()) if why is not None
    }
    # One outbox message per live consumer, at the address the shop holds now.
    outbox = dict(await pool.fetch("SELECT consumer_id, address FROM outbox_messages WHERE campaign_id = $1", cid))
    addresses = dict(await pool.fetch(
        f"SELECT consumer_id, {ADDRESS[channel]} FROM shop_customers WHERE shop_id = $1 AND consumer_id = ANY($2)",
        shop, live,
    ))  # fmt: skip
    assert outbox == addresses
    if channel != "inbox":
        assert outbox[7] == {"chat": "tb_new7", "sms": "13900000007", "email": "new7@example.com"}[channel]
    # Suppressed consumers consumed no cap (R-OC-8).
    assert await pool.fetchval("SELECT coalesce(sum(sent), 0) FROM fatigue_day") == len(live)
    await assert_fatigue_matches_ledger(pool)
