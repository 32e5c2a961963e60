"""The campaign workflow's input, carried state and query answer."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field
from sluice.schemas.campaign import CampaignPlan


class CampaignProgress(BaseModel):
    """Everything the workflow must remember across continue-as-new: small and count-only."""

    started_at: datetime
    # scheduled | waiting | sending | yielding | paused | halted | completed | cancelled | budget_exhausted
    state: str = "scheduled"
    phase_index: int = 0
    next_day: date | None = None
    paused: bool = False
    cancel_requested: bool = False
    cancel_reason: str | None = None
    # Why the campaign halted itself (an activity failed in a way no retry fixes, or past its limits);
    # None when running or paused by an operator. `resume` clears it and tries again.
    halt_reason: str | None = None
    # Why the campaign sends nothing right now though it could: another campaign of the shop takes
    # precedence (R-RP-9). None otherwise.
    yield_reason: str | None = None
    # Why the campaign ended before its plan's end though nobody cancelled it: its budget is spent
    # (R-COST-BUDGET, schemas/budget.py); its final state is then "budget_exhausted". None otherwise.
    end_reason: str | None = None
    totals: dict[str, dict[str, int]] = Field(default_factory=dict, description="per phase name, per count key")
    last_report: dict[str, int] = Field(default_factory=dict)
    current_day: date | None = None
    day_eligible: int = 0
    day_done: int = 0
    runs: int = 1


class CampaignInput(BaseModel):
    plan: CampaignPlan
    progress: CampaignProgress | None = None


class CampaignStatus(BaseModel):
    workflow_id: str
    shop_id: str
    campaign_id: str
    kind: str
    phase: str | None
    progress: CampaignProgress
