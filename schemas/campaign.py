"""Campaign specs (what a merchant submits) and the plan the workflow walks.

A spec is a discriminated union by `kind`. Each kind compiles to the same
CampaignPlan: a list of PhasePlans (dates, send time, audience, caps,
content). The workflow knows only plans, so a new playbook is a new spec
model plus audiences, not a new workflow.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas import rules
from schemas.rules import rule_error

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
Ident = Annotated[str, Field(pattern=ID_PATTERN, description="letters, digits, '_' and '-', 1 to 64")]
# "{shop_id}.{campaign_id}" (workflow_id_for): '.' never occurs in an Ident.
WORKFLOW_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}\.[A-Za-z0-9_-]{1,64}$"

# Dates and instants a spec may name. Beyond these, local-time arithmetic near
# date.min / date.max overflows; no campaign is planned outside them.
DATE_MIN, DATE_MAX = date(2000, 1, 1), date(2100, 12, 31)
SpecDate = Annotated[date, Field(ge=DATE_MIN, le=DATE_MAX, description="2000-01-01 to 2100-12-31")]
SpecInstant = Annotated[
    AwareDatetime,
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


_ILLEGAL_CATEGORIES = {"Cc", "Cf", "Co", "Cs", "Cn"}
_ALLOWED_FORMAT = {"\u200d", "\ufe0f", "\ufe0e"}  # emoji joiners and variation selectors


def illegal_characters(text: str) -> list[str]:
    """R-OC-10: control, format, private-use and unassigned characters are illegal; emoji are not."""
    bad = []
    for ch in text:
        if ch in "\n" or ch in _ALLOWED_FORMAT:
            continue
        if unicodedata.category(ch) in _ILLEGAL_CATEGORIES:
            bad.append(f"U+{ord(ch):04X}")
    return bad


def _check_text(value: str, rule: str) -> str:
    bad = illegal_characters(value)
    if bad:
        raise rule_error(rule, f"text contains illegal characters {', '.join(bad[:5])}")
    return value


def _check_send_time(value: time, latest: time, rule: str) -> time:
    if value.tzinfo is not None:
        # Comparing an aware time with the window raised TypeError (a 500): refuse it instead.
        raise rule_error(rule, "the send time is shop-local wall-clock time: give it without a UTC offset")
    if not (rules.WINDOW_OPEN <= value <= latest):
        raise rule_error(rule, f"send time {value:%H:%M} is outside 08:00-{latest:%H:%M} shop-local")
    return value


class Pacing(Strict):
    """Spread sends over the window instead of sending as fast as the channel takes them."""

    per_hour: int | None = Field(default=None, ge=1, le=10_000_000, description="recipients per hour")


# ---------------------------------------------------------------- K-OLDCUST


class OldCustomerImage(Strict):
    url: str = Field(max_length=2048, pattern=r"^https?://[^\s\x00-\x1f\x7f]+$")
    configured_at: SpecInstant


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
    send_time: time = time(10, 0)
    channel: Channel = Channel.chat
    coupon_id: Ident | None = Field(default=None, description="benefit; must be valid when sent (R-OC-9)")
    pacing: Pacing = Pacing()

    @field_validator("card_text")
    @classmethod
    def _card_text(cls, v: str) -> str:
        if len(v) > rules.OLDCUST_CARD_TEXT_MAX:
            raise rule_error("R-OC-3", f"card text has {len(v)} characters, at most 50 allowed")
        return _check_text(v, "R-OC-10")

    @field_validator("body", "scene", "title")
    @classmethod
    def _legal_text(cls, v: str | None) -> str | None:
        return v if v is None else _check_text(v, "R-OC-10")

    @field_validator("send_time")
    @classmethod
    def _send_time(cls, v: time) -> time:
        return _check_send_time(v, time(21, 59), "R-WIN-1")

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
    send_time: time = time(10, 0)
    audience: Ident | None = Field(default=None, description="audience name; default per R-PH-4")
    text: str = Field(min_length=1, max_length=500)
    daily_cap: int | None = Field(default=None, ge=1, le=10_000_000, description="R-PH-7: most sends per day")

    @field_validator("send_time")
    @classmethod
    def _send_time(cls, v: time) -> time:
        return _check_send_time(v, rules.PHASED_SEND_TIME_LATEST, "R-PH-2")

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return _check_text(v, "R-PH-6")

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
