"""A campaign's budget cap (R-COST-BUDGET): money the campaign's deliveries may cost, at most.

sluice's own rule, not a platform rule: a merchant may give a campaign a
`budget` (in the shop's currency, yuan) and the sum of the costs of the
campaign's committed deliveries (`reserved`, `unknown`, `sent`; a `failed`
one gives its cost back) never passes it, however many slices and workers
send at once. What costs money is what has a price: an SMS (R-AQ-5) and an
email past the day's free EDM quota (R-ED-4); chat and in-site messages
cost nothing and never spend a budget.

The send path holds the campaign's spend row (`campaign_spend`, locked and
bumped in the transaction that decides the deliveries, like the quota's day
counter: activities/budget.py). A chunk sends, in consumer order, the
messages whose prices fit in what is left; the first that does not fit and
every later one of the chunk are `not_sent` with BUDGET_EXHAUSTED, and the
campaign ends: no later slice, day or phase sends (workflows/campaign.py),
its final state is BUDGET_EXHAUSTED with the reason in its progress.
This module holds the pure decisions.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Annotated

from pydantic import BeforeValidator, Field
from sluice.schemas.rules import rule_error

BUDGET_RULE = "R-COST-BUDGET"
# The not_sent reason of whom the budget left without a message, the slice's stopped_reason, and the campaign's
# final state when its budget ended it.
BUDGET_EXHAUSTED = "budget_exhausted"
# A budget is money: at most 2 decimal places (fen), above 0, at most this many yuan (deliveries cost numeric(12,4)).
BUDGET_PLACES = 2
BUDGET_MAX = Decimal(1_000_000_000)


def _money(value: object) -> Decimal:
    """A spec's budget as a Decimal, or a refusal naming R-COST-BUDGET. A JSON number or a numeric string; a
    float is read by its shortest repr (12.3 is 12.3, not 12.300000000000000710...)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise rule_error(BUDGET_RULE, "the budget is an amount of money: a number such as 500 or \"500.00\"")
    try:
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, ValueError):
        raise rule_error(BUDGET_RULE, f"the budget {str(value)[:30]!r} is not an amount of money") from None
    if not amount.is_finite():
        raise rule_error(BUDGET_RULE, "the budget is a finite amount of money")
    if amount <= 0:
        raise rule_error(BUDGET_RULE, f"the budget {amount} is not above 0: leave it out for no budget")
    if amount > BUDGET_MAX:
        raise rule_error(BUDGET_RULE, f"the budget {amount} is above {BUDGET_MAX}")
    if -amount.as_tuple().exponent > BUDGET_PLACES:
        raise rule_error(BUDGET_RULE, f"the budget {amount} has more than {BUDGET_PLACES} decimal places (yuan and fen)")
    return amount


Budget = Annotated[
    Decimal,
    BeforeValidator(_money),
    Field(description="R-COST-BUDGET: the most the campaign's deliveries may cost together, in the shop's currency"),
]


def within_budget(prices: Iterable[Decimal], left: Decimal) -> int:
    """How many of `prices` (in send order) the `left` of the budget pays for: the longest prefix whose sum
    is at most `left`. The first message that does not fit ends the campaign's sending, so no later,
    cheaper one goes out after it."""
    n, total = 0, Decimal(0)
    for price in prices:
        total += price
        if total > left:
            break
        n += 1
    return n


def end_reason(budget: Decimal) -> str:
    """What the campaign's progress says when its budget ended it (the report says what was spent)."""
    return f"{BUDGET_EXHAUSTED}: the budget {budget} is spent, the next message did not fit; nothing more is sent ({BUDGET_RULE})"
