"""Materialising a campaign's report (R-REP-1): attribution first, then the report tables in one transaction.

`refresh(conn, campaign_db_id)` is what the workflow's report activity runs
after every phase day (activities/report.py) and what POST
/campaigns/{id}/report/refresh and `sluice report --refresh` run on demand.
The statements read the whole campaign set-based: the ledger's range of the
campaign (its primary key's leading column), the campaign's attributions and
the shop's replies; the definitions are in docs/reports.md.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import asyncpg

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
    SELECT phase, day, sum(n) FILTER (WHERE state = 'sent'), sum(n) FILTER (WHERE state = 'failed'), sum(cost),
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

# The attribution step of the outcomes domain, when it is installed: it rebuilds the campaign's
# attributions rows, which the report then reads.
ATTRIBUTION_MODULE = "sluice.outcomes.attribution"


@dataclass(frozen=True)
class Refreshed:
    campaign_db_id: int
    attributed: bool


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
    return Refreshed(campaign_db_id=campaign_db_id, attributed=attribute is not None)
