"""A channel quota as plan data, and the pure decisions about it (R-ED-4).

A quota is a limited resource of the shop at a provider: so many messages a
day, the first ones of each day free and the rest priced, debited from the
shop's provider account. K-EDM's email phase carries one (`QuotaPlan`); the
send path holds it per delivery in the transaction that decides the
delivery (activities/quota.py), as it holds a coupon's unit, so concurrent
chunks and campaigns of one shop never send more than the day allows.

The account (`edm_accounts`, migration 0016) is postpaid: each priced
message debits its balance, which may go below zero; a balance below zero
is arrears, and an account in arrears sends nothing, its free messages
included, until it is settled. The day is the phase's day (shop-local).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from pydantic import BaseModel, Field

# R-ED-4: the EDM provider's terms.
EDM_QUOTA = "edm"
EDM_FREE_PER_DAY = 200
EDM_PRICE_PER_1000 = Decimal("2")  # yuan
EDM_INITIAL_DAILY_LIMIT = 2_000  # an account's limit until the provider raises it (edm_accounts.daily_limit)

# Why a quota stops a day's sending (the slice's stopped_reason, and the not_sent reason on the phase's last day).
QUOTA_EXHAUSTED = "quota_exhausted"
ACCOUNT_IN_ARREARS = "account_in_arrears"
ACCOUNT_MISSING = "account_not_configured"
STOPS = (QUOTA_EXHAUSTED, ACCOUNT_IN_ARREARS, ACCOUNT_MISSING)


class QuotaPlan(BaseModel):
    """The quota a phase's deliveries hold: `name` picks the counter and the account; the first
    `free_per_day` of the shop's day cost nothing, each one after `price_per_1000` / 1000."""

    name: str = EDM_QUOTA
    free_per_day: int = Field(default=EDM_FREE_PER_DAY, ge=0)
    price_per_1000: Decimal = Field(default=EDM_PRICE_PER_1000, ge=0)


EDM = QuotaPlan()
# The quota a channel's priced deliveries hold (K-EDM's email). The outbox dispatcher, which has no plan, gives a
# failed delivery's unit back to it when the delivery carries a cost: take_quota prices every delivery it counts
# (0 for the free ones) and nothing else prices an email.
CHANNEL_QUOTAS = {"email": EDM}


@dataclass(frozen=True)
class Account:
    """What the send path reads of the shop's account, under its lock."""

    balance: Decimal
    daily_limit: int


def remaining(account: Account | None, used_today: int) -> tuple[int, str | None]:
    """(how many more the shop may send today, why none when it is 0)."""
    if account is None:
        return 0, ACCOUNT_MISSING
    if account.balance < 0:
        return 0, ACCOUNT_IN_ARREARS  # the free messages too
    left = max(0, account.daily_limit - used_today)
    return left, None if left else QUOTA_EXHAUSTED


def costs(plan: QuotaPlan, used_today: int, n: int) -> list[Decimal]:
    """The price of each of `n` more messages after `used_today` of the shop's day: the day's first
    `free_per_day` are free, the others `price_per_1000` / 1000 each."""
    free = max(0, min(n, plan.free_per_day - used_today))
    each = plan.price_per_1000 / 1000
    return [Decimal(0)] * free + [each] * (n - free)
