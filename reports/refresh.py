"""Materialising a campaign's report (R-REP-1): attribution first, then the report tables in one transaction.

`refresh(conn, campaign_db_id)` is what the workflow's report activity runs
after every phase day (activities/report.py) and what POST
/campaigns/{id}/report/refresh and `sluice report --refresh` run on demand.
The statements read the whole campaign set-based: the ledger's range of the
campaign (its primary key's leading column), the campaign's attributions and
the shop's replies; the definitions are in docs/reports.md. A campaign whose kind
has a funnel (Kind.funnel, R-ED-5) gets its report_funnels rows in the same
transaction.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import asyncpg
from sluice.kinds import KINDS
from sluice.reports.definitions import CAMPAIGN_FUNNEL
from sluice.schemas.campaign import DEFAULT_ATTRIBUTION_DAYS

# Concurrent refreshes of one campaign (the workflow's and an on-demand one) take turns: each rewrites
# every row of the campaign. Two-key advisory lock: (this class, the campaign id folded into int4).
LOCK_CLASS = 0x5E_90_12
LOCK = "SELECT pg_advisory_xact_lock($1, ($2 % 2147483647)::int)"

# The materialisation's transaction: no nested loops (the ledger's rows of today are newer than its statistics),
# and no JIT: with nested loops off, the few unavoidable ones (the campaign's one row against its phases) cost
# the planner's penalty, which crosses the JIT thresholds, and compiling the statement took 8 s of a 10 ms run.
SETTINGS = "SET LOCAL enable_nestloop = off; SET LOCAL jit = off; SET LOCAL work_mem = '64MB'"

# A refresh replaces the campaign's days (an order day may have vanished: a refund, a re-attribution).
# Cost: a range of report_days' primary key (a few dozen rows per campaign).
CLEAR_DAYS = "DELETE FROM report_days WHERE campaign_id = $1"

# The whole report in one statement: the days, the phases (their sums, names and per-state decisions)
# and the campaign's totals. Cost at the 1M bench shop (a campaign of 1.5M deliveries in two phases, 50,000
# replies, 30,000 attributed orders; docs/benchmarks.md, "Reports"): 20 to 40 s on 2 loaded cores, most of it
# the per-buyer aggregate of the ledger's range (1.48M groups, the primary key's order) and the three reads
# of that aggregate; the shop's replies come from outcome_events_replies (a partial index, 0012) and are
# hashed, the reaches probe them. Nested loops and JIT are off for it (SETTINGS).
MATERIALISE = """
WITH c AS (
    SELECT c.id, c.shop_id, s.timezone, coalesce(c.phase_names, '{}') AS phase_names
    FROM campaigns c JOIN shops s ON s.shop_id = c.shop_id WHERE c.id = $1
), ledger AS MATERIALIZED (         -- decisions per phase day, state and reason; the ledger's range of the campaign
    SELECT phase, day, state, reason, count(*)::int AS n, coalesce(sum(cost), 0) AS cost
    FROM deliveries WHERE campaign_id = $1
    GROUP BY phase, day, state, reason
), first_sent AS MATERIALIZED (     -- each buyer the phase reached: the first day and instant it sent to them
    SELECT phase, consumer_id, min(day) AS day, min(decided_at) AS at
    FROM deliveries WHERE campaign_id = $1 AND state = 'sent'
    GROUP BY phase, consumer_id
), replier AS (                    -- reached buyers with replies: the shop's replies (few) hashed, the reaches probe them
    SELECT s.consumer_id, e.occurred_at, min(s.at) OVER (PARTITION BY s.consumer_id) AS first_at
    FROM first_sent s
    JOIN outcome_events e ON e.consumer_id = s.consumer_id
    WHERE e.shop_id = (SELECT shop_id FROM c) AND e.kind = 'replied'
), first_reply AS MATERIALIZED (    -- each reached buyer who replied after the campaign first reached them: that reply
    SELECT consumer_id, min(occurred_at) AS at FROM replier WHERE occurred_at >= first_at GROUP BY consumer_id
), attributed AS MATERIALIZED (     -- the campaign's attributed orders, on the shop's day they were created
    SELECT phase, consumer_id, revenue, (ordered_at AT TIME ZONE (SELECT timezone FROM c))::date AS day,
           row_number() OVER (PARTITION BY phase, consumer_id ORDER BY ordered_at, order_id) = 1 AS first
    FROM attributions WHERE campaign_id = $1
), parts (phase, day, sent, failed, cost, reached, replied, converted, orders, revenue) AS (
    SELECT phase, day, sum(n) FILTER (WHERE state = 'sent'), sum(n) FILTER (WHERE state = 'failed'),
           sum(cost) FILTER (WHERE state <> 'failed'),  -- a failed delivery costs nothing (its cost went back)
           0, 0, 0, 0, 0
    FROM ledger GROUP BY phase, day
    UNION ALL
    SELECT phase, day, 0, 0, 0, count(*), 0, 0, 0, 0 FROM first_sent GROUP BY phase, day
    UNION ALL
    SELECT s.phase, (r.at AT TIME ZONE (SELECT timezone FROM c))::date, 0, 0, 0, 0, count(*), 0, 0, 0
    FROM first_sent s JOIN first_reply r ON r.consumer_id = s.consumer_id GROUP BY 1, 2
    UNION ALL
    SELECT phase, day, 0, 0, 0, 0, 0, count(*) FILTER (WHERE first), count(*), sum(revenue)
    FROM attributed GROUP BY phase, day
), days AS MATERIALIZED (
    SELECT phase, day, coalesce(sum(sent), 0)::int AS sent, coalesce(sum(failed), 0)::int AS failed,
           sum(reached)::int AS reached, sum(replied)::int AS replied, sum(converted)::int AS converted,
           sum(orders)::int AS orders, sum(revenue) AS revenue, sum(cost) AS cost
    FROM parts GROUP BY phase, day
), ins_days AS (
    INSERT INTO report_days (campaign_id, phase, day, shop_id, sent, failed, reached, replied, converted, orders,
                             revenue, cost)
    SELECT $1, phase, day, (SELECT shop_id FROM c), sent, failed, reached, replied, converted, orders, revenue, cost
    FROM days
), states AS (
    SELECT phase, jsonb_object_agg(key, n ORDER BY key) AS states, min(first_day) AS first_day, max(last_day) AS last_day
    FROM (SELECT phase, state || coalesce(':' || reason, '') AS key, sum(n)::int AS n,
                 min(day) AS first_day, max(day) AS last_day
          FROM ledger GROUP BY phase, 2) per_key
    GROUP BY phase
), phases AS (                      -- every phase of the plan, and any other the ledger or attributions hold
    SELECT i::smallint AS phase FROM c, generate_series(0, cardinality(c.phase_names) - 1) AS i
    UNION
    SELECT DISTINCT phase FROM days
), ins_phases AS (
    INSERT INTO report_phases (campaign_id, phase, shop_id, name, first_day, last_day, sent, failed, reached, replied,
                               converted, orders, revenue, cost, states)
    SELECT $1, p.phase, c.shop_id, coalesce(c.phase_names[p.phase + 1], 'phase ' || (p.phase + 1)),
           st.first_day, st.last_day,
           coalesce(sum(d.sent), 0), coalesce(sum(d.failed), 0), coalesce(sum(d.reached), 0),
           coalesce(sum(d.replied), 0), coalesce(sum(d.converted), 0), coalesce(sum(d.orders), 0),
           coalesce(sum(d.revenue), 0), coalesce(sum(d.cost), 0), coalesce(st.states, '{}')
    FROM phases p CROSS JOIN c
    LEFT JOIN days d ON d.phase = p.phase
    LEFT JOIN states st ON st.phase = p.phase
    GROUP BY p.phase, c.shop_id, c.phase_names, st.first_day, st.last_day, st.states
    ON CONFLICT (campaign_id, phase) DO UPDATE SET
        shop_id = EXCLUDED.shop_id, name = EXCLUDED.name, first_day = EXCLUDED.first_day,
        last_day = EXCLUDED.last_day, sent = EXCLUDED.sent, failed = EXCLUDED.failed, reached = EXCLUDED.reached,
        replied = EXCLUDED.replied, converted = EXCLUDED.converted, orders = EXCLUDED.orders,
        revenue = EXCLUDED.revenue, cost = EXCLUDED.cost, states = EXCLUDED.states
)
INSERT INTO report_campaigns (campaign_id, shop_id, sent, failed, reached, replied, converted, orders, revenue, cost,
                              attributed, refreshed_at)
