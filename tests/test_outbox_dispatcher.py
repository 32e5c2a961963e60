"""The outbox dispatcher (channels/dispatcher.py) draining batches the real send path wrote to the outbox into
real providers: the loopback SMS gateway (tests/gateway.py) and aiosmtpd (tests/smtp_server.py). The
providers' own counts are the check: per message, how many requests carried it (`Gateway.offered`) or how
many copies the SMTP server took."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sluice.activities.send import SendActivities
from sluice.channels.base import INVALID_CONTACT, OPTED_OUT_AT_PROVIDER, Backoff, Outbound, Outcome, delivery_key
from sluice.channels.dispatcher import RETRY_LATER, Dispatcher, judge, may_hand_off, retry_delay
from sluice.channels.email import SMTP_NO_LOOKUP, SMTP_UNAVAILABLE, EmailChannel
from sluice.channels.outbox import OutboxChannel
from sluice.channels.registry import ChannelRegistry
from sluice.channels.sms import SmsGatewayChannel
from sluice.schemas.activities import NOT_SENT_DISPATCH_WINDOW, REASON_RULES, SendSliceInput
from sluice.schemas.campaign import TemplateCap
from temporalio.testing import ActivityEnvironment

from tests.factories import add_customers, make_campaign, make_shop
from tests.gateway import Chaos, Gateway
from tests.ledger_checks import assert_fatigue_matches_ledger
from tests.smtp_server import Inbox, SmtpServer

SHOP = "disp-shop"
TZ = "Asia/Shanghai"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the pure parts


def _m(c: int) -> Outbound:
    return Outbound(1, 0, c, datetime(2026, 3, 2).date(), "email", f"c{c}@example.com", "hi")


def test_judge_sorts_each_answer():
    messages = [_m(c) for c in range(1, 7)]
    v = judge(messages, [
        Outcome(1, "sent", "r1"), Outcome(2, "failed", None, INVALID_CONTACT), Outcome(3, "unknown", None, "ambiguous"),
        Outcome(4, "failed", None, f"{SMTP_UNAVAILABLE}: 451"), Outcome(1, "failed", None, "a second answer"),
        Outcome(99, "sent", "not ours"),
    ])  # fmt: skip
    assert [o.consumer_id for o in v.handed] == [1]  # the first answer about a consumer counts
    assert [(o.consumer_id, o.reason) for o in v.failed] == [(2, INVALID_CONTACT)]
    assert [o.consumer_id for o in v.unknown] == [3]
    assert v.later == [4]  # not taken for now: a later claim sends it
    assert v.unanswered == [5, 6]


def test_retry_delay_grows_and_honours_retry_after():
    assert retry_delay(1, None, 0.999) < retry_delay(4, None, 0.0) <= RETRY_LATER.cap_s
    assert retry_delay(30, None, 0.999) <= RETRY_LATER.cap_s
    assert retry_delay(1, 42.0, 0.5) == 42.0


def test_a_part_may_go_until_its_window_end_and_not_at_it():
    end = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # 22:00 in Shanghai
    assert may_hand_off(end, end - timedelta(microseconds=1))
    assert not may_hand_off(end, end)  # half-open, like the send path's `clock() >= window_end`
    assert not may_hand_off(end, end + timedelta(hours=9))
    assert may_hand_off(None, end + timedelta(days=30))  # a batch written before outbox.window_end: no end known
    with pytest.raises(ValueError):
        may_hand_off(end, datetime(2026, 3, 2, 13, 0))  # a naive instant is refused, not compared in some zone
    assert REASON_RULES[NOT_SENT_DISPATCH_WINDOW] == "R-WIN-1"


# -- the outbox as the send path writes it


async def _outbox_day(
    pool, channel: str, n: int, chunk: int, phones: dict[int, str] | None = None, *, first: int = 1,
    window: timedelta = timedelta(hours=1),
) -> tuple[int, datetime]:  # fmt: skip
    """A campaign day of `n` recipients on `channel` sent by the real send path to the outbox: n / chunk batches,
    deliveries `sent`, caps counted (and for SMS the credits charged). `phones`: numbers as the shop stores them.
    `first`: the first consumer id (another campaign of the shop takes other consumers); `window`: how long after
    now the slice's window ends (SendSliceInput.window_end, written on its batches)."""
    now = datetime.now(UTC)
    await make_shop(pool, SHOP, TZ)
    await add_customers(pool, SHOP, list(range(first, first + n)), ordered_at=now - timedelta(days=3))
    for c, phone in (phones or {}).items():
        await pool.execute("UPDATE shop_customers SET phone = $2 WHERE consumer_id = $1", c, phone)
    cid = await make_campaign(pool, SHOP, f"disp-{channel}-{first}", state="sending")
    day = now.date()
    await pool.execute(
        "INSERT INTO audience_snapshots (campaign_id, phase, day, seq, consumer_id)"
        " SELECT $1, 0, $2, g - 1, g + $4 - 1 FROM generate_series(1, $3::int) g",
        cid, day, n, first,
    )  # fmt: skip
    send = SendActivities(pool, ChannelRegistry.outbox_for_all(pool), platform_timezone=TZ)
    inp = SendSliceInput(
        campaign_db_id=cid, shop_id=SHOP, phase_index=0, day=day, channel=channel,
        template_cap=TemplateCap(group="g1", count=1, days=1), title="Spring", text="20% off this week",
        seq_lo=0, seq_hi=n, budget=n, decided_at=now, window_end=now + window, chunk_size=chunk,
    )  # fmt: skip
    result = await ActivityEnvironment().run(send.send_slice, inp)
    assert result.sent == n
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE dispatched_at IS NULL AND campaign_id = $1", cid) == n // chunk
    # R-WIN-1: each batch carries the slice's window end, for the dispatcher.
    assert {r[0] for r in await pool.fetch("SELECT window_end FROM outbox WHERE campaign_id = $1", cid)} == {now + window}
    return cid, now


