"""Attribution (R-ATT-1): which orders count for a campaign, and for which of its phases.

An order counts for a campaign when a customer the campaign reached (a `sent` delivery) created it
inside the window of the last phase that reached them at or before the order. The window is data on
the plan (PhasePlan.attribution, set by each kind's compile): the phase's own days (`period`,
shop-local, from 00:00 of its first day to 00:00 after its last) or `days` days after the reach
(`after_reach`). The reach instant is the delivery's decision time (`decided_at`). Revenue is what was
paid minus what was refunded (nothing for an order not paid).

`winning_phase` is the rule for one order, pure; `ATTRIBUTE` is the same rule for a whole campaign in
one statement: each order of the shop is matched with its buyer's last reach at or before it (the later
phase on a tie), and counts if it lies inside that reach's window, so every order falls to at most one
reach. The control group (R-HO-1) is attributed by the same statement over its `held_out`
decisions, into `holdout_attributions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import asyncpg
from pydantic import BaseModel
from sluice.schemas import activities as A
from sluice.schemas.campaign import DEFAULT_ATTRIBUTION_DAYS, AttributionMode, AttributionWindow, CampaignPlan

# ------------------------------------------------------------------ the rule, pure


@dataclass(frozen=True)
class Reach:
    phase: int
    at: datetime


@dataclass(frozen=True)
class Window:
    """A phase's window resolved to instants: `period` bounds, or `days` after the reach."""

    mode: AttributionMode
    from_at: datetime | None = None
    to_at: datetime | None = None
    days: int | None = None

    def bounds(self, reached_at: datetime) -> tuple[datetime, datetime]:
        """[start, end) of the orders a reach at `reached_at` may count (before the customer's next reach)."""
        if self.mode == AttributionMode.period:
            return max(reached_at, self.from_at), self.to_at
        return reached_at, reached_at + timedelta(days=self.days)


DEFAULT_WINDOW = Window(AttributionMode.after_reach, days=DEFAULT_ATTRIBUTION_DAYS)  # a phase without a window row


def winning_phase(reaches: list[Reach], ordered_at: datetime, windows: dict[int, Window]) -> int | None:
    """The phase an order created at `ordered_at` counts for, or None: the last reach at or before the
    order (the later phase on a tie), if the order lies inside that phase's window."""
    before = [r for r in reaches if r.at <= ordered_at]
    if not before:
        return None
    last = max(before, key=lambda r: (r.at, r.phase))
    start, end = windows.get(last.phase, DEFAULT_WINDOW).bounds(last.at)
    return last.phase if start <= ordered_at < end else None


def resolve(window: AttributionWindow, start: date, end: date, timezone: str) -> Window:
    """The plan's window of a phase running `start`..`end` (shop-local days) as instants."""
    if window.mode == AttributionMode.period:
        tz = ZoneInfo(timezone)
        return Window(
            AttributionMode.period,
            from_at=datetime.combine(start, time(0), tz),
            to_at=datetime.combine(end + timedelta(days=1), time(0), tz),
        )
    return Window(AttributionMode.after_reach, days=window.days)


# ------------------------------------------------------------------ the statements

# The campaign's phase windows, as the plan says (R-ATT-1). $1 campaign, then per phase: $2 index, $3 mode,
# $4 from, $5 to, $6 days. A handful of rows by primary key.
SAVE_WINDOWS = """
    INSERT INTO attribution_windows (campaign_id, phase, mode, from_at, to_at, days)
    SELECT $1, u.* FROM unnest($2::smallint[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::int[])
                        AS u(phase, mode, from_at, to_at, days)
    ON CONFLICT (campaign_id, phase) DO UPDATE
       SET mode = EXCLUDED.mode, from_at = EXCLUDED.from_at, to_at = EXCLUDED.to_at, days = EXCLUDED.days
"""
# The revenue of an order (R-ATT-1): paid minus refunded; nothing until paid.
ORDER_REVENUE = ("CASE WHEN o.paid_at IS NOT NULL AND o.status IN ('paid', 'refunded')"
                 " THEN o.amount - o.refunded_amount ELSE 0 END")


