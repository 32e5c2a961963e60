"""Inputs and results of activities: ids, ranges, instants and counts, never recipients.

See docs/design.md, "Recipients never travel through history".
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from pydantic import BaseModel, Field, model_validator
from sluice.schemas.benefits import BenefitPlan
from sluice.schemas.budget import BUDGET_EXHAUSTED, BUDGET_RULE
from sluice.schemas.campaign import Channel, OfferPlan, SenderAgents, TemplateCap, legacy_coupon_id
from sluice.schemas.quota import STOPS as QUOTA_STOPS
from sluice.schemas.quota import QuotaPlan

# Why a recipient got no message; stored in deliveries.reason and counted in reports.
SUPPRESS_SHOP_DAY = "fatigue_shop_day"  # R-FAT-2
SUPPRESS_GLOBAL_DAY = "fatigue_global_day"  # R-FAT-3 (10 a day)
SUPPRESS_GLOBAL_SHOPS = "fatigue_global_shops"  # R-FAT-3 (5 shops a day)
SUPPRESS_TEMPLATE = "fatigue_template"  # R-FAT-1 / R-OC-2
SUPPRESS_UNSUBSCRIBED = "unsubscribed"  # R-EXC-1
SUPPRESS_BLACKLISTED = "blacklisted"  # R-EXC-1 / R-SC-4
SUPPRESS_DELETED = "deleted"  # R-EXC-1
SUPPRESS_NO_CONTACT = "no_contact"  # R-EXC-1
SUPPRESS_BENEFIT = "benefit_unavailable"  # R-OC-9 / R-BEN-1
SUPPRESS_NO_CREDIT = "sms_no_credit"  # R-AQ-5: the shop's SMS credits cannot pay for the message
SUPPRESS_NO_AGENT = "no_agent_online"  # R-PH-5: no agent of the phase's set was online when the chunk was decided
NOT_SENT_WINDOW = "window_closed_phase_ended"  # R-PH-2: unsent at 22:00 of the phase's last day
NOT_SENT_CANCELLED = "campaign_cancelled"
NOT_SENT_YIELDED = "yielded_to_custom_task"  # R-RP-9: a custom task of the shop ran until the window closed
# R-WIN-1: the recipient's own 08:00-22:00 did not open between the day's send time and the shop's next day.
NOT_SENT_RECIPIENT_WINDOW = "outside_recipient_window"
# R-WIN-1: the send path handed the message to the outbox inside the window, but the outbox dispatcher could not
# hand it to the provider before the batch's window end (outbox.window_end; a throttled or failing provider).
NOT_SENT_DISPATCH_WINDOW = "window_closed_before_dispatch"
# Reasons the audience refresh gives (filters and the ledger), and the preview's own.
EXCLUDED_ALREADY_REACHED = "already_reached"
EXCLUDED_OVERLAP = "overlap"  # R-OC-6
EXCLUDED_LOW_ACTIVITY = "low_activity"  # R-OC-7
EXCLUDED_MEMBER = "shop_member"  # R-AQ-1: acquisition reaches non-members ...
EXCLUDED_BUYER = "shop_buyer"  # R-AQ-1: ... who never ordered at the shop
NOT_SENT_MIN_AUDIENCE = "audience_below_minimum"  # R-OC-4
NOT_SENT_DAILY_CAP = "daily_cap"  # R-PH-7
# R-HO-1: the ledger state (and the send path's reason) of a consumer kept in the campaign's control group.
HELD_OUT = "held_out"
# R-ED-4: the shop's provider quota of the day is spent, its account is in arrears or not configured.
NOT_SENT_QUOTA, NOT_SENT_ARREARS, NOT_SENT_NO_ACCOUNT = QUOTA_STOPS
# R-COST-BUDGET (sluice's own rule, schemas/budget.py): the campaign's budget cannot pay for the message; the
# campaign sends nothing more.
NOT_SENT_BUDGET = BUDGET_EXHAUSTED

# The rule behind each reason, for the preview and the reports.
REASON_RULES = {
    SUPPRESS_SHOP_DAY: "R-FAT-2",
    SUPPRESS_GLOBAL_DAY: "R-FAT-3",
    SUPPRESS_GLOBAL_SHOPS: "R-FAT-3",
    SUPPRESS_TEMPLATE: "R-FAT-1",
    SUPPRESS_UNSUBSCRIBED: "R-EXC-1",
    SUPPRESS_BLACKLISTED: "R-EXC-1",
    SUPPRESS_DELETED: "R-EXC-1",
    SUPPRESS_NO_CONTACT: "R-EXC-1",
    SUPPRESS_BENEFIT: "R-BEN-1",
    SUPPRESS_NO_CREDIT: "R-AQ-5",
    SUPPRESS_NO_AGENT: "R-PH-5",
    EXCLUDED_OVERLAP: "R-OC-6",
    EXCLUDED_LOW_ACTIVITY: "R-OC-7",
    EXCLUDED_MEMBER: "R-AQ-1",
    EXCLUDED_BUYER: "R-AQ-1",
    NOT_SENT_MIN_AUDIENCE: "R-OC-4",
    NOT_SENT_DAILY_CAP: "R-PH-7",
    HELD_OUT: "R-HO-1",
    NOT_SENT_YIELDED: "R-RP-9",
    NOT_SENT_RECIPIENT_WINDOW: "R-WIN-1",
    NOT_SENT_DISPATCH_WINDOW: "R-WIN-1",
    **dict.fromkeys(QUOTA_STOPS, "R-ED-4"),
    NOT_SENT_BUDGET: BUDGET_RULE,
}


class RefreshAudienceInput(BaseModel):
    campaign_db_id: int
    shop_id: str
    kind: str = Field(description="the campaign's kind: whose earlier campaigns the overlap filter reads")
    phase_index: int
    audience: str
    filters: list[str] = Field(default_factory=list, description="audience filters, in order (audiences/filters.py)")
    audience_params: dict = Field(default_factory=dict, description="the audience's own parameters, by name")
    channel: Channel
    day: date
    snapshot_at: datetime = Field(description="00:00 shop-local of the send day (R-OC-5: T+1)")
    campaign_started_at: datetime


class RefreshAudienceResult(BaseModel):
    matched: int
    eligible: int
    excluded: dict[str, int]
    # The snapshot's seq values lie in [0, seq_end): the refresh numbers its parts interleaved
    # (seq = k * parts + part), so a few positions at the end may be empty. None: dense
    # numbering (histories written before parts existed), seq_end = eligible.
    seq_end: int | None = None


class SendSliceInput(BaseModel):
    campaign_db_id: int
    shop_id: str
    phase_index: int
    day: date
    channel: Channel
    template_cap: TemplateCap | None
    text: str
    title: str | None = None
    seq_lo: int
    seq_hi: int
    budget: int = Field(description="most recipients this slice may reserve (R-PH-7 daily cap)")
    decided_at: datetime = Field(description="workflow time when the slice was scheduled")
    window_end: datetime = Field(description="22:00 shop-local; nothing is handed to a channel after it")
    chunk_size: int = 5000
    offer: OfferPlan | None = Field(default=None, description="the coupon each sent delivery carries (a claim)")
    benefit: BenefitPlan | None = Field(default=None, description="the member benefit by membership (R-RP-4)")
    text_is_template: bool = False
    timezone: str | None = Field(default=None, description="the shop's zone, for times shown in the text")
    reaches_non_customers: bool = Field(
        default=False, description="the audience may yield consumers without a shop row (audiences.reaches_non_customers)"
    )
    holdout_percent: float = Field(default=0.0, description="R-HO-1: the campaign's control group share (held out)")
    holdout_key: str | None = Field(
        default=None, description="R-HO-1: what the control group is keyed on (CampaignPlan.holdout_key)"
    )
    later_pass: bool = Field(
        default=False,
        description="R-WIN-1: a later pass of the day, for recipients who waited for their own window; one without"
        " a zone of their own is not sent in it (the shop's window: the first pass decided them, or it has closed)",
    )
    zoned_only: bool = Field(
        default=False, description="read only the snapshot rows with a zone (a later pass of a phase without a daily cap)"
    )
    quota: QuotaPlan | None = Field(default=None, description="the provider quota each sent delivery holds (R-ED-4)")
    sender_agents: SenderAgents | None = Field(
        default=None, description="R-PH-5: the chat agents a message goes out from (channels/chat.py); None: no agent"
    )
    campaign_budget: Decimal | None = Field(
        default=None, description="R-COST-BUDGET: the campaign's budget cap (money); None: no cap (activities/budget.py)"
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_coupon(cls, data: object) -> object:
        return legacy_coupon_id(data)


class SendSliceResult(BaseModel):
    next_seq: int = Field(description="first seq not yet decided; == seq_hi when the slice is done")
    reserved: int = 0
    sent: int = 0
    failed: int = 0
    unknown: int = 0
    suppressed: dict[str, int] = Field(default_factory=dict)
    stopped_reason: str | None = None
    deferred: int = Field(
        default=0, description="R-WIN-1: recipients outside their own send window at the hand-off, left undecided"
    )


class CloseDayInput(BaseModel):
    campaign_db_id: int
    phase_index: int
    day: date
    channel: Channel
    shop_id: str
    template_group: str
    decided_at: datetime
    reason: str | None = Field(
        default=None, description="when set, unsent snapshot rows are recorded as not_sent with it"
    )


class WaitingInput(BaseModel):
    """A phase day's recipients with a zone of their own and no decision yet (R-WIN-1)."""

    campaign_db_id: int
    phase_index: int
    day: date
    channel: Channel
    shop_id: str = ""
    template_group: str = ""
    decided_at: datetime | None = Field(default=None, description="for close_waiting: the decision instant")


