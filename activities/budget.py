"""The campaign budget cap in the send path (R-COST-BUDGET, schemas/budget.py).

A chunk of a campaign with a budget whose messages cost something locks the
campaign's spend row (`hold_budget`: one primary-key upsert, after the
consumers' and coupons' rows and before the SMS credits, the same order in
every transaction that touches them) and reads what is left; it sends the
prefix of its priced messages that fits and adds their cost (`take_budget`)
before it commits, so the campaign's concurrent slices take the budget one
after another and never together pass it. A delivery that fails gives its
cost back (`give_back_budget`, in the transaction that records the failure).
The lock is held from the chunk's charge to its commit only: the SMS credits
(and the EDM quota's day counter) already serialise those steps per shop.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import asyncpg

# The campaign's spend row, created and locked in one primary-key upsert (the budget refreshed from the plan).
_SPEND_LOCK = """
    INSERT INTO campaign_spend AS s (campaign_id, budget) VALUES ($1, $2)
    ON CONFLICT (campaign_id) DO UPDATE SET budget = EXCLUDED.budget
    RETURNING spent, exhausted_at IS NOT NULL AS exhausted
"""
# A chunk's committed costs $2; $3: a message did not fit (the first such instant stays). Primary key.
_SPEND_TAKE = """
    UPDATE campaign_spend SET spent = spent + $2,
           exhausted_at = CASE WHEN $3::bool THEN coalesce(exhausted_at, now()) ELSE exhausted_at END
    WHERE campaign_id = $1
"""
# Failed deliveries' costs $2 given back. Primary key; no row (a campaign without a budget): nothing.
_SPEND_BACK = "UPDATE campaign_spend SET spent = spent - $2 WHERE campaign_id = $1"
# What a campaign spent and whether its budget ended it (the report, the preview). Primary key.
SPEND_READ = "SELECT budget, spent, exhausted_at FROM campaign_spend WHERE campaign_id = $1"


@dataclass(frozen=True)
class SpendHold:
    spent: Decimal  # the campaign's committed costs before this chunk
    left: Decimal  # what the budget leaves for this chunk: 0 once exhausted
    # A chunk found a message that did not fit: the campaign sends nothing more, not even a free message
    # (a failure's cost given back since does not reopen it).
    exhausted: bool


async def hold_budget(conn: asyncpg.Connection, campaign_id: int, budget: Decimal) -> SpendHold:
    """Lock the campaign's spend row (in the chunk's transaction); what the budget leaves."""
    row = await conn.fetchrow(_SPEND_LOCK, campaign_id, budget)
    left = Decimal(0) if row["exhausted"] else max(Decimal(0), budget - row["spent"])
    return SpendHold(spent=row["spent"], left=left, exhausted=row["exhausted"])


async def take_budget(conn: asyncpg.Connection, campaign_id: int, cost: Decimal, exhausted: bool) -> None:
    """Add the chunk's committed costs to the spend row held by `hold_budget`; `exhausted`: a message did not fit."""
    if cost or exhausted:
        await conn.execute(_SPEND_TAKE, campaign_id, cost, exhausted)


async def give_back_budget(conn: asyncpg.Connection, campaign_id: int, cost: Decimal) -> None:
    """Failed deliveries give their cost back to the campaign's budget (a no-op without a budget)."""
    if cost:
        await conn.execute(_SPEND_BACK, campaign_id, cost)
