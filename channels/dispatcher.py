"""The outbox dispatcher: drains the `outbox` table into channel adapters, each message once.

The send path commits a chunk's deliveries `sent` together with their outbox batch
(activities/send.py). For the channels named in SLUICE_DISPATCH_CHANNELS a dispatcher then hands
each batch's messages to that channel's provider adapter (channels/sms.py, channels/email.py: any
`Channel`) and records per message the hand-off instant and the provider's reference
(docs/channels.md, "The outbox dispatcher").

A batch's way through `Dispatcher.run_once`:
1. claim: a channel's undispatched batches whose lease is free and whose backoff has passed, taken
   FOR UPDATE SKIP LOCKED, stamped with this dispatcher's name, a lease and one more attempt, and
   committed at once: any number of dispatchers run side by side and none takes a batch another holds;
2. its messages: the batch's deliveries with no outcome recorded yet;
3. a batch whose previous claim ended without a release (`in_question`: its dispatcher died, or lost
   the provider's answer) first asks the provider by reference (`reconcile`) about the part that
   claim was handing over (`outbox.in_flight`): what the provider has takes its outcome, what it
   cannot tell about becomes `unknown`, and only what it does not have is sent;
4. send part by part (`send_and_settle`; each message's reference is its delivery key): a part is
   named in flight on the outbox row (committed) before it leaves, and its outcomes are recorded,
   with the next part named in flight and the lease renewed, in one transaction; the batch is
   marked dispatched with the last part;
5. the send window (R-WIN-1): no part leaves at or after the batch's `window_end` (the slice's, written
   with the batch by the send path; `may_hand_off`). What the batch still holds then is settled `not_sent`
   (NOT_SENT_DISPATCH_WINDOW) and gives back what it held, in the transaction that marks the batch
   dispatched: a batch a failing provider held back past 22:00 never goes out at night.

The guarantee: two dispatchers never hold one batch (SKIP LOCKED and the lease), so none hands over
a message another is handing over. A crash between a hand-off and its record leaves at most one part
per batch in question: with a provider that answers by reference (the SMS gateway, which also
deduplicates by messageId) each such message is settled by asking, exactly once; with one that cannot
be asked (SMTP) they become `unknown` and are never resent: at most once.

Outcomes: `sent` -> the delivery's handed_off_at and dispatch_ref; `failed` (permanent: invalid
contact, opted out at the provider) -> the delivery `failed` with its reason, its caps, coupon unit
and SMS credits given back, never retried; `unknown` -> the delivery `unknown`, caps kept, never
resent; not taken for now (`later`: SMTP 4xx once the adapter's tries are spent) -> left for a later
claim after a backoff. An adapter that raises (throttled or failing provider after its own retries,
a refused request) ends the claim: released after a backoff no sooner than Retry-After, in question,
since the request may have arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime
from typing import TypeVar

import asyncpg
import structlog
from sluice.activities.offers import RELEASED
from sluice.activities.send import LedgerDay, give_back_failed
from sluice.channels.base import Backoff, Channel, Outbound, Outcome, delivery_key, send_and_settle
from sluice.channels.email import SMTP_UNAVAILABLE
from sluice.schemas.activities import NOT_SENT_DISPATCH_WINDOW
from sluice.schemas.quota import CHANNEL_QUOTAS
from sluice.workers import metrics

log = structlog.get_logger("sluice.dispatcher")
T = TypeVar("T")

# Reasons of failed outcomes that mean "not taken, try again later" rather than "refused for good".
LATER_REASONS = (SMTP_UNAVAILABLE,)
# The wait before a released batch is claimed again: exponential in its attempts, capped, never sooner
# than the provider's Retry-After (Backoff.delay; its `attempts` is not used here: a batch is retried
# until its provider takes it).
RETRY_LATER = Backoff(base_s=1.0, cap_s=300.0)
# Why a claim ended without an answer for some messages (outbox.last_error).
NO_ANSWER = "no outcome for some messages"

# Up to $2 undispatched batches of channel $1 that no live claim holds and whose backoff has passed, in id
# order, skipping rows another dispatcher is claiming this instant; claimed by $3 until now() + $4 seconds.
# `in_question`: the previous claim never released the batch. Index outbox_undispatched: a range of the
# channel's pending batches; 0.7 ms for 4 of 25 pending batches.
CLAIM = """
    WITH c AS (
        SELECT id, claimed_by IS NOT NULL AS in_question FROM outbox
        WHERE channel = $1 AND dispatched_at IS NULL
          AND (lease_until IS NULL OR lease_until < now())
          AND (next_attempt_at IS NULL OR next_attempt_at <= now())
          AND id <> ALL($5::bigint[])
        ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
    )
    UPDATE outbox o SET claimed_by = $3, lease_until = now() + make_interval(secs => $4), attempts = o.attempts + 1
    FROM c WHERE o.id = c.id
    RETURNING o.id, o.campaign_id, o.phase, o.day, o.channel, o.attempts, c.in_question, o.window_end
