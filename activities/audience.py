"""Audience refresh: the day's recipients, computed in SQL into audience_snapshots.

An audience is a named SQL query over the shop's data as of the snapshot
instant (R-OC-5: T+1, data before 00:00 of the send day). The refresh then
applies the exclusions (R-EXC-1), drops who this phase already reached,
drops who an earlier overlapping task of the shop covers (R-OC-6), keeps the
likely readers (R-OC-7), numbers the rest by `seq` and returns only counts and
the end of the numbering. It runs as `parts` statements at once, each taking
the consumers of one hash bucket and numbering them seq = k * parts + part in
consumer order: the parts interleave, so a chunk of seq values still covers
neighbouring consumers, and only the end of the numbering has a few empty
positions. New audiences are new entries in AUDIENCES.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

import asyncpg
from sluice.activities import errors
from sluice.activities.context import bind_activity_context
from sluice.audiences import (
    AUDIENCES,
    CUSTOM,
    TAGS,
    ItemChoice,
    custom_with_industry_value,
    item_choice,
    names,
    reaches_non_customers,
    with_item_choice,
)
from sluice.audiences import filters as F
from sluice.audiences.tags import describe as describe_tags
from sluice.audiences.tags import narrowed_by_tags, parse_tags
from sluice.outcomes.holdout import held_out_sql
from sluice.schemas.activities import RefreshAudienceInput, RefreshAudienceResult
from sluice.schemas.settings import DEFAULT_REFRESH_PARTS
from temporalio import activity

# Per channel (R-EXC-1): the opt-out column, the address column and the column saying the address is
# usable. shop_customers and consumers (the platform's row, migration 0006) both have these columns.
# The in-site inbox addresses the consumer id itself: always reachable.
CHANNELS: dict[str, tuple[str, str | None, str | None]] = {
    "chat": ("unsub_chat", "chat_id", None),
    "sms": ("unsub_sms", "phone", "phone_valid"),
    "email": ("unsub_email", "email", "email_valid"),
    "inbox": ("unsub_inbox", None, None),
}


def channel_columns(channel: str, row: str = "c") -> tuple[str, str]:
    """(the opt-out column, the predicate that the channel's contact exists) over the row `row`."""
    unsub, address, valid = CHANNELS[channel]
    if address is None:
        return unsub, "true"
    return unsub, f"{row}.{address} IS NOT NULL" + (f" AND {row}.{valid}" if valid else "")


def channel_address(channel: str, row: str = "c") -> str:
    """Where the channel's message goes, over the row `row`; its contact predicate requires it."""
    address = CHANNELS[channel][1]
    return f"{row}.{address or 'consumer_id::text'}"


# Over shop_customers `c`: the opt-out column and contact predicate, and the address, per channel. Each
# contact predicate requires the address column (tests/test_sql_params.py), so a reachable consumer
# has an address.
CHANNEL_COLUMNS = {ch: channel_columns(ch) for ch in CHANNELS}
CHANNEL_ADDRESS = {ch: channel_address(ch) for ch in CHANNELS}

# The recipient's rows: the shop's `c` (an inner join: the audience yields the shop's customers), or for an
# audience that reaches non-customers (Audience.reaches_non_customers) the shop's row when there is one
# and else the platform's `p` (consumers). The platform's row is a primary-key probe made only for a
# recipient without a shop row (LIMIT 1 keeps it a probe: under the refresh's nested-loop ban a join
# would hash the whole platform's consumers). {shop}: the shop id's parameter, {consumer}: the
# recipient's consumer_id column.
_SHOP_ROW = "JOIN shop_customers c ON c.shop_id = {shop} AND c.consumer_id = {consumer}"
_SHOP_OR_PLATFORM_ROW = """LEFT JOIN shop_customers c ON c.shop_id = {shop} AND c.consumer_id = {consumer}
        LEFT JOIN LATERAL (SELECT * FROM consumers pc
                           WHERE pc.consumer_id = {consumer} AND c.consumer_id IS NULL LIMIT 1) p ON true"""


def recipient_rows(shop: str, consumer: str, non_customers: bool = False) -> str:
    """The joins giving a recipient's row(s): `c` (and `p` for an audience reaching non-customers)."""
    return (_SHOP_OR_PLATFORM_ROW if non_customers else _SHOP_ROW).replace("{shop}", shop).replace("{consumer}", consumer)


def recipient_address(channel: str, non_customers: bool = False) -> str:
    """The recipient's address for the channel: the shop's, else (non-customers) the platform's."""
    if not non_customers:
        return CHANNEL_ADDRESS[channel]
    return f"CASE WHEN c.consumer_id IS NOT NULL THEN {CHANNEL_ADDRESS[channel]} ELSE {channel_address(channel, 'p')} END"


def exclusion_branches(channel: str, non_customers: bool = False) -> str:
    """R-EXC-1 as CASE branches over shop_customers `c`, the first reason that applies winning.

    The one definition for the refresh (at 00:00) and the send path (again at send time,
    R-OC-5). The reasons are schemas.activities.SUPPRESS_* (tests/test_send_exclusions.py).
    With `non_customers` (the rows of `recipient_rows(..., True)`): the shop's row decides
    alone when it exists (its deletion, blacklist, opt-out and contact); a consumer without
    one is judged by the platform's row `p`: its opt-out and contact for the channel, and no
    contact at all without a platform row either.
    """
    unsub, has_contact = CHANNEL_COLUMNS[channel]
    if non_customers:
        platform_contact = channel_columns(channel, "p")[1]
        # Without a shop row c.deleted and c.blacklisted are NULL: those branches are not taken.
        return f"""WHEN c.deleted THEN 'deleted'
                 WHEN c.blacklisted THEN 'blacklisted'
                 WHEN coalesce(c.{unsub}, p.{unsub}) THEN 'unsubscribed'
                 WHEN NOT (CASE WHEN c.consumer_id IS NOT NULL THEN ({has_contact})
                                WHEN p.consumer_id IS NOT NULL THEN ({platform_contact})
                                ELSE false END) THEN 'no_contact'"""
    return f"""WHEN c.deleted THEN 'deleted'
                 WHEN c.blacklisted THEN 'blacklisted'
                 WHEN c.{unsub} THEN 'unsubscribed'
                 WHEN NOT ({has_contact}) THEN 'no_contact'"""

# The recipient's zone (R-FAT-DAY, R-WIN-1): the shop's record of the customer, else the platform's. `z` is
# joined once per refresh over the platform's consumers that have a zone (a hash join: a probe per recipient at
# send time doubled the chunk read); the snapshot keeps it, NULL when no zone is known (the platform's).
RECIPIENT_ZONE = "coalesce(c.timezone, z.timezone)"
_ZONE_ROW = "LEFT JOIN consumers z ON z.consumer_id = {consumer} AND z.timezone IS NOT NULL"


def zone_row(consumer: str) -> str:
    """The join giving `z`, the platform's record of the recipient's zone, for RECIPIENT_ZONE."""
    return _ZONE_ROW.replace("{consumer}", consumer)


def in_part(consumer: str) -> str:
    """Whether `consumer` belongs to the statement's part: $8 parts, $9 this part. A hash of the consumer, so any
    id pattern splits evenly; the part's share is numbered seq = k * parts + part in consumer order."""
    return f"($8::int = 1 OR (hashint8({consumer}) & 2147483647) % $8::int = $9::int)"


@dataclass(frozen=True)
class CustomersFilter:
    """A custom audience of the shop's customers alone (no industry-value union, no tags): its filter as a predicate
    over the customer row `c` (audiences/custom.py compile_predicate), and its product choice (R-RP-10) if any."""

    predicate: str
    choice: ItemChoice | None = None


# The recipients of a CustomersFilter: the part's customers of the shop read once, the row `c` being both the
# audience's and the one the exclusions read; `m` names its consumer for the branches and the filters (a LATERAL
# alias PostgreSQL flattens away), `ch` the product choice's row ({choice}: its join, or nothing). The audience's own
# query joined back to shop_customers read the shop's 1,000,000 customers twice per part and hashed the part's
# 500,000 to join them. Measured at the 1M bench shop (PostgreSQL 15, the whole-shop custom audience with the product
# choice, both parts at once, median of 3): the refresh 5.75 s -> 4.49 s, its backends' CPU 9.9 s -> 7.8 s; the
# preview's statement of the same audience 4.32 s -> 2.76 s (it probed shop_customers' primary key per recipient).
# docs/benchmarks.md, K-REPURCHASE. {filter}: the predicate, {part}: `in_part` over c.consumer_id.
_CUSTOMERS = """shop_customers c CROSS JOIN LATERAL (SELECT c.consumer_id) m {choice}"""
_CUSTOMERS_WHERE = """WHERE c.shop_id = $1 AND $2::timestamptz IS NOT NULL AND ({filter}) AND {part}
          AND cardinality($10::bigint[]) >= 0 AND $3::timestamptz IS NOT NULL  -- typed here, as in _flagged_sql"""
_CHOICE_JOIN = """LEFT JOIN ({favoured}) ch ON ch.consumer_id = m.consumer_id"""


def _flagged_sql(
    audience_sql: str, yields_item: bool, channel: str, filters: list[str] | tuple[str, ...], non_customers: bool,
    customers: CustomersFilter | None = None,
) -> str:
    """The CTEs `matched` and `flagged` of one part: the audience, then each recipient's first reason not to be
    reached (NULL: eligible) and their zone. The one definition for the refresh and the preview. With `customers`
    (then `audience_sql` and `yields_item` are unused) there is no `matched`: `flagged` reads the shop's customers
    the filter selects directly (_CUSTOMERS)."""
    branches, joins = F.sql(filters)
    if customers is None:
        rows = recipient_rows("$1", "m.consumer_id", non_customers)
        item = "a.item" if yields_item else "NULL::bigint"
        # $10 (the overlap filter's campaigns) is always bound, so the audience's own start at $11.
        matched = f"""matched AS (
        SELECT a.consumer_id, {item} AS item FROM ({audience_sql}) a
        WHERE {in_part("a.consumer_id")}
          AND cardinality($10::bigint[]) >= 0
          AND $3::timestamptz IS NOT NULL  -- typed here: an audience may not use the campaign's start (a custom filter)
    ),
    """
        source, recipient_item, where = "matched m", "m.item", ""
    else:  # `c` is the audience's own row
        choice = customers.choice
        matched = rows = ""
        source = _CUSTOMERS.replace("{choice}", _CHOICE_JOIN.replace("{favoured}", choice.favoured) if choice else "")
        recipient_item = choice.item if choice else "NULL::bigint"
        where = _CUSTOMERS_WHERE.replace("{part}", in_part("c.consumer_id")).replace("{filter}", customers.predicate)
    return f"""
    WITH {matched}flagged AS (
        SELECT m.consumer_id, {recipient_item} AS item, {RECIPIENT_ZONE} AS zone,
            CASE {exclusion_branches(channel, non_customers)}
                 WHEN $7::bool AND EXISTS (SELECT 1 FROM deliveries d
                              WHERE d.campaign_id = $4 AND d.phase = $5 AND d.consumer_id = m.consumer_id
                                AND d.state IN ('reserved', 'sent', 'unknown', 'held_out')) THEN 'already_reached'
                 {branches}
            END AS reason
        FROM {source} {rows} {zone_row("m.consumer_id")}
        {joins}
        {where}
    )"""


def refresh_sql(
    audience_sql: str, yields_item: bool, channel: str, filters: list[str] | tuple[str, ...] = (),
    non_customers: bool = False, customers: CustomersFilter | None = None,
) -> str:
    """The refresh statement of one part: the audience, the exclusions (R-EXC-1), whom the phase already
    reached, then the plan's named filters (audiences/filters.py), in this order of precedence; the eligible
    numbered into the snapshot, (reason, n) returned.
    `non_customers`: the audience may yield consumers without a shop row (Audience.reaches_non_customers).
    `customers`: the audience is a filter of the shop's customers (_flagged_sql)."""
    return f"""{_flagged_sql(audience_sql, yields_item, channel, filters, non_customers, customers)},
    ins AS (
        INSERT INTO audience_snapshots (campaign_id, phase, day, seq, consumer_id, item, timezone)
        SELECT $4, $5, $6, ((row_number() OVER (ORDER BY consumer_id) - 1) * $8::int + $9::int)::int, consumer_id, item,
               zone
        FROM flagged WHERE reason IS NULL
    )
    SELECT coalesce(reason, 'eligible') AS reason, count(*)::int AS n FROM flagged GROUP BY 1
    """


# The preview's rows of eligible consumers per cap counts (PREVIEW_CAP_COUNTS rows of `preview_count_sql`).
PREVIEW_CAP_COUNTS = "cap_counts"
# The preview's count of eligible consumers per zone of their own (R-WIN-1: when their window opens).
PREVIEW_ZONE = "zone"
# The preview's rows of eligible consumers the run would hold out as the control group (R-HO-1).
PREVIEW_HELD_OUT = "held_out_counts"


def preview_count_sql(
    audience_sql: str, channel: str, filters: list[str] | tuple[str, ...], non_customers: bool, first_param: int,
    customers: CustomersFilter | None = None,
) -> str:
    """The preview's statement of one part (audiences/preview.py): the refresh's `flagged` without writing the
    snapshot, (reason, n) rows; then (PREVIEW_CAP_COUNTS, n, day_sent, day_shops, shop_sent, template_today, earlier: the counts
    send.py's cap_verdict reads) for the eligible consumers
    grouped by the counts a cap judges them on (send.py's CAPS_READ and _EARLIER_IN_WINDOW, read the same way): on
    the channel's row of their own fatigue day, and the template group's count on the window's earlier days.
    One primary-key range probe of fatigue_day per eligible consumer, aggregated in the statement: the verdict
    stays send.py's pure `cap_verdict`, applied once per group (a few hundred at most) instead of a cap reading
    per consumer. Measured at the 1M bench shop right after a whole-shop day (every consumer with a row): see
    docs/benchmarks.md (K-REPURCHASE, the preview after the day). Last, (PREVIEW_ZONE, n) for each zone of
    eligible consumers who have one (R-WIN-1).

    From ${first_param}: the zones (IANA names), each one's fatigue day at the instant the run would hand off to it,
    NULL when its window does not open that day (such consumers are not judged by the caps: R-WIN-1 takes them),
    the platform's fatigue day (consumers without a zone), the template key, the template window's days (1: the
    fatigue day alone), the campaign's holdout key and `threshold` of its share (R-HO-1: 0, nobody held out). The
    eligible consumers the run would hold out that day come back as (PREVIEW_HELD_OUT, n) groups instead of
    PREVIEW_CAP_COUNTS ones: the run decides them before any cap. The channel is a constant of CHANNELS; $1 the
    shop."""
    if channel not in CHANNELS:
        raise errors.invalid_input("channel", f"unknown channel {channel!r}")
    zones, zone_days, platform_day, tkey, window, hkey, buckets = (f"${int(first_param) + i}" for i in range(7))
    held = held_out_sql(f"{hkey}::text", "f.consumer_id", f"{buckets}::int")
    return f"""{_flagged_sql(audience_sql, False, channel, filters, non_customers, customers)}
    SELECT coalesce(reason, 'eligible') AS reason, count(*)::int AS n, NULL::text AS zone, NULL::int AS day_sent,
           NULL::int AS day_shops, NULL::int AS shop_sent, NULL::int AS template_today, NULL::int AS earlier
    FROM flagged WHERE $6::date IS NOT NULL  -- typed here: the refresh's day is bound but not needed by the preview
    GROUP BY 1
    UNION ALL
    SELECT CASE WHEN {held} THEN '{PREVIEW_HELD_OUT}' ELSE '{PREVIEW_CAP_COUNTS}' END, count(*)::int, NULL,
           k.day_sent, k.day_shops, k.shop_sent, k.template_today, k.earlier
    FROM flagged f
    LEFT JOIN unnest({zones}::text[], {zone_days}::date[]) AS zd(zone, day) ON zd.zone = f.zone
    CROSS JOIN LATERAL (SELECT CASE WHEN f.zone IS NULL THEN {platform_day}::date ELSE zd.day END AS fday) d
    CROSS JOIN LATERAL (
        SELECT coalesce(max(x.sent) FILTER (WHERE x.day = d.fday), 0) AS day_sent,
               coalesce(max(x.shops) FILTER (WHERE x.day = d.fday), 0) AS day_shops,
               coalesce(max((x.per_shop ->> $1)::int) FILTER (WHERE x.day = d.fday), 0) AS shop_sent,
               coalesce(max((x.per_template ->> {tkey})::int) FILTER (WHERE x.day = d.fday), 0) AS template_today,
               coalesce(sum((x.per_template ->> {tkey})::int) FILTER (WHERE x.day < d.fday), 0)::int AS earlier
        FROM fatigue_day x
        WHERE x.consumer_id = f.consumer_id AND x.day > d.fday - {window}::int AND x.day <= d.fday
          AND x.channel = '{channel}'
    ) k
    WHERE f.reason IS NULL AND d.fday IS NOT NULL
    GROUP BY 1, 4, 5, 6, 7, 8
    UNION ALL
    SELECT '{PREVIEW_ZONE}', count(*)::int, f.zone, NULL, NULL, NULL, NULL, NULL FROM flagged f
    WHERE f.reason IS NULL AND f.zone IS NOT NULL
    GROUP BY f.zone
    """


# The audience's own parameters are bound from $11 on: $1..$10 are the refresh statement's.
FIRST_AUDIENCE_PARAM = 11


@dataclass(frozen=True)
class RefreshStatement:
    sql: str
    audience_args: list  # bound from $11 on


@dataclass(frozen=True)
class _CheckedAudience:
    sql: str
    args: list  # bound from $11 on
    yields_item: bool
    non_customers: bool
    customers: CustomersFilter | None = None  # set: the audience is this filter of the shop's customers (`sql` unused)


def _checked_audience(inp: RefreshAudienceInput, choose_items: bool = True) -> _CheckedAudience:
    """The input's audience as SQL with its arguments; unknown names are bad input. Without `choose_items` a custom
    audience's product choice (R-RP-10) is left out: it gives every recipient one product and removes no one, so
    counts are the same without it. A custom audience of the shop's customers alone (no industry-value union, no
    tags) comes back as a CustomersFilter, its filter a predicate over their row."""
    unknown = set(inp.filters) - F.NAMES
    if unknown:
        raise errors.invalid_input("filters", f"unknown audience filters {sorted(unknown)} (one of {sorted(F.NAMES)})")
    non_customers = reaches_non_customers(inp.audience, inp.audience_params)
    tags = checked_tags(inp.audience_params)
    if inp.audience == CUSTOM:
        coupons = inp.audience_params.get("coupon_ids") if choose_items else None
        if not non_customers and not tags:  # the shop's customers alone: read once (_CUSTOMERS)
            predicate, args = custom_audience_predicate(inp.audience_params)
            choice = None
            if coupons:  # the products of these coupons are pushed, one per recipient (R-RP-10)
                choice = item_choice(FIRST_AUDIENCE_PARAM + len(args), in_part("e.consumer_id"))
                args = [*args, list(coupons)]
            return _CheckedAudience("", args, bool(coupons), non_customers, CustomersFilter(predicate, choice))
        audience_sql, args = custom_audience_sql(inp.audience_params)
        if non_customers:  # joined with the platform's industry-value audience (R-RP-3)
            audience_sql = custom_with_industry_value(audience_sql)
        if tags:  # R-RP-3: tags narrow the audience
            audience_sql = narrowed_by_tags(audience_sql, FIRST_AUDIENCE_PARAM + len(args))
            args = [*args, tags]
        if coupons:  # the products of these coupons are pushed, one per recipient (R-RP-10)
            audience_sql = with_item_choice(audience_sql, FIRST_AUDIENCE_PARAM + len(args), in_part("e.consumer_id"))
            args = [*args, list(coupons)]
        return _CheckedAudience(audience_sql, args, bool(coupons), non_customers)
    aud = AUDIENCES.get(inp.audience)
    if aud is None:
        raise errors.invalid_input("audience", f"unknown audience {inp.audience!r} (one of {', '.join(sorted(names()))})")
    missing = [p for p in aud.params if p not in inp.audience_params]
    if missing:
        raise errors.invalid_input("audience_params", f"audience {inp.audience!r} needs {missing}")
    args = [inp.audience_params[p] for p in aud.params]
    audience_sql = aud.sql
    if tags:  # R-RP-3: tags narrow any audience
        audience_sql = narrowed_by_tags(audience_sql, FIRST_AUDIENCE_PARAM + len(args))
        args = [*args, tags]
    return _CheckedAudience(audience_sql, args, aud.yields_item, non_customers)


def checked_refresh_sql(inp: RefreshAudienceInput) -> RefreshStatement:
    """The refresh statement for the input's audience, channel and filters; unknown names are bad input."""
    a = _checked_audience(inp)
    sql = refresh_sql(a.sql, a.yields_item, inp.channel.value, inp.filters, a.non_customers, a.customers)
    return RefreshStatement(sql, a.args)


def checked_preview_sql(inp: RefreshAudienceInput, caps: list) -> RefreshStatement:
    """The preview's count statement (`preview_count_sql`) for the input; `caps` are its last arguments, after the
    audience's: the zones and their fatigue days, the platform's fatigue day, the template key and the template
    window's days (audiences/preview.py builds them)."""
    a = _checked_audience(inp, choose_items=False)
    sql = preview_count_sql(a.sql, inp.channel.value, inp.filters, a.non_customers, FIRST_AUDIENCE_PARAM + len(a.args),
                            a.customers)
    return RefreshStatement(sql, [*a.args, *caps])


def checked_tags(params: dict) -> list[str] | None:
    """The plan's tags narrowing the audience (R-RP-3), validated again: bad ones are bad input."""
    if params.get(TAGS) is None:
        return None
    try:
        return parse_tags(params[TAGS])
    except ValueError as exc:
        raise errors.invalid_input(f"audience_params.{TAGS}", f"R-RP-3: {describe_tags(exc)}"[:500]) from None


def _custom_filter(params: dict):
    from sluice.audiences.custom import parse_filter

    try:
        return parse_filter(params.get("filter"))
    except ValueError as exc:
        raise errors.invalid_input("audience_params.filter", str(exc)[:500]) from None


def custom_audience_sql(params: dict) -> tuple[str, list]:
    """The merchant's filter (params["filter"]) compiled to SQL whose values are bound from $11 on."""
    from sluice.audiences.custom import compile_custom

    return compile_custom(_custom_filter(params), first_param=FIRST_AUDIENCE_PARAM)


def custom_audience_predicate(params: dict) -> tuple[str, list]:
    """The merchant's filter as a predicate over the customer row `c`, its values bound from $11 on."""
    from sluice.audiences.custom import compile_predicate

    return compile_predicate(_custom_filter(params), first_param=FIRST_AUDIENCE_PARAM)


async def refresh_args(conn: asyncpg.Connection, inp: RefreshAudienceInput, statement: RefreshStatement, parts: int):
    """The refresh statement's arguments, as a function of the part (the one builder of $1..$10 and the
    audience's own from $11)."""
    # The phase's first day has reached no one yet: the planner then drops the per-recipient
    # ledger probe (custom plans, db/pool.py).
    reached_before = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM deliveries WHERE campaign_id = $1 AND phase = $2)",
        inp.campaign_db_id,
        inp.phase_index,
    )
    overlapping: list = []  # $10: the shop's earlier campaigns of the same kind (R-OC-6)
    if F.OVERLAP in inp.filters:
        overlapping = await conn.fetchval(F.EARLIER_SAME_KIND, inp.shop_id, inp.campaign_db_id, inp.kind)

    def for_part(part: int) -> list:
        return [
            inp.shop_id,  # $1
            inp.snapshot_at,  # $2
            inp.campaign_started_at,  # $3
            inp.campaign_db_id,  # $4
            inp.phase_index,  # $5
            inp.day,  # $6
            reached_before,  # $7
            parts,  # $8
            part,  # $9
            overlapping,  # $10
            *statement.audience_args,  # $11...
        ]

    return for_part


