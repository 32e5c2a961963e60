"""Batch send: a slice [seq_lo, seq_hi) of a day's snapshot, chunk by chunk.

Per chunk (docs/design.md, "Batched sends" and "The ledger and the caps"):
1. one transaction reserves: read the slice with its exclusions at send time;
   lock, check and count every consumer's fatigue_day row in one upsert (in
   consumer order, so racing campaigns never deadlock; the check runs on the
   locked latest version, never on an older snapshot); name the cap of whom it stopped;
   insert the delivery rows (for the outbox channel with their hand-off);
   commit;
2. hand the reserved deliveries to the channel (idempotent per delivery);
3. record the outcomes; a failed delivery releases its reservation (R-OC-8);
4. heartbeat the cursor, so a retried attempt resumes after the last
   finished chunk, and a re-run chunk finds its own rows in the ledger
   instead of deciding them again.

A chunk is first read as decided by nobody: a row decided before (a crashed
or racing attempt, a re-run range) makes the ledger insert fail on its key,
the transaction rolls back whole, and the chunk is read again with its earlier
decisions (`prior`).

Every statement is driven by arrays of the chunk (unnest) or probes per row, so
the planner knows their size and uses primary-key lookups whatever the
statistics know of today (docs/design.md, "Statistics that do not know today").
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg
from sluice.activities import errors
from sluice.activities.audience import exclusion_branches, recipient_address, recipient_rows
from sluice.activities.budget import give_back_budget, hold_budget, take_budget
from sluice.activities.context import bind_activity_context
from sluice.activities.offers import HELD, RELEASED
from sluice.activities.quota import give_back_quota, hold_quota, take_quota
from sluice.activities.window import window_deferred_sql
from sluice.channels import chat, sms
from sluice.channels.base import Outbound, Outcome, send_and_settle
from sluice.channels.outbox import InDatabaseChannel
from sluice.channels.registry import ChannelRegistry
from sluice.content.render import compile_template, format_ends_at
from sluice.db.params import Named
from sluice.outcomes.holdout import held_out
from sluice.schemas import activities as A
from sluice.schemas.activities import ReconcileInput, ReconcileResult, SendSliceInput, SendSliceResult
from sluice.schemas.benefits import SHOP_BENEFITS, BenefitChoice, MemberBenefit, required_benefit_problem
from sluice.schemas.budget import within_budget
from sluice.schemas.campaign import PERSONAL_PLACEHOLDERS
from sluice.schemas.fatigue import FatiguePolicy, policy_for
from sluice.schemas.quota import QuotaPlan, costs
from sluice.schemas.rules import template_key
from sluice.workers import metrics
from sluice.workflows.calendar import batch_window_end, local_day
from temporalio import activity

_LIVE_STATES = ("reserved", "unknown")
# A delivery that stands behind its consumer (a send made or under way), for the budget (R-PH-7).
_COMMITTED_STATES = ("reserved", "unknown", "sent")


# A phase without a template cap (R-FAT-1): no template count can reach this.
_NO_TEMPLATE_CAP = 2**31 - 1


def cap_verdict(today, earlier: int, cap, policy: FatiguePolicy) -> str | None:
    """The first cap that stops one more message to the consumer (R-FAT-3, 2, 1), or None.

    `today` is a `CAPS_READ` row (the consumer's counts on the channel's row of their own natural
    day, R-FAT-DAY), `earlier` the template group's count on the window's earlier days, `policy`
    the channel's daily caps (schemas/fatigue.py; None: no such cap). The same test as
    `_RESERVE`'s WHERE."""
    if policy.global_day is not None and today["day_sent"] >= policy.global_day:
        return A.SUPPRESS_GLOBAL_DAY
    if policy.shop_day is not None and today["shop_sent"] >= policy.shop_day:
        return A.SUPPRESS_SHOP_DAY
    if policy.global_shops is not None and today["shop_sent"] == 0 and today["day_shops"] >= policy.global_shops:
        return A.SUPPRESS_GLOBAL_SHOPS
    if cap and today["template_today"] + earlier >= cap.count:
        return A.SUPPRESS_TEMPLATE
    return None


def _cap_reason(today, cap, policy: FatiguePolicy) -> str:
    """Which cap stopped a consumer `_RESERVE` did not reserve: `today` a `CAPS_READ` row."""
    reason = cap_verdict(today, today["earlier"], cap, policy)
    if reason is not None:
        return reason
    # The statement and this reading disagree: fail the chunk (its transaction rolls back) rather
    # than record a reason that is not true.
    raise errors.cap_reading_raced(f"consumer {today['id']}: not reserved, yet no cap bites ({dict(today)})")


@dataclass
class ChunkOutcome:
    next_seq: int
    to_send: list[Outbound] = field(default_factory=list)
    # Reserved by an earlier attempt whose provider answer was lost: ask the provider first.
    to_reconcile: list[Outbound] = field(default_factory=list)
    already_sent: int = 0
    # Committed `sent` with their outbox rows in the reservation's own transaction.
    handed_off: int = 0
    suppressed: Counter = field(default_factory=Counter)
    # Why the chunk stopped before its end and the slice should too (R-ED-4: the shop's quota), or None.
    stopped: str | None = None
    # R-WIN-1: recipients outside their own window at the hand-off, left undecided for a later pass.
    deferred: int = 0


# How often a chunk is decided again after its transaction rolled back (a probe, then the stock lock, then once more).
_CHUNK_TRIES = 4
RERUN_PROBE, RERUN_LOCK_STOCK = "probe", "lock_stock"


def _rerun_reason(exc: BaseException) -> str:
    """How a chunk whose transaction rolled back on `exc` is decided again.

    A ledger key that exists (UniqueViolationError): some row was decided before (an earlier attempt of this slice
    that crashed after its commit and before its heartbeat, a re-run of the range, an attempt still running):
    read those decisions from the ledger (probe). The coupon stock raced (StockRaced) or the end-of-chunk coupon
    lock met a chunk that took the coupons first and now waits for a row this one holds (DeadlockDetectedError,
    PostgreSQL aborts one of the two after deadlock_timeout): take the coupon lock first this time."""
    return RERUN_PROBE if isinstance(exc, asyncpg.UniqueViolationError) else RERUN_LOCK_STOCK


def _body(inp: SendSliceInput) -> str:
    return f"{inp.title}\n{inp.text}" if inp.title else inp.text


def fatigue_day_sql(instant: str, platform_day: str) -> str:
    """R-FAT-DAY: the recipient's natural day at `instant`, per snapshot row `s`: the local date in the zone
    the refresh resolved for them (audience_snapshots.timezone, activities/audience.py RECIPIENT_ZONE), else
    `platform_day`, the platform's date at the instant, computed once per statement (`recipient_fatigue_day` without a zone).
    `recipient_fatigue_day` is the same in Python."""
    local = f"({instant}::timestamptz AT TIME ZONE s.timezone)::date"
    return f"CASE WHEN s.timezone IS NULL THEN {platform_day}::date ELSE {local} END"


def recipient_fatigue_day(instant: datetime, zone: str | None, platform_tz: str) -> date:
    """`fatigue_day_sql` in Python, for a few rows (the preview's candidates): the date at `instant` in the
    recipient's resolved zone, else the platform's."""
    return local_day(instant, zone or platform_tz)


