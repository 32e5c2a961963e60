"""The reachable-count preview (R-PRE-1): whom a campaign would reach, before it starts.

For each phase, its first day that is still to come: the audience refresh's
own statement without its snapshot (the audience, the exclusions of R-EXC-1,
the plan's filters; activities/audience.py `preview_count_sql`), in parts at
once like the refresh. The same statement reads each eligible consumer's counts
on the channel's fatigue row of their own fatigue day (the day of the instant
their own send window lets the run hand off, R-WIN-1; one whose window does not
open that day is removed as `outside_recipient_window`) and the template
group's earlier days, grouped by those counts; the send path's pure
`cap_verdict` (the test `_RESERVE` applies) judges each group; the consumers the
run would hold out as the control group (R-HO-1, the same hash in SQL) come
back apart and are never judged by the caps, as in the run. Then the
campaign's own limits (the minimum audience of R-OC-4, the provider quota
of R-ED-4, the daily cap of R-PH-7, the coupon's stock, the budget of
R-COST-BUDGET, each message priced as the run would price it). It runs in
one transaction that is rolled back: nothing is written, no cap is taken and no consumer row is locked, so a
preview never holds up a running campaign. What it counts is what the run
would decide on the same data at the same instant
(tests/test_preview.py runs both).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import asyncpg
from pydantic import BaseModel, Field
from sluice.activities.audience import (
    PREVIEW_CAP_COUNTS,
    PREVIEW_HELD_OUT,
    PREVIEW_SETTINGS,
    PREVIEW_ZONE,
    checked_preview_sql,
    count_reasons,
    refresh_args,
    run_part,
)
from sluice.activities.quota import quota_left, quota_used
from sluice.activities.send import _body, cap_verdict, recipient_fatigue_day
from sluice.channels import sms
from sluice.outcomes.holdout import threshold
from sluice.schemas import activities as A
from sluice.schemas.activities import RefreshAudienceInput
from sluice.schemas.budget import within_budget
from sluice.schemas.campaign import CampaignPlan, Channel, PhasePlan
from sluice.schemas.fatigue import policy_for
from sluice.schemas.quota import costs
from sluice.schemas.rules import template_key
from sluice.schemas.settings import DEFAULT_REFRESH_PARTS
from sluice.workflows.calendar import day_window, first_open, first_open_day, known_zones


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


async def preview(
    pool: asyncpg.Pool, plan: CampaignPlan, *, now: datetime, platform_tz: str, parts: int = DEFAULT_REFRESH_PARTS,
) -> Preview:
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            # A campaigns row of its own (never committed): the overlap filter sees the shop's
            # campaigns started before it, as a campaign started now would.
            campaign_db_id = await conn.fetchval(
                "INSERT INTO campaigns (shop_id, campaign_ref, workflow_id, kind, spec, state)"
                " VALUES ($1, $2, $3, $4, '{}'::jsonb, 'preview') RETURNING id",
                plan.shop_id, f"preview-{uuid.uuid4().hex}", f"preview-{uuid.uuid4().hex}", plan.kind,
            )  # fmt: skip
            # R-COST-BUDGET: what the budget leaves, phase after phase (the run spends it in the plan's order).
            budget = _BudgetLeft(plan.budget) if plan.budget is not None else None
            phases = [
                await _phase(pool, conn, plan, i, campaign_db_id, now=now, platform_tz=platform_tz, parts=parts,
                             budget=budget)
                for i in range(len(plan.phases))
            ]
        finally:
            await tx.rollback()
    return Preview(workflow_id=plan.workflow_id, phases=phases)


@dataclass
class _BudgetLeft:
    left: Decimal


async def _phase(
    pool, conn, plan: CampaignPlan, index: int, campaign_db_id: int, *, now, platform_tz, parts: int,
    budget: _BudgetLeft | None = None,
) -> PhasePreview:
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
    # Each eligible consumer's own fatigue day at the instant the run would hand off to them (R-FAT-DAY), as the send
    # path computes it: one with a zone of their own is handed off when their window is first open from then on (the
    # run's later pass, R-WIN-1), or not that day when it does not open before the shop's next day (day None).
    at = max(now, win.send_at)
    zone_days = zone_fatigue_days(at, win.end_at, platform_tz)
    cap = phase.template_cap
    tkey = template_key(plan.shop_id, cap.group if cap else "")
    # The refresh's own statement without its snapshot: counts, the eligible consumers grouped by the counts the caps
    # judge them on, and per zone. Its parts run at once on connections of their own: they read only committed data
    # (the preview's campaigns row has nothing to find), the overlap filter's campaigns being bound from here.
    statement = checked_preview_sql(inp, [list(zone_days), list(zone_days.values()),
                                          recipient_fatigue_day(at, None, platform_tz), tkey, cap.days if cap else 1,
                                          plan.holdout_key or "", threshold(plan.holdout_percent)])
    part_args = await refresh_args(conn, inp, statement, parts)
    outcomes = await asyncio.gather(*(run_part(pool, statement.sql, part_args(p), PREVIEW_SETTINGS) for p in range(parts)))
    rows = [r for part in outcomes for r in part]
    eligible, removed = count_reasons(
        (r["reason"], r["n"]) for r in rows if r["reason"] not in (PREVIEW_CAP_COUNTS, PREVIEW_ZONE, PREVIEW_HELD_OUT)
    )
    matched = eligible + sum(removed.values())
    zoned: Counter[str] = Counter()
    for r in rows:
        if r["reason"] == PREVIEW_ZONE:
            zoned[r["zone"]] += r["n"]
    outside = sum(n for z, n in zoned.items() if zone_days.get(z) is None)
    verdicts: Counter[str] = Counter(removed)
    if phase.below_minimum(eligible, removed.get(A.EXCLUDED_ALREADY_REACHED, 0)):
        verdicts[A.NOT_SENT_MIN_AUDIENCE] += eligible
        allowed = 0
    else:
        verdicts[A.NOT_SENT_RECIPIENT_WINDOW] += outside
        # R-HO-1: the control group, decided before any cap (only those whose window opens that day)
        held = sum(r["n"] for r in rows if r["reason"] == PREVIEW_HELD_OUT)
        verdicts[A.HELD_OUT] += held
        allowed = eligible - outside - held - _stopped_by_caps(
            phase, [r for r in rows if r["reason"] == PREVIEW_CAP_COUNTS], verdicts)
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
        if budget is not None and allowed:  # R-COST-BUDGET: the messages the budget pays for, in send order
            prices = await _prices(conn, plan, phase, win.day, at, allowed)
            fits = within_budget(prices, budget.left)
            verdicts[A.NOT_SENT_BUDGET] += len(prices) - fits
            allowed -= len(prices) - fits
            budget.left -= sum(prices[:fits], Decimal(0))
    removed_all = {k: v for k, v in sorted(verdicts.items()) if v}
    return PhasePreview(
        phase=phase.name, day=win.day.isoformat(), audience=phase.audience, matched=matched, removed=removed_all,
        rules={k: A.REASON_RULES[k] for k in removed_all if k in A.REASON_RULES}, would_send=allowed,
    )  # fmt: skip


async def _prices(conn, plan: CampaignPlan, phase: PhasePlan, day, at: datetime, n: int) -> list[Decimal]:
    """What `n` messages of the phase would cost one after another at `at`, as the send path prices them: an
    SMS its segments (R-AQ-4; a per-recipient text is estimated by its template) from the shop's credits in
    the order they are spent (R-AQ-5; one the credits cannot pay is not sent and costs nothing: left out
    here), an email past the day's free quota (R-ED-4). A message of any other channel costs nothing: []."""
    if phase.channel == Channel.sms:
        text = sms.sms_text(_body(phase), await sms.signature_of(conn, plan.shop_id))
        debit = sms.plan_debit(await sms.balances(conn, plan.shop_id, at), [(i, sms.segments(text)) for i in range(n)])
        return [debit.cost[i] for i in range(n) if i in debit.cost]
    if phase.quota is not None:
        return costs(phase.quota, await quota_used(conn, phase.quota, plan.shop_id, day), n)
    return []


