"""The provider quota in the send path (R-ED-4): held per delivery in the transaction that decides it.

A chunk of a phase with a `QuotaPlan` first locks the shop's account row and
its counter of the day (`hold_quota`: before the consumers' fatigue rows and
the coupons, the same order in every transaction), so the shop's chunks and
campaigns take the day's limit one after another and never together pass
it. The chunk sends at most what is left; the deliveries it commits live
then count against the day, each with its price in `deliveries.cost`, the
sum debited from the account (`take_quota`). The pure decisions (what is
left, what each message costs) are in schemas/quota.py. The preview reads
the same numbers without locking (`quota_left`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import asyncpg
from sluice.activities import errors
from sluice.schemas.quota import EDM_QUOTA, Account, QuotaPlan, costs, remaining

# The account of each quota: a primary-key probe. FOR UPDATE in the send path: debits and the arrears
# check of one shop follow one another.
_ACCOUNT_READ = {EDM_QUOTA: "SELECT balance, daily_limit FROM edm_accounts WHERE shop_id = $1"}
_ACCOUNT_LOCK = {EDM_QUOTA: "SELECT balance, daily_limit FROM edm_accounts WHERE shop_id = $1 FOR UPDATE"}
_ACCOUNT_DEBIT = {EDM_QUOTA: "UPDATE edm_accounts SET balance = balance - $2, updated_at = now() WHERE shop_id = $1"}
_ACCOUNT_CREDIT = {EDM_QUOTA: "UPDATE edm_accounts SET balance = balance + $2, updated_at = now() WHERE shop_id = $1"}
# The shop's counter of the day, created and locked in one primary-key upsert.
_DAY_LOCK = """
    INSERT INTO quota_day AS q (shop_id, quota, day) VALUES ($1, $2, $3)
    ON CONFLICT (shop_id, quota, day) DO UPDATE SET used = q.used
    RETURNING used
"""
_DAY_READ = "SELECT used FROM quota_day WHERE shop_id = $1 AND quota = $2 AND day = $3"
_DAY_TAKE = "UPDATE quota_day SET used = used + $4, cost = cost + $5 WHERE shop_id = $1 AND quota = $2 AND day = $3"
# Failed deliveries' units and costs given back. Primary key.
_DAY_GIVE_BACK = "UPDATE quota_day SET used = used - $4, cost = cost - $5 WHERE shop_id = $1 AND quota = $2 AND day = $3"
# Each live delivery's price: primary-key updates of rows the same transaction inserted.
_DELIVERY_COST = """
    UPDATE deliveries d SET cost = u.cost
    FROM unnest($5::bigint[], $6::numeric[]) AS u(id, cost)
    WHERE d.campaign_id = $1 AND d.phase = $2 AND d.day = $3 AND d.channel = $4 AND d.consumer_id = u.id
"""


@dataclass(frozen=True)
class QuotaHold:
    used: int  # the shop's messages of the day before this chunk
    left: int  # how many more this chunk may send
    reason: str | None  # why none (left == 0)


def _account(plan: QuotaPlan, table: dict[str, str]) -> str:
    if plan.name not in table:
        raise errors.invalid_input("quota", f"unknown quota {plan.name!r} (one of {sorted(table)})")
    return table[plan.name]


async def hold_quota(conn: asyncpg.Connection, plan: QuotaPlan, shop_id: str, day: date) -> QuotaHold:
    """Lock the shop's account and day counter (in the chunk's transaction); what is left today."""
    row = await conn.fetchrow(_account(plan, _ACCOUNT_LOCK), shop_id)
    used = await conn.fetchval(_DAY_LOCK, shop_id, plan.name, day)
    left, reason = remaining(Account(row["balance"], row["daily_limit"]) if row else None, used)
    return QuotaHold(used=used, left=left, reason=reason)


async def take_quota(
    conn: asyncpg.Connection, plan: QuotaPlan, hold: QuotaHold, shop_id: str, ledger: tuple, ids: list[int]
) -> Decimal:
    """Count the chunk's live deliveries `ids` against the day, price each (the day's first free), and debit
    the account. `ledger`: (campaign, phase, day, channel) of their rows. Returns what they cost together."""
    prices = costs(plan, hold.used, len(ids))
    total = sum(prices, Decimal(0))
    campaign, phase, day, channel = ledger
    await conn.execute(_DAY_TAKE, shop_id, plan.name, day, len(ids), total)
    await conn.execute(_DELIVERY_COST, campaign, phase, day, channel, ids, prices)
    if total:
        await conn.execute(_account(plan, _ACCOUNT_DEBIT), shop_id, total)
    return total


async def give_back_quota(
    conn: asyncpg.Connection, plan: QuotaPlan, shop_id: str, day: date, n: int, cost: Decimal
) -> None:
    """`n` deliveries of the shop's `day` that failed (never delivered) give back their units and their `cost`
    (credited to the account), in the transaction that records them: the account first, then the day
    counter (hold_quota's order), before any consumer's row."""
    if cost:
        await conn.execute(_account(plan, _ACCOUNT_CREDIT), shop_id, cost)
    if n:
        await conn.execute(_DAY_GIVE_BACK, shop_id, plan.name, day, n, cost)


async def quota_used(conn: asyncpg.Connection, plan: QuotaPlan, shop_id: str, day: date) -> int:
    """The shop's messages of `day` so far, read without a lock (the preview prices what follows)."""
    return await conn.fetchval(_DAY_READ, shop_id, plan.name, day) or 0


async def quota_left(conn: asyncpg.Connection, plan: QuotaPlan, shop_id: str, day: date) -> tuple[int, str | None]:
    """What the shop's quota leaves on `day`, read without a lock (the preview)."""
    row = await conn.fetchrow(_account(plan, _ACCOUNT_READ), shop_id)
    used = await conn.fetchval(_DAY_READ, shop_id, plan.name, day) or 0
    return remaining(Account(row["balance"], row["daily_limit"]) if row else None, used)
