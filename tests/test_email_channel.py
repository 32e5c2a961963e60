"""Email over SMTP against a real SMTP server the test starts (aiosmtpd, tests/smtp_server.py): headers as
received, per-recipient bodies, connection reuse, permanent and transient replies, and connections that
drop mid-batch. The server's own count is the check: exactly 1 per `sent`, 0 per `failed`."""

from __future__ import annotations

from datetime import date, time, timedelta

from sluice.channels.base import INVALID_CONTACT, Backoff, Outbound, delivery_key
from sluice.channels.email import SMTP_NO_LOOKUP, EmailChannel
from sluice.channels.outbox import OutboxChannel
from sluice.channels.registry import ChannelRegistry

from tests.smtp_server import SmtpFaults, SmtpServer

DAY = date(2026, 3, 2)


def _address(c: int) -> str:
    return f"c{c}@example.com"


def _messages(ids, body=lambda c: f"Spring sale\nHello {c}, 20% off.") -> list[Outbound]:
    return [Outbound(9, 1, c, DAY, "email", _address(c), body(c)) for c in ids]


def _channel(server: SmtpServer, connections: int = 3) -> EmailChannel:
    return EmailChannel(host="127.0.0.1", port=server.port, sender="shop@mail.example", connections=connections,
                        timeout_s=5, backoff=Backoff(attempts=4, base_s=0.01, cap_s=0.05),
                        unsubscribe_url="https://shop.example/unsubscribe")


async def test_headers_bodies_and_connection_reuse():
    server = SmtpServer().start()
    channel = _channel(server, connections=3)
    try:
        first = await channel.send(_messages(range(1, 31)))
        second = await channel.send(_messages(range(31, 61)))
    finally:
        await channel.aclose()
        server.stop()
    outcomes = first + second
    assert {o.state for o in outcomes} == {"sent"} and len(outcomes) == 60
    inbox = server.inbox
    assert dict(inbox.received) == {_address(c): 1 for c in range(1, 61)}
    # Three connections carried both batches (reused across messages and batches).
    assert channel.opened == 3 and len(inbox.sessions) == 3
    m = _messages([17])[0]
    msg = inbox.messages[_address(17)][0]
    assert msg["From"] == "shop@mail.example" and msg["To"] == _address(17)
    assert msg["Subject"] == "Spring sale"
    assert msg["Message-ID"] == f"<{delivery_key(m)}@mail.example>"
    assert msg["Date"]
    assert msg["List-Unsubscribe"].startswith(f"<https://shop.example/unsubscribe?d={delivery_key(m)}>")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.get_content().strip() == "Hello 17, 20% off."  # this recipient's own body
    # The provider reference is the Message-ID: what a resend would be recognised by.
    assert next(o.provider_ref for o in outcomes if o.consumer_id == 17) == msg["Message-ID"]


async def test_refusals_deferrals_and_drops_mid_batch():
    ids = list(range(1, 41))
    faults = SmtpFaults(
        refuse={_address(5), _address(22)},
        defer_once={_address(9), _address(30)},
        drop_at_mail={4, 15, 27},  # connections dropped before a message was taken: tried again
        drop_in_data={_address(12)},  # dropped while the server had the message: never resent
    )
    server = SmtpServer(faults).start()
    channel = _channel(server, connections=2)
    try:
        outcomes = await channel.send(_messages(ids))
        reconciled = await channel.reconcile(_messages([12]))
    finally:
        await channel.aclose()
        server.stop()
    by_id = {o.consumer_id: o for o in outcomes}
    assert sorted(by_id) == ids
    inbox = server.inbox
    assert inbox.dropped["mail"] == 3 and inbox.dropped["data"] == 1  # the faults really happened
    assert by_id[5].state == by_id[22].state == "failed"
    assert by_id[5].reason.startswith("smtp_550")
    assert by_id[12].state == "unknown" and by_id[12].reason.startswith("ambiguous")
    # SMTP cannot be asked: the ambiguous one stays unknown, and nothing sends it again.
    assert [(o.state, o.reason) for o in reconciled] == [("unknown", SMTP_NO_LOOKUP)]
    sent = {c for c, o in by_id.items() if o.state == "sent"}
    assert sent == set(ids) - {5, 22, 12}  # deferred once and dropped-at-MAIL ones went on the next try
    # The server's own count: exactly one per sent, none per failed or unknown.
    assert {r: n for r, n in inbox.received.items() if n != 1} == {}
    assert set(inbox.received) == {_address(c) for c in sent}
    assert channel.opened == 2 + 3 + 1  # reconnected after each drop, and only then


