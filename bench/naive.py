"""The naive design, for comparison: one activity per recipient.

Each activity does, for one recipient, the same work as a chunk of the
batched send (activities/send.py) does for thousands: read the snapshot row
with the customer's exclusions and any earlier decision, lock the consumer's
fatigue_day row, read the shop-day and template caps, decide, insert the
delivery and bump the counters in one transaction, hand it to the outbox
channel, then mark it sent. The workflow keeps `inflight` of them running.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel
    from sluice.schemas import rules
    from sluice.schemas.activities import (
        SUPPRESS_GLOBAL_DAY,
        SUPPRESS_GLOBAL_SHOPS,
        SUPPRESS_SHOP_DAY,
        SUPPRESS_TEMPLATE,
    )
    from sluice.schemas.rules import template_key


class NaiveInput(BaseModel):
    campaign_db_id: int
    shop_id: str
    phase: int = 0
    day: date
    channel: str
    template_group: str
    template_count: int = 1
    template_days: int = 1
    text: str
    fatigue_day: date
    decided_at: datetime
    recipients: int
    inflight: int = 200


class NaiveOne(BaseModel):
    job: NaiveInput
    seq: int


@workflow.defn
class NaiveWorkflow:
    @workflow.run
    async def run(self, inp: NaiveInput) -> dict[str, int]:
        window = asyncio.Semaphore(inp.inflight)
        counts: dict[str, int] = {}

        async def one(seq: int) -> None:
            async with window:
                state = await workflow.execute_activity_method(
                    NaiveActivities.send_one,
                    NaiveOne(job=inp, seq=seq),
                    start_to_close_timeout=timedelta(minutes=5),
                    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5),
                )
            counts[state] = counts.get(state, 0) + 1

        await asyncio.gather(*(one(seq) for seq in range(inp.recipients)))
        return counts


def _channel_sql(channel: str) -> str:
    from sluice.activities.audience import CHANNEL_ADDRESS, exclusion_branches

    return f"""
        SELECT s.consumer_id, CASE {exclusion_branches(channel)} END AS excluded,
               {CHANNEL_ADDRESS[channel]} AS address,
               (SELECT d.state FROM deliveries d WHERE d.campaign_id = $1 AND d.phase = $2
                   AND d.consumer_id = s.consumer_id AND d.day = $3 AND d.channel = $6) AS prior
        FROM audience_snapshots s
        JOIN shop_customers c ON c.shop_id = $4 AND c.consumer_id = s.consumer_id
        WHERE s.campaign_id = $1 AND s.phase = $2 AND s.day = $3 AND s.seq = $5
    """


class NaiveActivities:
    def __init__(self, pool, channels):
        self.pool = pool
        self.channels = channels

    @activity.defn
    async def send_one(self, one: NaiveOne) -> str:
        from sluice.channels.base import Outbound

        j = one.job
        async with self.pool.acquire() as conn, conn.transaction():
            r = await conn.fetchrow(_channel_sql(j.channel), j.campaign_db_id, j.phase, j.day, j.shop_id, one.seq, j.channel)
            if r is None:
                return "missing"
            if r["prior"] is not None and r["prior"] != "reserved":
                return r["prior"]  # decided by an earlier attempt
            cid = r["consumer_id"]
            reason = None
            if r["prior"] is None:
                reason = r["excluded"]
                new_shop = 0
                if reason is None:
                    g = await conn.fetchrow(
                        "INSERT INTO fatigue_day (consumer_id, day, channel) VALUES ($1, $2, $3)"
                        " ON CONFLICT (consumer_id, day, channel) DO UPDATE SET sent = fatigue_day.sent RETURNING sent, shops",
                        cid,
                        j.fatigue_day,
                        j.channel,
                    )
                    shop_sent = await conn.fetchval(
                        "SELECT coalesce((per_shop ->> $3)::int, 0) FROM fatigue_day"
                        " WHERE consumer_id = $1 AND day = $2 AND channel = $4",
                        cid,
                        j.fatigue_day,
                        j.shop_id,
                        j.channel,
                    )
                    template = await conn.fetchval(
                        "SELECT coalesce(sum((per_template ->> $2)::int), 0)::int FROM fatigue_day"
                        " WHERE consumer_id = $1 AND day > $3::date - $4::int AND day <= $3::date AND channel = $5",
                        cid,
                        template_key(j.shop_id, j.template_group),
                        j.fatigue_day,
                        j.template_days,
                        j.channel,
                    )
                    if g["sent"] >= rules.GLOBAL_DAY_MAX:
                        reason = SUPPRESS_GLOBAL_DAY
                    elif shop_sent >= rules.SHOP_DAY_MAX:
                        reason = SUPPRESS_SHOP_DAY
                    elif shop_sent == 0 and g["shops"] >= rules.GLOBAL_SHOPS_MAX:
                        reason = SUPPRESS_GLOBAL_SHOPS
                    elif template >= j.template_count:
                        reason = SUPPRESS_TEMPLATE
                    new_shop = 1 if shop_sent == 0 else 0
                inserted = await conn.fetchval(
                    "INSERT INTO deliveries (campaign_id, phase, consumer_id, day, channel, shop_id, template_group,"
                    " fatigue_day, state, reason, decided_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                    " ON CONFLICT DO NOTHING RETURNING state",
                    j.campaign_db_id,
                    j.phase,
                    cid,
                    j.day,
                    j.channel,
                    j.shop_id,
                    j.template_group,
                    j.fatigue_day,
                    "reserved" if reason is None else "suppressed",
                    reason,
                    j.decided_at,
                )
                if inserted is None:
                    return "raced"
                if reason is not None:
                    return "suppressed"
                await conn.execute(
                    "UPDATE fatigue_day SET sent = sent + 1, shops = shops + $3, per_shop = fatigue_increment(per_shop, $4),"
                    " per_template = fatigue_increment(per_template, $5)"
                    " WHERE consumer_id = $1 AND day = $2 AND channel = $6",
                    cid,
                    j.fatigue_day,
                    new_shop,
                    j.shop_id,
                    template_key(j.shop_id, j.template_group),
                    j.channel,
                )
        # Committed before the provider call, as the real send path does; the outbox is idempotent per delivery key.
        channel = self.channels.get(j.channel)
        outcomes = await channel.send([Outbound(j.campaign_db_id, j.phase, cid, j.day, j.channel, r["address"], j.text)])
        for o in outcomes:
            await self.pool.execute(
                "UPDATE deliveries SET state = $6, provider_ref = $7, updated_at = now()"
                " WHERE campaign_id = $1 AND phase = $2 AND consumer_id = $3 AND day = $4 AND channel = $5"
                " AND state = 'reserved'",
                j.campaign_db_id,
                j.phase,
                o.consumer_id,
                j.day,
                j.channel,
                o.state,
                o.provider_ref,
            )
        return outcomes[0].state if outcomes else "unknown"
