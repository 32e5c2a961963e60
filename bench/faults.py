"""`python -m bench.faults`: a campaign day through misbehaving providers, checked against their own books.

- sms: the real send path (SendActivities.send_slice: reserve with caps, segments and credits in the
  deciding transaction, the SMS gateway over HTTP, outcomes recorded) for a day of `--sms-recipients`,
  slices run concurrently outside a workflow (ActivityEnvironment), retried with their heartbeat as a
  worker's would be, then the end-of-day reconciliation (SendActivities.reconcile_pending). The gateway
  (tests/gateway.py, a process of its own) throttles (429 with Retry-After), fails before and after
  accepting (503/500), drops the connection before accepting (the batch is looked up by reference and,
  the gateway having none of it, resent once under the same references: channels/base.py,
  send_and_settle) and after accepting (found by the lookup, not resent), accepts and then hangs past
  the client's timeout (ambiguous), and refuses numbers for good (invalid, opted out), each at its rate;
- email: the same for `--email-recipients` through EmailChannel to the aiosmtpd server of
  tests/smtp_server.py (a process of its own) that defers recipients once (451), refuses them (550),
  drops connections at MAIL and drops others during DATA (ambiguous: SMTP has no lookup, they stay
  `unknown` by design, docs/channels.md).

Then the ledger (deliveries, sms_credits, sms_debits, fatigue_day) is compared with the provider's own
per-recipient counts (check_day): every `sent` delivery taken exactly once, every `failed` never,
nothing `reserved` or `unknown` left (email: `unknown` only where DATA was dropped), the credits spent
equal the segments of the sent deliveries (R-AQ-4) and their cost the segments at the tier price of
the recharge that paid (R-AQ-5). Figures and checks go to bench/results.json under "faults" (other
keys kept) and to docs/benchmarks.md; the exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import os
import random
import textwrap
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

RESULTS_KEY = "faults"
ROOT = Path(__file__).resolve().parent.parent
DOCS_START, DOCS_END = "<!-- bench:faults:start -->", "<!-- bench:faults:end -->"
DOCS_HEADING = "## Fault injection at 100,000 (`python -m bench.faults`)"
SHOP = "s1"
# The shop's text (with the beauty signature and the unsubscribe text: 91 characters, 2 segments, R-AQ-4).
SMS_TEXT = (
    "春季会员日:专属优惠券已到账,点击进店即可使用,本周内有效,数量有限先到先得。"
    "会员专享满199减30,叠加店铺券更划算,详情请进店查看活动页面与规则说明"
)
EMAIL_TITLE, EMAIL_TEXT = "Spring sale", "Hello, 20% off everything this week."


@dataclass(frozen=True)
class SmsFaults:
    """The gateway's misbehaviour: per batch request (throttle .. hang_after) and per number (invalid, opted_out)."""

    throttle: float = 0.04
    retry_after_s: int = 1
    fail_before: float = 0.03
    fail_after: float = 0.03
    drop_before: float = 0.02
    drop_after: float = 0.02
    hang_after: float = 0.02
    hang_s: float = 4.0
    invalid: float = 0.01
    opted_out: float = 0.005


@dataclass(frozen=True)
class EmailFaults:
    """The SMTP server's misbehaviour, per recipient (refuse, defer, drop_in_data) and per MAIL command (drop_at_mail)."""

    refuse: float = 0.02
    defer: float = 0.05
    drop_at_mail: float = 0.01
    drop_in_data: float = 0.005


@dataclass
class Delivery:
    consumer_id: int
    address: str
    state: str
    reason: str | None
    cost: Decimal | None = None