SELECT $1, c.shop_id,
       (SELECT coalesce(sum(sent), 0) FROM days), (SELECT coalesce(sum(failed), 0) FROM days),
       (SELECT count(DISTINCT consumer_id) FROM first_sent), (SELECT count(*) FROM first_reply),
       (SELECT count(DISTINCT consumer_id) FROM attributed), (SELECT count(*) FROM attributed),
       (SELECT coalesce(sum(revenue), 0) FROM days), (SELECT coalesce(sum(cost), 0) FROM days),
       $2, now()
FROM c
ON CONFLICT (campaign_id) DO UPDATE SET
    shop_id = EXCLUDED.shop_id, sent = EXCLUDED.sent, failed = EXCLUDED.failed, reached = EXCLUDED.reached,
    replied = EXCLUDED.replied, converted = EXCLUDED.converted, orders = EXCLUDED.orders, revenue = EXCLUDED.revenue,
    cost = EXCLUDED.cost, attributed = EXCLUDED.attributed, refreshed_at = EXCLUDED.refreshed_at
"""

# The funnel (R-ED-5), for a campaign whose kind has one (Kind.funnel): replaced with the report. The kind: one
# row by primary key.
CAMPAIGN_KIND = "SELECT kind FROM campaigns WHERE id = $1"
# Cost: a range of report_funnels' primary key (a row per phase and one for the campaign).
CLEAR_FUNNEL = "DELETE FROM report_funnels WHERE campaign_id = $1"
# Per phase and for the campaign (phase CAMPAIGN_FUNNEL, each buyer once): potential -> reached -> handshake ->
# ordered -> repurchased (docs/reports.md, "The funnel"). It runs after MATERIALISE in the same transaction: reached
# and ordered are the report's reached and converted, read from the rows just written (one definition each). A
# reach's window is the phase's attribution window (attribution_windows: K-EDM's 30 days after the reach; $2 days
# for a phase without a row, as the attribution step). Cost: one more scan of the campaign's sent range of the
# ledger, keeping only the rows of buyers who replied to the shop or have an attributed order (both hashed: a
# semi-join, nothing aggregated per reached buyer), the shop's replies (outcome_events_replies), the campaign's
# attributions, a first sent row per phase (the primary key) and the phases' audience_refreshes rows. At the
# bench shop: docs/benchmarks.md, "Reports" (the funnel's run).
FUNNEL = """
WITH c AS (
    SELECT id, shop_id FROM campaigns WHERE id = $1
), potential AS (                   -- each phase's audience before exclusions, on its largest day
    SELECT phase, max(matched) AS n FROM audience_refreshes WHERE campaign_id = $1 GROUP BY phase
), att AS MATERIALIZED (            -- the campaign's attributed orders
    SELECT phase, consumer_id, order_id, ordered_at FROM attributions WHERE campaign_id = $1
), replies AS MATERIALIZED (        -- the shop's replies
    SELECT consumer_id, occurred_at FROM outcome_events WHERE shop_id = (SELECT shop_id FROM c) AND kind = 'replied'
), reach AS MATERIALIZED (          -- the sends to buyers who replied or ordered, each with its window [lo, hi)
    SELECT d.phase, d.consumer_id, d.decided_at AS lo,
           CASE WHEN w.mode = 'period' THEN w.to_at
                ELSE d.decided_at + make_interval(days => coalesce(w.days, $2::int)) END AS hi
    FROM deliveries d
    LEFT JOIN attribution_windows w ON w.campaign_id = $1 AND w.phase = d.phase
    WHERE d.campaign_id = $1 AND d.state = 'sent'
      AND d.consumer_id IN (SELECT consumer_id FROM replies UNION SELECT consumer_id FROM att)
), handshake AS MATERIALIZED (      -- reached buyers who replied inside the window of a send
    SELECT DISTINCT r.phase, r.consumer_id
    FROM reach r JOIN replies e ON e.consumer_id = r.consumer_id AND e.occurred_at >= r.lo AND e.occurred_at < r.hi
), first_order AS (                 -- each buyer's first order attributed to each phase
    SELECT DISTINCT ON (phase, consumer_id) phase, consumer_id, order_id, ordered_at
    FROM att ORDER BY phase, consumer_id, ordered_at, order_id
), rebought AS (                    -- ... and another order of the campaign after it, inside the window of a send
    SELECT DISTINCT f.phase, f.consumer_id
    FROM first_order f
    JOIN att a ON a.consumer_id = f.consumer_id AND (a.ordered_at, a.order_id) > (f.ordered_at, f.order_id)
    JOIN reach r ON r.phase = f.phase AND r.consumer_id = f.consumer_id AND a.ordered_at >= r.lo AND a.ordered_at < r.hi
), per_phase AS (                   -- the report's phases, just materialised
    SELECT p.phase,
           (SELECT d.channel FROM deliveries d WHERE d.campaign_id = $1 AND d.phase = p.phase AND d.state = 'sent'
            ORDER BY d.consumer_id LIMIT 1) AS channel,  -- ordered: the primary key's first rows, not a scan
           coalesce(po.n, 0) AS potential, p.reached, coalesce(hn.n, 0) AS handshake, p.converted AS ordered,
           coalesce(rb.n, 0) AS repurchased
    FROM report_phases p
    LEFT JOIN potential po ON po.phase = p.phase
    LEFT JOIN (SELECT phase, count(*) AS n FROM handshake GROUP BY phase) hn ON hn.phase = p.phase
    LEFT JOIN (SELECT phase, count(*) AS n FROM rebought GROUP BY phase) rb ON rb.phase = p.phase
    WHERE p.campaign_id = $1
)
INSERT INTO report_funnels (campaign_id, phase, shop_id, channel, potential, reached, handshake, ordered, repurchased)
SELECT $1, phase, (SELECT shop_id FROM c), channel, potential, reached, handshake, ordered, repurchased FROM per_phase
UNION ALL                           -- the campaign: each buyer once; bought again = two orders of the campaign
SELECT $1, $3::smallint, t.shop_id, NULL, coalesce((SELECT max(n) FROM potential), 0), t.reached,
       (SELECT count(DISTINCT consumer_id) FROM handshake), t.converted,
       (SELECT count(*) FROM (SELECT consumer_id FROM att GROUP BY consumer_id HAVING count(*) >= 2) twice)
