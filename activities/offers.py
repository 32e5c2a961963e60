"""Claims: the unit of a coupon's stock a sent delivery holds; countdown offers' claim and end (R-RP-5).

A delivery that carries a coupon (PhasePlan.offer) holds one unit of its
coupon's stock, taken from `coupons.stock` in the transaction that decides the
delivery (activities/send.py: never oversold, the stock's CHECK >= 0 holds
under any concurrency). The unit is a `claims` row keyed like the delivery:

- `held`: claimable until `expires_at` (the hand-off instant plus the
  offer's hours). A shared coupon (K-OLDCUST's benefit, R-BEN-1) has no
  countdown: its claim stays `held` with `expires_at` NULL, the unit is the
  recipient's for the coupon's own validity; it is never expired (the sweep
  ends only what has an end, and the workflow does not run it for such a
  phase) and is not claimed here (a claim answers "no such offer");
- `claimed`: the consumer claimed it in time (`claim`: idempotent; the held
  unit is theirs);
- `expired`: the window ended unclaimed; its unit went back to the stock;
- `released`: the delivery was not sent after all (a provider refused it,
  or never had it); its unit went back. Countdown or not.

The workflow waits on a durable timer until the day's last offer ends, then
runs `expire_offers` (idempotent: a worker killed around it loses and
double-counts nothing, every step is one conditional statement).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg
from sluice.activities.context import bind_activity_context
from sluice.schemas.activities import OffersInput, OffersResult
from sluice.workers import metrics
from temporalio import activity

CLAIMED, EXPIRED, HELD, RELEASED = "claimed", "expired", "held", "released"
# What a consumer is told of an offer that can no longer be claimed.
ENDED = "ended"

# The day's offers per state and when the last held one ends: a range of claims_delivery_key (migration 0030).
_DAY_OFFERS = """
    SELECT state, count(*)::int AS n, max(expires_at) FILTER (WHERE state = 'held') AS last_expiry
    FROM claims WHERE campaign_id = $1 AND phase = $2 AND day = $3 GROUP BY state
"""
# End what is held past its expiry and give each coupon its units back, in one statement (coupon rows
# locked in coupon order, as everywhere). A second run finds nothing held past expiry: no double count.
# A claim without an end (a shared coupon, expires_at NULL) never satisfies `expires_at <= $4`.
_EXPIRE = """
    WITH ended AS (
        UPDATE claims SET state = 'expired', closed_at = now()
        WHERE campaign_id = $1 AND phase = $2 AND day = $3 AND state = 'held' AND expires_at <= $4
        RETURNING coupon_id
    ), per_coupon AS (
        SELECT coupon_id, count(*)::int AS n FROM ended GROUP BY coupon_id
    ), back AS (
        UPDATE coupons c SET stock = c.stock + p.n FROM (SELECT * FROM per_coupon ORDER BY coupon_id) p
        WHERE c.coupon_id = p.coupon_id
        RETURNING c.coupon_id
    )
    SELECT coalesce(sum(n), 0)::int FROM per_coupon
"""
# A claim in time: the held offer becomes the consumer's. Only the offer's own shop may claim it, and,
# when the caller names the consumer ($4), only for that consumer.
_CLAIM = """
    UPDATE claims SET state = 'claimed', closed_at = $3
    WHERE id = $1 AND shop_id = $2 AND ($4::bigint IS NULL OR consumer_id = $4) AND state = 'held' AND expires_at > $3
    RETURNING id, state, coupon_id, product_id, consumer_id, expires_at, closed_at
"""
# An offer as it is, for a claim that changed nothing. A shared coupon's claim (no end: expires_at NULL) is no
# offer to claim: not found. Primary-key lookup.
_OFFER = """
    SELECT id, state, coupon_id, product_id, consumer_id, expires_at, closed_at
    FROM claims WHERE id = $1 AND shop_id = $2 AND ($3::bigint IS NULL OR consumer_id = $3) AND expires_at IS NOT NULL
"""


@dataclass(frozen=True)
class ClaimAnswer:
    offer_id: int
    state: str  # claimed | ended
    coupon_id: str
    product_id: int | None
    consumer_id: int
    expires_at: datetime | None
    claimed_at: datetime | None


async def claim(
    pool: asyncpg.Pool, offer_id: int, shop_id: str, now: datetime, consumer_id: int | None = None
) -> ClaimAnswer | None:
    """Claim an offer of the shop: `claimed` (now or before: idempotent), `ended` once its window is over
    (expired, released, or past expiry and not swept yet); None when the shop has no such offer (for this
    consumer, when one is named): nothing changes then."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(_CLAIM, offer_id, shop_id, now, consumer_id)
        if row is not None:
            metrics.count_claims(CLAIMED)  # held -> claimed now (a repeated claim changes and counts nothing)
        else:
            row = await conn.fetchrow(_OFFER, offer_id, shop_id, consumer_id)
            if row is None:
                return None
    state = CLAIMED if row["state"] == CLAIMED else ENDED
    return ClaimAnswer(
        offer_id=row["id"], state=state, coupon_id=row["coupon_id"], product_id=row["product_id"],
        consumer_id=row["consumer_id"], expires_at=row["expires_at"],
        claimed_at=row["closed_at"] if state == CLAIMED else None,
    )  # fmt: skip


class OfferActivities:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    @activity.defn
    async def day_offers(self, inp: OffersInput) -> OffersResult:
        """The day's offers per state and when the last held one ends (the workflow's timer)."""
        rows = await self.pool.fetch(_DAY_OFFERS, inp.campaign_db_id, inp.phase_index, inp.day)
        last = max((r["last_expiry"] for r in rows if r["last_expiry"] is not None), default=None)
        return OffersResult(last_expiry=last, counts={r["state"]: r["n"] for r in rows})

    @activity.defn
    async def expire_offers(self, inp: OffersInput) -> OffersResult:
        """End the day's offers whose window is over and give their units back; the counts after it."""
        log = bind_activity_context(campaign_db_id=inp.campaign_db_id, day=str(inp.day))
        async with self.pool.acquire() as conn, conn.transaction():
            ended = await conn.fetchval(_EXPIRE, inp.campaign_db_id, inp.phase_index, inp.day, inp.now)
            rows = await conn.fetch(_DAY_OFFERS, inp.campaign_db_id, inp.phase_index, inp.day)
        metrics.count_claims(EXPIRED, ended)
        counts = {r["state"]: r["n"] for r in rows}
        log.info("offers expired", expired_now=ended, counts=counts)
        last = max((r["last_expiry"] for r in rows if r["last_expiry"] is not None), default=None)
        return OffersResult(last_expiry=last, counts=counts)