def _chunk_sql(
    channel: str, probe: bool, personal: bool = False, non_customers: bool = False, later_pass: bool = False,
    zoned_only: bool = False,
) -> str:
    """The chunk's snapshot rows with what send time needs: exclusions, address, earlier decision,
    each recipient's own fatigue day (`fday`) at the hand-off instant $7 (the platform's date at it: $8),
    and whether they wait for their own send window then (`deferred`, R-WIN-1, `window_deferred_sql`;
    `later_pass`: a later pass of the day, where only recipients with a zone are sent; `zoned_only`:
    only those are read).

    `probe` reads each row's earlier decision in the ledger. A chunk no attempt has decided
    has none, so the first reading skips it: if another attempt did decide some row, the
    ledger insert fails on its key, the transaction rolls back, and the chunk is read again
    with the probe (SendActivities._run_chunk).
    `non_customers`: the audience may yield consumers without a shop row, addressed and
    excluded by the platform's row (activities/audience.py, recipient_rows).
    """
    # A primary-key probe per row, not a join: today's ledger rows are newer than the statistics,
    # and a join then scans the campaign's whole day per recipient (1.1 s per
    # 200-recipient chunk at 20,000 rows, growing with the day).
    prior = (
        """(SELECT d.state FROM deliveries d WHERE d.campaign_id = $1 AND d.phase = $2
                   AND d.consumer_id = s.consumer_id AND d.day = $3 AND d.channel = $9)"""
        if probe
        else "NULL::text"
    )
    # R-EXC-1, checked again at send time: the snapshot is from 00:00 (R-OC-5). The columns are
    # read by position in this order by SendActivities._reserve (the zone, 7th from 0, gives the outbox batch its
    # window end, R-WIN-1: `batch_window_end`); `personal` adds what per-recipient content
    # needs: the product the audience chose (R-RP-10), the customer's nickname and, read now, whether they
    # are a member of the shop (R-RP-4: which member benefit they are told of).
    personal_columns = ", s.item, c.nick, coalesce(c.is_member, false)" if personal else ""
    zoned = " AND s.timezone IS NOT NULL" if zoned_only else ""
    return f"""
        SELECT s.seq, s.consumer_id, {recipient_address(channel, non_customers)} AS address, {prior} AS prior,
               CASE {exclusion_branches(channel, non_customers)} END AS excluded,
               {fatigue_day_sql("$7", "$8")} AS fday, {window_deferred_sql("$7", later_pass)} AS deferred,
               s.timezone{personal_columns}
        FROM audience_snapshots s
        {recipient_rows("$4", "s.consumer_id", non_customers)}
        WHERE s.campaign_id = $1 AND s.phase = $2 AND s.day = $3 AND s.seq >= $5 AND s.seq < $6{zoned}
        ORDER BY s.seq
    """


# The template window's earlier days (R-FAT-1) before each consumer's own fatigue day, on the channel's rows: a
# primary-key range probe per consumer (a lateral subquery, so a day newer than the statistics cannot turn it into
# a scan); only consumers with a message of the group in the window come back, and none without a window ($5 <= 1).
# $1 ids, $2 each one's fatigue day (in the order of $1), $4 template key, $5 the window's days, $6 channel: the
# numbering of `_RESERVE` and `CAPS_READ`, which read it inside their own statement.
_EARLIER_IN_WINDOW = """
    SELECT u.id, w.n
    FROM unnest($1::bigint[], $2::date[]) AS u(id, day)
    CROSS JOIN LATERAL (SELECT sum((f.per_template ->> $4)::int)::int AS n FROM fatigue_day f
                        WHERE f.consumer_id = u.id AND f.day > u.day - $5::int AND f.day < u.day
                          AND f.channel = $6 AND f.per_template ? $4) w
    WHERE $5::int > 1 AND w.n IS NOT NULL
"""
# Lock, check and count in one statement (R-FAT-1..3), in consumer order (racing campaigns never
# deadlock). A consumer without a row today gets one holding this send (nothing went out today, so
# only the template window's earlier days can stop it: those are filtered out before the insert).
# An existing row is locked and, if every cap still allows one more, counted in the same step:
# ON CONFLICT re-reads the latest committed version under the lock, so the check and the bump are
# one atomic step per consumer. RETURNING names the consumers reserved now; an existing row whose
# caps said no stays locked and unchanged.
# The window's earlier days are read first, in the same statement (`earlier`, one jsonb object of the few consumers
# with such messages, looked up by both checks): they only lose counts (a failed send gives its count back), so
# reading them before the locks can only err on the safe side. As a statement of its own this read cost a round
# trip and the chunk's ids and days sent again (10-12 ms of database time per chunk of 2,000 in the whole-shop
# K-REPURCHASE day, 5% of it).
# Each consumer counts on the channel's row of their own natural day (R-FAT-DAY, one day per consumer
# in a chunk); the caps are the channel's policy (schemas/fatigue.py), passed as parameters: one
# statement for every channel. A send updates only non-key columns: the row's later versions stay HOT.
# $1 ids (ascending), $2 each one's fatigue day (in the order of $1), $3 shop, $4 template key, $5 the template
# window's days (1: none earlier), $6 channel, $7 the template cap's count, $8 day max, $9 shop-day max, $10 shops
# max (FatiguePolicy.limits).
_RESERVE = f"""
    WITH earlier AS (SELECT coalesce(jsonb_object_agg(e.id, e.n), '{{}}'::jsonb) AS counts FROM ({_EARLIER_IN_WINDOW}) e)
    INSERT INTO fatigue_day AS f (consumer_id, day, channel, sent, shops, per_shop, per_template)
    SELECT id, day, $6, 1, 1, fatigue_increment('{{}}', $3), fatigue_increment('{{}}', $4)
    FROM unnest($1::bigint[], $2::date[]) AS u(id, day)
    WHERE coalesce(((SELECT counts FROM earlier) ->> id::text)::int, 0) < $7
    ON CONFLICT (consumer_id, day, channel) DO UPDATE
       SET sent = f.sent + 1,
           shops = f.shops + (coalesce((f.per_shop ->> $3)::int, 0) = 0)::int,
           per_shop = fatigue_increment(f.per_shop, $3),
           per_template = fatigue_increment(f.per_template, $4)
     WHERE f.sent < $8
       AND coalesce((f.per_shop ->> $3)::int, 0) < $9
       AND (coalesce((f.per_shop ->> $3)::int, 0) > 0 OR f.shops < $10)
       AND coalesce((f.per_template ->> $4)::int, 0)
           + coalesce(((SELECT counts FROM earlier) ->> f.consumer_id::text)::int, 0) < $7
    RETURNING consumer_id
"""
# Today's counts of the consumers the caps stopped, and their template window's earlier days, to name the cap (the
# ledger's reason). A primary-key probe per consumer as a scalar subquery: as a join, a day newer than the statistics
# planned a hash join over the whole table for every chunk (0.29 s per chunk of
# 2,000 and 71% of the day's database time on a fresh install).
# $1 ids, $2 each one's fatigue day (in the order of $1), $3 shop, $4 template key, $5 the window's days, $6 channel.
CAPS_READ = f"""
    SELECT x.id, coalesce((f).sent, 0) AS day_sent, coalesce((f).shops, 0) AS day_shops,
           coalesce(((f).per_shop ->> $3)::int, 0) AS shop_sent,
           coalesce(((f).per_template ->> $4)::int, 0) AS template_today, coalesce(e.n, 0) AS earlier
    FROM (SELECT u.id, (SELECT d FROM fatigue_day d WHERE d.consumer_id = u.id AND d.day = u.day AND d.channel = $6) AS f
          FROM unnest($1::bigint[], $2::date[]) AS u(id, day) OFFSET 0) x
    LEFT JOIN ({_EARLIER_IN_WINDOW}) e ON e.id = x.id
"""


