"""The reachable-count preview (R-PRE-1): whom a campaign would reach, before it starts.

For each phase, its first day that is still to come: the audience refresh's
own statement (the audience, the exclusions of R-EXC-1, the plan's filters)
and the send path's own cap reading (`CAPS_READ`, `TEMPLATE_WINDOW` and the
pure `cap_verdict`, which is the test `_RESERVE` applies), then the
campaign's own limits (the minimum audience of R-OC-4, the provider quota
of R-ED-4, the daily cap of R-PH-7, the coupon's stock). It runs in one transaction that is rolled back:
nothing is written, no cap is taken and no consumer row is locked, so a
preview never holds up a running campaign. What it counts is what the run
would decide on the same data at the same instant
(tests/test_preview.py runs both).
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime

import asyncpg
from pydantic import BaseModel, Field
from sluice.activities.audience import checked_refresh_sql, count_reasons, refresh_args
from sluice.activities.quota import quota_left
from sluice.activities.send import CAPS_READ, TEMPLATE_WINDOW, cap_verdict, fatigue_day_sql, platform_day_of
from sluice.schemas import activities as A
from sluice.schemas.activities import RefreshAudienceInput
from sluice.schemas.campaign import CampaignPlan, PhasePlan
from sluice.schemas.fatigue import policy_for
from sluice.schemas.rules import template_key
from sluice.workflows.calendar import day_window, first_open_day

# Cap readings per statement: about 10 ms per 10,000 consumers (primary-key probes).
CHUNK = 10_000


# The snapshot's consumers in send order, each with their own fatigue day at the instant $4 (the platform's date at
# it: $5), as the send path's chunk statement computes it (R-FAT-DAY). $1 campaign, $2 phase, $3 day. A primary-key
# range over the snapshot, nothing joined.
SNAPSHOT_DAYS = f"""
    SELECT s.consumer_id, {fatigue_day_sql("$4", "$5")} AS fday
    FROM audience_snapshots s
    WHERE s.campaign_id = $1 AND s.phase = $2 AND s.day = $3 ORDER BY s.seq"""


class PhasePreview(BaseModel):
    phase: str
    day: str = Field(description="the day previewed: the phase's first day still to come")
    audience: str
    matched: int = Field(description="who the audience selects")
    removed: dict[str, int] = Field(description="what each exclusion, filter, cap and limit removes, by reason")
    rules: dict[str, str] = Field(description="the rule id behind each reason")
    would_send: int


class Preview(BaseModel):
    workflow_id: str
    phases: list[PhasePreview]


async def preview(pool: asyncpg.Pool, plan: CampaignPlan, *, now: datetime, platform_tz: str) -> Preview:
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            # The refresh's own memory for its sorts (activities/audience.py): a whole-shop audience's
            # product choice and numbering otherwise spill to temporary files (4 MB by default).
            await conn.execute("SET LOCAL work_mem = '64MB'")
            # A campaigns row of its own (never committed): the overlap filter sees the shop's
            # campaigns started before it, as a campaign started now would.
            campaign_db_id = await conn.fetchval(
                "INSERT INTO campaigns (shop_id, campaign_ref, workflow_id, kind, spec, state)"
                " VALUES ($1, $2, $3, $4, '{}'::jsonb, 'preview') RETURNING id",
                plan.shop_id, f"preview-{uuid.uuid4().hex}", f"preview-{uuid.uuid4().hex}", plan.kind,
            )  # fmt: skip
            phases = [
                await _phase(conn, plan, i, campaign_db_id, now=now, platform_tz=platform_tz)
                for i in range(len(plan.phases))
            ]
        finally:
            await tx.rollback()
    return Preview(workflow_id=plan.workflow_id, phases=phases)


async def _phase(conn, plan: CampaignPlan, index: int, campaign_db_id: int, *, now, platform_tz) -> PhasePreview:
    phase = plan.phases[index]
    # The phase's first day still to come (its last day when none is).
    day = min(first_open_day(now, plan.timezone, phase.start_date), phase.end_date)
    win = day_window(day, phase.send_time, plan.timezone)
    inp = RefreshAudienceInput(
        campaign_db_id=campaign_db_id, shop_id=plan.shop_id, kind=plan.kind, phase_index=index,
        audience=phase.audience, filters=phase.filters, audience_params=phase.audience_params, channel=phase.channel,
        day=win.day,
        snapshot_at=win.snapshot_at, campaign_started_at=now,
    )  # fmt: skip
    statement = checked_refresh_sql(inp)
    args = (await refresh_args(conn, inp, statement, 1))(0)
    eligible, removed = count_reasons(await conn.fetch(statement.sql, *args))
    matched = eligible + sum(removed.values())
    # Each consumer's own fatigue day at the instant the run would hand off (R-FAT-DAY).
    at = max(now, win.send_at)
    days = dict(await conn.fetch(SNAPSHOT_DAYS, campaign_db_id, index, win.day, at, platform_day_of(at, platform_tz)))
    verdicts: Counter[str] = Counter(removed)
    if phase.below_minimum(eligible, removed.get(A.EXCLUDED_ALREADY_REACHED, 0)):
        verdicts[A.NOT_SENT_MIN_AUDIENCE] += eligible
        allowed = 0
    else:
        allowed = await _after_caps(conn, plan, phase, days, verdicts)
        if phase.quota is not None:  # R-ED-4: what the shop's provider quota leaves on the day (read, not held)
            left, reason = await quota_left(conn, phase.quota, plan.shop_id, win.day)
            if allowed > left:
                verdicts[reason or A.NOT_SENT_QUOTA] += allowed - left
                allowed = left
        if phase.daily_cap is not None and allowed > phase.daily_cap:
            verdicts[A.NOT_SENT_DAILY_CAP] += allowed - phase.daily_cap
            allowed = phase.daily_cap
        if phase.offer is not None and phase.offer.shared:  # one coupon for everyone: its stock bounds the send
            stock = await conn.fetchval(
                "SELECT greatest(stock, 0) FROM coupons WHERE coupon_id = $1 AND shop_id = $2", phase.offer.coupon_ids[0],
                plan.shop_id,
            )
            if stock is not None and allowed > stock:
                verdicts[A.SUPPRESS_BENEFIT] += allowed - stock
                allowed = stock
    removed_all = {k: v for k, v in sorted(verdicts.items()) if v}
    return PhasePreview(
        phase=phase.name, day=win.day.isoformat(), audience=phase.audience, matched=matched, removed=removed_all,
        rules={k: A.REASON_RULES[k] for k in removed_all if k in A.REASON_RULES}, would_send=allowed,
    )  # fmt: skip


async def _after_caps(conn, plan: CampaignPlan, phase: PhasePlan, days: dict, verdicts: Counter) -> int:
    """How many of the consumers `days` ({consumer: their fatigue day}) the channel's fatigue caps let through;
    the others counted by their cap."""
    cap = phase.template_cap
    tkey = template_key(plan.shop_id, cap.group if cap else "")
    ch = phase.channel.value
    policy = policy_for(ch)
    ids = list(days)
    allowed = 0
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i : i + CHUNK]
        fdays = [days[c] for c in chunk]
        earlier = (
            dict(await conn.fetch(TEMPLATE_WINDOW, chunk, fdays, cap.days, tkey, ch)) if cap and cap.days > 1 else {}
        )
        for row in await conn.fetch(CAPS_READ, chunk, plan.shop_id, fdays, tkey, ch):
            reason = cap_verdict(row, earlier.get(row["id"], 0), cap, policy)
            if reason is None:
                allowed += 1
            else:
                verdicts[reason] += 1
    return allowed