def _attribute_sql(state: str) -> str:
    """The campaign's attributed orders now, from its deliveries in `state`, into the temporary table `NOW`.
    $1 campaign, $2 the days after the reach of a phase without a window row, [$3, $4) the instants any of
    its windows can cover (`span`): given as values, the planner sees how many of the shop's orders they hold.

    Each order of the shop inside the span is joined once with its buyer's reaches at or before it (a hash
    of those orders on the consumer, probed by one scan of the campaign's ledger range); the last of them
    (the later phase on a tie) is the reach that may take it, if the order lies inside that reach's window.
    No window function over every reach and no sort of them: only the candidate pairs are sorted, per order.
    A read-only statement (CREATE TABLE AS), so PostgreSQL may run its scans and its hash join in parallel
    workers, which it never does for the SELECT of an INSERT (up to PostgreSQL 17).
    Cost at 1M reaches against 1.5M orders of the shop (500,000 of them inside the span):
    docs/benchmarks.md, "Outcome events and attribution"."""
    return f"""
    CREATE TEMPORARY TABLE {NOW} ON COMMIT DROP AS
    WITH o AS (
        SELECT o.order_id, o.consumer_id, o.created_at, o.shop_id, {ORDER_REVENUE} AS revenue
        FROM orders o
        WHERE o.shop_id = (SELECT c.shop_id FROM campaigns c WHERE c.id = $1) AND o.created_at >= $3 AND o.created_at < $4
    ),
    last AS (  -- per order, its buyer's last reach at or before it
        SELECT DISTINCT ON (o.order_id) o.*, d.phase, d.decided_at AS at
        FROM o JOIN deliveries d ON d.campaign_id = $1 AND d.state = '{state}' AND d.consumer_id = o.consumer_id
                                AND d.decided_at <= o.created_at
        ORDER BY o.order_id, d.decided_at DESC, d.phase DESC
    )
    SELECT l.phase, l.consumer_id, l.order_id, l.shop_id, l.created_at AS ordered_at, l.revenue
    FROM last l LEFT JOIN attribution_windows w ON w.campaign_id = $1 AND w.phase = l.phase
    WHERE l.created_at >= CASE WHEN w.mode = 'period' THEN w.from_at ELSE l.at END  -- inside that reach's window
      AND l.created_at < CASE WHEN w.mode = 'period' THEN w.to_at ELSE l.at + make_interval(days => coalesce(w.days, $2::int)) END
"""


def _merge_sql(table: str) -> str:
    """`NOW` merged into the campaign's rows of `table` ($1 campaign), not deleted and written again: rows no
    longer attributed are deleted, new and changed ones written, unchanged ones left alone (a refresh that
    changes nothing writes nothing and leaves no dead rows behind). Returns how many orders are attributed.
    Cost: a hash of `NOW` against the campaign's range of the table's primary key, both ways."""
    return f"""
    WITH gone AS (
        DELETE FROM {table} x WHERE x.campaign_id = $1 AND NOT EXISTS (SELECT 1 FROM {NOW} a WHERE a.order_id = x.order_id)
    ),
    put AS (
        INSERT INTO {table} AS x (campaign_id, phase, consumer_id, order_id, shop_id, ordered_at, revenue)
        SELECT $1, a.* FROM {NOW} a
        WHERE NOT EXISTS (SELECT 1 FROM {table} y WHERE y.campaign_id = $1 AND y.order_id = a.order_id
                          AND (y.phase, y.consumer_id, y.shop_id, y.ordered_at, y.revenue)
                              = (a.phase, a.consumer_id, a.shop_id, a.ordered_at, a.revenue))
        ON CONFLICT (campaign_id, order_id) DO UPDATE
           SET phase = EXCLUDED.phase, consumer_id = EXCLUDED.consumer_id, shop_id = EXCLUDED.shop_id,
               ordered_at = EXCLUDED.ordered_at, revenue = EXCLUDED.revenue
    )
    SELECT count(*)::int FROM {NOW}
"""