# The claims of a chunk's live deliveries (countdown offers, R-RP-5, shared coupons, R-BEN-1, limited member
# benefits, R-RP-4), held in the chunk's transaction; their stock units are taken by `_TAKE_STOCK` at its end.
# :live_ids the deliveries holding a claim, :coupons their coupons, :items their products (NULL: none pushed),
# :handed_at the hand-off instant, :hours the offer's hours (NULL for a shared coupon: expires_at NULL, no end of its
# own). No rows when :coupons is NULL. Run on its own (`_HOLD_OFFERS`: a chunk whose deliveries go to a provider, and
# member benefits' units) or inside the ledger's write statement (`_write_sql`).
_HOLD_OFFERS_SQL = """
    INSERT INTO claims (campaign_id, phase, consumer_id, day, channel, shop_id, coupon_id, product_id,
                        held_at, expires_at)
    SELECT :campaign, :phase, k.id, :day, :channel, :shop, k.coupon, k.item, :handed_at::timestamptz,
           :handed_at::timestamptz + make_interval(hours => :hours::int)
    FROM unnest(:live_ids::bigint[], :coupons::text[], :items::bigint[]) AS k(id, coupon, item)
    WHERE :coupons::text[] IS NOT NULL
"""
_HOLD_OFFERS = Named.of(_HOLD_OFFERS_SQL)


def _write_sql(handoff: bool) -> Named:
    """The chunk's ledger rows in one statement (the counters were bumped by `_RESERVE`).

    A plain INSERT (ON CONFLICT DO NOTHING cost 1.7x as much per row here): every row of the
    chunk goes in, or the statement fails. A racing duplicate attempt of the same chunk (a
    worker that lost its heartbeat, not its work) fails on the ledger's key and its whole
    transaction, reservations included, rolls back; the chunk is then decided again and finds
    the other attempt's rows. With `handoff` (a channel whose inbox is the outbox table of
    this database) the live rows are inserted `sent`, and their outbox batch in the same
    statement: the delivery and its hand-off commit together, and a dispatcher only ever sees
    committed batches.

    The chunk's rows, each array in the order of :ids: :reasons (NULL: live), :fdays (each one's fatigue day,
    R-FAT-DAY), :benefits (the member benefit, R-RP-4), :costs (deliveries.cost: an SMS's price, R-AQ-5), :agents
    (the sender agent, R-PH-5; channels/chat.py), each array or NULL; :live_state the live rows' state.
    With `handoff`, the outbox batch of the live rows, each array in the order of :live_ids: :addresses, :bodies (each
    one's own text, or NULL: :body for all), :live_agents (or NULL), :window_end (outbox.window_end: the outbox
    dispatcher hands nothing of the batch over after it, R-WIN-1); and the live rows' offers held in the same
    statement (`_HOLD_OFFERS_SQL`: :coupons, :items, :handed_at, :hours; NULL: no offers).
    """
    ref = "CASE WHEN u.reason IS NULL THEN 'outbox:' || (SELECT id FROM b) END" if handoff else "NULL"
    # The batch takes the live ids and addresses as sent: no aggregate over the chunk's rows.
    outbox = (
        f"""b AS (SELECT nextval('outbox_id_seq') AS id),
    o AS (
        INSERT INTO outbox (id, campaign_id, phase, day, channel, body, consumer_ids, addresses, bodies, senders, window_end)
        SELECT (SELECT id FROM b), :campaign, :phase, :day, :channel, :body, :live_ids::bigint[], :addresses::text[],
               :bodies::text[], :live_agents::text[], :window_end::timestamptz
        WHERE cardinality(:live_ids::bigint[]) > 0
    ),
    h AS ({_HOLD_OFFERS_SQL}),"""
        if handoff
        else ""
    )
    return Named.of(f"""
    WITH {outbox} u AS (SELECT * FROM unnest(:ids::bigint[], :reasons::text[], :benefits::text[], :costs::numeric[],
                                             :fdays::date[], :agents::text[]) AS u(id, reason, benefit, cost, fday, agent))
    INSERT INTO deliveries (campaign_id, phase, consumer_id, day, channel, shop_id, template_group,
                            fatigue_day, state, reason, provider_ref, decided_at, benefit_id, cost, sender_agent)
    SELECT :campaign, :phase, u.id, :day, :channel, :shop, :template_group, u.fday,
           CASE WHEN u.reason IS NULL THEN :live_state WHEN u.reason = '{A.HELD_OUT}' THEN u.reason
                WHEN u.reason = '{A.NOT_SENT_BUDGET}' THEN 'not_sent' ELSE 'suppressed' END,
           nullif(u.reason, '{A.HELD_OUT}'), {ref}, :decided_at, u.benefit, u.cost, CASE WHEN u.reason IS NULL THEN u.agent END
    FROM u
""")


# A handed-off chunk's offers go in with its ledger rows and outbox batch, one statement: the live ids are sent once
# and a round trip is saved per chunk (the whole-shop K-REPURCHASE day: see docs/benchmarks.md).
_WRITE_RESERVED = _write_sql(handoff=False)
_WRITE_HANDED_OFF = _write_sql(handoff=True)
# The provider's outcomes of a chunk, on rows still in a live state ($5): a primary-key probe per delivery ($6).
# Without statistics of today's rows (docs/design.md, "Statistics that do not know today") the planner took the
# day's key range ($1-$4 as constants on the table) for one row and hashed it for every chunk: the update read
# every delivery of the day so far (200 ms per chunk of 2,000 at 1,000,000 rows, alone; 680 ms in the 1,000,000
# SMS day, its largest cost). So the key's constants come in through the unnested rows (OFFSET 0: not folded
# back) and hash and merge joins are off for the transaction (_RECORD_PLAN): any other plan reads the whole
# table per row, so the probes win at every table size (13-20 ms per chunk from 2,000 to 1,000,000 rows). A failed
# row's fatigue day and cost come back for what it gives back (give_back_failed); a sent one's are not read.
_RECORD_OUTCOMES = """
    UPDATE deliveries d SET state = u.state, provider_ref = u.ref, reason = u.reason, updated_at = now()
    FROM (SELECT u.*, $1::bigint AS campaign_id, $2::smallint AS phase, $3::date AS day, $4::text AS channel,
                 $5::text[] AS live
          FROM unnest($6::bigint[], $7::text[], $8::text[], $9::text[]) AS u(id, state, ref, reason) OFFSET 0) u
    WHERE d.campaign_id = u.campaign_id AND d.phase = u.phase AND d.consumer_id = u.id AND d.day = u.day
      AND d.channel = u.channel AND d.state = ANY(u.live)
    RETURNING d.consumer_id, CASE WHEN u.state = 'failed' THEN d.fatigue_day END AS fatigue_day,
              CASE WHEN u.state = 'failed' THEN d.cost END AS cost
"""
_RECORD_PLAN = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"
# A failed delivery costs nothing (R-AQ-5, R-ED-4, R-COST-BUDGET): its cost leaves the ledger's sums. $1 campaign,
# $2 phase, $3 day, $4 channel, $5 consumers. Primary-key probes of rows this transaction just updated.
_FORGET_COST = """
    UPDATE deliveries SET cost = NULL
    WHERE campaign_id = $1 AND phase = $2 AND day = $3 AND channel = $4 AND consumer_id = ANY($5::bigint[])
      AND cost IS NOT NULL
"""