"""
# The batch's messages with no outcome recorded: their delivery (this batch's reference) still `sent` (or
# `reserved`, a batch written by OutboxChannel.send) and not handed off; each with its position in the
# batch's arrays, `in_flight` when it is in the part a claim was handing over (outbox.in_flight). A primary-key
# probe per message (a join would scan the campaign's day when the statistics do not know it yet); 14 ms for
# 2,000 messages.
PENDING = """
    SELECT x.consumer_id, x.address, x.body, x.i::int AS i, coalesce(x.in_flight @> x.i::int, false) AS in_flight FROM (
        SELECT m.consumer_id, m.address, coalesce(o.bodies[m.i], o.body) AS body, m.i, o.in_flight,
               (SELECT d FROM deliveries d
                WHERE d.campaign_id = o.campaign_id AND d.phase = o.phase AND d.consumer_id = m.consumer_id
                  AND d.day = o.day AND d.channel = o.channel AND d.provider_ref = 'outbox:' || o.id
                  AND d.handed_off_at IS NULL) AS d
        FROM outbox o CROSS JOIN LATERAL unnest(o.consumer_ids, o.addresses) WITH ORDINALITY AS m(consumer_id, address, i)
        WHERE o.id = $1 OFFSET 0) x
    WHERE (x.d).state IN ('sent', 'reserved')
    ORDER BY x.i
"""
# The rows of a part, keyed like the ledger: $1 campaign, $2 phase, $3 day, $4 channel, $5 ids. Each
# touches only rows with no outcome yet, so a part recorded twice (a claim that lost its lease) changes
# nothing the second time. `consumer_id = ANY($5)` makes it one primary-key scan over the part's ids:
# joined to the unnest alone, the planner hashed the campaign's whole day (53 ms instead of 8 ms for a
# part of 500 in a day of 50,000, and growing with the day).
_OPEN = "d.campaign_id = $1 AND d.phase = $2 AND d.day = $3 AND d.channel = $4 AND d.consumer_id = ANY($5::bigint[])" \
        " AND d.consumer_id = u.id AND d.handed_off_at IS NULL AND d.state IN ('sent', 'reserved')"
# Handed off at $7 with the provider's references $6.
RECORD_HANDED = f"""
    UPDATE deliveries d SET handed_off_at = $7, dispatch_ref = u.ref, updated_at = now()
    FROM unnest($5::bigint[], $6::text[]) AS u(id, ref) WHERE {_OPEN}
"""
# Fate unknown ($6 reasons, $7 the references they were handed over under): caps kept, never resent.
RECORD_UNKNOWN = f"""
    UPDATE deliveries d SET state = 'unknown', reason = u.reason, dispatch_ref = u.ref, updated_at = now()
    FROM unnest($5::bigint[], $6::text[], $7::text[]) AS u(id, reason, ref) WHERE {_OPEN}
"""
# Refused for good ($6 reasons, $7 references); returns what giving back needs.
RECORD_FAILED = f"""
    UPDATE deliveries d SET state = 'failed', reason = u.reason, dispatch_ref = u.ref, updated_at = now()
    FROM unnest($5::bigint[], $6::text[], $7::text[]) AS u(id, reason, ref) WHERE {_OPEN}
    RETURNING d.consumer_id, d.fatigue_day, d.shop_id, d.template_group, d.cost
"""
# Not handed over before the batch's window end (R-WIN-1): not_sent with the reason $6, never resent; returns
# what giving back needs. Rows with an outcome already are left alone, like the records above.
RECORD_NOT_SENT = f"""
    UPDATE deliveries d SET state = 'not_sent', reason = $6, updated_at = now()
    FROM unnest($5::bigint[]) AS u(id) WHERE {_OPEN}
    RETURNING d.consumer_id, d.fatigue_day, d.shop_id, d.template_group, d.cost