FROM report_campaigns t WHERE t.campaign_id = $1
"""

# The attribution step of the outcomes domain, when it is installed: it rebuilds the campaign's
# attributions rows, which the report then reads.
ATTRIBUTION_MODULE = "sluice.outcomes.attribution"


@dataclass(frozen=True)
class Refreshed:
    campaign_db_id: int
    attributed: bool


def has_funnel(kind: str | None) -> bool:
    """Whether the report of a campaign of this kind has the funnel (R-ED-5): the kind registry says so."""
    found = KINDS.get(kind) if kind else None
    return found is not None and found.funnel


def _attribution():
    """The outcomes domain's `attribute(conn, campaign_db_id)`, or None while that module is not installed."""
    try:
        module = importlib.import_module(ATTRIBUTION_MODULE)
    except ModuleNotFoundError as exc:
        # Only the module's own absence: an import error inside it is a defect, and propagates.
        if exc.name and ATTRIBUTION_MODULE.startswith(exc.name):
            return None
        raise
    return module.attribute


async def refresh(conn: asyncpg.Connection, campaign_db_id: int, *, attribution: bool = True) -> Refreshed:
    """Attribute the campaign's orders (when the outcomes domain is there), then rewrite its report rows.
    attribution=False: materialise from the attributions rows as they are (tests that write them directly)."""
    attribute = _attribution() if attribution else None
    # One transaction: the attributions and the report they give commit together, and a concurrent refresh
    # of the campaign waits for this one (its attribution's rewrite of the same keys would collide).
    async with conn.transaction():
        await conn.execute(LOCK, LOCK_CLASS, campaign_db_id)
        if attribute is not None:
            await attribute(conn, campaign_db_id)  # its own transaction becomes a savepoint of this one
        await conn.execute(SETTINGS)
        await conn.execute(CLEAR_DAYS, campaign_db_id)
        await conn.execute(MATERIALISE, campaign_db_id, attribute is not None)
        await conn.execute(CLEAR_FUNNEL, campaign_db_id)
        if has_funnel(await conn.fetchval(CAMPAIGN_KIND, campaign_db_id)):
            await conn.execute(FUNNEL, campaign_db_id, DEFAULT_ATTRIBUTION_DAYS, CAMPAIGN_FUNNEL)
    return Refreshed(campaign_db_id=campaign_db_id, attributed=attribute is not None)
