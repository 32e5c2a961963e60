"""K-EDM: inquiry/EDM marketing by email and in-site message (R-ED-1..4).

The merchant names the campaign, picks one of the system audiences (R-ED-1,
audiences/edm.py: active in the last 7/30/90 days, L1+ potential customers,
EDM read but not replied in 60 days), the channels (email, in-site message
or both, from one spec: R-ED-2), the content of each chosen channel (an
email's subject and body, an in-site message's title and body) and the time
(the days and the daily send time). All five must be set before the
reachable count can be computed (R-ED-3): a spec missing one is refused,
by the preview too, naming the missing field.

The exclusions of R-ED-3: no or invalid email, unsubscribed from EDM and the
recycle bin are the email channel's exclusions (R-EXC-1: `no_contact`,
`unsubscribed`, `deleted`); "marketed in the last 7 days" is the template cap
`edm`, one email per consumer and shop in 7 natural days, shared by every
campaign of the shop that names the group. The in-site message keeps the
same rhythm under its own group (`inbox`, one in 7 days): the kind's own
default, so one campaign's email and message do not stop each other.

The quota (R-ED-4, schemas/quota.py): the email phase carries the EDM quota
(`QuotaPlan`): the shop's account allows so many emails a day (2,000
initially), the first 200 of the day free and each further one 2 yuan per
1,000, debited from the account; an account in arrears (or none) sends
nothing. The email phase runs every day of the campaign: what the day's quota
did not allow, and who joined the audience since, goes out on a later day
(each day's refresh, minus whom the phase already reached).

Phases: the workflow walks phases one after another, so the in-site message
(which has no quota to carry over) goes first and only on the campaign's
first day when email is chosen too; the email phase then starts the same day
and runs through the last. An in-site-only campaign's phase runs every day.

The report has the funnel (R-ED-5, `funnel`): potential -> reached ->
handshake (replied) -> ordered -> repurchased, each within the attribution
window after the reach (30 days, ATTRIBUTION_DAYS), per channel and for the
campaign (reports/refresh.py, docs/reports.md).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any, ClassVar, Literal

import asyncpg
from pydantic import Field, ValidationInfo, field_validator
from sluice.activities.quota import quota_left
from sluice.audiences import edm as audiences
from sluice.kinds.base import Kind, Shop, SpecBase
from sluice.schemas import rules
from sluice.schemas.campaign import (
    AttributionWindow,
    Channel,
    PhasePlan,
    SpecDate,
    SpecTime,
    Strict,
    TemplateCap,
    check_send_time,
)
from sluice.schemas.quota import ACCOUNT_MISSING, EDM, QUOTA_EXHAUSTED
from sluice.schemas.rules import RuleViolation, rule_error
from sluice.schemas.text import check_text
from sluice.workflows.calendar import day_window, first_open_day

NAME = "K-EDM"
ATTRIBUTION_DAYS = 30  # R-ATT-1 / R-ED-5: an order counts within 30 days of the reach
AUDIENCES = (audiences.ACTIVE_7D, audiences.ACTIVE_30D, audiences.ACTIVE_90D, audiences.L1_POTENTIAL,
             audiences.READ_NO_REPLY)  # R-ED-1
CHANNELS = (Channel.email, Channel.inbox)  # R-ED-2
EMAIL_CAP = TemplateCap(group="edm", count=1, days=7)  # R-ED-3: marketed in the last 7 days
INBOX_CAP = TemplateCap(group="inbox", count=1, days=7)  # the kind's own default (module docstring)
MAX_DAYS = 31
# R-ED-3: what must be set before the reachable count.
REQUIRED = ("name", "audience", "channels", "template", "time")


def _required(v: Any, info: ValidationInfo) -> Any:
    if v is None:
        raise rule_error("R-ED-3", f"{info.field_name} must be set before the reachable count can be computed"
                                   f" (name, audience, channel, template and time all are)")
    return v


class EdmEmail(Strict):
    subject: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=10_000)

    @field_validator("subject", "body")
    @classmethod
    def _text(cls, v: str) -> str:
        return check_text(v, "R-ED-2")


class EdmInbox(Strict):
    title: str = Field(min_length=1, max_length=100)
    body: str = Field(min_length=1, max_length=2_000)

    @field_validator("title", "body")
    @classmethod
    def _text(cls, v: str) -> str:
        return check_text(v, "R-ED-2")


class EdmTemplate(Strict):
    """The content of each chosen channel (R-ED-2)."""

    email: EdmEmail | None = None
    inbox: EdmInbox | None = None


class EdmTime(Strict):
    start_date: SpecDate | None = Field(default=None, description="default: the first day whose window is still open")
    days: int | None = Field(default=None, validate_default=True, strict=True, ge=1, le=MAX_DAYS,
                             description="how many days the campaign runs (R-ED-4: the excess goes out on later days)")
    send_time: SpecTime | None = Field(default=None, validate_default=True, description="HH:MM shop-local, 08:00-22:00")

    _days = field_validator("days")(_required)

    @field_validator("send_time")
    @classmethod
    def _send_time(cls, v: time | None, info: ValidationInfo) -> time:
        return check_send_time(_required(v, info), "R-WIN-1", rules.WINDOW_CLOSE, latest_allowed=False)


class EdmSpec(SpecBase):
    """K-EDM: email and in-site message to a system audience (R-ED-1..4)."""

    kind: Literal["K-EDM"]
    name: str | None = Field(default=None, validate_default=True, max_length=100, description="the campaign's name")
    audience: str | None = Field(default=None, validate_default=True, description=f"one of {', '.join(AUDIENCES)}")
    channels: list[str] | None = Field(default=None, validate_default=True, description="email, inbox, or both")
    template: EdmTemplate | None = Field(default=None, validate_default=True,
                                         description="per chosen channel: email {subject, body}, inbox {title, body}")
    time: EdmTime | None = Field(default=None, validate_default=True, description="{start_date, days, send_time}")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None, info: ValidationInfo) -> str:
        return check_text(_required(v, info), "R-ED-3")

    @field_validator("audience")
    @classmethod
    def _audience(cls, v: str | None, info: ValidationInfo) -> str:
        if _required(v, info) not in AUDIENCES:
            raise rule_error("R-ED-1", f"unknown audience {v[:60]!r}: one of {', '.join(AUDIENCES)}")
        return v

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: list[str] | None, info: ValidationInfo) -> list[str]:
        if not _required(v, info):
            raise rule_error("R-ED-3", "channels must name email, inbox or both")
        if any(c not in CHANNELS for c in v) or len(set(v)) != len(v):
            raise rule_error("R-ED-2", "channels are email and/or inbox (the in-site message), each once")
        return v

    @field_validator("template")
    @classmethod
    def _template(cls, v: EdmTemplate | None, info: ValidationInfo) -> EdmTemplate:
        _required(v, info)
        chosen = info.data.get("channels")
        if chosen is not None:
            for ch in CHANNELS:
                given = getattr(v, ch.value) is not None
                if given and ch not in chosen:
                    raise rule_error("R-ED-2", f"template.{ch.value} is given but {ch.value} is not a chosen channel")
                if not given and ch in chosen:
                    raise rule_error("R-ED-2", f"the {ch.value} channel needs its content: template.{ch.value}")
        return v

    _time = field_validator("time")(_required)


def campaign_days(spec: EdmSpec, tz: str, now: datetime) -> tuple[date, date]:
    start = spec.time.start_date or first_open_day(now, tz)
    return start, start + timedelta(days=spec.time.days - 1)


class Edm(Kind):
    name: ClassVar[str] = NAME
    spec: ClassVar[type[SpecBase]] = EdmSpec
    audiences: ClassVar[tuple[str, ...]] = AUDIENCES
    funnel: ClassVar[bool] = True  # R-ED-5: its report has the funnel (docs/reports.md)

    async def check(self, conn: asyncpg.Connection, spec: EdmSpec, shop: Shop, now: datetime) -> None:
        _, last = campaign_days(spec, shop.timezone, now)
        if day_window(last, spec.time.send_time, shop.timezone).close_at <= now:
            raise RuleViolation("time.start_date", "R-WIN-1", f"the campaign's last day {last} has already ended")
        if Channel.email in spec.channels:
            # R-ED-4: email needs the shop's EDM account, and one not in arrears (its free emails included).
            _, reason = await quota_left(conn, EDM, spec.shop_id, now.date())
            if reason == ACCOUNT_MISSING:
                raise RuleViolation("channels", "R-ED-4", "the shop has no EDM account: configure it before sending email")
            if reason not in (None, QUOTA_EXHAUSTED):
                raise RuleViolation("channels", "R-ED-4", "the shop's EDM account is in arrears: settle it before"
                                                          " sending email (the free emails are not available either)")

    def attribution(self, spec: EdmSpec) -> AttributionWindow:
        """R-ATT-1: the funnel's window (R-ED-5), 30 days after the reach, unless the spec names its own days."""
        return AttributionWindow.after(spec.attribution_days or ATTRIBUTION_DAYS)

    def compile(self, spec: EdmSpec, shop: Shop, now: datetime) -> list[PhasePlan]:
        start, end = campaign_days(spec, shop.timezone, now)
        both = len(spec.channels) == 2
        common = dict(send_time=spec.time.send_time, audience=spec.audience, attribution=self.attribution(spec))
        phases = []
        if Channel.inbox in spec.channels:
            inbox = spec.template.inbox
            phases.append(PhasePlan(name="inbox", start_date=start, end_date=start if both else end, channel=Channel.inbox,
                                    template_cap=INBOX_CAP, title=inbox.title, text=inbox.body, **common))
        if Channel.email in spec.channels:
            email = spec.template.email
            phases.append(PhasePlan(name="email", start_date=start, end_date=end, channel=Channel.email,
                                    template_cap=EMAIL_CAP, title=email.subject, text=email.body, quota=EDM, **common))
        return phases