# The usable stock of the chunk's coupons (0 outside their validity at $3). $1 coupons (ascending), $2 shop, $3 the
# hand-off instant. Primary-key probes on coupon_id (one to three coupons).
_COUPON_STOCK = """
    SELECT coupon_id, CASE WHEN valid_from <= $3 AND valid_to > $3 THEN stock ELSE 0 END AS usable
    FROM coupons WHERE coupon_id = ANY($1::text[]) AND shop_id = $2 ORDER BY coupon_id
"""
# The same, the coupon rows locked in coupon order (after the consumers' rows: the same order everywhere). Every
# chunk of a campaign with offers takes the same one to three rows: taken where the chunk allocates its offers,
# the lock serialised the chunks for their whole transaction (81% of the whole-shop K-REPURCHASE day's statement
# time was this statement waiting, 1.5 s per chunk at 1M under load). So a chunk first allocates from
# `_COUPON_STOCK`, unlocked, and locks the rows only at its end, in `_TAKE_STOCK` just before its commit
# (`StockTaking`); only a chunk that found the stock raced re-runs with this lock taken first.
# NO KEY UPDATE, the lock an update of a non-key column takes anyway (no stronger lock than the update needs).
_LOCK_COUPONS = _COUPON_STOCK + " FOR NO KEY UPDATE"
# The units allocate_offers granted, taken at the chunk's end, lock, check and take in one statement: $1 coupons
# (ascending), $2 units each, $3 shop, $4 the hand-off instant. The CTE locks the rows in coupon order (the one lock
# order); the UPDATE then re-checks, on each row's latest version, that the units are still there and the coupon
# is valid at $4, and names the coupons it took from: fewer names than $1 is a raced stock (StockRaced). One
# statement, because every round trip made while holding these rows is waited for by all the campaign's other
# chunks: with the lock, the check in Python and the update as three statements the worker's event loop (busy
# rendering other chunks' texts) sat between them, and the whole-shop K-REPURCHASE day spent 26-44 ms per chunk
# waiting for the coupon rows (22-32% of its statement time, docs/benchmarks.md).
_TAKE_STOCK = """
    WITH locked AS (
        SELECT coupon_id FROM coupons WHERE coupon_id = ANY($1::text[]) AND shop_id = $3
        ORDER BY coupon_id FOR NO KEY UPDATE
    )
    UPDATE coupons c SET stock = c.stock - u.n
    FROM unnest($1::text[], $2::int[]) AS u(coupon_id, n)
    WHERE c.coupon_id = u.coupon_id AND c.coupon_id IN (SELECT coupon_id FROM locked)
      AND c.stock >= u.n AND c.valid_from <= $4 AND c.valid_to > $4
    RETURNING c.coupon_id
"""
class StockRaced(Exception):
    """A chunk's optimistic allocation found, at its end, less stock than it had read: re-run it with the lock."""


@dataclass
class StockTaking:
    """The coupon units a chunk takes (R-BEN-1, R-RP-5), applied once at its end.

    `locked`: the coupon rows were locked when the stock was read (a re-run after StockRaced); else they were read
    unlocked and `apply` locks them now and takes the units only if they are still there (`_TAKE_STOCK`, one
    statement), raising StockRaced if not (the chunk's transaction then rolls back whole)."""

    locked: bool
    at: datetime
    taken: Counter = field(default_factory=Counter)

    async def usable(self, conn, coupons: list[str], shop_id: str) -> dict[str, int]:
        if not coupons:
            return {}
        if self.locked:
            return dict(await conn.fetch(_LOCK_COUPONS, coupons, shop_id, self.at))
        return dict(await conn.fetch(_COUPON_STOCK, coupons, shop_id, self.at))

    async def apply(self, conn, shop_id: str) -> None:
        coupons = sorted(c for c, n in self.taken.items() if n)
        if not coupons:
            return
        wanted = [self.taken[c] for c in coupons]
        took = {r[0] for r in await conn.fetch(_TAKE_STOCK, coupons, wanted, shop_id, self.at)}
        if len(took) < len(coupons):  # never with `locked`: the rows were read under the lock this update holds
            raise StockRaced(f"coupons {sorted(set(coupons) - took)}: {dict(zip(coupons, wanted, strict=True))} wanted, not left")


# A delivery that was not sent gives its offer's unit back (R-OC-8); a no-op for deliveries without one. Answers how
# many claims it released (a data-modifying CTE runs whether or not the query reads it).
_RELEASE_OFFERS = """
    WITH r AS (
        UPDATE claims SET state = 'released', closed_at = now()
        WHERE campaign_id = $1 AND phase = $2 AND day = $3 AND channel = $4 AND consumer_id = ANY($5::bigint[])
          AND state = 'held'
        RETURNING coupon_id
    ), back AS (
        UPDATE coupons c SET stock = c.stock + p.n
        FROM (SELECT coupon_id, count(*)::int AS n FROM r GROUP BY coupon_id ORDER BY coupon_id) p
        WHERE c.coupon_id = p.coupon_id
    )
    SELECT count(*)::int FROM r
"""
_OFFER_CATALOG = """
    SELECT c.coupon_id, c.name, c.product_id, p.title
    FROM coupons c LEFT JOIN products p ON p.product_id = c.product_id AND p.shop_id = c.shop_id
    WHERE c.coupon_id = ANY($1::text[]) AND c.shop_id = $2 AND c.product_id IS NOT NULL
"""


@dataclass(frozen=True)
class OfferItem:
    coupon_id: str
    coupon_name: str
    title: str


def allocate_offers(
    live: list[int], item_of: dict[int, int | None], catalog: dict[int, OfferItem], usable: dict[str, int]
) -> tuple[dict[int, OfferItem], dict[str, int]]:
    """R-RP-10 / R-BEN-1 for a chunk: each live consumer's offer is the coupon of the product chosen for
    them, while its usable stock lasts, in consumer order. Returns (offer per consumer offered, units
    taken per coupon); a live consumer not offered gets no message."""
    offered: dict[int, OfferItem] = {}
    taken: dict[str, int] = {}
    for c in live:
        item = catalog.get(item_of[c])
        if item is not None and taken.get(item.coupon_id, 0) < usable.get(item.coupon_id, 0):
            taken[item.coupon_id] = taken.get(item.coupon_id, 0) + 1
            offered[c] = item
    return offered, taken


@dataclass
class Personal:
    """What a slice needs for per-recipient content and offers: the template, per product the
    exclusive coupon that goes with it (R-RP-10), and the shop's member benefits in force (R-RP-4)."""

    template: object | None
    catalog: dict[int, OfferItem]
    timezone: str
    benefits: list[MemberBenefit] = field(default_factory=list)

    def bodies(
        self, inp: SendSliceInput, live: list[int], extras: dict, offered: dict[int, OfferItem],
        benefits: dict[int, MemberBenefit], expires_at: datetime | None,
    ) -> dict[int, str]:
        """Each live consumer's message. The template is bound once per distinct (offer, benefit) of the chunk
        (`Template.bind`: product, coupon, offer end and benefit cleaned and joined into its text once) and only
        the consumer's name is filled per recipient: a chunk of 2,000 has one to a few such pairs."""
        if self.template is None:
            return dict.fromkeys(live, _body(inp))
        ends_at = format_ends_at(expires_at, self.timezone) if expires_at else ""
        title = f"{inp.title}\n" if inp.title else ""
        partials: dict[tuple, object] = {}
        out: dict[int, str] = {}
        for c in live:
            item_id, nick, _ = extras[c]
            item = offered.get(c) or self.catalog.get(item_id)
            benefit = benefits.get(c)
            key = (item, benefit.benefit_id if benefit else None)
            partial = partials.get(key)
            if partial is None:
                partial = partials[key] = self.template.bind({
                    "product": item.title if item else "", "coupon": item.coupon_name if item else "",
                    "ends_at": ends_at, "benefit": benefit.text() if benefit else "",
                })  # fmt: skip
            out[c] = title + partial.render({"name": nick or ""})
        return out


