"""Precedence between a shop's campaigns (R-RP-9), the decisions without Temporal or SQL.

A plan's `precedence` (schemas.campaign.Precedence) puts the campaign in a
group of the shop. A campaign that takes precedence holds the group while its
state is one of HOLDING_STATES: from the moment it sends until it ends (its
offers' countdowns included, since the workflow is still running then), and
also while paused or halted, since the merchant's task has not ended. One that
yields checks for a holder when its send time comes and, while sending, at
most every CHECK_EVERY: while one exists it sends nothing (state "yielding",
the holder named in the status) and looks again every CHECK_EVERY, until the
holder ends (then it sends the rest of its day) or its window closes (then the
day's unsent recipients are recorded as not sent, consuming no cap).
"""

from __future__ import annotations

from datetime import datetime, timedelta

# The workflow states (schemas.workflow.CampaignProgress.state) in which a holder holds its group.
HOLDING_STATES = ("sending", "paused", "halted")
# How often a yielding campaign looks for a holder, while waiting and while sending.
CHECK_EVERY = timedelta(minutes=5)
SENDING_CHECK_EVERY = timedelta(minutes=1)
YIELDING = "yielding"


def yields(precedence) -> bool:
    """Whether a plan's campaign must look for a holder before and while sending."""
    return precedence is not None and not precedence.takes


def check_due(last_checked: datetime | None, now: datetime, every: timedelta = SENDING_CHECK_EVERY) -> bool:
    return last_checked is None or now - last_checked >= every


def yield_reason(holder_workflow_id: str) -> str:
    return f"R-RP-9: the shop's custom task {holder_workflow_id} runs; this task resumes when it ends"