@dataclass
class Evidence:
    """What a day left: the ledger's rows and the provider's own per-recipient bookkeeping."""

    channel: str
    recipients: int  # the day's snapshot
    ledger: list[Delivery]
    provider: dict[str, int]  # address -> messages the provider took (gateway: handed on; SMTP: DATA answered 250)
    refused: dict[str, str]  # address the provider refused for good (its own record) -> the ledger's reason (prefix)
    undeliverable: set[str]  # addresses the provider was set to refuse (invalid, opted out, mailbox refused)
    caps_mismatch: int  # consumers whose fatigue counter differs from their live deliveries (R-OC-8)
    ambiguous_by_design: set[str] = field(default_factory=set)  # email: DATA dropped, SMTP cannot be asked
    # SMS only.
    segments_each: int = 0  # segments of the text as sent (R-AQ-4, channels/sms.py)
    provider_segments: dict[str, int] = field(default_factory=dict)  # address -> segments the gateway billed
    credits: list[tuple[int, int, Decimal]] = field(default_factory=list)  # (bought, remaining, price_fen) per recharge
    debits: dict[int, list[tuple[int, Decimal]]] = field(default_factory=dict)  # consumer -> (segments, price_fen) parts


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict:
        return {"ok": self.ok, "detail": self.detail}


def _few(items) -> str:
    items = sorted(items)
    return f"{len(items)}" + (f" (e.g. {items[:3]})" if items else "")


def check_day(ev: Evidence) -> list[Check]:
    """The exact checks of a day (module docstring): each a name, pass/fail and the counts behind it."""
    checks: list[Check] = []
    states = Counter(d.state for d in ev.ledger)
    by_state: dict[str, list[Delivery]] = {}
    for d in ev.ledger:
        by_state.setdefault(d.state, []).append(d)
    sent, failed = by_state.get("sent", []), by_state.get("failed", [])
    unknown = by_state.get("unknown", [])

    ids = {d.consumer_id for d in ev.ledger}
    checks.append(Check("one_delivery_per_recipient", len(ev.ledger) == len(ids) == ev.recipients,
                        f"{len(ev.ledger)} rows, {len(ids)} consumers, {ev.recipients} in the snapshot"))
    # Nothing left to settle: email's DATA drops stay `unknown` by design (no lookup), and only those.
    allowed_unknown = {d.consumer_id for d in unknown if d.address in ev.ambiguous_by_design}
    unsettled = [d.consumer_id for d in ev.ledger
                 if d.state not in ("sent", "failed") and d.consumer_id not in allowed_unknown]
    checks.append(Check("nothing_reserved_or_unknown", not unsettled,
                        f"states {dict(sorted(states.items()))}; unsettled {_few(unsettled)}"))
    if ev.ambiguous_by_design:
        expected = {d.consumer_id for d in ev.ledger if d.address in ev.ambiguous_by_design}
        got = {d.consumer_id for d in unknown}
        checks.append(Check("unknown_exactly_the_data_drops", got == expected,
                            f"{len(got)} unknown, {len(expected)} recipients whose DATA was dropped"))
    bad = [d.consumer_id for d in sent if ev.provider.get(d.address, 0) != 1]
    checks.append(Check("sent_taken_once", not bad, f"{len(sent)} sent; provider count != 1: {_few(bad)}"))
    bad = [d.consumer_id for d in failed + unknown if ev.provider.get(d.address, 0) != 0]
    checks.append(Check("failed_never_taken", not bad,
                        f"{len(failed)} failed, {len(unknown)} unknown; provider count != 0: {_few(bad)}"))
    sent_addresses = {d.address for d in sent}
    outside = [a for a, n in ev.provider.items() if n and a not in sent_addresses]
    total = sum(ev.provider.values())
    checks.append(Check("provider_holds_only_sent", not outside and total == len(sent),
                        f"provider took {total} messages for {len(ev.provider)} recipients; outside `sent`: {_few(outside)}"))
    wrong = [d.consumer_id for d in ev.ledger if d.address in ev.refused
             and not (d.state == "failed" and (d.reason or "").startswith(ev.refused[d.address]))]
    checks.append(Check("refusals_failed_with_reason", not wrong,
                        f"{sum(d.address in ev.refused for d in ev.ledger)} refused by the provider; wrong: {_few(wrong)}"))
    wrong = [d.consumer_id for d in ev.ledger if d.address in ev.undeliverable and d.state != "failed"]
    checks.append(Check("undeliverable_failed", not wrong,
                        f"{sum(d.address in ev.undeliverable for d in ev.ledger)} set to be refused; not failed: {_few(wrong)}"))
    checks.append(Check("caps_match_ledger", ev.caps_mismatch == 0, f"{ev.caps_mismatch} consumers differ"))
    if ev.channel == "sms":
        checks += _check_money(ev, sent, failed)
    return checks