def _key(cid: int, day, c: int, channel: str) -> str:
    return delivery_key(Outbound(cid, 0, c, day, channel, "", ""))


def _sms(gw: Gateway, **kw) -> SmsGatewayChannel:
    return SmsGatewayChannel("sms", gw.url, timeout_s=5, batch_size=500, **kw)


def _email(server: SmtpServer) -> EmailChannel:
    return EmailChannel(host="127.0.0.1", port=server.port, sender="shop@mail.example", connections=2, timeout_s=5,
                        backoff=Backoff(attempts=3, base_s=0.01, cap_s=0.05), unsubscribe_url="https://shop.example/u")


async def _rows(pool, cid):
    return {r["consumer_id"]: r for r in await pool.fetch(
        "SELECT consumer_id, state, reason, handed_off_at, dispatch_ref, cost, day FROM deliveries WHERE campaign_id = $1", cid)}


class HangAfterSend:
    """A real adapter whose first send returns to nobody: the dispatcher's task waits there, the messages
    handed over and nothing recorded, until the test kills it (a crash between hand-off and record)."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name
        self.handed: list[Outbound] = []
        self.hanging = asyncio.Event()

    async def send(self, messages):
        await self.inner.send(messages)
        self.handed += messages
        self.hanging.set()
        await asyncio.Event().wait()

    async def reconcile(self, messages):
        return await self.inner.reconcile(messages)


# -- two dispatchers at once


async def test_two_dispatchers_racing_hand_each_message_over_once(clean_db):
    pool = clean_db
    n = 2_000
    cid, now = await _outbox_day(pool, "sms", n, chunk=100)  # 20 batches
    gw = Gateway().start()
    a, b = _sms(gw), _sms(gw)
    try:
        t0 = datetime.now(UTC)
        s1, s2 = await asyncio.gather(
            Dispatcher(pool, {"sms": a}, batches=2, part_size=40).run_once(),
            Dispatcher(pool, {"sms": b}, batches=2, part_size=40).run_once(),
        )
        t1 = datetime.now(UTC)
    finally:
        await a.aclose()
        await b.aclose()
        gw.stop()
    # Both took part, and between them every batch was claimed once and dispatched.
    assert s1.claimed and s2.claimed, (s1, s2)
    assert s1.claimed + s2.claimed == s1.dispatched + s2.dispatched == 20
    assert s1.handed_off + s2.handed_off == n
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE dispatched_at IS NULL OR attempts <> 1") == 0
    # The provider's side: every message arrived in exactly one request (no dispatcher sent another's batch).
    rows = await _rows(pool, cid)
    keys = {c: _key(cid, r["day"], c, "sms") for c, r in rows.items()}
    assert set(gw.offered) == set(keys.values()) and set(gw.offered.values()) == {1}
    assert {p: k for p, k in gw.deliveries.items() if k != 1} == {} and len(gw.deliveries) == n
    # The hand-off instant and the provider's reference of every message.
    assert {r["state"] for r in rows.values()} == {"sent"}
    assert all(t0 <= r["handed_off_at"] <= t1 for r in rows.values())
    assert all(r["dispatch_ref"] == keys[c] for c, r in rows.items())
    # The outbox keeps the batches (the reports read their bodies), marked dispatched after every hand-off.
    late = await pool.fetchval(
        "SELECT count(*) FROM deliveries d JOIN outbox o ON d.provider_ref = 'outbox:' || o.id"
        " WHERE d.campaign_id = $1 AND NOT (o.created_at <= d.handed_off_at AND d.handed_off_at <= o.dispatched_at)",
        cid,
    )
    assert late == 0


class SlowSend:
    """A real adapter whose sends take `delay_s` longer (a provider that throttles, a long Retry-After)."""

    def __init__(self, inner, delay_s: float):
        self.inner, self.name, self.delay_s = inner, inner.name, delay_s
        self.started = asyncio.Event()

    async def send(self, messages):
        self.started.set()
        await asyncio.sleep(self.delay_s)
        return await self.inner.send(messages)

    async def reconcile(self, messages):
        return await self.inner.reconcile(messages)


async def test_a_slow_provider_call_keeps_its_claim(clean_db):
    pool = clean_db
    cid, _ = await _outbox_day(pool, "sms", 100, chunk=100)
    gw = Gateway().start()
    a, b = _sms(gw), _sms(gw)
    slow = SlowSend(a, delay_s=2.0)
    try:
        # The lease is a fraction of the provider call: renewed meanwhile, the other dispatcher finds nothing.
        task = asyncio.create_task(Dispatcher(pool, {"sms": slow}, lease_s=0.6).run_once())
        await asyncio.wait_for(slow.started.wait(), 30)
        other = []
        while not task.done():
            other.append(await Dispatcher(pool, {"sms": b}).run_once())
            await asyncio.sleep(0.2)
        first = await task
    finally:
        await a.aclose()
        await b.aclose()
        gw.stop()
    assert len(other) >= 5 and all(s.claimed == 0 for s in other)
    assert first.dispatched == 1 and first.handed_off == 100 and first.reconciled == 0
    assert set(gw.offered.values()) == {1} and len(gw.offered) == 100


# -- permanent and transient failures


async def test_permanent_failures_are_recorded_per_recipient_and_never_retried(clean_db):
    pool = clean_db
    n = 300
    invalid = 5
    cid, _ = await _outbox_day(pool, "sms", n, chunk=100, phones={invalid: "12345"})  # not a number
    refused = {f"138{c:08d}" for c in (17, 170)}
    opted_out = {f"138{c:08d}" for c in (42, 250)}
    credits_before = await pool.fetchval("SELECT sum(remaining) FROM sms_credits")
    gw = Gateway(Chaos(reject_numbers=refused, opted_out=opted_out)).start()
    sms = _sms(gw)
    try:
        first = await Dispatcher(pool, {"sms": sms}, part_size=64).run_once()
        requests = dict(gw.requests)
        again = await Dispatcher(pool, {"sms": sms}).run_once()
    finally:
        await sms.aclose()
        gw.stop()
    rows = await _rows(pool, cid)
    failed = {c: r["reason"] for c, r in rows.items() if r["state"] == "failed"}
    assert failed == {invalid: INVALID_CONTACT, 17: INVALID_CONTACT, 170: INVALID_CONTACT,
                      42: OPTED_OUT_AT_PROVIDER, 250: OPTED_OUT_AT_PROVIDER}  # fmt: skip
    assert first.failed == 5 and first.handed_off == n - 5 and first.dispatched == 3
    # Never retried: the second pass finds nothing to claim, and the gateway saw each refused number once
    # (the invalid one never: refused before any request).
    assert again.claimed == 0 and dict(gw.requests) == requests
    assert gw.offered[_key(cid, rows[17]["day"], 17, "sms")] == 1 and gw.offered[_key(cid, rows[42]["day"], 42, "sms")] == 1
    assert _key(cid, rows[invalid]["day"], invalid, "sms") not in gw.offered
    assert all(rows[c]["handed_off_at"] is None and rows[c]["cost"] is None for c in failed)
    # What a refused message held is given back: its caps (the counters equal the sent deliveries) and its
    # SMS credits (only what was sent is billed).
    await assert_fatigue_matches_ledger(pool)
    assert await pool.fetchval("SELECT sum(remaining) FROM sms_credits") == credits_before + 5
    # The send path's reconciliation keeps the dispatcher's answers (channels/outbox.py).
    known = await OutboxChannel(pool, "sms").reconcile(
        [Outbound(cid, 0, c, rows[c]["day"], "sms", "", "") for c in (17, 18)])
    assert {(o.consumer_id, o.state) for o in known} == {(17, "failed"), (18, "sent")}


async def test_throttled_provider_is_retried_later_no_sooner_than_retry_after(clean_db):
    pool = clean_db
    cid, _ = await _outbox_day(pool, "sms", 200, chunk=100)
    gw = Gateway(Chaos(throttle=1.0, retry_after_s=30)).start()
    sms = _sms(gw, backoff=Backoff(attempts=1))  # the adapter gives up at once: the dispatcher's backoff applies
    try:
        first = await Dispatcher(pool, {"sms": sms}).run_once()
        rows = await pool.fetch(
            "SELECT attempts, claimed_by IS NOT NULL AS in_question, next_attempt_at - now() AS wait, last_error,"
            " dispatched_at FROM outbox")
        assert first.released == 2 and first.handed_off == 0
        assert all(r["attempts"] == 1 and r["in_question"] and r["dispatched_at"] is None for r in rows)
        assert all(r["wait"] >= timedelta(seconds=29) and r["last_error"].startswith("Throttled") for r in rows)
        # Nothing recorded for the messages, and nothing claimable before Retry-After has passed.
        assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE handed_off_at IS NOT NULL OR state <> 'sent'") == 0
        assert (await Dispatcher(pool, {"sms": sms}).run_once()).claimed == 0
        # The provider recovers; the time has come.
        gw.chaos.throttle = 0.0
        await pool.execute("UPDATE outbox SET next_attempt_at = now()")
        second = await Dispatcher(pool, {"sms": sms}).run_once()
    finally:
        await sms.aclose()
        gw.stop()
    assert second.dispatched == 2 and second.handed_off == 200
    # The claims were in question (a 429 may follow a request that arrived): the gateway was asked first.
    assert gw.requests["lookup"] >= 1
    assert set(gw.offered.values()) == {1} and len(gw.offered) == 200
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE dispatched_at IS NULL OR last_error IS NOT NULL") == 0


async def _until(pool, sql: str, timeout_s: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await pool.fetchval(sql):
        assert asyncio.get_running_loop().time() < deadline, f"never: {sql}"
        await asyncio.sleep(0.05)


async def test_the_long_running_loop_retries_after_the_backoff_and_stops_on_request(clean_db):
    pool = clean_db
    await _outbox_day(pool, "sms", 100, chunk=100)
    gw = Gateway(Chaos(fail_before=1.0)).start()  # 503 to every batch until the test heals it
    sms = _sms(gw, backoff=Backoff(attempts=1))
    stop = asyncio.Event()
    try:
        dispatcher = Dispatcher(pool, {"sms": sms}, backoff=Backoff(base_s=0.05, cap_s=0.05))
        task = asyncio.create_task(dispatcher.run(stop, idle_s=0.05))
        await _until(pool, "SELECT attempts >= 3 FROM outbox")  # claimed again and again after each backoff
        gw.chaos.fail_before = 0.0
        await _until(pool, "SELECT dispatched_at IS NOT NULL FROM outbox")
        stop.set()
        await asyncio.wait_for(task, 30)
    finally:
        stop.set()
        await sms.aclose()
        gw.stop()
    assert gw.requests["503"] >= 2
    assert len(gw.offered) == 100 and set(gw.offered.values()) == {1}
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE handed_off_at IS NULL") == 0


class DeferThrice(Inbox):
    """451 at RCPT for these addresses three times each (every try of the adapter's first pass), then accepted."""

    def __init__(self, addresses: set[str]):
        super().__init__()
        self.defer = Counter(dict.fromkeys(addresses, 3))

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.defer[address] > 0:
            self.defer[address] -= 1
            return "451 4.3.0 try again later"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


async def test_smtp_deferrals_are_sent_on_a_later_claim(clean_db):
    pool = clean_db
    await _outbox_day(pool, "email", 40, chunk=20)
    server = SmtpServer(handler=DeferThrice({"user3@example.com", "user33@example.com"})).start()
    email = _email(server)
    try:
        first = await Dispatcher(pool, {"email": email}, backoff=Backoff(base_s=0.01, cap_s=0.01)).run_once()
        waiting = await pool.fetch("SELECT claimed_by, last_error FROM outbox WHERE dispatched_at IS NULL")
        await asyncio.sleep(0.05)
        second = await Dispatcher(pool, {"email": email}).run_once()
    finally:
        await email.aclose()
        server.stop()
    assert first.handed_off == 38 and first.released == 2 and first.failed == 0
    # Known not taken: released cleanly (the next claim asks nothing first), the reason kept.
    assert len(waiting) == 2 and all(r["claimed_by"] is None and "not taken" in r["last_error"] for r in waiting)
    assert second.handed_off == 2 and second.dispatched == 2 and second.reconciled == 0
    assert dict(server.inbox.received) == {f"user{c}@example.com": 1 for c in range(1, 41)}


# -- the send window (R-WIN-1)


class Later:
    """The dispatcher's clock `shift` ahead of the wall clock (the database's now() is not: leases and backoffs
    keep their real time), as for a dispatcher that comes back hours later."""

    def __init__(self, shift: timedelta = timedelta(0)):
        self.shift = shift

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.shift


async def test_a_batch_a_failing_provider_held_back_past_its_window_end_is_not_sent_and_gives_back(clean_db):
    pool = clean_db
    n = 200
    cid, now = await _outbox_day(pool, "sms", n, chunk=100)  # two batches, their window ends in an hour
    credits_sent = await pool.fetchval("SELECT sum(remaining) FROM sms_credits")
    assert await pool.fetchval("SELECT sum(sent) FROM fatigue_day") == n
    gw = Gateway(Chaos(fail_before=1.0)).start()  # 503 to every request
    sms = _sms(gw, backoff=Backoff(attempts=1))
    clock = Later()
    try:
        held = await Dispatcher(pool, {"sms": sms}, clock=clock).run_once()
        assert held.released == 2 and held.handed_off == 0 and held.expired == 0
        # The provider recovers only after the window's end; the batches' backoff has passed by then.
        gw.chaos.fail_before = 0.0
        await pool.execute("UPDATE outbox SET next_attempt_at = now()")
        clock.shift = timedelta(hours=2)
        late = await Dispatcher(pool, {"sms": sms}, clock=clock).run_once()
        again = await Dispatcher(pool, {"sms": sms}, clock=clock).run_once()
    finally:
        await sms.aclose()
        gw.stop()
    # Nothing reached the network after the window's end (the claims in question asked first, by reference).
    assert late.expired == n and late.handed_off == 0 and late.dispatched == 2 and late.claimed == 2
    assert gw.requests["lookup"] >= 1 and not gw.deliveries
    assert again.claimed == 0
    # The ledger says why, for every message of the batches.
    rows = await _rows(pool, cid)
    assert {(r["state"], r["reason"]) for r in rows.values()} == {("not_sent", NOT_SENT_DISPATCH_WINDOW)} and len(rows) == n
    assert all(r["handed_off_at"] is None and r["cost"] is None for r in rows.values())
    # What they held went back with them: their caps (the counters equal the sent deliveries: none) and their credits.
    await assert_fatigue_matches_ledger(pool)
    assert await pool.fetchval("SELECT sum(sent) FROM fatigue_day") == 0
    assert await pool.fetchval("SELECT sum(remaining) FROM sms_credits") == credits_sent + n
    done = await pool.fetch("SELECT dispatched_at, claimed_by, in_flight, lease_until FROM outbox")
    assert all(r["dispatched_at"] is not None and r["claimed_by"] is r["in_flight"] is r["lease_until"] is None for r in done)


class EndsAfterFirstPart:
    """A real adapter after whose first part the dispatcher's clock passes the window's end (`clock`): a batch
    whose hand-off straddles 22:00."""

    def __init__(self, inner, clock: Later):
        self.inner, self.name, self.clock = inner, inner.name, clock
        self.parts = 0

    async def send(self, messages):
        out = await self.inner.send(messages)
        self.parts += 1
        self.clock.shift = timedelta(hours=2)
        return out

    async def reconcile(self, messages):
        return await self.inner.reconcile(messages)


async def test_a_batch_inside_its_window_goes_and_a_part_after_its_end_does_not(clean_db):
    pool = clean_db
    ends_soon, _ = await _outbox_day(pool, "email", 40, chunk=40, window=timedelta(hours=1))
    ends_late, _ = await _outbox_day(pool, "email", 40, chunk=40, first=101, window=timedelta(hours=3))
    server = SmtpServer().start()
    email = _email(server)
    clock = Later()
    straddling = EndsAfterFirstPart(email, clock)
    try:
        # One batch at a time in id order: the first (its window ends in an hour) hands over its first part of 15;
        # then it is two hours later: its other parts stay, and the second batch (window open three hours) goes.
        stats = await Dispatcher(pool, {"email": straddling}, batches=1, part_size=15, clock=clock).run_once()
    finally:
        await email.aclose()
        server.stop()
    assert stats.dispatched == 2 and stats.handed_off == 15 + 40 and stats.expired == 25
    soon, late = await _rows(pool, ends_soon), await _rows(pool, ends_late)
    assert {c for c, r in soon.items() if r["state"] == "sent" and r["handed_off_at"] is not None} == set(range(1, 16))
    assert {c for c, r in soon.items() if (r["state"], r["reason"]) == ("not_sent", NOT_SENT_DISPATCH_WINDOW)} == set(
        range(16, 41))
    assert all(r["state"] == "sent" and r["handed_off_at"] is not None for r in late.values()) and len(late) == 40
    assert dict(server.inbox.received) == {f"user{c}@example.com": 1 for c in [*range(1, 16), *range(101, 141)]}
    await assert_fatigue_matches_ledger(pool)
    assert await pool.fetchval("SELECT sum(sent) FROM fatigue_day") == 15 + 40


# -- a dispatcher killed between hand-off and record


@pytest.mark.parametrize("death", ["cancelled", "process_died"])
async def test_sms_dispatcher_killed_after_handoff_restarted_sends_nothing_twice(clean_db, db_dsn, death):
    from sluice.db.pool import create_pool

    pool = clean_db
    n = 300
    cid, _ = await _outbox_day(pool, "sms", n, chunk=100)
    gw = Gateway().start()
    first, second = _sms(gw), _sms(gw)
    hang = HangAfterSend(first)
    # The first dispatcher on its own connections: "process_died" drops them all, as a killed process would.
    own = await create_pool(db_dsn, size=3)
    d1 = Dispatcher(own, {"sms": hang}, batches=1, part_size=40, lease_s=8 if death == "process_died" else 60)
    try:
        task = asyncio.create_task(d1.run_once())
        await asyncio.wait_for(hang.hanging.wait(), 30)
        if death == "process_died":
            own.terminate()  # no release reaches the database: only the lease ends the claim
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        held = await pool.fetchrow("SELECT id, claimed_by, attempts, dispatched_at, lease_until > now() AS leased"
                                   " FROM outbox WHERE attempts > 0")  # fmt: skip
        # Killed after the hand-off, before the record: the gateway has 40 messages the ledger knows nothing of.
        assert held["claimed_by"] == d1.name and held["dispatched_at"] is None and len(hang.handed) == 40
        assert sum(gw.offered.values()) == 40
        assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE handed_off_at IS NOT NULL") == 0
        d2 = Dispatcher(pool, {"sms": second}, batches=1, part_size=40)
        if death == "process_died":
            assert held["leased"]
            early = await d2.run_once()  # the dead one's claim still holds: only the two other batches
            assert early.dispatched == 2 and early.reconciled == 0
            while await pool.fetchval("SELECT lease_until > now() FROM outbox WHERE id = $1", held["id"]):
                await asyncio.sleep(0.2)
        restarted = await d2.run_once()
    finally:
        task.cancel()
        await own.close()
        await first.aclose()
        await second.aclose()
        gw.stop()
    # The restart asked the gateway about the 40 under way, found them, and sent only the rest.
    assert restarted.reconciled == 40 and gw.requests["lookup"] >= 1
    rows = await _rows(pool, cid)
    keys = {c: _key(cid, r["day"], c, "sms") for c, r in rows.items()}
    assert set(gw.offered) == set(keys.values()) and set(gw.offered.values()) == {1}
    assert all(r["state"] == "sent" and r["handed_off_at"] is not None and r["dispatch_ref"] == keys[c]
               for c, r in rows.items())  # fmt: skip
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE dispatched_at IS NULL") == 0
    assert await pool.fetchval("SELECT attempts FROM outbox WHERE id = $1", held["id"]) == 2


async def test_smtp_dispatcher_killed_after_handoff_sends_at_most_once(clean_db):
    pool = clean_db
    n = 120
    cid, _ = await _outbox_day(pool, "email", n, chunk=60)
    server = SmtpServer().start()
    first, second = _email(server), _email(server)
    hang = HangAfterSend(first)
    try:
        task = asyncio.create_task(Dispatcher(pool, {"email": hang}, batches=1, part_size=20).run_once())
        await asyncio.wait_for(hang.hanging.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sum(server.inbox.received.values()) == 20
        restarted = await Dispatcher(pool, {"email": second}, batches=1, part_size=20).run_once()
    finally:
        await first.aclose()
        await second.aclose()
        server.stop()
    # SMTP cannot be asked: the 20 under way at the kill are `unknown` (caps kept) and never sent again; the
    # other 40 of their batch, never handed over, went out normally.
    under_way = {m.consumer_id for m in hang.handed}
    rows = await _rows(pool, cid)
    assert {c for c, r in rows.items() if r["state"] == "unknown"} == under_way
    assert all(rows[c]["reason"] == SMTP_NO_LOOKUP and rows[c]["handed_off_at"] is None for c in under_way)
    assert restarted.unknown == 20 and restarted.handed_off == n - 20
    assert dict(server.inbox.received) == {f"user{c}@example.com": 1 for c in range(1, n + 1)}
    # The Message-ID of every handed-off email is derived from its delivery key.
    for c, r in rows.items():
        if c not in under_way:
            assert r["dispatch_ref"] == f"<{_key(cid, r['day'], c, 'email')}@mail.example>"
            assert server.inbox.messages[f"user{c}@example.com"][0]["Message-ID"] == r["dispatch_ref"]
    # The send path's reconciliation keeps them unknown (channels/outbox.py): never resent, never called sent.
    known = await OutboxChannel(pool, "email").reconcile(
        [Outbound(cid, 0, c, rows[c]["day"], "email", "", "") for c in sorted(under_way)])
    assert {o.state for o in known} == {"unknown"}


# -- the command line


async def test_cli_dispatch_once(clean_db, db_dsn):
    pool = clean_db
    cid, _ = await _outbox_day(pool, "sms", 100, chunk=50)
    gw = Gateway().start()
    try:
        env = {**os.environ, "DATABASE_URL": db_dsn, "SLUICE_GATEWAY_URL": gw.url, "SLUICE_DISPATCH_CHANNELS": "sms",
               "SLUICE_DATA_DIR": os.path.join(ROOT, ".no-stack")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sluice.api.cli", "dispatch", "--once", env=env, cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        gw.stop()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert '"handed_off": 100' in out.decode() and '"dispatched": 2' in out.decode()
    assert len(gw.offered) == 100 and set(gw.offered.values()) == {1}
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND handed_off_at IS NULL", cid) == 0