# The write statement's offer parameters when the chunk holds no offer.
_NO_OFFERS = dict(coupons=None, items=None, handed_at=None, hours=None)


def _offer_args(inp: SendSliceInput, offered: dict, live_now: list[int], extras: dict, at: datetime) -> dict | None:
    """The held offers' parameters of a chunk (`_HOLD_OFFERS_SQL`'s :coupons, :items, :handed_at, :hours), each live
    delivery in `live_now` order holding the unit of its offer; None when the chunk holds no offer."""
    if not offered or not live_now:
        return None
    items = [None] * len(live_now) if inp.offer.shared else [extras[c][0] for c in live_now]
    return dict(coupons=[offered[c].coupon_id for c in live_now], items=items, handed_at=at, hours=inp.offer.hours)


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
        # Heartbeat details come back as plain dicts (docs/design.md, "Heartbeat details come back as dicts").
        result = (
            SendSliceResult.model_validate(details[0]) if details else SendSliceResult(next_seq=inp.seq_lo)
        )
        if details:
            log.info("resuming slice from heartbeat", next_seq=result.next_seq)
        channel = self.channels.get(inp.channel.value)
        # An earlier attempt may have committed the chunk after its last heartbeat: read the
        # ledger for that one. Later chunks were not reached by it (chunks run in order). A later pass
        # of the day (R-WIN-1) reads every chunk with the ledger: most of its rows were decided before.
        probe = bool(details) or activity.info().attempt > 1 or inp.later_pass
        personal = await self._personal(inp)
        while result.next_seq < inp.seq_hi:
            if result.stopped_reason is not None:  # a chunk found the shop's quota spent (R-ED-4)
                break
            # A worker that comes back after the window closed sends nothing stale (docs/design.md, "No stale sends").
            if self.clock() >= inp.window_end:
                result.stopped_reason = "window_closed"
                break
            if result.reserved >= inp.budget:
                result.stopped_reason = "daily_cap"
                break
            if inp.offer is not None and inp.offer.shared and not await self._benefit_valid(inp):
                result.stopped_reason = A.SUPPRESS_BENEFIT
                break
            if inp.benefit is not None and inp.benefit.required and not await self._required_benefit_valid(inp):
                result.stopped_reason = A.SUPPRESS_BENEFIT  # R-BEN-1 / R-AQ-2: the message exists for the benefit
                break
            # A chunk runs to its end even when the workflow cancels the slice
            # (pause, 22:00): a reservation is never left without its send.
            chunk = asyncio.ensure_future(self._run_chunk(inp, result, channel, probe, personal))
            probe = inp.later_pass
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
            deferred=result.deferred,
        )
        return result

    async def _run_chunk(
        self, inp: SendSliceInput, result: SendSliceResult, channel, probe: bool, personal: Personal | None = None,
    ) -> None:
        hi = min(result.next_seq + inp.chunk_size, inp.seq_hi)
        handoff = isinstance(channel, InDatabaseChannel)
        budget = inp.budget - result.reserved
        lock_stock = False
        for attempt in range(_CHUNK_TRIES):
            try:
                chunk = await self._reserve(inp, result.next_seq, hi, budget, handoff, probe=probe, personal=personal,
                                            lock_stock=lock_stock)  # fmt: skip
                break
            except (asyncpg.UniqueViolationError, StockRaced, asyncpg.DeadlockDetectedError) as exc:
                # The transaction rolled back whole; decide the chunk again (_rerun_reason says how).
                if attempt == _CHUNK_TRIES - 1:
                    raise
                why = _rerun_reason(exc)
                probe = probe or why == RERUN_PROBE
                lock_stock = lock_stock or why == RERUN_LOCK_STOCK
                bind_activity_context(shop_id=inp.shop_id, campaign_db_id=inp.campaign_db_id).info(
                    "chunk decided again", seq=result.next_seq, why=why, error=type(exc).__name__
                )
        outcomes = await dispatch(channel, chunk.to_send, chunk.to_reconcile)
        await self._record(
            LedgerDay(inp.campaign_db_id, inp.phase_index, inp.day, inp.channel.value, inp.shop_id, inp.template_cap,
                      inp.quota),
            outcomes,
        )
        result.next_seq = chunk.next_seq
        result.stopped_reason = chunk.stopped or result.stopped_reason
        result.reserved += len(chunk.to_send) + len(chunk.to_reconcile) + chunk.already_sent + chunk.handed_off
        for o in outcomes:
            setattr(result, o.state, getattr(result, o.state) + 1)
        result.sent += chunk.already_sent + chunk.handed_off
        result.deferred += chunk.deferred
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
            # Any audience's deliveries: a non-customer's address is the platform's (recipient_rows).
            f"""SELECT d.phase, d.day, d.consumer_id, {recipient_address(inp.channel.value, True)} AS address
                FROM deliveries d {recipient_rows("d.shop_id", "d.consumer_id", True)}
                WHERE d.campaign_id = $1 AND d.channel = $2 AND d.state IN ('reserved', 'unknown')
                ORDER BY d.phase, d.day, d.consumer_id""",
            inp.campaign_db_id,
            inp.channel.value,
        )
        groups: dict[tuple, list] = {}
        for r in rows:
            groups.setdefault((r["phase"], r["day"]), []).append(r)
        for (phase, day), group in groups.items():
            messages = [
                Outbound(inp.campaign_db_id, phase, r["consumer_id"], day, inp.channel.value, r["address"] or "", "")
                for r in group
            ]
            key = LedgerDay(inp.campaign_db_id, phase, day, inp.channel.value, inp.shop_id, inp.template_cap, inp.quota)
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
            # A provider that cannot be asked (SMTP) answers `unknown`: kept, caps held, never resent.
            res.still_unknown += sum(o.state == "unknown" for o in known)
        if rows:
            log.info("reconciled", **res.model_dump())
        return res

    async def _benefit_valid(self, inp: SendSliceInput) -> bool:
        # R-OC-9 / R-BEN-1: the shared coupon is valid at the moment of sending, and not used up.
        return bool(
            await self.pool.fetchval(
                "SELECT valid_from <= $3 AND valid_to > $3 AND stock > 0 FROM coupons"
                " WHERE coupon_id = $1 AND shop_id = $2",
                inp.offer.coupon_ids[0],
                inp.shop_id,
                max(self.clock(), inp.decided_at),
            )
        )

    async def _required_benefit_valid(self, inp: SendSliceInput) -> bool:
        # R-BEN-1 / R-AQ-2: every recipient's member benefit is in force now, and a limited one's coupon usable.
        at = max(self.clock(), inp.decided_at)
        rows = await self.pool.fetch(SHOP_BENEFITS, inp.shop_id, inp.benefit.kinds(), at)
        return required_benefit_problem(inp.benefit, rows, at) is None

    async def _personal(self, inp: SendSliceInput) -> Personal | None:
        """Per-recipient content and offers of the slice, or None (one body for the whole chunk)."""
        countdown = inp.offer is not None and not inp.offer.shared
        if not countdown and inp.benefit is None and not inp.text_is_template:
            return None
        template = compile_template(inp.text, allowed=PERSONAL_PLACEHOLDERS, rule="R-RP-6") if inp.text_is_template else None
        catalog = {}
        # With member benefits the products' coupons only name the product (R-RP-10); their stock is not sent.
        products = inp.offer.coupon_ids if countdown else inp.benefit.coupon_ids if inp.benefit is not None else []
        if products:
            rows = await self.pool.fetch(_OFFER_CATALOG, products, inp.shop_id)
            catalog = {r["product_id"]: OfferItem(r["coupon_id"], r["name"], r["title"] or "") for r in rows}
        benefits = []
        if inp.benefit is not None:
            rows = await self.pool.fetch(SHOP_BENEFITS, inp.shop_id, inp.benefit.kinds(), max(self.clock(), inp.decided_at))
            benefits = [MemberBenefit.of(r) for r in rows]
        return Personal(template=template, catalog=catalog, timezone=inp.timezone or "UTC", benefits=benefits)

    async def _reserve(
        self, inp: SendSliceInput, lo: int, hi: int, budget: int, handoff: bool = False,
        *, probe: bool = True, personal: Personal | None = None, lock_stock: bool = False,
    ) -> ChunkOutcome:
        """Decide the chunk [lo, hi) in one transaction: exclusions, caps, ledger rows, counters.

        Without `handoff` the live rows are committed `reserved` and returned in `to_send`
        for the channel; with it they are committed `sent` together with their outbox rows.
        Without `probe` the chunk is taken as decided by nobody yet: a row decided before
        makes the ledger insert fail (asyncpg.UniqueViolationError), and nothing is kept.
        """  # fmt: skip
        ch = inp.channel.value
        cap = inp.template_cap
        policy = policy_for(ch)
        # The hand-off instant of the chunk (its transaction commits the delivery and, for the outbox,
        # hands it off): each recipient's fatigue day is its date in their zone (R-FAT-DAY), the coupon
        # must be valid at it (R-OC-9), and an offer's countdown starts here. Never before the slice was
        # scheduled (the time-skipping test server runs ahead of the wall clock).
        handed_at = max(self.clock(), inp.decided_at)
        args = [inp.campaign_db_id, inp.phase_index, inp.day, inp.shop_id, lo, hi, handed_at,
                recipient_fatigue_day(handed_at, None, self.platform_timezone)]  # the platform's date: $8
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_chunk_sql(ch, probe, personal is not None, inp.reaches_non_customers, inp.later_pass,
                                               inp.zoned_only),
                                    *args, *([ch] if probe else []))  # fmt: skip
            # R-FAT-DAY: each recipient's own natural day, in the zone the refresh resolved for them.
            fdays = {r[1]: r[5] for r in rows}  # by position: a Record's lookup by name cost 4% of the worker's day
            out = ChunkOutcome(next_seq=hi)
            # An SMS is sent and billed with the industry signature and the unsubscribe text (R-AQ-4, R-AQ-6).
            signature = await sms.signature_of(conn, inp.shop_id) if ch == "sms" else None
            shared_body = _body(inp) if signature is None else sms.sms_text(_body(inp), signature)
            # R-ED-4: the shop's quota of the day, locked before the consumers' rows; new sends take what is left.
            quota = await hold_quota(conn, inp.quota, inp.shop_id, inp.day) if inp.quota is not None else None
            fresh = 0
            decisions: dict[int, str | None] = {}
            addresses: dict[int, str] = {}
            # Per-recipient content: each consumer's (item, nickname, is a member).
            extras = {r[1]: r[8:11] for r in rows} if personal is not None else {}
            # R-WIN-1: the recipients with a zone of their own (most have none: the shop's window is the slice's).
            zone_of = {r[1]: r[7] for r in rows if r[7] is not None}
            # Budget (R-PH-7) counts every delivery this slice stands behind: new
            # candidates, reservations to finish and sends already made.
            committed = 0
            for seq, consumer, address, prior, excluded, _fday, waits in (r[:7] for r in rows):
                if waits and prior is None:
                    out.deferred += 1  # R-WIN-1: outside their own window now: undecided, no cap, no budget
                    continue
                if excluded is None and prior is None and held_out(inp.campaign_db_id, consumer, inp.holdout_percent,
                                                                      inp.holdout_key):
                    excluded = A.HELD_OUT  # R-HO-1: the control group: decided, never sent, no cap taken
                live = (excluded is None) if prior is None else prior in _COMMITTED_STATES
                if live and committed >= budget:
                    out.next_seq = seq
                    break
                if live and prior is None and quota is not None and fresh >= quota.left:
                    # Spent (left 0): the slice stops with the reason. Else the next chunk takes what the caps left.
                    out.next_seq, out.stopped = seq, quota.reason
                    break
                fresh += live and prior is None
                committed += live
                if prior is None:
                    decisions[consumer] = excluded
                    addresses[consumer] = address
                # Decided by an earlier attempt of this chunk: finish its work, decide nothing anew.
                elif prior in _LIVE_STATES:
                    # The body is what it was when decided (a provider that has it compares by reference).
                    out.to_reconcile.append(self._outbound(inp, consumer, address, shared_body))
                elif prior == "sent":
                    out.already_sent += 1
                else:
                    out.suppressed["already_decided"] += 1
            if not decisions:
                return out
            # ---- R-PH-5 (channels/chat.py): each live chat delivery's sender agent, chosen in this transaction;
            # who has no online agent of the set gets no message (no_agent_online), before any cap is taken.
            senders = await chat.choose_senders(conn, inp, decisions) if inp.sender_agents is not None else {}
            # ---- end R-PH-5

            # Lock order: ascending consumer id, the same in every transaction.
            ids = sorted(decisions)
            live = [c for c in ids if decisions[c] is None]
            tkey = template_key(inp.shop_id, cap.group if cap else "")
            reserved: set[int] = set()
            if live:
                live_days = [fdays[c] for c in live]
                window = cap.days if cap else 1
                reserved = {
                    r[0]
                    for r in await conn.fetch(
                        _RESERVE, live, live_days, inp.shop_id, tkey, window, ch, cap.count if cap else _NO_TEMPLATE_CAP,
                        *policy.limits,
                    )
                }  # fmt: skip
                capped = [c for c in live if c not in reserved]
                if capped:
                    for r in await conn.fetch(CAPS_READ, capped, [fdays[c] for c in capped], inp.shop_id, tkey, window, ch):
                        decisions[r["id"]] = _cap_reason(r, cap, policy)
            offered: dict[int, OfferItem] = {}
            benefits: dict[int, MemberBenefit] = {}
            # The coupon units the chunk's offers take, from stock read unlocked and applied at the end (StockTaking).
            stock = StockTaking(locked=lock_stock, at=handed_at)
            if inp.offer is not None:
                offered = await self._take_offer_stock(conn, inp, personal, [c for c in ids if decisions[c] is None],
                                                       extras, decisions, stock)
            elif inp.benefit is not None:
                benefits = await self._take_benefit_stock(conn, inp, personal, [c for c in ids if decisions[c] is None],
                                                          extras, decisions, stock)

            reasons = [decisions[c] for c in ids]
            live_now = [c for c, why in zip(ids, reasons, strict=True) if why is None]
            expires_at = handed_at + timedelta(hours=inp.offer.hours) if inp.offer and inp.offer.hours else None
            bodies = personal.bodies(inp, live_now, extras, offered, benefits, expires_at) if personal is not None else None
            # ---- R-COST-BUDGET (activities/budget.py): a priced chunk of a campaign with a budget locks its spend
            # row here (after the consumers and coupons, before the SMS credits) and sends the prefix that fits.
            spend = (await hold_budget(conn, inp.campaign_db_id, inp.campaign_budget)
                     if inp.campaign_budget is not None and live_now and (signature is not None or quota is not None)
                     else None)  # fmt: skip
            over_budget: list[int] = []
            debit = None
            if signature is not None and live_now:
                # R-AQ-5: each message paid from the shop's credits in this transaction; who cannot be paid for
                # gets no message, and gives back what the chunk took for them.
                if bodies is not None:
                    bodies = {c: sms.sms_text(b, signature) for c, b in bodies.items()}
                debit = await sms.charge(conn, inp.shop_id, {c: bodies[c] if bodies is not None else shared_body
                                                             for c in live_now}, handed_at, inp.campaign_db_id,
                                         inp.phase_index, inp.day, spend.left if spend else None)  # fmt: skip
                over_budget = debit.over_budget
                if debit.refused:
                    self._unpaid(debit.refused, decisions, offered, benefits, stock)
                    reasons = [decisions[c] for c in ids]
                    live_now = [c for c, why in zip(ids, reasons, strict=True) if why is None]
            elif spend is not None:  # R-ED-4's prices: the day's first free, in consumer order (none once exhausted)
                fits = 0 if spend.exhausted else within_budget(costs(inp.quota, quota.used, len(live_now)), spend.left)
                over_budget = live_now[fits:]
            if over_budget:
                self._unpaid(over_budget, decisions, offered, benefits, stock, A.NOT_SENT_BUDGET)
                reasons = [decisions[c] for c in ids]
                live_now = [c for c, why in zip(ids, reasons, strict=True) if why is None]
                out.stopped = A.NOT_SENT_BUDGET
            # ---- end R-COST-BUDGET
            chunk = dict(campaign=inp.campaign_db_id, phase=inp.phase_index, day=inp.day, channel=ch, shop=inp.shop_id)
            write = dict(
                chunk, template_group=cap.group if cap else "", fdays=[fdays[c] for c in ids], decided_at=inp.decided_at,
                ids=ids, reasons=reasons, live_state="sent" if handoff else "reserved",
                benefits=[benefits[c].benefit_id if c in benefits else None for c in ids] if benefits else None,
                costs=[debit.cost.get(c) for c in ids] if debit is not None and debit.cost else None,
                agents=[senders.get(c) for c in ids] if senders else None,  # R-PH-5: deliveries.sender_agent
            )  # fmt: skip
            offers = _offer_args(inp, offered, live_now, extras, handed_at)
            if handoff:
                write.update(
                    live_ids=live_now, addresses=[addresses[c] for c in live_now], body=shared_body,
                    bodies=[bodies[c] for c in live_now] if bodies is not None else None,
                    live_agents=[senders[c] for c in live_now] if senders else None,  # R-PH-5: outbox.senders
                    # R-WIN-1: outbox.window_end, the dispatcher's last instant: the slice's, or the first of the
                    # batch's recipients' own windows to close
                    window_end=batch_window_end(inp.window_end, {zone_of[c] for c in live_now if c in zone_of},
                                                handed_at),
                    **(offers or _NO_OFFERS),  # the offers, held in the same statement
                )  # fmt: skip
            statement = _WRITE_HANDED_OFF if handoff else _WRITE_RESERVED
            await conn.execute(statement.sql, *statement.args(**write))
            quota_cost = Decimal(0)
            if quota is not None and live_now:
                quota_cost = await take_quota(conn, inp.quota, quota, inp.shop_id,
                                              (inp.campaign_db_id, inp.phase_index, inp.day, ch), live_now)  # fmt: skip
            if spend is not None:  # R-COST-BUDGET: the chunk's committed costs, in its own transaction
                chunk_cost = sum(debit.cost.values(), Decimal(0)) if debit is not None else quota_cost
                await take_budget(conn, inp.campaign_db_id, chunk_cost, bool(over_budget))
            if offers and not handoff:
                await conn.execute(_HOLD_OFFERS.sql, *_HOLD_OFFERS.args(**chunk, live_ids=live_now, **offers))
            held = [c for c in live_now if c in benefits and benefits[c].coupon_id is not None]
            if held:
                # A limited member benefit (R-RP-4): its coupon's unit is held like an exclusive offer's.
                await conn.execute(_HOLD_OFFERS.sql, *_HOLD_OFFERS.args(
                    **chunk, live_ids=held, coupons=[benefits[c].coupon_id for c in held],
                    items=[extras[c][0] for c in held], handed_at=handed_at, hours=inp.benefit.hours,
                ))  # fmt: skip
            out.suppressed.update(reason for reason in decisions.values() if reason is not None)
            # A reservation without a live delivery gives its count back (the coupon ran out for it).
            unused = sorted(reserved.difference(live_now))
            if unused:
                await release_reservations(conn, unused, [fdays[c] for c in unused], inp.shop_id, ch, cap)
            # Last: the coupon rows' lock is held only from here to the commit (StockTaking).
            await stock.apply(conn, inp.shop_id)
            if handoff:
                out.handed_off = len(live_now)
            else:
                out.to_send.extend(
                    self._outbound(inp, c, addresses[c], bodies[c] if bodies is not None else shared_body, senders.get(c))
                    for c in live_now
                )
        # Committed: what this transaction itself decided (workers/metrics.py).
        decided = Counter(r for r in reasons if r is not None)
        metrics.count_deliveries(ch, A.HELD_OUT, decided.pop(A.HELD_OUT, 0))  # the control group's own state (R-HO-1)
        metrics.count_deliveries(ch, metrics.NOT_SENT, decided.pop(A.NOT_SENT_BUDGET, 0))  # R-COST-BUDGET: not_sent
        metrics.count_suppressed(ch, decided)
        if handoff:
            metrics.count_deliveries(ch, metrics.SENT, len(live_now))
        metrics.count_claims(HELD, (len(live_now) if offered else 0) + len(held))
        return out

    @staticmethod
    async def _take_offer_stock(
        conn, inp: SendSliceInput, personal: Personal | None, live: list[int], extras: dict, decisions: dict,
        stock: StockTaking,
    ) -> dict[int, OfferItem]:
        """R-BEN-1 / R-SC-2: every live consumer's message carries one unit of its coupon, taken by the chunk's
        StockTaking (applied at the end of its transaction), in consumer order while it lasts. A countdown
        offer's coupon is the one of the product chosen for the consumer (R-RP-5 / R-RP-10); a shared coupon
        is the same for everyone (K-OLDCUST). Who has no product with a coupon, or whose coupon ran out or is
        not valid at the hand-off instant (R-OC-9), gets no message (benefit_unavailable)."""
        if inp.offer.shared:
            # No product: every consumer's item is None, and None's coupon is the shared one.
            item_of: dict[int, int | None] = dict.fromkeys(live)
            catalog = {None: OfferItem(inp.offer.coupon_ids[0], "", "")}
        else:
            item_of = {c: extras[c][0] for c in live}
            catalog = personal.catalog
        coupons = sorted({catalog[i].coupon_id for i in item_of.values() if i in catalog})
        offered, taken = allocate_offers(live, item_of, catalog, await stock.usable(conn, coupons, inp.shop_id))
        for c in live:
            if c not in offered:
                decisions[c] = A.SUPPRESS_BENEFIT
        stock.taken.update(taken)
        return offered

    @staticmethod
    async def _take_benefit_stock(
        conn, inp: SendSliceInput, personal: Personal, live: list[int], extras: dict, decisions: dict, stock: StockTaking,
    ) -> dict[int, MemberBenefit]:
        """R-RP-4: each live consumer's member benefit, by their membership read in the chunk's statement: the
        shop's benefit in force at `at` for members or for the others (BenefitChoice). A limited one (naming a
        coupon) takes one unit of that coupon, like an exclusive offer (allocate_offers: in consumer order
        while it lasts, through the chunk's StockTaking). Who has no benefit in force, or whose
        coupon ran out or is not valid at `at`, gets no message (benefit_unavailable, R-BEN-1)."""
        choice = BenefitChoice.of(inp.benefit, personal.benefits, stock.at)
        chosen = choice.per_recipient({c: extras[c][2] for c in live})
        limited = {c: b for c, b in chosen.items() if b is not None and b.coupon_id is not None}
        # A limited benefit is a catalog entry of its own: the consumer's "item" is the benefit id.
        catalog = {b.benefit_id: OfferItem(b.coupon_id, b.title, "") for b in limited.values()}
        coupons = sorted({item.coupon_id for item in catalog.values()})
        usable = await stock.usable(conn, coupons, inp.shop_id)
        order = [c for c in live if c in limited]
        granted, taken = allocate_offers(order, {c: limited[c].benefit_id for c in order}, catalog, usable)
        benefits: dict[int, MemberBenefit] = {}
        for c in live:
            b = chosen[c]
            if b is None or (b.coupon_id is not None and c not in granted):
                decisions[c] = A.SUPPRESS_BENEFIT
            else:
                benefits[c] = b
        stock.taken.update(taken)
        return benefits

    @staticmethod
    def _unpaid(
        refused: list[int], decisions: dict, offered: dict, benefits: dict, stock: StockTaking,
        reason: str = A.SUPPRESS_NO_CREDIT,
    ) -> None:
        """R-AQ-5: consumers the shop's SMS credits cannot pay for get no message (or R-COST-BUDGET: the
        campaign's budget, `reason` NOT_SENT_BUDGET); the coupon units the chunk took for them go back (their
        caps go back with the other unused reservations)."""
        for c in refused:
            decisions[c] = reason
            item = offered.pop(c, None)
            benefit = benefits.pop(c, None)
            coupon = item.coupon_id if item is not None else benefit.coupon_id if benefit is not None else None
            if coupon is not None:
                stock.taken[coupon] -= 1

    @staticmethod
    def _outbound(inp: SendSliceInput, consumer_id: int, address: str, body: str, sender: str | None = None) -> Outbound:
        return Outbound(
            campaign_id=inp.campaign_db_id,
            phase=inp.phase_index,
            consumer_id=consumer_id,
            day=inp.day,
            channel=inp.channel.value,
            address=address,
            body=body,
            sender=sender,  # R-PH-5
        )

    async def _record(self, key: LedgerDay, outcomes: list[Outcome]) -> None:
        """Store provider outcomes on rows still reserved/unknown; failures give their caps back."""
        if not outcomes:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(_RECORD_PLAN)
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
            # Each delivery's caps go back on the day they were counted on (its own, R-FAT-DAY).
            day_of = {r["consumer_id"]: r["fatigue_day"] for r in changed if r["consumer_id"] in failed}
            released_claims = 0
            if day_of:
                released_claims = await give_back_failed(conn, key, [r for r in changed if r["consumer_id"] in day_of])
        # Committed: the rows this transaction settled (workers/metrics.py); `unknown` is not settled.
        state_of = {o.consumer_id: o.state for o in outcomes}
        settled = Counter(state_of[r["consumer_id"]] for r in changed)
        metrics.count_deliveries(key.channel, metrics.SENT, settled["sent"])
        metrics.count_deliveries(key.channel, metrics.FAILED, settled["failed"])
        metrics.count_claims(RELEASED, released_claims)