def _check_money(ev: Evidence, sent: list[Delivery], failed: list[Delivery]) -> list[Check]:
    """R-AQ-4/5: credits and costs of the sent deliveries by the formulas, the gateway's billing alike."""
    from sluice.channels.sms import price_fen

    checks = []
    spent = sum(bought - remaining for bought, remaining, _ in ev.credits)
    billed = sum(ev.provider_segments.values())
    expected = ev.segments_each * len(sent)
    checks.append(Check("credits_spent_equal_sent_segments", spent == expected == billed,
                        f"credits spent {spent}, {len(sent)} sent x {ev.segments_each} segments = {expected},"
                        f" gateway billed {billed}"))
    bad = [d.consumer_id for d in sent if ev.provider_segments.get(d.address) != ev.segments_each]
    checks.append(Check("gateway_segments_per_sent", not bad, f"segments != {ev.segments_each}: {_few(bad)}"))
    tiers = [(bought, price, price_fen(bought)) for bought, _, price in ev.credits]
    checks.append(Check("recharge_tier_prices", all(p == f for _, p, f in tiers),
                        "; ".join(f"{b} bought at {p} fen (tier {f})" for b, p, f in tiers)))
    bad = []
    for d in sent:
        parts = ev.debits.get(d.consumer_id, [])
        if sum(n for n, _ in parts) != ev.segments_each or d.cost != sum((n * p for n, p in parts), Decimal(0)) / 100:
            bad.append(d.consumer_id)
    bad += [d.consumer_id for d in failed if d.cost is not None]
    checks.append(Check("cost_each_segments_times_tier", not bad,
                        f"sent cost != segments x price of the paying recharge, or failed with a cost: {_few(bad)}"))
    cost = sum((d.cost or Decimal(0) for d in sent), Decimal(0))
    by_credits = sum(((bought - remaining) * price for bought, remaining, price in ev.credits), Decimal(0)) / 100
    checks.append(Check("cost_total_equals_credits_spent", cost == by_credits,
                        f"ledger {cost} yuan, credits spent x tier prices {by_credits} yuan"))
    return checks


def pick(rng: random.Random, population: list, rate: float, exclude: set = frozenset()) -> set:
    """round(rate x len(population)) members chosen at random, none of `exclude`."""
    pool = [x for x in population if x not in exclude]
    return set(rng.sample(pool, min(len(pool), round(rate * len(population)))))


# --- running a day ---------------------------------------------------------------------------------

async def run_slices_retrying(send, slices: list, concurrency: int, attempts: int = 10) -> tuple[list, float, Counter]:
    """The send activity over `slices`, at most `concurrency` at once, each retried as Temporal retries it (the
    next attempt number, its last heartbeat's details): (results, seconds, retries by error type)."""
    from temporalio.exceptions import ApplicationError
    from temporalio.testing import ActivityEnvironment

    gate = asyncio.Semaphore(concurrency)
    retries: Counter = Counter()

    async def run(inp):
        details: list = []

        def beat(*d):
            details[:] = d

        async with gate:
            for attempt in range(1, attempts + 1):
                env = ActivityEnvironment()
                env.info = dataclasses.replace(env.info, attempt=attempt, heartbeat_details=list(details))
                env.on_heartbeat = beat
                try:
                    return await env.run(send.send_slice, inp)
                except Exception as exc:
                    if attempt == attempts or isinstance(exc, ApplicationError) and exc.non_retryable:
                        raise
                    retries[type(exc).__name__] += 1
                    await asyncio.sleep(0.2)

    t0 = time.perf_counter()
    results = await asyncio.gather(*(run(s) for s in slices))
    return results, time.perf_counter() - t0, retries


