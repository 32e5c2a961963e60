"""Batch send: a slice [seq_lo, seq_hi) of a day's snapshot, chunk by chunk.

Per chunk (DESIGN 3, 4; PERF-NOTES):
1. one transaction reserves: lock each consumer's fatigue_day row (in
   consumer order, so racing campaigns never deadlock), read the other caps
   in the following statements (fresh snapshots, PERF pitfall 1), decide,
   insert the delivery rows and bump the counters; commit;
2. hand the reserved deliveries to the channel (idempotent per delivery);
3. record the outcomes; a failed delivery releases its reservation (R-OC-8);
4. heartbeat the cursor, so a retried attempt resumes after the last
   finished chunk, and a re-run chunk finds its own rows in the ledger
   instead of deciding them again.

Every statement is driven by arrays of the chunk (unnest), so the planner
knows their size and uses primary-key lookups (PERF pitfall 2).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import asyncpg
from temporalio import activity

from activities.audience import CHANNEL_ADDRESS, CHANNEL_COLUMNS
from activities.channels import ChannelRegistry, Outbound, Outcome
from activities.context import bind_activity_context
from schemas import activities as A
from schemas import rules
from schemas.activities import ReconcileInput, ReconcileResult, SendSliceInput, SendSliceResult
from workflows.calendar import platform_day

_LIVE_STATES = ("reserved", "unknown")


def _exclusion(r) -> str | None:
    """R-EXC-1, checked again at send time: the snapshot is from 00:00 (R-OC-5)."""
    if r["deleted"]:
        return A.SUPPRESS_DELETED
    if r["blacklisted"]:
        return A.SUPPRESS_BLACKLISTED
    if r["unsub"]:
        return A.SUPPRESS_UNSUBSCRIBED
    if not r["has_contact"] or r["address"] is None:
        return A.SUPPRESS_NO_CONTACT
    return None


@dataclass
class ChunkOutcome:
    next_seq: int
    to_send: list[Outbound] = field(default_factory=list)
    # Reserved by an earlier attempt whose provider answer was lost: ask the provider first.
    to_reconcile: list[Outbound] = field(default_factory=list)
    already_sent: int = 0
    suppressed: Counter = field(default_factory=Counter)


def _chunk_sql(channel: str) -> str:
    unsub, has_contact = CHANNEL_COLUMNS[channel]
    return f"""
        SELECT s.seq, s.consumer_id, c.deleted, c.blacklisted, c.{unsub} AS unsub,
               ({has_contact}) AS has_contact, {CHANNEL_ADDRESS[channel]} AS address,
               -- A primary-key probe per row, not a join: today's ledger rows are newer than the
               -- statistics, and a join then scans the campaign's whole day per recipient
               -- (PERF pitfall 2: 1.1 s per 200-recipient chunk at 20,000 rows, growing with the day).
               (SELECT d.state FROM deliveries d WHERE d.campaign_id = $1 AND d.phase = $2
                   AND d.consumer_id = s.consumer_id AND d.day = $3 AND d.channel = $7) AS prior
        FROM audience_snapshots s
        JOIN shop_customers c ON c.shop_id = $4 AND c.consumer_id = s.consumer_id
        WHERE s.campaign_id = $1 AND s.phase = $2 AND s.day = $3 AND s.seq >= $5 AND s.seq < $6
        ORDER BY s.seq
    """


_LOCK_GLOBAL = """
    INSERT INTO fatigue_day (consumer_id, day)
    SELECT id, $2 FROM unnest($1::bigint[]) AS u(id)
    ON CONFLICT (consumer_id, day) DO UPDATE SET sent = fatigue_day.sent
    RETURNING consumer_id, sent, shops
"""
# The cap reads and the global bump probe the primary key once per consumer of the
# chunk. As joins, today's counter rows (newer than the statistics) were estimated
# at one row and scanned whole for every chunk (PERF pitfall 2): 0.33 s per
# 200-recipient chunk at 20,000 counter rows, growing with the day.
_READ_SHOP_DAY = """
    SELECT u.id, coalesce((SELECT f.sent FROM fatigue_shop_day f
                           WHERE f.consumer_id = u.id AND f.shop_id = $2 AND f.day = $3), 0)
    FROM unnest($1::bigint[]) AS u(id)
"""
_READ_TEMPLATE = """
    SELECT u.id, coalesce((SELECT sum(f.sent)::int FROM fatigue_template f
                           WHERE f.consumer_id = u.id AND f.shop_id = $2 AND f.template_group = $3
                             AND f.day > $4::date - $5::int AND f.day <= $4::date), 0)
    FROM unnest($1::bigint[]) AS u(id)