@dataclass(frozen=True)
class LedgerDay:
    """The rows of one campaign phase day on one channel (each row holds the day its caps were counted on)."""

    campaign_id: int
    phase: int
    day: date
    channel: str
    shop_id: str
    template_cap: object | None
    # R-ED-4: the quota the rows held (a failed one gives its unit back), or None.
    quota: QuotaPlan | None = None


async def dispatch(channel, fresh: list[Outbound], uncertain: list[Outbound]) -> list[Outcome]:
    """Send `fresh`; for `uncertain` (reserved by an attempt that lost the provider's answer)
    reconcile by reference first and send only what the provider does not have."""
    outcomes = await channel.reconcile(uncertain) if uncertain else []
    known = {o.consumer_id for o in outcomes}
    to_send = fresh + [m for m in uncertain if m.consumer_id not in known]
    if to_send:
        outcomes += await send_and_settle(channel, to_send)
    return outcomes


async def give_back_failed(conn, key: LedgerDay, failed: list) -> int:
    """What deliveries of `key` that failed (were never delivered) held goes back, in the transaction that
    records them `failed`: their caps on the day each was counted on (R-OC-8), their offers' units, their
    quota units (R-ED-4), their costs (out of the ledger's sums, back to the campaign's budget, R-COST-BUDGET,
    and to the account: an SMS's credits, R-AQ-5; an email's EDM balance). `failed`: their ledger rows
    (consumer_id, fatigue_day, cost). The locks in the send path's order: the quota's rows before the
    consumers', the campaign's spend after the coupons and before the SMS credits. Returns the claims released."""
    failed = sorted(failed, key=lambda r: r["consumer_id"])
    ids = [r["consumer_id"] for r in failed]
    cost = sum((r["cost"] for r in failed if r["cost"]), Decimal(0))
    if key.quota is not None:
        await give_back_quota(conn, key.quota, key.shop_id, key.day, len(ids), cost)
    await release_reservations(conn, ids, [r["fatigue_day"] for r in failed], key.shop_id, key.channel, key.template_cap)
    released = await conn.fetchval(_RELEASE_OFFERS, key.campaign_id, key.phase, key.day, key.channel, ids)
    await give_back_budget(conn, key.campaign_id, cost)
    if key.channel == "sms":  # R-AQ-5: only what is sent is billed (its credits back, its cost NULL)
        await sms.refund(conn, key.shop_id, key.campaign_id, key.phase, key.day, ids)
    elif any(r["cost"] is not None for r in failed):
        await conn.execute(_FORGET_COST, key.campaign_id, key.phase, key.day, key.channel, ids)
    return released


