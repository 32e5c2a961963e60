"""The control group (R-HO-1): who is held out, and what the campaign changed against them.

A campaign with `holdout_percent` > 0 keeps that share of each phase's audience as a control group:
the send path decides them `held_out` in the ledger (selected, never sent, no cap taken). Who is held
out is a hash of the campaign's identity and the consumer's id (`held_out`): the same consumers whatever
day, phase, chunk or retried attempt decides them, and independent of everything the campaign knows
about them.

The campaign's identity is its workflow id (`CampaignPlan.holdout_key`, unique per shop for ever, known
before the campaign exists), hashed with MD5 so that PostgreSQL computes the same test (`held_out_sql`):
the preview (R-PRE-1) counts the control group exactly, inside its own statement. Campaigns planned
before the key existed keep the group they started with: a hash (BLAKE2b) of their database id.

`lift` compares per customer what the treated (reached) and the control customers did inside their
attribution windows (the control customers' windows start at their held-out decision, as a reach
would have): conversion and revenue per customer, the differences and their confidence intervals
from a normal approximation (difference of two proportions; difference of two means with each
group's own variance, as in Welch's test). It is pure; `groups` reads its inputs in one statement.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from statistics import NormalDist

import asyncpg
from sluice.schemas import activities as A

# Resolution of the share: hundredths of a percent.
_BUCKETS = 10_000


# The hex digits of the MD5 a bucket is read from: 60 bits, a positive bigint in PostgreSQL too.
_HEX_DIGITS = 15


def threshold(percent: float) -> int:
    """The buckets (of _BUCKETS) a share of `percent` % holds out."""
    return round(percent * _BUCKETS / 100)


def held_out(campaign_db_id: int, consumer_id: int, percent: float, key: str | None = None) -> bool:
    """Whether the consumer is in the campaign's control group: reproducible, about `percent` % of consumers.
    `key`: the campaign's holdout key (its workflow id, `held_out_sql` computes the same); None: a campaign
    planned before the key, whose group is keyed on its database id."""
    if percent <= 0:
        return False
    if key is None:
        digest = hashlib.blake2b(f"{campaign_db_id}:{consumer_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % _BUCKETS < threshold(percent)
    bucket = int(hashlib.md5(f"{key}:{consumer_id}".encode()).hexdigest()[:_HEX_DIGITS], 16) % _BUCKETS
    return bucket < threshold(percent)


def held_out_sql(key: str, consumer: str, buckets: str) -> str:
    """`held_out` with a key, as a SQL boolean: `key` a text expression, `consumer` a bigint one, `buckets` an int
    expression holding `threshold(percent)` (0: nobody, and no hash computed)."""
    digest = f"md5({key} || ':' || {consumer}::text)"
    bucket = f"(('x' || substr({digest}, 1, {_HEX_DIGITS}))::bit({4 * _HEX_DIGITS})::bigint % {_BUCKETS})"
    return f"(CASE WHEN {buckets} > 0 THEN {bucket} < {buckets} ELSE false END)"


@dataclass(frozen=True)
class GroupOutcome:
    """One group's customers, how many converted (an attributed order), and their attributed revenue:
    its sum and the sum of each customer's revenue squared (for the variance)."""

    customers: int
    converted: int
    revenue: float
    revenue_sq: float

    @property
    def conversion(self) -> float | None:
        return self.converted / self.customers if self.customers else None

    @property
    def revenue_per_customer(self) -> float | None:
        return self.revenue / self.customers if self.customers else None

    def revenue_variance(self) -> float | None:
        """The sample variance of revenue per customer (n - 1), None under two customers."""
        n = self.customers
        if n < 2:
            return None
        return max(0.0, (self.revenue_sq - self.revenue * self.revenue / n) / (n - 1))


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True)
class Lift:
    treated: GroupOutcome
    control: GroupOutcome
    confidence: float
    conversion_lift: float | None  # treated minus control conversion (absolute, a share)
    conversion_ci: Interval | None
    revenue_lift: float | None  # treated minus control revenue per customer
    revenue_ci: Interval | None
    relative_conversion_lift: float | None  # conversion_lift / control conversion
    incremental_revenue: float | None  # revenue_lift times the treated customers
    incremental_revenue_ci: Interval | None


def lift(treated: GroupOutcome, control: GroupOutcome, confidence: float = 0.95) -> Lift:
    """The campaign's incremental effect against its control group, with normal-approximation intervals.
    A difference needs both groups; an interval needs two customers in each."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    both = treated.customers > 0 and control.customers > 0
    conv = rev = conv_ci = rev_ci = rel = inc = inc_ci = None
    if both:
        pt, pc = treated.conversion, control.conversion
        conv = pt - pc
        rev = treated.revenue_per_customer - control.revenue_per_customer
        rel = conv / pc if pc else None
        inc = rev * treated.customers
        if treated.customers > 1 and control.customers > 1:
            se = math.sqrt(pt * (1 - pt) / treated.customers + pc * (1 - pc) / control.customers)
            conv_ci = Interval(conv - z * se, conv + z * se)
            se = math.sqrt(treated.revenue_variance() / treated.customers + control.revenue_variance() / control.customers)
            rev_ci = Interval(rev - z * se, rev + z * se)
            inc_ci = Interval(rev_ci.low * treated.customers, rev_ci.high * treated.customers)
    return Lift(treated, control, confidence, conv, conv_ci, rev, rev_ci, rel, inc, inc_ci)


# Per group of the campaign (treated: reached; control: held out), its customers, those with an
# attributed order and their revenue per customer summed and squared. Reads the campaign's range of the
# ledger's primary key and of both attribution tables (run `attribution.attribute` first).
GROUPS = f"""
    WITH g AS (
        SELECT consumer_id, bool_or(state = 'sent') AS treated
        FROM deliveries WHERE campaign_id = $1 AND state IN ('sent', '{A.HELD_OUT}')
        GROUP BY consumer_id
    ),
    rev AS (
        SELECT consumer_id, sum(revenue) AS revenue FROM (
            SELECT consumer_id, revenue FROM attributions WHERE campaign_id = $1
            UNION ALL
            SELECT consumer_id, revenue FROM holdout_attributions WHERE campaign_id = $1
        ) a GROUP BY consumer_id
    )
    SELECT g.treated, count(*)::int AS customers, count(rev.consumer_id)::int AS converted,
           coalesce(sum(rev.revenue), 0) AS revenue, coalesce(sum(rev.revenue * rev.revenue), 0) AS revenue_sq
    FROM g LEFT JOIN rev ON rev.consumer_id = g.consumer_id
    GROUP BY g.treated
"""


async def groups(conn: asyncpg.Connection | asyncpg.Pool, campaign_db_id: int) -> tuple[GroupOutcome, GroupOutcome]:
    """(treated, control) of the campaign, from its ledger and attributions."""
    found = {r["treated"]: r for r in await conn.fetch(GROUPS, campaign_db_id)}

    def group(row) -> GroupOutcome:
        if row is None:
            return GroupOutcome(0, 0, 0.0, 0.0)
        return GroupOutcome(row["customers"], row["converted"], float(row["revenue"]), float(row["revenue_sq"]))

    return group(found.get(True)), group(found.get(False))


async def campaign_lift(conn: asyncpg.Connection | asyncpg.Pool, campaign_db_id: int, confidence: float = 0.95) -> Lift:
    treated, control = await groups(conn, campaign_db_id)
    return lift(treated, control, confidence)


__all__ = ["GroupOutcome", "Interval", "Lift", "campaign_lift", "groups", "held_out", "lift"]