class WaitingZones(BaseModel):
    zones: dict[str, int] = Field(default_factory=dict, description="recipients still waiting, per zone")


class OffersInput(BaseModel):
    campaign_db_id: int
    phase_index: int
    day: date
    now: datetime = Field(description="workflow time: offers whose end is at or before it are over")


class OffersResult(BaseModel):
    last_expiry: datetime | None = Field(description="when the day's last held offer ends; None: none held")
    counts: dict[str, int] = Field(default_factory=dict, description="offers per state")


class DayReport(BaseModel):
    day: date
    phase: str
    counts: dict[str, int]


class ReportRefreshInput(BaseModel):
    """Materialise the campaign's report (R-REP-1): attribution, then the report tables (sluice.reports)."""

    campaign_db_id: int


class DayReportInput(BaseModel):
    campaign_db_id: int
    phase_index: int
    phase_name: str
    day: date


class CampaignStateInput(BaseModel):
    campaign_db_id: int
    state: str


class PrecedenceInput(BaseModel):
    """Who holds the shop's precedence group now (R-RP-9), other than this campaign."""

    campaign_db_id: int
    shop_id: str
    group: str


class PrecedenceResult(BaseModel):
    holder: str | None  # the holder's workflow id, or None when no campaign of the shop holds the group


class ReconcileInput(BaseModel):
    campaign_db_id: int
    shop_id: str
    channel: Channel
    # A delivery not sent gives its claim's unit back by the claim itself (no coupon named here).
    template_cap: TemplateCap | None = None
    # R-ED-4: the quota the channel's deliveries held, given back by those that failed; None: none.
    quota: QuotaPlan | None = None


class ReconcileResult(BaseModel):
    sent: int = 0
    failed: int = 0
    released: int = 0
    still_unknown: int = 0