async def release_reservations(
    conn, consumer_ids: list[int], days: list[date], shop_id: str, channel: str, cap
) -> None:
    """A delivery that did not go out gives its caps back (R-OC-8; docs/design.md, "The ledger and the caps"),
    on the channel's row of the day each was counted on (`days`, in the order of `consumer_ids`)."""
    # Locked in consumer order first (the order of _RESERVE). A chunk's recipients span one or two
    # days: a consumer's row of the other day may be locked too, harmless (the same order).
    await conn.execute(
        "SELECT 1 FROM fatigue_day WHERE consumer_id = ANY($1::bigint[]) AND day = ANY($2::date[]) AND channel = $3"
        " ORDER BY consumer_id, day FOR UPDATE",
        consumer_ids,
        sorted(set(days)),
        channel,
    )
    # Each count drops by one and leaves its map at zero; a shop that leaves the map no longer
    # counts among the day's shops.
    await conn.execute(
        """UPDATE fatigue_day f SET sent = f.sent - 1,
                  shops = f.shops - (coalesce((f.per_shop ->> $2)::int, 0) <= 1)::int,
                  per_shop = fatigue_decrement(f.per_shop, $2),
                  per_template = fatigue_decrement(f.per_template, $4)
           FROM unnest($1::bigint[], $3::date[]) AS u(id, day)
           WHERE f.consumer_id = u.id AND f.day = u.day AND f.channel = $5""",
        consumer_ids,
        shop_id,
        days,
        template_key(shop_id, cap.group if cap else ""),
        channel,
    )
