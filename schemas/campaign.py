"""Campaign specs (what a merchant submits) and the plan the workflow walks.

A spec is a discriminated union by `kind`. Each kind compiles to the same
CampaignPlan: a list of PhasePlans (dates, send time, audience, caps,
content). The workflow knows only plans, so a new playbook is a new spec
model plus audiences, not a new workflow.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schemas import rules
from schemas.rules import rule_error
from schemas.text import check_text
from schemas.text import illegal_characters as illegal_characters  # R-OC-10's category rule, imported from here
from schemas.urls import url_problem

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


def _check_send_time(value: time, rule: str, latest: time, *, latest_allowed: bool) -> time:
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


# ---------------------------------------------------------------- K-OLDCUST


class OldCustomerImage(Strict):
    url: str = Field(max_length=2048, description="http(s) URL on a public host name or address (schemas/urls.py)")
    configured_at: SpecInstant

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        problem = url_problem(v)
        if problem:
            raise rule_error("R-OC-3", problem)
        return v


class OldCustomerSpec(Strict):
    """K-OLDCUST: old-customer reach (R-OC-1..10)."""

    kind: Literal["K-OLDCUST"]
    shop_id: Ident
    campaign_id: Ident
    scene: str = Field(min_length=1, max_length=30, description="scene name, shown in the default title")
    title: str | None = Field(default=None, max_length=60)
    card_text: str = Field(min_length=1, description="R-OC-3: at most 50 characters")
    body: str = Field(default="", max_length=1000)
    image: OldCustomerImage | None = None
    send_date: SpecDate
    end_date: SpecDate | None = Field(default=None, description="last day to send leftovers; default send_date")
    send_time: SpecTime = time(10, 0)
    channel: Channel = Channel.chat
    coupon_id: Ident | None = Field(default=None, description="benefit; must be valid when sent (R-OC-9)")
    pacing: Pacing = Pacing()

    @field_validator("card_text")
    @classmethod
    def _card_text(cls, v: str) -> str:
        if len(v) > rules.OLDCUST_CARD_TEXT_MAX:
            raise rule_error("R-OC-3", f"card text has {len(v)} characters, at most {rules.OLDCUST_CARD_TEXT_MAX} allowed")
        return check_text(v, "R-OC-10")

    @field_validator("scene", "title")
    @classmethod
    def _legal_text(cls, v: str | None) -> str | None:
        return v if v is None else check_text(v, "R-OC-10")

    @field_validator("body")
    @classmethod
    def _legal_body(cls, v: str) -> str:
        return check_text(v, "R-OC-10", allow_empty=True)  # "" is no body

    @field_validator("send_time")
    @classmethod
    def _send_time(cls, v: time) -> time:
        # R-WIN-1: the window closes at 22:00, so any time before it (21:59:59 too) may be picked.
        return _check_send_time(v, "R-WIN-1", rules.WINDOW_CLOSE, latest_allowed=False)

    @model_validator(mode="after")
    def _dates(self) -> OldCustomerSpec:
        if self.end_date is not None and self.end_date < self.send_date:
            raise rule_error("R-PH-2", "end_date is before send_date")
        if self.end_date is not None and (self.end_date - self.send_date).days > 30:
            raise rule_error("R-PH-2", "an old-customer task runs at most 31 days")
        return self

    def default_title(self) -> str:
        # R-OC-3: the title defaults to scene name plus time.
        return self.title or f"{self.scene} {self.send_date:%m-%d} {self.send_time:%H:%M}"


# ---------------------------------------------------------------- K-PHASED


class PhaseName(StrEnum):
    preheat = "preheat"
    promote = "promote"
    recall = "recall"


PHASE_ORDER = [PhaseName.preheat, PhaseName.promote, PhaseName.recall]


class PhaseSpec(Strict):
    name: PhaseName
    start_date: SpecDate
    end_date: SpecDate
    send_time: SpecTime = time(10, 0)
    audience: Ident | None = Field(default=None, description="audience name; default per R-PH-4")
    text: str = Field(min_length=1, max_length=500)
    daily_cap: int | None = Field(default=None, strict=True, ge=1, le=10_000_000, description="R-PH-7: most sends per day")

    @field_validator("send_time")
    @classmethod
    def _send_time(cls, v: time) -> time:
        return _check_send_time(v, "R-PH-2", rules.PHASED_SEND_TIME_LATEST, latest_allowed=True)

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return check_text(v, "R-PH-6")

    @model_validator(mode="after")
    def _range(self) -> PhaseSpec:
        if self.end_date < self.start_date:
            raise rule_error("R-PH-2", f"phase {self.name}: end_date is before start_date")
        if (self.end_date - self.start_date).days > 60:
            raise rule_error("R-PH-2", f"phase {self.name}: at most 61 days")
        return self


class PhasedSpec(Strict):
    """K-PHASED: preheat -> promote -> recall (R-PH-1..8)."""

    kind: Literal["K-PHASED"]
    shop_id: Ident
    campaign_id: Ident
    phases: list[PhaseSpec] = Field(min_length=1, max_length=3)
    channel: Channel = Channel.chat
    pacing: Pacing = Pacing()

    @model_validator(mode="after")
    def _order(self) -> PhasedSpec:
        names = [p.name for p in self.phases]
        if PhaseName.promote not in names:
            raise rule_error("R-PH-1", "the promote phase is required (preheat may be skipped)")
        if len(set(names)) != len(names) or names != sorted(names, key=PHASE_ORDER.index):
            raise rule_error("R-PH-1", "phases must be in order preheat -> promote -> recall, each once")
        for before, after in zip(self.phases, self.phases[1:], strict=False):
            if after.start_date <= before.end_date:
                raise rule_error("R-PH-1", f"phase {after.name} starts before phase {before.name} ends")
        return self


CampaignSpec = Annotated[OldCustomerSpec | PhasedSpec, Field(discriminator="kind")]


# ---------------------------------------------------------------- the plan


class TemplateCap(BaseModel):
    """R-FAT-1: at most `count` messages of `group` per `days` natural days."""

    group: str
    count: int
    days: int


class PhasePlan(BaseModel):
    name: str
    start_date: date
    end_date: date
    send_time: time
    audience: str
    channel: Channel
    template_cap: TemplateCap | None
    text: str
    title: str | None = None
    daily_cap: int | None = None
    min_audience: int = 0
    coupon_id: str | None = None
    pacing_per_hour: int | None = None

    def days(self) -> list[date]:
        return [self.start_date + timedelta(days=i) for i in range((self.end_date - self.start_date).days + 1)]


class Tuning(BaseModel):
    """How a phase day is cut into activities; the benchmark (issue 3) tunes these."""

    slice_size: int = Field(default=20_000, ge=1, description="recipients per send activity")
    # The best of the benchmark's tuning runs on 2 cores (docs/benchmarks.md).
    chunk_size: int = Field(default=2_000, ge=1, description="recipients per ledger transaction")
    concurrency: int = Field(default=8, ge=1, le=200, description="send activities in flight per campaign")
    heartbeat_timeout_s: float = Field(default=15.0, gt=0)


class CampaignPlan(BaseModel):
    campaign_db_id: int
    workflow_id: str
    shop_id: str
    campaign_id: str
    kind: str
    timezone: str
    phases: list[PhasePlan]
    tuning: Tuning = Tuning()


def workflow_id_for(shop_id: str, campaign_id: str) -> str:
    """Readable and unique per campaign (DESIGN 1); '.' never occurs in an Ident."""
    return f"{shop_id}.{campaign_id}"


def compile_plan(spec: OldCustomerSpec | PhasedSpec, *, campaign_db_id: int, timezone: str) -> CampaignPlan:
    wf_id = workflow_id_for(spec.shop_id, spec.campaign_id)
    if isinstance(spec, OldCustomerSpec):
        group, count_days = rules.OLDCUST_TEMPLATE_GROUP, rules.OLDCUST_CAP_PER_DAYS
        phases = [
            PhasePlan(
                name="reach",
                start_date=spec.send_date,
                end_date=spec.end_date or spec.send_date,
                send_time=spec.send_time,
                audience="oldcust_valid",
                channel=spec.channel,
                template_cap=TemplateCap(group=group, count=count_days[0], days=count_days[1]),
                text=spec.card_text if not spec.body else f"{spec.card_text}\n{spec.body}",
                title=spec.default_title(),
                min_audience=rules.OLDCUST_MIN_AUDIENCE,
                coupon_id=spec.coupon_id,
                pacing_per_hour=spec.pacing.per_hour,
            )
        ]
    else:
        phases = [
            PhasePlan(
                name=p.name.value,
                start_date=p.start_date,
                end_date=p.end_date,
                send_time=p.send_time,
                audience=p.audience or DEFAULT_PHASE_AUDIENCE[p.name],
                channel=spec.channel,
                # One message per consumer per phase is kept by the ledger; the template
                # cap keeps two campaigns of the shop from stacking the same day.
                template_cap=TemplateCap(group=f"phased-{p.name.value}", count=1, days=1),
                text=p.text,
                daily_cap=p.daily_cap,
                pacing_per_hour=spec.pacing.per_hour,
            )
            for p in spec.phases
        ]
    return CampaignPlan(
        campaign_db_id=campaign_db_id,
        workflow_id=wf_id,
        shop_id=spec.shop_id,
        campaign_id=spec.campaign_id,
        kind=spec.kind,
        timezone=timezone,
        phases=phases,
    )


# R-PH-4: preheat and promote reach recent inquirers; recall those who have not ordered since.
DEFAULT_PHASE_AUDIENCE = {
    PhaseName.preheat: "inquired_30d",
    PhaseName.promote: "inquired_30d",
    PhaseName.recall: "inquired_30d_no_order_since_start",
}