"""
# The claim ($2 name, $3 attempt) still holds: renew its lease by $4 seconds, and name the part about to be
# handed over, positions $5..$6 of the batch's arrays (NULL: none). Committed before that part leaves: a claim
# that ends without recording it leaves these (and only these) to be asked about. Primary key.
RENEW = """
    UPDATE outbox SET lease_until = now() + make_interval(secs => $4),
                      in_flight = CASE WHEN $5::int IS NOT NULL THEN int4range($5, $6, '[]') END
    WHERE id = $1 AND claimed_by = $2 AND attempts = $3 RETURNING true
"""
# The lease alone, renewed while a provider call is under way.
KEEP = """
    UPDATE outbox SET lease_until = now() + make_interval(secs => $4)
    WHERE id = $1 AND claimed_by = $2 AND attempts = $3 RETURNING true
"""
# Every message has its outcome: the batch is dispatched. Primary key.
FINISH = """
    UPDATE outbox SET dispatched_at = now(), claimed_by = NULL, lease_until = NULL, next_attempt_at = NULL,
                      last_error = NULL, in_flight = NULL
    WHERE id = $1 AND claimed_by = $2 AND attempts = $3 RETURNING true
"""
# Give the claim up until now() + $5 seconds with the reason $6. In question ($4): the claimant's name and
# the part in flight stay, so the next claim asks the provider about it first; else the messages without an
# outcome are known not taken.
RELEASE = """
    UPDATE outbox SET claimed_by = CASE WHEN $4 THEN claimed_by END, in_flight = CASE WHEN $4 THEN in_flight END,
                      lease_until = NULL,
                      next_attempt_at = now() + make_interval(secs => $5), last_error = $6
    WHERE id = $1 AND claimed_by = $2 AND attempts = $3
"""


@dataclass(frozen=True)
class Batch:
    """A claimed outbox batch: one campaign phase day on one channel."""

    id: int
    campaign_id: int
    phase: int
    day: date
    channel: str
    attempts: int
    in_question: bool
    window_end: datetime | None = None  # R-WIN-1: nothing of the batch is handed over at or after it; None: no end

    def outbound(self, consumer_id: int, address: str, body: str) -> Outbound:
        return Outbound(self.campaign_id, self.phase, consumer_id, self.day, self.channel, address, body)

    def reference(self, o: Outcome) -> str:
        """What an outcome's message is known by: the provider's reference, else the delivery key it was given."""
        return o.provider_ref or delivery_key(self.outbound(o.consumer_id, "", ""))


@dataclass
class Verdict:
    """What a provider's answers about some messages mean for the ledger."""

    handed: list[Outcome] = field(default_factory=list)  # the provider took them
    failed: list[Outcome] = field(default_factory=list)  # refused for good
    unknown: list[Outcome] = field(default_factory=list)  # the provider may have them; never resent
    later: list[int] = field(default_factory=list)  # not taken for now: send again on a later claim
    unanswered: list[int] = field(default_factory=list)  # no answer about them


def judge(messages: list[Outbound], outcomes: list[Outcome]) -> Verdict:
    """Sort the answers about `messages` (one Outcome each, in any order; answers about other consumers
    are ignored, the first answer about a consumer counts). After a send, `unanswered` is a message the
    provider may or may not have; after a lookup by reference, one it does not have."""
    by_consumer: dict[int, Outcome] = {}
    for o in outcomes:
        by_consumer.setdefault(o.consumer_id, o)
    v = Verdict()
    for m in messages:
        o = by_consumer.get(m.consumer_id)
        if o is None:
            v.unanswered.append(m.consumer_id)
        elif o.state == "sent":
            v.handed.append(o)
        elif o.state == "unknown":
            v.unknown.append(o)
        elif (o.reason or "").startswith(LATER_REASONS):
            v.later.append(m.consumer_id)
        else:
            v.failed.append(o)
    return v


def may_hand_off(window_end: datetime | None, at: datetime) -> bool:
    """R-WIN-1: whether a part of a batch whose window ends at `window_end` may still be handed to its provider
    at `at`. The window is half-open, like the send path's (`SendActivities.send_slice` stops at
    `clock() >= window_end`): not at its end. A batch without an end (written before outbox.window_end
    existed, or by OutboxChannel.send) may always go."""
    if window_end is None:
        return True
    if window_end.tzinfo is None or at.tzinfo is None:
        raise ValueError("window_end and the instant must be timezone-aware")
    return at < window_end