"""
_INSERT_DELIVERIES = """
    INSERT INTO deliveries (campaign_id, phase, consumer_id, day, channel, shop_id, template_group,
                            fatigue_day, state, reason, decided_at)
    SELECT $1, $2, u.id, $3, $4, $5, $6, $7, u.state, u.reason, $8
    FROM unnest($9::bigint[], $10::text[], $11::text[]) AS u(id, state, reason)
    ON CONFLICT DO NOTHING
    RETURNING consumer_id, state
"""
_BUMP_GLOBAL = """
    INSERT INTO fatigue_day (consumer_id, day, sent, shops)
    SELECT u.id, $3, 1, u.new_shop FROM unnest($1::bigint[], $2::int[]) AS u(id, new_shop)
    ON CONFLICT (consumer_id, day) DO UPDATE
    SET sent = fatigue_day.sent + 1, shops = fatigue_day.shops + EXCLUDED.shops
"""
_BUMP_SHOP_DAY = """
    INSERT INTO fatigue_shop_day (consumer_id, shop_id, day, sent)
    SELECT id, $2, $3, 1 FROM unnest($1::bigint[]) AS u(id)
    ON CONFLICT (consumer_id, shop_id, day) DO UPDATE SET sent = fatigue_shop_day.sent + 1
"""
_BUMP_TEMPLATE = """
    INSERT INTO fatigue_template (consumer_id, shop_id, template_group, day, sent)
    SELECT id, $2, $3, $4, 1 FROM unnest($1::bigint[]) AS u(id)
    ON CONFLICT (consumer_id, shop_id, template_group, day) DO UPDATE SET sent = fatigue_template.sent + 1
"""
_RECORD_OUTCOMES = """
    UPDATE deliveries d SET state = u.state, provider_ref = u.ref, reason = u.reason, updated_at = now()
    FROM unnest($6::bigint[], $7::text[], $8::text[], $9::text[]) AS u(id, state, ref, reason)
    WHERE d.campaign_id = $1 AND d.phase = $2 AND d.day = $3 AND d.channel = $4
      AND d.consumer_id = u.id AND d.state = ANY($5::text[])
    RETURNING d.consumer_id