def count_reasons(rows) -> tuple[int, dict[str, int]]:
    """(eligible, excluded per reason) from the (reason, n) rows of a refresh statement, its parts' rows summed."""
    counts: Counter[str] = Counter()
    for reason, n in rows:
        counts[reason] += n
    return counts.pop("eligible", 0), dict(counts)


class AudienceActivities:
    def __init__(self, pool: asyncpg.Pool, *, parts: int = DEFAULT_REFRESH_PARTS):
        self.pool = pool
        self.parts = parts

    @activity.defn
    async def refresh_audience(self, inp: RefreshAudienceInput) -> RefreshAudienceResult:
        log = bind_activity_context(shop_id=inp.shop_id, campaign_db_id=inp.campaign_db_id)
        statement = checked_refresh_sql(inp)
        async with self.pool.acquire() as conn:
            # A retried refresh rebuilds the day's snapshot from scratch: the
            # workflow only slices it after this activity has completed.
            await conn.execute(
                "DELETE FROM audience_snapshots WHERE campaign_id = $1 AND phase = $2 AND day = $3",
                inp.campaign_db_id,
                inp.phase_index,
                inp.day,
            )
            part_args = await refresh_args(conn, inp, statement, self.parts)
        # The parts run at once on their own connections: one statement uses one core, and
        # writing a million snapshot rows is most of a refresh's time.
        outcomes = await asyncio.gather(
            *(self._refresh_part(statement.sql, part_args(part)) for part in range(self.parts)),
            return_exceptions=True,
        )
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            # Every part has finished by now: a retry's DELETE never races a part of this attempt.
            raise failed[0]
        counts: Counter[str] = Counter()
        seq_end = 0
        for part, part_counts in enumerate(outcomes):
            n = part_counts.get("eligible", 0)
            if n:
                seq_end = max(seq_end, (n - 1) * self.parts + part + 1)
            counts.update(part_counts)
        eligible = counts.pop("eligible", 0)
        excluded = dict(counts)
        matched = eligible + sum(excluded.values())
        await self.pool.execute(
            """INSERT INTO audience_refreshes (campaign_id, phase, day, matched, eligible, excluded)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (campaign_id, phase, day) DO UPDATE
               SET matched = EXCLUDED.matched, eligible = EXCLUDED.eligible,
                   excluded = EXCLUDED.excluded, refreshed_at = now()""",
            inp.campaign_db_id,
            inp.phase_index,
            inp.day,
            matched,
            eligible,
            excluded,
        )
        log.info("audience refreshed", day=str(inp.day), matched=matched, eligible=eligible, excluded=excluded,
                 seq_end=seq_end)  # fmt: skip
        return RefreshAudienceResult(matched=matched, eligible=eligible, excluded=excluded, seq_end=seq_end)

    async def _refresh_part(self, sql: str, args: list) -> dict[str, int]:
        return {r["reason"]: r["n"] for r in await run_part(self.pool, sql, args, REFRESH_SETTINGS)}


