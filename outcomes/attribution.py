"""Attribution (R-ATT-1): which orders count for a campaign, and for which of its phases.

An order counts for a campaign when a customer the campaign reached (a `sent` delivery) created it
inside the window of the last phase that reached them at or before the order. The window is data on
the plan (PhasePlan.attribution, set by each kind's compile): the phase's own days (`period`,
shop-local, from 00:00 of its first day to 00:00 after its last) or `days` days after the reach
(`after_reach`). The reach instant is the delivery's decision time (`decided_at`). Revenue is what was
paid minus what was refunded (nothing for an order not paid).

`winning_phase` is the rule for one order, pure; `ATTRIBUTE` is the same rule for a whole campaign in
one statement: each reach of a customer covers the orders from the reach (or the period's start) up to
the customer's next reach (or the window's end), so every order falls to at most one reach, the last one
before it. The control group (R-HO-1) is attributed by the same statement over its `held_out`
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


def _attribute_sql(table: str, state: str) -> str:
    """The campaign's attributed orders, rebuilt into `table` from its deliveries in `state`. $1 campaign,
    $2 the days after the reach of a phase without a window row, [$3, $4) the instants any of its windows
    can cover (`span`): given as values, the planner sees how many of the shop's orders they hold.

    Cost: one range scan of the ledger's primary key (the campaign's rows), a sort of its reaches by
    consumer for the window function, and per reach the customer's orders inside its interval (the
    planner takes a hash join over the shop's orders, or probes orders_shop_consumer per reach when it
    expects few reaches). 1M reaches against 1.5M orders: docs/benchmarks.md, "Attribution"."""
    return f"""
    WITH r AS (
        SELECT d.consumer_id, d.phase, d.decided_at AS at,
               lead(d.decided_at) OVER (PARTITION BY d.consumer_id ORDER BY d.decided_at, d.phase) AS next_at
        FROM deliveries d
        WHERE d.campaign_id = $1 AND d.state = '{state}'
    ),
    b AS MATERIALIZED (  -- each reach's interval computed once, not again for every order of the customer
        SELECT r.consumer_id, r.phase,
               CASE WHEN w.mode = 'period' THEN greatest(r.at, w.from_at) ELSE r.at END AS lo,
               least(coalesce(r.next_at, 'infinity'),
                     CASE WHEN w.mode = 'period' THEN w.to_at
                          ELSE r.at + make_interval(days => coalesce(w.days, $2::int)) END) AS hi
        FROM r LEFT JOIN attribution_windows w ON w.campaign_id = $1 AND w.phase = r.phase
    ),
    i AS (SELECT * FROM b WHERE lo < hi)
    INSERT INTO {table} (campaign_id, phase, consumer_id, order_id, shop_id, ordered_at, revenue)
    SELECT $1, i.phase, i.consumer_id, o.order_id, o.shop_id, o.created_at, {ORDER_REVENUE}
    FROM i JOIN orders o ON o.consumer_id = i.consumer_id AND o.created_at >= i.lo AND o.created_at < i.hi
    WHERE o.shop_id = (SELECT c.shop_id FROM campaigns c WHERE c.id = $1) AND o.created_at >= $3 AND o.created_at < $4
"""


# Per phase, the first and last decision in `state`: one range scan of the ledger's primary key.
REACH_SPAN = "SELECT phase, min(decided_at), max(decided_at) FROM deliveries WHERE campaign_id = $1 AND state = $2 GROUP BY phase"
WINDOWS = "SELECT phase, mode, from_at, to_at, days FROM attribution_windows WHERE campaign_id = $1"
ATTRIBUTE = _attribute_sql("attributions", "sent")
ATTRIBUTE_CONTROL = _attribute_sql("holdout_attributions", A.HELD_OUT)
CLEAR = "DELETE FROM attributions WHERE campaign_id = $1"
WORK_MEM = "256MB"
CLEAR_CONTROL = "DELETE FROM holdout_attributions WHERE campaign_id = $1"
TOTALS = "SELECT count(*)::int, coalesce(sum(revenue), 0) FROM attributions WHERE campaign_id = $1"


class Attributed(BaseModel):
    orders: int
    revenue: Decimal
    control_orders: int


async def attribute(conn: asyncpg.Connection, campaign_db_id: int) -> Attributed:
    """Rebuild the campaign's rows of `attributions` (and of `holdout_attributions`) in one transaction."""
    async with conn.transaction():
        # The sort of the reaches and the hash of them in memory, not in temporary files (docs/benchmarks.md).
        await conn.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
        windows = {r["phase"]: Window(AttributionMode(r["mode"]), r["from_at"], r["to_at"], r["days"])
                   for r in await conn.fetch(WINDOWS, campaign_db_id)}  # fmt: skip
        inserted = {}
        for clear, sql, state in ((CLEAR, ATTRIBUTE, "sent"), (CLEAR_CONTROL, ATTRIBUTE_CONTROL, A.HELD_OUT)):
            await conn.execute(clear, campaign_db_id)
            bounds = span(await conn.fetch(REACH_SPAN, campaign_db_id, state), windows)
            status = await conn.execute(sql, campaign_db_id, DEFAULT_ATTRIBUTION_DAYS, *bounds) if bounds else "INSERT 0 0"
            inserted[state] = int(status.split()[-1])
        orders, revenue = await conn.fetchrow(TOTALS, campaign_db_id)
    return Attributed(orders=orders, revenue=revenue, control_orders=inserted[A.HELD_OUT])


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