# The day's deliveries with each recipient's address on the channel. campaign_id prefix of the primary key.
_LEDGER_SMS = """
    SELECT d.consumer_id, c.phone AS address, d.state, d.reason, d.cost FROM deliveries d
    JOIN shop_customers c ON c.shop_id = d.shop_id AND c.consumer_id = d.consumer_id WHERE d.campaign_id = $1
"""
_LEDGER_EMAIL = """
    SELECT d.consumer_id, c.email AS address, d.state, d.reason, d.cost FROM deliveries d
    JOIN shop_customers c ON c.shop_id = d.shop_id AND c.consumer_id = d.consumer_id WHERE d.campaign_id = $1
"""
# The shop's recharges: what each bought, has left and cost per segment.
_CREDITS = "SELECT bought, remaining, price_fen FROM sms_credits WHERE shop_id = $1 ORDER BY credit_id"
# Which recharge paid for whose segments (the campaign's debit rows unnested), at that recharge's price.
_DEBIT_PARTS = """
    SELECT u.consumer_id, u.n, c.price_fen FROM sms_debits b
    JOIN sms_credits c ON c.shop_id = b.shop_id AND c.credit_id = b.credit_id,
    unnest(b.consumer_ids, b.segments) AS u(consumer_id, n)
    WHERE b.campaign_id = $1
"""
# Consumers whose fatigue counter on the channel differs from their deliveries holding caps (sent, or still
# open: reserved, unknown); a failed one gave its caps back (R-OC-8).
_CAPS_MISMATCH = """
    SELECT count(*) FROM (SELECT * FROM fatigue_day WHERE channel = $1) f FULL JOIN (
        SELECT consumer_id, fatigue_day, count(*) AS n FROM deliveries
        WHERE channel = $1 AND state IN ('sent', 'reserved', 'unknown') GROUP BY 1, 2) d
    ON d.consumer_id = f.consumer_id AND d.fatigue_day = f.day
    WHERE coalesce(f.sent, 0) <> coalesce(d.n, 0)
"""
_SHOP_ROW = "INSERT INTO shops (shop_id, name, timezone, industry) VALUES ($1, $1, 'UTC', 'beauty')"
_CONSUMERS = "INSERT INTO consumers (consumer_id) SELECT g FROM generate_series(1, $1) g"
# Every customer reachable on both channels: a mobile number and a mailbox of its own.
_CUSTOMERS = """
    INSERT INTO shop_customers (shop_id, consumer_id, phone, phone_valid, email, email_valid)
    SELECT $1, g, '138' || lpad(g::text, 8, '0'), true, 'c' || g || '@example.com', true FROM generate_series(1, $2) g
"""


def _gateway_refusals() -> dict[str, str]:
    from sluice.channels.base import INVALID_CONTACT, OPTED_OUT_AT_PROVIDER

    # tests/gateway.py's refusal names -> the reason the ledger holds (channels/sms.py, _reject_reason).
    return {"REJECTED_DESTINATION": INVALID_CONTACT, "REJECTED_OPTED_OUT": OPTED_OUT_AT_PROVIDER}


def phone(c: int) -> str:
    return f"138{c:08d}"


def mailbox(c: int) -> str:
    return f"c{c}@example.com"


async def _ledger(pool, sql: str, campaign: int) -> list[Delivery]:
    return [Delivery(r["consumer_id"], r["address"], r["state"], r["reason"], r["cost"]) for r in await pool.fetch(sql, campaign)]


def _slices(campaign: int, day, now, channel, n: int, slice_size: int, chunk_size: int, text: str, title: str | None):
    from sluice.schemas.activities import SendSliceInput

    return [
        SendSliceInput(campaign_db_id=campaign, shop_id=SHOP, phase_index=0, day=day, channel=channel,
                       template_cap=None, text=text, title=title, seq_lo=lo, seq_hi=min(lo + slice_size, n),
                       budget=slice_size, decided_at=now, window_end=now + timedelta(hours=6), chunk_size=chunk_size)
        for lo in range(0, n, slice_size)
    ]  # fmt: skip