"""


class SendActivities:
    def __init__(
        self,
        pool: asyncpg.Pool,
        channels: ChannelRegistry,
        *,
        platform_timezone: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.pool = pool
        self.channels = channels
        self.platform_timezone = platform_timezone
        self.clock = clock

    @activity.defn
    async def send_slice(self, inp: SendSliceInput) -> SendSliceResult:
        log = bind_activity_context(shop_id=inp.shop_id, campaign_db_id=inp.campaign_db_id, day=str(inp.day))
        details = activity.info().heartbeat_details
        # Heartbeat details come back as plain dicts (TEMPORAL-NOTES, Heartbeats).
        result = (
            SendSliceResult.model_validate(details[0]) if details else SendSliceResult(next_seq=inp.seq_lo)
        )
        if details:
            log.info("resuming slice from heartbeat", next_seq=result.next_seq)
        fatigue_day = platform_day(inp.decided_at, self.platform_timezone)
        channel = self.channels.get(inp.channel.value)
        while result.next_seq < inp.seq_hi:
            # A worker that comes back after the window closed sends nothing stale (DESIGN 5).
            if self.clock() >= inp.window_end:
                result.stopped_reason = "window_closed"
                break
            if result.reserved >= inp.budget:
                result.stopped_reason = "daily_cap"
                break
            if inp.coupon_id and not await self._benefit_valid(inp):
                result.stopped_reason = A.SUPPRESS_BENEFIT
                break
            # A chunk runs to its end even when the workflow cancels the slice
            # (pause, 22:00): a reservation is never left without its send.
            chunk = asyncio.ensure_future(self._run_chunk(inp, result, channel, fatigue_day))
            try:
                await asyncio.shield(chunk)
            except asyncio.CancelledError:
                await chunk
                activity.heartbeat(result.model_dump(mode="json"))
                result.stopped_reason = "cancelled"
                log.info("slice stopped on request", next_seq=result.next_seq)
                return result
            activity.heartbeat(result.model_dump(mode="json"))
        log.info(
            "slice done",
            next_seq=result.next_seq,
            sent=result.sent,
            suppressed=result.suppressed,
            stopped=result.stopped_reason,
        )
        return result

    async def _run_chunk(self, inp: SendSliceInput, result: SendSliceResult, channel, fatigue_day: date) -> None:
        hi = min(result.next_seq + inp.chunk_size, inp.seq_hi)
        chunk = await self._reserve(inp, result.next_seq, hi, inp.budget - result.reserved, fatigue_day)
        outcomes = await dispatch(channel, chunk.to_send, chunk.to_reconcile)
        await self._record(
            LedgerDay(inp.campaign_db_id, inp.phase_index, inp.day, inp.channel.value, inp.shop_id, fatigue_day,
                      inp.template_cap, inp.coupon_id),
            outcomes,
        )
        result.next_seq = chunk.next_seq
        result.reserved += len(chunk.to_send) + len(chunk.to_reconcile) + chunk.already_sent
        for o in outcomes:
            setattr(result, o.state, getattr(result, o.state) + 1)
        result.sent += chunk.already_sent
        for reason, n in chunk.suppressed.items():
            result.suppressed[reason] = result.suppressed.get(reason, 0) + n

    @activity.defn
    async def reconcile_pending(self, inp: ReconcileInput) -> ReconcileResult:
        """After a day's slices stopped: settle every `reserved` or `unknown` delivery of the
        campaign by asking the provider (reference lookup), never by resending.

        Known to the provider -> its outcome. Not known -> it never went out: `failed` with
        its caps given back (R-OC-8), so a later day of the phase may reach the consumer.
        Provider unreachable -> `unknown`, caps kept, tried again after the next day.
        """
        log = bind_activity_context(shop_id=inp.shop_id, campaign_db_id=inp.campaign_db_id)
        channel = self.channels.get(inp.channel.value)
        res = ReconcileResult()
        rows = await self.pool.fetch(
            f"""SELECT d.phase, d.day, d.consumer_id, d.fatigue_day, {CHANNEL_ADDRESS[inp.channel.value]} AS address
                FROM deliveries d JOIN shop_customers c ON c.shop_id = d.shop_id AND c.consumer_id = d.consumer_id
                WHERE d.campaign_id = $1 AND d.channel = $2 AND d.state IN ('reserved', 'unknown')
                ORDER BY d.phase, d.day, d.consumer_id""",
            inp.campaign_db_id,
            inp.channel.value,
        )
        groups: dict[tuple, list] = {}
        for r in rows:
            groups.setdefault((r["phase"], r["day"], r["fatigue_day"]), []).append(r)
        for (phase, day, fday), group in groups.items():
            messages = [
                Outbound(inp.campaign_db_id, phase, r["consumer_id"], day, inp.channel.value, r["address"] or "", "")
                for r in group
            ]
            key = LedgerDay(
                inp.campaign_db_id, phase, day, inp.channel.value, inp.shop_id, fday, inp.template_cap, inp.coupon_id
            )
            try:
                known = await channel.reconcile(messages)
            except Exception as exc:  # the provider cannot answer now: keep the caps, try later
                n = await self.pool.fetchval(
                    """WITH u AS (UPDATE deliveries SET state = 'unknown', reason = $5, updated_at = now()
                       WHERE campaign_id = $1 AND phase = $2 AND day = $3 AND channel = $4
                         AND state IN ('reserved', 'unknown') RETURNING 1) SELECT count(*) FROM u""",
                    key.campaign_id,
                    key.phase,
                    key.day,
                    key.channel,
                    f"reconcile_failed: {type(exc).__name__}",
                )
                res.still_unknown += n
                continue
            found = {o.consumer_id for o in known}
            never_sent = [
                Outcome(m.consumer_id, "failed", None, "not_accepted_by_provider")
                for m in messages
                if m.consumer_id not in found
            ]
            await self._record(key, known + never_sent)
            res.sent += sum(o.state == "sent" for o in known)
            res.failed += sum(o.state == "failed" for o in known) + len(never_sent)
            res.released += sum(o.state == "failed" for o in known) + len(never_sent)
        if rows:
            log.info("reconciled", **res.model_dump())
        return res

    async def _benefit_valid(self, inp: SendSliceInput) -> bool:
        # R-OC-9 / R-BEN-1: valid at the moment of sending, and not used up.
        return bool(
            await self.pool.fetchval(
                "SELECT valid_from <= $3 AND valid_to > $3 AND stock > 0 FROM coupons"
                " WHERE coupon_id = $1 AND shop_id = $2",
                inp.coupon_id,
                inp.shop_id,
                max(self.clock(), inp.decided_at),
            )
        )

    async def _reserve(self, inp: SendSliceInput, lo: int, hi: int, budget: int, fday: date) -> ChunkOutcome:
        ch = inp.channel.value
        cap = inp.template_cap
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                _chunk_sql(ch), inp.campaign_db_id, inp.phase_index, inp.day, inp.shop_id, lo, hi, ch
            )
            out = ChunkOutcome(next_seq=hi)
            candidates: list[tuple[int, str | None]] = []
            addresses: dict[int, str] = {}
            # Budget (R-PH-7) counts every delivery this slice stands behind: new
            # candidates, reservations to finish and sends already made.
            committed = 0
            for r in rows:
                prior = r["prior"]
                live = prior in ("reserved", "unknown", "sent") or (prior is None and _exclusion(r) is None)
                if live and committed >= budget:
                    out.next_seq = r["seq"]
                    break
                if prior is not None:
                    # Decided by an earlier attempt of this chunk: finish its work, decide nothing anew.
                    if prior in _LIVE_STATES:
                        out.to_reconcile.append(self._outbound(inp, r["consumer_id"], r["address"]))
                    elif prior == "sent":
                        out.already_sent += 1
                    else:
                        out.suppressed["already_decided"] += 1
                    committed += live
                    continue
                candidates.append((r["consumer_id"], _exclusion(r)))
                addresses[r["consumer_id"]] = r["address"]
                committed += live
            if not candidates:
                return out

            # Lock order: ascending consumer id, the same in every transaction.
            candidates.sort()
            ids = [c for c, _ in candidates]
            live = [c for c, reason in candidates if reason is None]
            global_rows = await conn.fetch(_LOCK_GLOBAL, live, fday) if live else []
            shop_day = dict(await conn.fetch(_READ_SHOP_DAY, live, inp.shop_id, fday)) if live else {}
            template = (
                dict(await conn.fetch(_READ_TEMPLATE, live, inp.shop_id, cap.group, fday, cap.days))
                if live and cap
                else {}
            )
            decisions: dict[int, str | None] = dict(candidates)
            new_shop: dict[int, int] = {}
            for g in global_rows:
                cid = g["consumer_id"]
                shop_sent = shop_day.get(cid, 0)
                if g["sent"] >= rules.GLOBAL_DAY_MAX:
                    decisions[cid] = A.SUPPRESS_GLOBAL_DAY
                elif shop_sent >= rules.SHOP_DAY_MAX:
                    decisions[cid] = A.SUPPRESS_SHOP_DAY
                elif shop_sent == 0 and g["shops"] >= rules.GLOBAL_SHOPS_MAX:
                    decisions[cid] = A.SUPPRESS_GLOBAL_SHOPS
                elif cap and template.get(cid, 0) >= cap.count:
                    decisions[cid] = A.SUPPRESS_TEMPLATE
                else:
                    new_shop[cid] = 1 if shop_sent == 0 else 0
            if inp.coupon_id:
                await self._grant_coupons(conn, inp, [c for c in ids if decisions[c] is None], decisions)

            inserted = await conn.fetch(
                _INSERT_DELIVERIES,
                inp.campaign_db_id,
                inp.phase_index,
                inp.day,
                ch,
                inp.shop_id,
                cap.group if cap else "",
                fday,
                inp.decided_at,
                ids,
                ["reserved" if decisions[c] is None else "suppressed" for c in ids],
                [decisions[c] for c in ids],
            )
            # Only rows this transaction inserted count: a racing duplicate attempt
            # of the same chunk finds them taken and leaves them to their owner.
            reserved = sorted(r["consumer_id"] for r in inserted if r["state"] == "reserved")
            for r in inserted:
                if r["state"] == "suppressed":
                    out.suppressed[decisions[r["consumer_id"]]] += 1
            if reserved:
                await conn.execute(_BUMP_GLOBAL, reserved, [new_shop[c] for c in reserved], fday)
                await conn.execute(_BUMP_SHOP_DAY, reserved, inp.shop_id, fday)
                if cap:
                    await conn.execute(_BUMP_TEMPLATE, reserved, inp.shop_id, cap.group, fday)
                if inp.coupon_id:
                    await conn.execute(
                        "UPDATE coupons SET stock = stock - $2 WHERE coupon_id = $1", inp.coupon_id, len(reserved)
                    )
            out.to_send.extend(self._outbound(inp, c, addresses[c]) for c in reserved)
        return out

    @staticmethod
    async def _grant_coupons(conn, inp: SendSliceInput, allowed: list[int], decisions: dict) -> None:
        """R-BEN-1 / R-SC-2: every message carries one unit of the coupon, reserved with it.

        The coupon row is locked after the consumers' rows (the same order everywhere);
        who finds the stock used up is suppressed, and the slice stops at its next chunk.
        """
        if not allowed:
            return
        stock = await conn.fetchval(
            "SELECT stock FROM coupons WHERE coupon_id = $1 AND shop_id = $2 FOR UPDATE", inp.coupon_id, inp.shop_id
        )
        for c in allowed[max(0, stock or 0):]:
            decisions[c] = A.SUPPRESS_BENEFIT

    @staticmethod
    def _outbound(inp: SendSliceInput, consumer_id: int, address: str) -> Outbound:
        body = f"{inp.title}\n{inp.text}" if inp.title else inp.text
        return Outbound(
            campaign_id=inp.campaign_db_id,
            phase=inp.phase_index,
            consumer_id=consumer_id,
            day=inp.day,
            channel=inp.channel.value,
            address=address,
            body=body,
        )

    async def _record(self, key: LedgerDay, outcomes: list[Outcome]) -> None:
        """Store provider outcomes on rows still reserved/unknown; failures give their caps back."""
        if not outcomes:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            changed = await conn.fetch(
                _RECORD_OUTCOMES,
                key.campaign_id,
                key.phase,
                key.day,
                key.channel,
                list(_LIVE_STATES),
                [o.consumer_id for o in outcomes],
                [o.state for o in outcomes],
                [o.provider_ref for o in outcomes],
                [o.reason for o in outcomes],
            )
            failed = {o.consumer_id for o in outcomes if o.state == "failed"}
            released = sorted(r["consumer_id"] for r in changed if r["consumer_id"] in failed)
            if released:
                await release_reservations(conn, released, key.shop_id, key.fatigue_day, key.template_cap)
                if key.coupon_id:
                    await conn.execute(
                        "UPDATE coupons SET stock = stock + $2 WHERE coupon_id = $1", key.coupon_id, len(released)
                    )


@dataclass(frozen=True)
class LedgerDay:
    """The rows of one campaign phase day on one channel, and where their caps were counted."""

    campaign_id: int
    phase: int
    day: date
    channel: str
    shop_id: str
    fatigue_day: date
    template_cap: object | None
    coupon_id: str | None = None


async def dispatch(channel, fresh: list[Outbound], uncertain: list[Outbound]) -> list[Outcome]:
    """Send `fresh`; for `uncertain` (reserved by an attempt that lost the provider's answer)
    reconcile by reference first and send only what the provider does not have."""
    outcomes = await channel.reconcile(uncertain) if uncertain else []
    known = {o.consumer_id for o in outcomes}
    to_send = fresh + [m for m in uncertain if m.consumer_id not in known]
    if to_send:
        outcomes += await channel.send(to_send)
    return outcomes


async def release_reservations(conn, consumer_ids: list[int], shop_id: str, fday: date, cap) -> None:
    """A delivery that did not go out gives its caps back (DESIGN 4, R-OC-8)."""
    await conn.execute(
        "SELECT 1 FROM fatigue_day WHERE consumer_id = ANY($1::bigint[]) AND day = $2"
        " ORDER BY consumer_id FOR UPDATE",
        consumer_ids,
        fday,
    )
    emptied = await conn.fetch(
        "UPDATE fatigue_shop_day f SET sent = f.sent - 1 FROM unnest($1::bigint[]) AS u(id)"
        " WHERE f.consumer_id = u.id AND f.shop_id = $2 AND f.day = $3 RETURNING f.consumer_id, f.sent",
        consumer_ids,
        shop_id,
        fday,
    )
    gone = {r["consumer_id"] for r in emptied if r["sent"] == 0}
    await conn.execute(
        "UPDATE fatigue_day f SET sent = f.sent - 1, shops = f.shops - u.gone"
        " FROM unnest($1::bigint[], $2::int[]) AS u(id, gone) WHERE f.consumer_id = u.id AND f.day = $3",
        consumer_ids,
        [1 if c in gone else 0 for c in consumer_ids],
        fday,
    )
    if cap:
        await conn.execute(
            "UPDATE fatigue_template f SET sent = f.sent - 1 FROM unnest($1::bigint[]) AS u(id)"
            " WHERE f.consumer_id = u.id AND f.shop_id = $2 AND f.template_group = $3 AND f.day = $4",
            consumer_ids,
            shop_id,
            cap.group,
            fday,
        )
