"""Closing a phase day in the ledger, the daily report, and the campaign's state row."""

from __future__ import annotations

import asyncpg
from sluice.activities.context import bind_activity_context
from sluice.reports.refresh import refresh
from sluice.schemas.activities import CampaignStateInput, CloseDayInput, DayReport, DayReportInput, ReportRefreshInput
from sluice.workers import metrics
from temporalio import activity

# The day report's key prefix of the sent deliveries carrying each member benefit kind ("benefit:join_gift").
BENEFIT_COUNT = "benefit:"
_SENT_PER_BENEFIT = """
    SELECT b.kind, count(*)::int FROM deliveries d JOIN member_benefits b ON b.benefit_id = d.benefit_id
    WHERE d.campaign_id = $1 AND d.phase = $2 AND d.day = $3 AND d.state = 'sent' AND d.benefit_id IS NOT NULL
    GROUP BY b.kind
"""


class ReportActivities:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    @activity.defn
    async def close_day(self, inp: CloseDayInput) -> int:
        """Record the day's unsent snapshot rows as not_sent with the reason (R-PH-2 on a phase's
        last day, or cancellation); they consume no cap (R-OC-8). Idempotent."""
        log = bind_activity_context(shop_id=inp.shop_id, campaign_db_id=inp.campaign_db_id)
        n = await self.pool.fetchval(
            """
            WITH ins AS (
                INSERT INTO deliveries (campaign_id, phase, consumer_id, day, channel, shop_id, template_group,
                                        fatigue_day, state, reason, decided_at)
                SELECT s.campaign_id, s.phase, s.consumer_id, s.day, $4, $5, $6, $3, 'not_sent', $7, $8
                FROM audience_snapshots s
                WHERE s.campaign_id = $1 AND s.phase = $2 AND s.day = $3
                ON CONFLICT DO NOTHING
                RETURNING 1
            )
            SELECT count(*) FROM ins
            """,
            inp.campaign_db_id,
            inp.phase_index,
            inp.day,
            inp.channel.value,
            inp.shop_id,
            inp.template_group,
            inp.reason,
            inp.decided_at,
        )
        metrics.count_deliveries(inp.channel.value, metrics.NOT_SENT, n)
        log.info("day closed", day=str(inp.day), not_sent=n, reason=inp.reason)
        return n

    @activity.defn
    async def day_report(self, inp: DayReportInput) -> DayReport:
        """Counts per state and per reason for one phase day, kept in campaign_day_reports."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT state, reason, count(*)::int AS n FROM deliveries
                   WHERE campaign_id = $1 AND phase = $2 AND day = $3 GROUP BY state, reason""",
                inp.campaign_db_id,
                inp.phase_index,
                inp.day,
            )
            refresh = await conn.fetchrow(
                "SELECT matched, eligible, excluded FROM audience_refreshes"
                " WHERE campaign_id = $1 AND phase = $2 AND day = $3",
                inp.campaign_db_id,
                inp.phase_index,
                inp.day,
            )
            counts: dict[str, int] = {}
            for r in rows:
                counts[r["state"]] = counts.get(r["state"], 0) + r["n"]
                if r["reason"]:
                    key = f"{r['state']}:{r['reason']}"
                    counts[key] = counts.get(key, 0) + r["n"]
            # Sent deliveries per member benefit kind they carried (R-RP-4: deliveries.benefit_id), over the
            # same range of the ledger's key as above and a benefit row by primary key per such delivery.
            for kind, n in await conn.fetch(_SENT_PER_BENEFIT, inp.campaign_db_id, inp.phase_index, inp.day):
                counts[f"{BENEFIT_COUNT}{kind}"] = n
            # Claims per state: held, claimed, expired, released (countdown offers, R-RP-5; a shared coupon's
            # stay held: the units its sent messages carry, R-BEN-1).
            for state, n in await conn.fetch(
                "SELECT state, count(*)::int FROM claims WHERE campaign_id = $1 AND phase = $2 AND day = $3 GROUP BY 1",
                inp.campaign_db_id,
                inp.phase_index,
                inp.day,
            ):
                counts[f"offers_{state}"] = n
            if refresh:
                counts["audience_matched"] = refresh["matched"]
                counts["audience_eligible"] = refresh["eligible"]
                for reason, n in refresh["excluded"].items():
                    counts[f"excluded:{reason}"] = n
            await conn.execute(
                """INSERT INTO campaign_day_reports (campaign_id, phase, day, counts) VALUES ($1, $2, $3, $4)
                   ON CONFLICT (campaign_id, phase, day) DO UPDATE SET counts = EXCLUDED.counts, reported_at = now()""",
                inp.campaign_db_id,
                inp.phase_index,
                inp.day,
                counts,
            )
        return DayReport(day=inp.day, phase=inp.phase_name, counts=counts)

    @activity.defn
    async def refresh_report(self, inp: ReportRefreshInput) -> bool:
        """R-REP-1: attribute the campaign's orders and materialise its report tables (sluice.reports.refresh);
        the same step as POST /campaigns/{id}/report/refresh. True when the attribution step ran."""
        async with self.pool.acquire() as conn:
            done = await refresh(conn, inp.campaign_db_id)
        return done.attributed

    @activity.defn
    async def set_campaign_state(self, inp: CampaignStateInput) -> None:
        await self.pool.execute(
            "UPDATE campaigns SET state = $2, updated_at = now() WHERE id = $1", inp.campaign_db_id, inp.state
        )