async def _reconcile(send, campaign: int, channel) -> tuple[dict, float]:
    from sluice.schemas.activities import ReconcileInput
    from temporalio.testing import ActivityEnvironment

    t0 = time.perf_counter()
    res = await ActivityEnvironment().run(send.reconcile_pending, ReconcileInput(campaign_db_id=campaign, shop_id=SHOP,
                                                                                 channel=channel))
    return res.model_dump(), time.perf_counter() - t0


@dataclass
class Day:
    """A day's figures and the evidence the checks read."""

    figures: dict
    evidence: Evidence


async def _database(dsn: str, n: int):
    """A fresh migrated database with the shop and `n` customers reachable by SMS and email; (its name, pool)."""
    from sluice.db.pool import create_pool

    from bench.stack import fresh_database

    name = f"bench_faults_{uuid.uuid4().hex[:6]}"
    db_dsn = await fresh_database(dsn, name)
    pool = await create_pool(db_dsn, size=16)
    await pool.execute(_SHOP_ROW, SHOP)
    await pool.execute(_CONSUMERS, n)
    await pool.execute(_CUSTOMERS, SHOP, n)
    return name, pool


async def _drop_database(dsn: str, name: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def sms_day(dsn: str, n: int, faults: SmsFaults, *, slice_size: int = 10_000, chunk_size: int = 2_000,
                  concurrency: int = 8, batch_size: int = 250, timeout_s: float = 2.0, attempts: int = 5,
                  seed: int = 1) -> Day:  # fmt: skip
    """A day of `n` SMS recipients through a gateway misbehaving as `faults` says, reconciled; its evidence."""
    from sluice.activities.send import SendActivities
    from sluice.channels.base import Backoff
    from sluice.channels.outbox import OutboxChannel
    from sluice.channels.registry import ChannelRegistry
    from sluice.channels.sms import INDUSTRY_SIGNATURES, SmsGatewayChannel, recharge, segments, sms_text
    from sluice.schemas.campaign import Channel

    from bench.stack import bench_campaign
    from tests.gateway import Chaos, Gateway

    rng = random.Random(seed)
    consumers = list(range(1, n + 1))
    invalid_ids = pick(rng, consumers, faults.invalid)
    invalid = {phone(c) for c in invalid_ids}
    opted_out = {phone(c) for c in pick(rng, consumers, faults.opted_out, invalid_ids)}
    chaos = Chaos(throttle=faults.throttle, retry_after_s=faults.retry_after_s, fail_before=faults.fail_before,
                  fail_after=faults.fail_after, drop_before=faults.drop_before, drop_after=faults.drop_after,
                  hang_after=faults.hang_after, hang_s=faults.hang_s, reject_numbers=invalid, opted_out=opted_out,
                  seed=seed)  # fmt: skip
    name, pool = await _database(dsn, n)
    gw = Gateway(chaos).start_process()
    sms = SmsGatewayChannel("sms", gw.url, timeout_s=timeout_s, batch_size=batch_size,
                            backoff=Backoff(attempts=attempts, base_s=0.05, cap_s=2.0))
    try:
        now = datetime.now(UTC)
        each = segments(sms_text(SMS_TEXT, INDUSTRY_SIGNATURES["beauty"]))
        # Two recharges of different tiers (R-AQ-5): the earlier-expiring one pays first, then the other.
        await recharge(pool, SHOP, n // 2, now - timedelta(days=30))
        await recharge(pool, SHOP, max(3 * n, 15_000), now - timedelta(days=1))
        campaign = await bench_campaign(pool, SHOP, "sms", "K-ACQUIRE", now.date(), n)
        await pool.execute("VACUUM ANALYZE")
        send = SendActivities(pool, ChannelRegistry({"sms": sms, "chat": OutboxChannel(pool, "chat")}),
                              platform_timezone="UTC")
        slices = _slices(campaign, now.date(), now, Channel.sms, n, slice_size, chunk_size, SMS_TEXT, None)
        results, secs, retries = await run_slices_retrying(send, slices, concurrency)
        reconciled, reconcile_s = await _reconcile(send, campaign, Channel.sms)
        books = gw.per_number()
        requests = gw.counts()["requests"]
        ledger = await _ledger(pool, _LEDGER_SMS, campaign)
        debits: dict[int, list] = {}
        for r in await pool.fetch(_DEBIT_PARTS, campaign):
            debits.setdefault(r["consumer_id"], []).append((r["n"], r["price_fen"]))
        ev = Evidence(
            channel="sms", recipients=n, ledger=ledger, provider=books["deliveries"],
            refused={p: _gateway_refusals()[name] for p, name in books["rejected"].items()}, undeliverable=invalid | opted_out,
            caps_mismatch=await pool.fetchval(_CAPS_MISMATCH, "sms"), segments_each=each,
            provider_segments=books["segments"], credits=[tuple(r) for r in await pool.fetch(_CREDITS, SHOP)],
            debits=debits,
        )  # fmt: skip
        states = Counter(d.state for d in ledger)
        reasons = Counter((d.reason or "").split(":")[0] for d in ledger if d.state == "failed")
        figures = {
            "recipients": n, "seconds": round(secs, 2), "recipients_per_s": round(n / secs, 1),
            "reconcile_s": round(reconcile_s, 2), "slice_size": slice_size, "chunk_size": chunk_size,
            "concurrency": concurrency, "gateway_batch": batch_size, "timeout_s": timeout_s, "attempts": attempts,
            "faults": dataclasses.asdict(faults), "gateway_requests": requests,
            "activity_retries": dict(retries), "states": dict(states), "failed_reasons": dict(reasons),
            "slices_sent": sum(r.sent for r in results), "reconciled": reconciled,
            "segments_each": each, "cost_yuan": str(sum((d.cost or 0 for d in ledger if d.state == "sent"), Decimal(0))),
        }  # fmt: skip
        return Day(figures, ev)
    finally:
        await sms.aclose()
        gw.stop()
        await pool.close()
        await _drop_database(dsn, name)


def _smtp_serve(port: int, faults, ready, stop, out) -> None:
    from aiosmtpd.controller import Controller

    from tests.smtp_server import Inbox

    inbox = Inbox(faults)
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    stop.wait()
    controller.stop()
    out.put({"received": dict(inbox.received), "dropped": dict(inbox.dropped), "deferred": len(inbox.deferred),
             "mails": inbox.mails, "sessions": len(inbox.sessions)})  # fmt: skip


class SmtpProcess:
    """tests/smtp_server.py's Inbox (with its faults) in a process of its own; stop() answers its books."""

    def __init__(self, faults):
        from tests.smtp_server import _free_port

        ctx = multiprocessing.get_context("spawn")
        self.port = _free_port()
        ready, self._stop, self._out = ctx.Event(), ctx.Event(), ctx.Queue()
        self._process = ctx.Process(target=_smtp_serve, args=(self.port, faults, ready, self._stop, self._out), daemon=True)
        self._process.start()
        if not ready.wait(30):
            self._process.terminate()
            raise TimeoutError("smtp server did not start")

    def stop(self) -> dict:
        self._stop.set()
        books = self._out.get(timeout=60)
        self._process.join(10)
        return books

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)


async def email_day(dsn: str, n: int, faults: EmailFaults, *, slice_size: int = 2_500, chunk_size: int = 500,
                    concurrency: int = 4, connections: int = 4, attempts: int = 5, seed: int = 2) -> Day:  # fmt: skip
    """A day of `n` email recipients through an SMTP server misbehaving as `faults` says, reconciled; its evidence."""
    from sluice.activities.send import SendActivities
    from sluice.channels.base import Backoff
    from sluice.channels.email import EmailChannel
    from sluice.channels.outbox import OutboxChannel
    from sluice.channels.registry import ChannelRegistry
    from sluice.schemas.campaign import Channel

    from bench.stack import bench_campaign
    from tests.smtp_server import SmtpFaults

    rng = random.Random(seed)
    consumers = list(range(1, n + 1))
    refuse_ids = pick(rng, consumers, faults.refuse)
    refuse = {mailbox(c) for c in refuse_ids}
    drop_in_data = {mailbox(c) for c in pick(rng, consumers, faults.drop_in_data, refuse_ids)}
    defer = {mailbox(c) for c in pick(rng, consumers, faults.defer)}
    drop_at_mail = set(rng.sample(range(1, n + 1), round(faults.drop_at_mail * n)))
    smtp_faults = SmtpFaults(refuse=refuse, defer_once=defer, drop_at_mail=drop_at_mail, drop_in_data=drop_in_data)
    name, pool = await _database(dsn, n)
    server = SmtpProcess(smtp_faults)
    email = EmailChannel(host="127.0.0.1", port=server.port, sender="shop@mail.example", connections=connections,
                         timeout_s=10, backoff=Backoff(attempts=attempts, base_s=0.02, cap_s=0.5),
                         unsubscribe_url="https://shop.example/u")  # fmt: skip
    books = None
    try:
        now = datetime.now(UTC)
        campaign = await bench_campaign(pool, SHOP, "email", "K-ACQUIRE", now.date(), n)
        await pool.execute("VACUUM ANALYZE")
        send = SendActivities(pool, ChannelRegistry({"email": email, "chat": OutboxChannel(pool, "chat")}),
                              platform_timezone="UTC")
        slices = _slices(campaign, now.date(), now, Channel.email, n, slice_size, chunk_size, EMAIL_TEXT, EMAIL_TITLE)
        results, secs, retries = await run_slices_retrying(send, slices, concurrency)
        reconciled, reconcile_s = await _reconcile(send, campaign, Channel.email)
        await email.aclose()
        books = server.stop()
        ledger = await _ledger(pool, _LEDGER_EMAIL, campaign)
        ev = Evidence(channel="email", recipients=n, ledger=ledger, provider=books["received"],
                      refused={a: "smtp_550" for a in refuse}, undeliverable=refuse,
                      caps_mismatch=await pool.fetchval(_CAPS_MISMATCH, "email"),
                      ambiguous_by_design=drop_in_data)  # fmt: skip
        states = Counter(d.state for d in ledger)
        reasons = Counter((d.reason or "").split(":")[0] for d in ledger if d.state in ("failed", "unknown"))
        figures = {
            "recipients": n, "seconds": round(secs, 2), "recipients_per_s": round(n / secs, 1),
            "reconcile_s": round(reconcile_s, 2), "slice_size": slice_size, "chunk_size": chunk_size,
            "concurrency": concurrency, "connections": connections, "attempts": attempts,
            "faults": dataclasses.asdict(faults), "server": {k: v for k, v in books.items() if k != "received"},
            "activity_retries": dict(retries), "states": dict(states), "failed_or_unknown_reasons": dict(reasons),
            "slices_sent": sum(r.sent for r in results), "reconciled": reconciled,
        }  # fmt: skip
        return Day(figures, ev)
    finally:
        await email.aclose()
        if books is None:
            server.kill()
        await pool.close()
        await _drop_database(dsn, name)


# --- reporting -------------------------------------------------------------------------------------

def summary(day: Day) -> dict:
    """The day's figures with its checks (pass/fail and counts)."""
    checks = check_day(day.evidence)
    return {**day.figures, "checks": {c.name: c.as_dict() for c in checks}, "all_checks_pass": all(c.ok for c in checks)}


def docs_block(results: dict) -> str:
    lines = [DOCS_START, "", textwrap.fill(
             "What it runs (`bench/faults.py`, figures and checks in `bench/results.json` under `faults`): the real"
             " send path (`SendActivities.send_slice`, slices concurrently outside a workflow, each retried with its"
             " heartbeat as a worker would) for an SMS day through the loopback gateway (`tests/gateway.py`, a"
             " process of its own) throttling with Retry-After, failing with 503 before and 500 after accepting,"
             " dropping the connection before accepting (looked up by reference, then resent once under the same"
             " references, `send_and_settle`) and after accepting (found by the lookup, not resent), hanging past"
             " the client's timeout after accepting (ambiguous), and refusing invalid and opted-out numbers; and an"
             " email day through"
             " `EmailChannel` to the aiosmtpd server (`tests/smtp_server.py`) deferring (451), refusing (550) and"
             " dropping connections at MAIL and during DATA. Then `reconcile_pending`, and the ledger is compared"
             " with the provider's own per-recipient books: each `sent` taken exactly once, each `failed` never,"
             " nothing `reserved`/`unknown` left (email: `unknown` exactly where DATA was dropped, SMTP having no"
             " lookup), credits spent = sent x segments = what the gateway billed, and each cost = segments x the"
             " tier price of the recharge that paid (R-AQ-4, R-AQ-5). The bench exits 1 when a check fails;"
             " `tests/test_bench_faults.py` runs the same checks at 2,000 recipients and tampers with them.", 78), "",
             f"Last run {results['measured_at'][:10]}, {results['cpus']} cores, load average"
             f" {results['load_avg_before'][0]:.1f} before it (a shared machine).", ""]  # fmt: skip
    for channel in ("sms", "email"):
        r = results.get(channel)
        if not r:
            continue
        faults = ", ".join(f"{k} {v}" for k, v in r["faults"].items())
        injected = r.get("gateway_requests") or r.get("server")
        lines += [
            f"**{channel}**: {r['recipients']:,} recipients in {r['seconds']:.1f} s = {r['recipients_per_s']:,.0f}/s"
            f" (reconciliation {r['reconcile_s']:.1f} s); states {r['states']}; activity retries {r['activity_retries'] or 0}.",
            f"Faults asked: {faults}. Injected: {injected}.",
            f"Not sent, by reason: {r.get('failed_reasons') or r.get('failed_or_unknown_reasons')}.",
            "",
            "| check | result | counts |",
            "|---|---|---|",
            *[f"| {name} | {'pass' if c['ok'] else 'FAIL'} | {c['detail']} |" for name, c in r["checks"].items()],
            "",
        ]
    lines.append(DOCS_END)
    return "\n".join(lines)


async def main(args) -> int:
    from bench.stack import record_results, replace_docs_block

    results: dict = {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
                     "load_avg_before": [round(x, 2) for x in os.getloadavg()]}
    if args.sms_recipients:
        results["sms"] = summary(await sms_day(args.dsn, args.sms_recipients, SmsFaults(), concurrency=args.concurrency,
                                               batch_size=args.batch_size))
        _print("sms", results["sms"])
    if args.email_recipients:
        results["email"] = summary(await email_day(args.dsn, args.email_recipients, EmailFaults()))
        _print("email", results["email"])
    results["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    results["all_checks_pass"] = all(results[c]["all_checks_pass"] for c in ("sms", "email") if c in results)
    if args.results:
        record_results(args.results, RESULTS_KEY, results)
    if args.docs:
        replace_docs_block(args.docs, DOCS_START, DOCS_END, docs_block(results), DOCS_HEADING)
    return 0 if results["all_checks_pass"] else 1


def _print(channel: str, r: dict) -> None:
    print(f"{channel}: {r['recipients']:,} recipients in {r['seconds']:.1f}s = {r['recipients_per_s']:,.0f}/s,"
          f" reconcile {r['reconcile_s']:.1f}s; states {r['states']}; retries {r['activity_retries']}")
    print(f"  injected: {r.get('gateway_requests') or r.get('server')}")
    for name, c in r["checks"].items():
        print(f"  {'pass' if c['ok'] else 'FAIL'}  {name}: {c['detail']}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.splitlines()[0])
    p.add_argument("--dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--sms-recipients", type=int, default=100_000, help="recipients of the SMS day (0: skip)")
    p.add_argument("--email-recipients", type=int, default=10_000, help="recipients of the email day (0: skip)")
    p.add_argument("--concurrency", type=int, default=8, help="SMS slices at once")
    p.add_argument("--batch-size", type=int, default=250, help="numbers per gateway request")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results.json")
    p.add_argument("--no-results", dest="results", action="store_const", const=None)
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no-docs", dest="docs", action="store_const", const=None)
    raise SystemExit(asyncio.run(main(p.parse_args())))