NOW = "attributed_now"  # a temporary table of the attribution's transaction, dropped once merged
# Per state and phase, the first and last decision: one range scan of the ledger's primary key for both states.
REACH_SPAN = """
    SELECT state, phase, min(decided_at), max(decided_at) FROM deliveries
    WHERE campaign_id = $1 AND state = ANY($2::text[]) GROUP BY state, phase
"""
WINDOWS = "SELECT phase, mode, from_at, to_at, days FROM attribution_windows WHERE campaign_id = $1"
# (state of the ledger, the statement computing its attributed orders, the merge into its table, its CLEAR)
PASSES = (
    ("sent", _attribute_sql("sent"), _merge_sql("attributions"), "DELETE FROM attributions WHERE campaign_id = $1"),
    (A.HELD_OUT, _attribute_sql(A.HELD_OUT), _merge_sql("holdout_attributions"),
     "DELETE FROM holdout_attributions WHERE campaign_id = $1"),
)
DROP_NOW = f"DROP TABLE {NOW}"
# The hash of the span's orders and the sort of the candidate pairs in memory, not in temporary files; no JIT
# (compiling the statements took 0.2-0.6 s on the bench machine, more than it saved); no nested loops: the
# temporary table has no statistics and a campaign's rows may all be new since the last ANALYZE (an emptied
# table), and a nested loop rescanning the table the merge writes to went quadratic (88,401 rows: 684 s).
SETTINGS = "SET LOCAL work_mem = '256MB'; SET LOCAL jit = off; SET LOCAL enable_nestloop = off"
TOTALS = "SELECT count(*)::int, coalesce(sum(revenue), 0) FROM attributions WHERE campaign_id = $1"


class Attributed(BaseModel):
    orders: int
    revenue: Decimal
    control_orders: int


async def attribute(conn: asyncpg.Connection, campaign_db_id: int) -> Attributed:
    """Bring the campaign's rows of `attributions` (and of `holdout_attributions`) up to date in one transaction."""
    async with conn.transaction():
        await conn.execute(SETTINGS)
        windows = {r["phase"]: Window(AttributionMode(r["mode"]), r["from_at"], r["to_at"], r["days"])
                   for r in await conn.fetch(WINDOWS, campaign_db_id)}  # fmt: skip
        reaches = await conn.fetch(REACH_SPAN, campaign_db_id, [state for state, *_ in PASSES])
        attributed = {}
        for state, compute, merge, clear in PASSES:
            bounds = span([r[1:] for r in reaches if r["state"] == state], windows)
            if bounds is None:  # nobody reached (in this state): nothing attributed
                await conn.execute(clear, campaign_db_id)
                attributed[state] = 0
                continue
            await conn.execute(compute, campaign_db_id, DEFAULT_ATTRIBUTION_DAYS, *bounds)
            attributed[state] = await conn.fetchval(merge, campaign_db_id)
            await conn.execute(DROP_NOW)
        orders, revenue = await conn.fetchrow(TOTALS, campaign_db_id)
    return Attributed(orders=orders, revenue=revenue, control_orders=attributed[A.HELD_OUT])


def span(reaches: list, windows: dict[int, Window]) -> tuple[datetime, datetime] | None:
    """[first, last) instant any order attributed to these reaches can have: from the first reach to the
    latest end of a window ((phase, first reach, last reach) rows; None without reaches)."""
    if not reaches:
        return None
    first = min(r[1] for r in reaches)
    last = max(windows.get(r[0], DEFAULT_WINDOW).bounds(r[2])[1] for r in reaches)
    return first, max(last, first)


async def save_windows(conn: asyncpg.Connection | asyncpg.Pool, campaign_db_id: int, windows: dict[int, Window]) -> None:
    phases = sorted(windows)
    await conn.execute(
        SAVE_WINDOWS, campaign_db_id, phases, [windows[p].mode.value for p in phases], [windows[p].from_at for p in phases],
        [windows[p].to_at for p in phases], [windows[p].days for p in phases],
    )  # fmt: skip


# ------------------------------------------------------------------ the workflow's step


class PhaseWindow(BaseModel):
    phase: int
    start_date: date
    end_date: date
    window: AttributionWindow


class AttributeInput(BaseModel):
    campaign_db_id: int
    timezone: str
    phases: list[PhaseWindow]

    @classmethod
    def of(cls, plan: CampaignPlan) -> AttributeInput:
        return cls(
            campaign_db_id=plan.campaign_db_id,
            timezone=plan.timezone,
            phases=[PhaseWindow(phase=i, start_date=p.start_date, end_date=p.end_date, window=p.attribution)
                    for i, p in enumerate(plan.phases)],
        )  # fmt: skip

    def windows(self) -> dict[int, Window]:
        return {p.phase: resolve(p.window, p.start_date, p.end_date, self.timezone) for p in self.phases}


async def save_plan_windows(conn: asyncpg.Connection | asyncpg.Pool, plan: CampaignPlan) -> None:
    """The plan's windows, stored when the campaign starts (the report refresh attributes with them)."""
    await save_windows(conn, plan.campaign_db_id, AttributeInput.of(plan).windows())