def zone_fatigue_days(at: datetime, end_at: datetime, platform_tz: str) -> dict[str, date | None]:
    """R-FAT-DAY with R-WIN-1, per zone of the bundled tzdata: the fatigue day of a recipient in that zone whom the run
    hands off from `at` on, which is the first instant their own window is open before `end_at` (the shop's next
    day); None when it does not open by then (not sent that day). A recipient without a zone of their own counts on
    the platform's day at `at` (`recipient_fatigue_day` without a zone)."""
    days: dict[str, date | None] = {}
    for z in known_zones():
        hand_off = first_open(z, at, end_at)
        days[z] = None if hand_off is None else recipient_fatigue_day(hand_off, z, platform_tz)
    return days


def _stopped_by_caps(phase: PhasePlan, groups: list, verdicts: Counter) -> int:
    """How many consumers the channel's fatigue caps stop, each counted by their cap in `verdicts`: `groups` are the
    PREVIEW_CAP_COUNTS rows (eligible consumers per the counts a cap judges) and the verdict is the
    send path's own (`cap_verdict`, the test `_RESERVE` applies), once per group."""
    policy = policy_for(phase.channel.value)
    stopped = 0
    for g in groups:  # a group row carries cap_verdict's counts by name (day_sent, day_shops, shop_sent, template_today)
        reason = cap_verdict(g, g["earlier"], phase.template_cap, policy)
        if reason is not None:
            verdicts[reason] += g["n"]
            stopped += g["n"]
    return stopped