async def test_a_server_that_stays_down_fails_the_messages_as_not_sent():
    server = SmtpServer().start()
    port = server.port
    server.stop()  # nothing listens any more
    channel = EmailChannel(host="127.0.0.1", port=port, sender="shop@mail.example", connections=2, timeout_s=1,
                           backoff=Backoff(attempts=2, base_s=0.01, cap_s=0.02), unsubscribe_url="https://x.example/u")
    outcomes = await channel.send(_messages([1, 2, 3]))
    await channel.aclose()
    assert {o.state for o in outcomes} == {"failed"}
    assert all(o.reason.startswith("smtp_unavailable") for o in outcomes)
    assert INVALID_CONTACT not in {o.reason for o in outcomes}


async def test_email_campaign_end_to_end(clean_db, ts_env):
    """A K-OLDCUST campaign on email through the workflow: every recipient's ledger row agrees with the
    server's count, a refused mailbox is `failed` and gave its caps back."""
    import uuid

    from sluice.api.service import start_campaign
    from sluice.kinds.oldcust import OldCustomerSpec
    from sluice.schemas.campaign import Channel
    from sluice.schemas.settings import Settings
    from sluice.workers.worker import build_worker
    from sluice.workflows.calendar import local_day

    from tests.factories import add_customers, make_shop

    pool = clean_db
    now = await ts_env.get_current_time()
    tz = "Asia/Shanghai"
    await make_shop(pool, "s1", tz)
    ids = list(range(1, 301))
    await add_customers(pool, "s1", ids, ordered_at=now - timedelta(days=10), visited_at=now - timedelta(days=1))
    emails = dict(await pool.fetch("SELECT consumer_id, email FROM shop_customers WHERE shop_id = 's1'"))
    server = SmtpServer(SmtpFaults(refuse={emails[7]}, drop_at_mail={50, 120})).start()
    email = _channel(server, connections=4)
    channels = ChannelRegistry({"email": email, "chat": OutboxChannel(pool, "chat")})
    settings = Settings(SLUICE_TASK_QUEUE=f"email-{uuid.uuid4().hex[:6]}")
    spec = OldCustomerSpec(kind="K-OLDCUST", shop_id="s1", campaign_id="mail1", scene="x", card_text="hi",
                           channel=Channel.email, send_date=local_day(now, tz) + timedelta(days=1), send_time=time(9))
    try:
        async with build_worker(ts_env.client, pool, settings, channels=channels):
            _, handle = await start_campaign(pool, ts_env.client, spec, task_queue=settings.task_queue, now=now,
                                             tuning={"slice_size": 100, "chunk_size": 50, "concurrency": 2})
            result = await handle.result()
    finally:
        await email.aclose()
        server.stop()
    assert result.state == "completed"
    rows = await pool.fetch("SELECT consumer_id, state, reason FROM deliveries WHERE campaign_id = 1")
    state = {r["consumer_id"]: r["state"] for r in rows}
    assert len(rows) == len(ids)
    assert state[7] == "failed"
    sent = {emails[c] for c, s in state.items() if s == "sent"}
    assert len(sent) == len(ids) - 1
    assert {r: n for r, n in server.inbox.received.items() if n != 1} == {}
    assert set(server.inbox.received) == sent
    assert server.inbox.dropped["mail"] == 2
    assert await pool.fetchval("SELECT coalesce(sum(sent), 0) FROM fatigue_day WHERE consumer_id = 7") == 0
