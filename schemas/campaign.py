"""The vocabulary of campaign specs, and the plan the workflow walks.

Specs are per kind (kinds/: one module each, registered in kinds/__init__.py);
what they share lives here: ids, dates and times as a spec gives them, the
channels, the send-time rule. Every kind compiles to the same CampaignPlan: a
list of PhasePlans (dates, send time, audience and its filters, channel, caps,
content, coupon). The workflow knows only plans, so a new playbook is a kind
module plus audiences, never a new workflow.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError
from sluice.schemas import rules
from sluice.schemas.benefits import BenefitPlan
from sluice.schemas.quota import QuotaPlan
from sluice.schemas.rules import rule_error
from sluice.schemas.text import illegal_characters as illegal_characters  # R-OC-10's category rule, imported from here

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
Ident = Annotated[str, Field(pattern=ID_PATTERN, description="letters, digits, '_' and '-', 1 to 64")]
# "{shop_id}.{campaign_id}" (workflow_id_for): '.' never occurs in an Ident.
WORKFLOW_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}\.[A-Za-z0-9_-]{1,64}$"


# Dates, times and instants are strings in a spec (JSON has no such types). A number is refused, never
# read as a timestamp or as seconds since midnight (36000 is not 10:00, and YAML reads an unquoted 10:00
# as the number 600). Python callers may pass date / time / datetime objects. This holds alike for
# validate_python (FastAPI validates the parsed JSON body that way, and so does `sluice start`) and
# validate_json, which pydantic's strict mode would not give: it wants date objects from Python.
_DATE_STRING = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_LAX_DATE = TypeAdapter(date)


def _date_string(value: object) -> object:
    if type(value) is date or isinstance(value, str) and _DATE_STRING.match(value):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("date_type", 'Input should be a "YYYY-MM-DD" date string')
    try:
        _LAX_DATE.validate_python(value)
    except ValidationError:
        return value  # not a date at all: pydantic's own error says why
    # A string pydantic would read as a date but is no "YYYY-MM-DD" (a datetime at midnight, ...).
    raise PydanticCustomError("date_parsing", 'Input should be a "YYYY-MM-DD" date string')


def _time_string(value: object) -> object:
    if isinstance(value, str | time):
        return value
    raise PydanticCustomError("time_type", 'Input should be a "HH:MM" time string (quoted, in YAML)')


def _instant_string(value: object) -> object:
    if isinstance(value, str | datetime):
        return value
    raise PydanticCustomError("datetime_type", 'Input should be an ISO 8601 date and time string with a UTC offset')


# Dates and instants a spec may name. Beyond these, local-time arithmetic near
# date.min / date.max overflows; no campaign is planned outside them.
DATE_MIN, DATE_MAX = date(2000, 1, 1), date(2100, 12, 31)
SpecDate = Annotated[
    date, BeforeValidator(_date_string), Field(ge=DATE_MIN, le=DATE_MAX, description="YYYY-MM-DD, 2000-01-01 to 2100-12-31")
]
SpecTime = Annotated[time, BeforeValidator(_time_string), Field(description="HH:MM (or HH:MM:SS), shop-local")]
SpecInstant = Annotated[
    AwareDatetime,
    BeforeValidator(_instant_string),
    Field(
        ge=datetime.combine(DATE_MIN, time(0), UTC),
        le=datetime.combine(DATE_MAX, time(0), UTC),
        description="with a UTC offset; 2000 to 2100",
    ),
]


class Channel(StrEnum):
    chat = "chat"
    sms = "sms"
    email = "email"
    inbox = "inbox"


class Strict(BaseModel):
    # Unknown fields are refused: a typo in a spec must not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _hhmm(value: time) -> str:
    """A send time as it was sent: HH:MM, with seconds (and fractions) only when it has them."""
    if value.microsecond:
        return f"{value:%H:%M:%S.%f}"
    return f"{value:%H:%M:%S}" if value.second else f"{value:%H:%M}"


def check_send_time(value: time, rule: str, latest: time, *, latest_allowed: bool) -> time:
    """`value` if it lies in WINDOW_OPEN..latest (`latest` itself only if `latest_allowed`)."""
    if value.tzinfo is not None:
        # Comparing an aware time with the window raised TypeError (a 500): refuse it instead.
        raise rule_error(rule, "the send time is shop-local wall-clock time: give it without a UTC offset")
    inside = rules.WINDOW_OPEN <= value and (value <= latest if latest_allowed else value < latest)
    if not inside:
        bound = f"at or before {latest:%H:%M}" if latest_allowed else f"before {latest:%H:%M}"
        raise rule_error(rule, f"send time {_hhmm(value)} is outside {rules.WINDOW_OPEN:%H:%M}-{latest:%H:%M} shop-local: "
                               f"it must be at or after {rules.WINDOW_OPEN:%H:%M} and {bound}")
    return value


class Pacing(Strict):
    """Spread sends over the window instead of sending as fast as the channel takes them."""

    per_hour: int | None = Field(default=None, strict=True, ge=1, le=10_000_000, description="recipients per hour")


# ---------------------------------------------------------------- the plan


class TemplateCap(BaseModel):
    """R-FAT-1: at most `count` messages of `group` per `days` natural days."""

    group: str
    count: int
    days: int


# What a per-recipient text may say (content/render.py): the customer's nickname, the product chosen for
# them, its coupon, when the offer ends (shop-local "MM-DD HH:MM") and their member benefit (R-RP-4).
PERSONAL_PLACEHOLDERS = frozenset({"name", "product", "coupon", "ends_at", "benefit"})


class SenderAgents(BaseModel):
    """R-PH-5: the chat agents a phase's messages go out from: the agents `ids` (checked against the shop's
    agents before the start), or every agent of the shop (`ids` None). Each message's sender is chosen
    when its delivery is decided (channels/chat.py)."""

    ids: list[str] | None = None


class OfferPlan(BaseModel):
    """A coupon every sent delivery carries: one unit of its stock held for the delivery as a `claims` row,
    taken in the transaction that decides it and given back when it is not sent (activities/offers.py).

    - a countdown offer (R-RP-5): the recipient's coupon is the one of `coupon_ids` for the product the
      audience chose for them (R-RP-10), claimable for `hours` after the hand-off, then given back if
      unclaimed;
    - `shared` (K-OLDCUST's benefit, R-OC-9 / R-BEN-1): the one coupon of `coupon_ids` for every
      recipient, no product pushed, no countdown: the claim has no end of its own (`expires_at` NULL, the
      coupon's validity bounds it), the expiry never ends it, and a coupon used up or no longer valid
      stops the phase.
    """

    coupon_ids: list[str] = Field(min_length=1)
    hours: int | None = Field(default=None, ge=2, le=24, description="the countdown; None for a shared coupon")
    shared: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> OfferPlan:
        if self.shared and (len(self.coupon_ids) != 1 or self.hours is not None):
            raise ValueError("a shared coupon is one coupon without a countdown")
        if not self.shared and self.hours is None:
            raise ValueError("a countdown offer needs its hours")
        return self


def legacy_coupon_id(data: object) -> object:
    """Inputs written before the coupon became an offer (histories, activities in flight) named a shared
    coupon `coupon_id`: read it as the shared offer it is."""
    if isinstance(data, dict) and "coupon_id" in data:
        data = dict(data)
        coupon = data.pop("coupon_id")
        if coupon and data.get("offer") is None:
            data["offer"] = OfferPlan(coupon_ids=[coupon], shared=True)
    return data


class AttributionMode(StrEnum):
    period = "period"  # orders created during the phase's own days (shop-local)
    after_reach = "after_reach"  # orders created within `days` days after the reach


# The attribution window of a kind that names none (R-ATT-1): a week after the reach.
DEFAULT_ATTRIBUTION_DAYS = 7
MAX_ATTRIBUTION_DAYS = 90


class AttributionWindow(BaseModel):
    """R-ATT-1: which orders of a reached customer count for the phase that reached them last."""

    mode: AttributionMode = AttributionMode.after_reach
    days: int | None = Field(default=DEFAULT_ATTRIBUTION_DAYS, ge=1, le=MAX_ATTRIBUTION_DAYS)

    @model_validator(mode="after")
    def _days(self) -> AttributionWindow:
        if (self.mode == AttributionMode.after_reach) != (self.days is not None):
            raise ValueError("`days` goes with after_reach, and only with it")
        return self

    @classmethod
    def phase_period(cls) -> AttributionWindow:
        return cls(mode=AttributionMode.period, days=None)

    @classmethod
    def after(cls, days: int) -> AttributionWindow:
        return cls(mode=AttributionMode.after_reach, days=days)


class PhasePlan(BaseModel):
    name: str
    start_date: date
    end_date: date
    send_time: time
    audience: str
    # Named filters of the audience library applied after the audience (audiences/filters.py), e.g. the
    # overlap with the shop's earlier campaigns of the same kind (R-OC-6) or the activity filter (R-OC-7).
    filters: list[str] = Field(default_factory=list)
    # The audience's own parameters by name (audiences.Audience.params; the custom audience's "filter").
    audience_params: dict = Field(default_factory=dict)
    channel: Channel
    template_cap: TemplateCap | None
    text: str
    title: str | None = None
    daily_cap: int | None = None
    min_audience: int = Field(default=0, description="the smallest audience that may be sent (R-OC-4)")
    pacing_per_hour: int | None = None
    # The coupon each sent delivery carries, countdown offer or shared coupon (OfferPlan).
    offer: OfferPlan | None = None
    # R-RP-4: the member benefit each sent delivery carries, by the recipient's membership.
    benefit: BenefitPlan | None = None
    # `text` is a template rendered per recipient (content/render.py), with the offer's placeholders.
    text_is_template: bool = False
    # A provider quota each sent delivery holds (R-ED-4, schemas/quota.py): the shop's daily limit, the
    # free messages and the price of the others, debited from the shop's account in the deciding transaction.
    quota: QuotaPlan | None = None
    # R-PH-5: the chat agents the phase's messages go out from; None: no sender agent (the shop's own account).
    sender_agents: SenderAgents | None = None
    # R-ATT-1: the orders that count for this phase; set by the kind's compile (plans written before it:
    # the default week after the reach).
    attribution: AttributionWindow = Field(default_factory=AttributionWindow)

    @model_validator(mode="before")
    @classmethod
    def _legacy_coupon(cls, data: object) -> object:
        return legacy_coupon_id(data)

    def below_minimum(self, eligible: int, already_reached: int) -> bool:
        """R-OC-4 bounds the task's audience: today's eligible plus whom this phase already reached, so a
        multi-day task's leftover under the minimum still goes out."""
        return eligible + already_reached < self.min_audience

    def days(self) -> list[date]:
        return [self.start_date + timedelta(days=i) for i in range((self.end_date - self.start_date).days + 1)]


class Tuning(BaseModel):
    """How a phase day is cut into activities; the benchmark (issue 3) tunes these."""

    slice_size: int = Field(default=20_000, ge=1, description="recipients per send activity")
    # The best of the benchmark's tuning runs on 2 cores (docs/benchmarks.md).
    chunk_size: int = Field(default=2_000, ge=1, description="recipients per ledger transaction")
    concurrency: int = Field(default=8, ge=1, le=200, description="send activities in flight per campaign")
    heartbeat_timeout_s: float = Field(default=15.0, gt=0)
    # Send slices on the provider's rate-limited task queue (schemas/providers.py); off: the workflow's own.
    provider_queues: bool = False
    # The campaign halts itself when more than `error_rate_max` of its last `error_window` sends failed.
    error_window: int = Field(default=1_000, ge=1, description="sends over which the error rate is measured")
    error_rate_max: float = Field(default=0.5, gt=0, le=1, description="failed share that halts the campaign")


class Precedence(BaseModel):
    """R-RP-9 as data: campaigns of one shop in the same `group` where some take precedence over the
    others. A campaign that `takes` it holds it while it runs (workflows/precedence.py says when); the
    others yield: they send nothing while a holder of the shop runs, and resume when none does."""

    group: str
    takes: bool


class CampaignPlan(BaseModel):
    campaign_db_id: int
    workflow_id: str
    shop_id: str
    campaign_id: str
    kind: str
    timezone: str
    phases: list[PhasePlan]
    tuning: Tuning = Tuning()
    precedence: Precedence | None = None
    # R-HO-1: the share of each phase's audience kept as a control group (held out, never sent), in percent.
    holdout_percent: float = 0.0
    # R-HO-1: what the control group's hash is keyed on (outcomes/holdout.py): the workflow id, known before the
    # campaign exists, so the preview counts the group exactly. None: a plan made before the key existed, whose group
    # stays keyed on its database id for the rest of its run.
    holdout_key: str | None = None
    # R-COST-BUDGET: the most the campaign's deliveries may cost together (schemas/budget.py); None: no cap.
    budget: Decimal | None = None


def workflow_id_for(shop_id: str, campaign_id: str) -> str:
    """Readable and unique per campaign (docs/design.md, "Workflow ids"); '.' never occurs in an Ident."""
    return f"{shop_id}.{campaign_id}"