# The refresh reads the shop's whole customer base: hash joins are always right here.
# A shop whose rows are newer than the statistics (a new shop, a fresh import) is
# estimated at one row, and nested loops over it went quadratic: 30,000 customers
# took minutes instead of 0.2 s (docs/design.md, "Statistics that do not know today").
# Numbering a 1M-recipient day sorts ~20 MB: in memory rather than in temp files.
# JIT off: with nested loops off, PostgreSQL 15/16 add a huge cost to every nested loop that is
# left, which pushes even an empty shop's repurchase statement over the JIT thresholds (about
# 1.5 s of compiling, measured on PostgreSQL 15, for a statement that runs in milliseconds).
REFRESH_SETTINGS = "SET LOCAL enable_nestloop = off; SET LOCAL work_mem = '64MB'; SET LOCAL jit = off"
# The preview's count statement: the refresh's memory for its sorts and hashes; nested loops allowed (its
# fatigue candidates are primary-key probes), JIT off (a statement of about a second compiles for longer).
PREVIEW_SETTINGS = "SET LOCAL work_mem = '64MB'; SET LOCAL jit = off"


async def run_part(pool: asyncpg.Pool, sql: str, args: list, settings: str) -> list:
    """One part of a refresh or preview statement on a connection of its own, in its own transaction with the
    settings (REFRESH_SETTINGS or PREVIEW_SETTINGS): the parts of a statement run at once, one core each."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(settings)
        return await conn.fetch(sql, *args)