def retry_delay(attempts: int, retry_after: float | None, jitter: float, backoff: Backoff = RETRY_LATER) -> float:
    """Seconds before a batch released after its `attempts`-th claim may be claimed again."""
    return backoff.delay(max(1, attempts), retry_after, jitter)


@dataclass
class DispatchStats:
    claimed: int = 0  # claims taken
    dispatched: int = 0  # batches marked dispatched
    handed_off: int = 0  # messages the providers took
    failed: int = 0  # messages refused for good
    unknown: int = 0  # messages whose fate cannot be known
    reconciled: int = 0  # of those, settled by a lookup by reference after a claim in question
    expired: int = 0  # messages settled not_sent: their batch's window had ended before they could go (R-WIN-1)
    released: int = 0  # claims given up for a later attempt

    def add(self, other: DispatchStats) -> DispatchStats:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


@dataclass(frozen=True)
class _Group:
    """The template group of a batch's deliveries, as release_reservations reads a template cap."""

    group: str


class _LostClaim(Exception):
    """Another dispatcher holds the batch now (this claim's lease ran out)."""


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Dispatcher:
    """Drains the outbox batches of the channels in `adapters` (channel name -> provider adapter).

    `batches`: claims taken at once per channel (drained concurrently); `part_size`: messages per adapter
    call and per recorded transaction (what a crash can leave in question); `lease_s`: how long a claim
    holds without progress (it is renewed with every part)."""

    def __init__(
        self, pool: asyncpg.Pool, adapters: Mapping[str, Channel], *, name: str | None = None, batches: int = 4,
        part_size: int = 500, lease_s: float = 60.0, backoff: Backoff = RETRY_LATER,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):  # fmt: skip
        if batches < 1 or part_size < 1 or lease_s <= 0:
            raise ValueError("batches and part_size must be at least 1 and lease_s above 0")
        self.pool = pool
        self.adapters = dict(adapters)
        self.name = name or default_name()
        self.batches = batches
        self.part_size = part_size
        self.lease_s = lease_s
        self.backoff = backoff
        self.clock = clock
        self._rng = random.Random()

    async def run_once(self, stop: asyncio.Event | None = None) -> DispatchStats:
        """Drain every batch claimable now (until `stop` is set: the batches under way are finished first). A
        batch released for later is not claimed again in this call, however short its backoff."""
        total = DispatchStats()
        released: list[int] = []
        while stop is None or not stop.is_set():
            stats = await self._round(released)
            total.add(stats)
            if not stats.claimed:
                break
        if total.claimed:
            log.info("outbox drained", dispatcher=self.name, **{f.name: getattr(total, f.name) for f in fields(total)})
        return total

    async def run(self, stop: asyncio.Event, *, idle_s: float = 1.0) -> None:
        """Drain until `stop` is set, one round of claims after another, looking again every `idle_s` when
        nothing was claimable. A released batch comes back when its backoff has passed."""
        log.info("dispatcher started", dispatcher=self.name, channels=sorted(self.adapters))
        while not stop.is_set():
            try:
                stats = await self._round([])
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # the database is away
                log.warning("dispatch round failed", dispatcher=self.name, error=f"{type(exc).__name__}: {exc}")
                stats = DispatchStats()
            if stats.claimed:
                log.info("outbox round", dispatcher=self.name, **{f.name: getattr(stats, f.name) for f in fields(stats)})
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), idle_s)
        log.info("dispatcher stopped", dispatcher=self.name)

    async def _round(self, released: list[int]) -> DispatchStats:
        """Claim up to `batches` batches of each channel (none of `released`) and drain them concurrently; the ids
        of those released for later are added to `released`."""
        claimed: list[Batch] = []
        for channel in self.adapters:
            claimed += await self._claim(channel, released)
        total = DispatchStats()
        for batch, stats in zip(claimed, await asyncio.gather(*(self._drain(b) for b in claimed)), strict=True):
            total.add(stats)
            if stats.released:
                released.append(batch.id)
        return total

    async def _claim(self, channel: str, exclude: list[int]) -> list[Batch]:
        rows = await self.pool.fetch(CLAIM, channel, self.batches, self.name, self.lease_s, exclude)
        return [Batch(**dict(r)) for r in rows]

    async def _pending(self, batch: Batch) -> tuple[list[Outbound], dict[int, int], set[int]]:
        """The batch's messages without an outcome, their positions in the batch, and those of the part a claim
        was handing over."""
        rows = await self.pool.fetch(PENDING, batch.id)
        return (
            [batch.outbound(r["consumer_id"], r["address"] or "", r["body"]) for r in rows],
            {r["consumer_id"]: r["i"] for r in rows},
            {r["consumer_id"] for r in rows if r["in_flight"]},
        )

    async def _drain(self, batch: Batch) -> DispatchStats:
        stats = DispatchStats(claimed=1)
        adapter = self.adapters[batch.channel]
        try:
            messages, position, in_flight = await self._pending(batch)
            v = Verdict()
            if batch.in_question and in_flight:
                # The previous claim was handing these over when it ended: ask the provider first, and send
                # only what it does not have.
                asked = [m for m in messages if m.consumer_id in in_flight]
                try:
                    answers = await self._holding(batch, adapter.reconcile(asked))
                except Exception as exc:
                    return await self._release(batch, stats, exc, in_question=True)
                v = judge(asked, answers)
                settled = {o.consumer_id for o in (*v.handed, *v.failed, *v.unknown)}
                messages = [m for m in messages if m.consumer_id not in settled]
                stats.reconciled += len(settled)
            parts = [messages[i : i + self.part_size] for i in range(0, len(messages), self.part_size)]
            spans = [(position[p[0].consumer_id], position[p[-1].consumer_id]) for p in parts]
            # The first part named in flight (or, with nothing to send, the batch dispatched) before it leaves.
            await self._record(batch, v, self.clock(), stats, flight=spans[0] if parts else None,
                               finish=not parts)  # fmt: skip
            later: list[int] = []
            for k, part in enumerate(parts):
                at = self.clock()
                if not may_hand_off(batch.window_end, at):
                    # R-WIN-1: the window ended while the batch waited (a throttled or failing provider, a backlog):
                    # this part, the later ones and those not taken for now are settled not sent, the batch done.
                    rest = [m.consumer_id for p in parts[k:] for m in p] + later
                    await self._record(batch, Verdict(), at, stats, flight=None, finish=True, expired=rest)
                    return stats
                try:
                    outcomes = await self._holding(batch, send_and_settle(adapter, part))
                except Exception as exc:  # throttled or failing after the adapter's own retries; a refused request
                    return await self._release(batch, stats, exc, in_question=True)
                v = judge(part, outcomes)
                if v.unanswered:  # the part stays in flight: the next claim asks about those
                    await self._record(batch, v, at, stats, flight=spans[k], finish=False)
                    return await self._release(batch, stats, NO_ANSWER, in_question=True)
                later += v.later
                last = k + 1 == len(parts)
                await self._record(batch, v, at, stats, flight=None if last else spans[k + 1], finish=last and not later)
            if later:
                return await self._release(batch, stats, f"{len(later)} not taken for now", in_question=False)
        except _LostClaim:
            log.warning("outbox claim lost to another dispatcher", dispatcher=self.name, batch=batch.id)
        except asyncio.CancelledError:
            # Stopped mid-batch: the claim ends now, in question (the provider may have what was under way).
            with contextlib.suppress(Exception):
                await asyncio.shield(self.pool.execute(RELEASE, batch.id, self.name, batch.attempts, True, 0.0,
                                                       "dispatcher stopped"))
            raise
        return stats

    async def _holding(self, batch: Batch, call: Awaitable[T]) -> T:
        """`call` (a provider call that may outlast the lease: retries, Retry-After), the claim's lease renewed
        every third of it meanwhile, so no other dispatcher takes the batch while this one is still at it."""

        async def keep() -> None:
            while True:
                await asyncio.sleep(self.lease_s / 3)
                with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await self.pool.fetchval(KEEP, batch.id, self.name, batch.attempts, self.lease_s)

        keeper = asyncio.create_task(keep())
        try:
            return await call
        finally:
            keeper.cancel()

    async def _record(
        self, batch: Batch, v: Verdict, at: datetime, stats: DispatchStats, *, flight: tuple[int, int] | None,
        finish: bool, expired: list[int] | None = None,
    ) -> None:  # fmt: skip
        """Outcomes and the claim in one transaction: the lease renewed with the next part named in flight
        (`flight`: its first and last position), or the batch dispatched (`finish`). The outcomes commit even
        when the claim was lost: they are what the provider answered. `expired`: consumers never handed over
        whose window has ended (R-WIN-1), settled not_sent and given back in the same transaction."""
        key = (batch.campaign_id, batch.phase, batch.day, batch.channel)
        async with self.pool.acquire() as conn, conn.transaction():
            if v.handed:
                await conn.execute(RECORD_HANDED, *key, [o.consumer_id for o in v.handed],
                                   [o.provider_ref for o in v.handed], at)  # fmt: skip
            if v.unknown:
                await conn.execute(RECORD_UNKNOWN, *key, [o.consumer_id for o in v.unknown], [o.reason for o in v.unknown],
                                   [batch.reference(o) for o in v.unknown])  # fmt: skip
            failed = []
            if v.failed:
                failed = await conn.fetch(RECORD_FAILED, *key, [o.consumer_id for o in v.failed],
                                          [o.reason for o in v.failed], [batch.reference(o) for o in v.failed])  # fmt: skip
                if failed:
                    await _give_back(conn, batch, sorted(failed, key=lambda r: r["consumer_id"]))
            not_sent = []
            if expired:
                not_sent = await conn.fetch(RECORD_NOT_SENT, *key, sorted(expired), NOT_SENT_DISPATCH_WINDOW)
                if not_sent:
                    await _give_back(conn, batch, sorted(not_sent, key=lambda r: r["consumer_id"]))
            if finish:
                held = await conn.fetchval(FINISH, batch.id, self.name, batch.attempts)
            else:
                held = await conn.fetchval(RENEW, batch.id, self.name, batch.attempts, self.lease_s, *(flight or (None, None)))
        # Committed (workers/metrics.py).
        metrics.count_dispatched(batch.channel, metrics.HANDED_OFF, len(v.handed))
        metrics.count_dispatched(batch.channel, metrics.FAILED, len(failed))
        metrics.count_dispatched(batch.channel, metrics.UNKNOWN, len(v.unknown))
        metrics.count_deliveries(batch.channel, metrics.FAILED, len(failed))
        metrics.count_dispatched(batch.channel, metrics.NOT_SENT, len(not_sent))
        metrics.count_deliveries(batch.channel, metrics.NOT_SENT, len(not_sent))
        stats.handed_off += len(v.handed)
        stats.failed += len(failed)
        stats.unknown += len(v.unknown)
        stats.expired += len(not_sent)
        if not held:
            raise _LostClaim
        stats.dispatched += finish

    async def _release(self, batch: Batch, stats: DispatchStats, why, *, in_question: bool) -> DispatchStats:
        delay = retry_delay(batch.attempts, getattr(why, "retry_after", None), self._rng.random(), self.backoff)
        reason = why if isinstance(why, str) else f"{type(why).__name__}: {why}"[:500]
        await self.pool.execute(RELEASE, batch.id, self.name, batch.attempts, in_question, delay, reason)
        log.warning("outbox batch released for later", dispatcher=self.name, batch=batch.id, attempts=batch.attempts,
                    retry_in_s=round(delay, 2), in_question=in_question, error=reason)  # fmt: skip
        stats.released += 1
        return stats


async def _give_back(conn, batch: Batch, failed: list) -> None:
    """What refused messages (or ones whose window ended before they could go, R-WIN-1) held goes back, as for
    any delivery that did not go out (R-OC-8): the caps on the day each was counted on, the coupon unit of its
    offer, its quota unit, its cost (R-AQ-5, R-ED-4, R-COST-BUDGET). The send path's own give-back
    (give_back_failed), in the same lock order. The dispatcher has no plan: a delivery the channel's quota
    priced (a cost recorded, 0 when free) held that quota."""
    shop, group = failed[0]["shop_id"], failed[0]["template_group"]
    quota = CHANNEL_QUOTAS.get(batch.channel) if any(r["cost"] is not None for r in failed) else None
    key = LedgerDay(batch.campaign_id, batch.phase, batch.day, batch.channel, shop, _Group(group) if group else None,
                    quota)  # fmt: skip
    metrics.count_claims(RELEASED, await give_back_failed(conn, key, failed))
