"""K-ACQUIRE: acquisition of the shop's industry's prospects by SMS, with the shop's join gift (R-AQ-1..6).

The merchant picks an audience of consumers who are neither members nor buyers of the shop
(R-AQ-1): the industry's highly active consumers who interacted with the shop, the industry's
brand switchers, the shop's members outside the platform matched to platform consumers, or their
own filter (audiences/custom.py), which may be joined with the platform's industry-value audience.
Most of them are not customers of the shop: they are reached at the platform's contact (public-
domain SMS). Every audience passes the filter `non_members_non_buyers` (audiences/filters.py).

The shop's join gift (`member_benefits`, kind join_gift) is attached to every message by itself
(R-AQ-2): `{{ benefit }}` tells it, and the campaign does not start without one in force; a gift
that ends, or whose coupon runs out, while the campaign sends stops the sending (R-BEN-1: a
required `BenefitPlan`). The send rule (R-AQ-3): a repeat cycle of `cycle_days` (default 7) -- one
message of this kind per consumer and shop per cycle, as the template cap `acquire` -- and an
optional daily cap. Shops of a virtual category cannot send SMS (R-AQ-5). The SMS channel applies
the rest (segments, signature, price and credits: R-AQ-4, R-AQ-5, R-AQ-6).

The campaign runs from its first day for one cycle, or to `end_date`: each cycle is a phase
(`cycle-1`, `cycle-2`, ...), so a consumer reached in one cycle is in the next cycle's audience
again, the template cap keeping them to one message per `cycle_days` natural days.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Literal

import asyncpg
from pydantic import Field, StrictBool, ValidationInfo, field_validator, model_validator
from sluice.audiences import CUSTOM, WITH_INDUSTRY_VALUE
from sluice.audiences.custom import checked_filter
from sluice.audiences.filters import NON_MEMBERS_NON_BUYERS
from sluice.content.render import TemplateError, compile_template
from sluice.kinds.base import Kind, Shop, SpecBase
from sluice.schemas import rules
from sluice.schemas.benefits import SHOP_BENEFITS, BenefitPlan, MemberBenefitKind, required_benefit_problem
from sluice.schemas.campaign import Channel, PhasePlan, SpecDate, SpecTime, TemplateCap, check_send_time
from sluice.schemas.rules import RuleViolation, rule_error
from sluice.schemas.text import check_text
from sluice.workflows.calendar import day_window, first_open_day

NAME = "K-ACQUIRE"
CHANNEL = Channel.sms  # public-domain SMS (R-AQ-6)
TEMPLATE_GROUP = "acquire"  # R-AQ-3: one message of this kind per consumer and shop per cycle
CYCLE_DAYS = (1, 30)  # R-AQ-3: the repeat cycle's bounds ...
DEFAULT_CYCLE_DAYS = 7  # ... and the seed's suggestion
DAILY_CAP_MAX = 10_000_000
MAX_DAYS = 90  # a campaign's first to last day
TEXT_MAX = 500  # a custom template, before the signature and the unsubscribe text (billed by length, R-AQ-4)
PLACEHOLDERS = frozenset({"benefit"})  # the join gift; a non-customer has no nickname of the shop
# R-BEN-1: a join gift naming a coupon holds one unit per message for this long, then gives it back
# unclaimed. 10 hours: a message handed off before 22:00 releases its unit before the next day's 08:00,
# so holding it never delays the next day's send.
JOIN_GIFT_HOURS = 10


class AcquireAudience(StrEnum):
    industry_active = "industry_active"  # R-AQ-1 (audiences/acquire.py)
    brand_switchers = "brand_switchers"
    external_members = "external_members"
    custom = CUSTOM


# R-AQ-1: the platform's template of each audience (a custom audience may bring its own).
DEFAULT_TEXTS = {
    AcquireAudience.industry_active: "Thanks for dropping by. {{ benefit }}",
    AcquireAudience.brand_switchers: "New to our shop? {{ benefit }}",
    AcquireAudience.external_members: "You are our member off the platform: {{ benefit }} here too",
    AcquireAudience.custom: "New to our shop? {{ benefit }}",
}
# R-AQ-2: the benefit every message carries, member or not (they are not members: R-AQ-1).
JOIN_GIFT = BenefitPlan(members=[MemberBenefitKind.join_gift], non_members=[MemberBenefitKind.join_gift],
                        hours=JOIN_GIFT_HOURS, required=True)


class AcquireSpec(SpecBase):
    """K-ACQUIRE: interest-audience acquisition by SMS (R-AQ-1..6)."""

    kind: Literal["K-ACQUIRE"]
    audience: AcquireAudience
    custom_filter: dict[str, Any] | None = Field(default=None, description="the custom audience's filter (R-AQ-1)")
    industry_value: StrictBool = Field(default=False, description="custom audience only: joined with the platform's"
                                       " industry-value audience (R-AQ-1)")
    text: str | None = Field(default=None, max_length=TEXT_MAX,
                             description="custom audience only: the SMS template, with {{ benefit }} (R-AQ-1, R-AQ-2);"
                                         " default the platform's")
    start_date: SpecDate | None = Field(default=None, description="default: today (shop-local) if its window is still"
                                                                  " open, else tomorrow")
    end_date: SpecDate | None = Field(default=None, description="the last day; default the first cycle's last")
    send_time: SpecTime = time(10, 0)
    cycle_days: int = Field(default=DEFAULT_CYCLE_DAYS, strict=True,
                            description="R-AQ-3: one message per consumer per this many natural days, 1 to 30")
    daily_cap: int | None = Field(default=None, strict=True, description="R-AQ-3: messages a day at most")

    @field_validator("custom_filter")
    @classmethod
    def _filter(cls, v: dict | None) -> dict | None:
        return checked_filter(v, "R-AQ-1")

    @field_validator("industry_value")
    @classmethod
    def _industry_value(cls, v: bool, info: ValidationInfo) -> bool:
        if v and info.data.get("audience") != AcquireAudience.custom:
            raise rule_error("R-AQ-1", "the industry-value audience is joined with the custom audience only")
        return v

    @field_validator("text")
    @classmethod
    def _text(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        if info.data.get("audience") not in (None, AcquireAudience.custom):
            raise rule_error("R-AQ-1", "the platform's template goes with this audience: leave text out")
        check_text(v, "R-OC-10")
        try:
            template = compile_template(v, allowed=PLACEHOLDERS, rule="R-AQ-1")
        except TemplateError as exc:
            raise exc.pydantic() from None
        if "benefit" not in template.placeholders:
            raise rule_error("R-AQ-2", "the message carries the shop's join gift: say it with {{ benefit }}")
        return v

    @field_validator("cycle_days")
    @classmethod
    def _cycle(cls, v: int) -> int:
        if not CYCLE_DAYS[0] <= v <= CYCLE_DAYS[1]:
            raise rule_error("R-AQ-3", f"the repeat cycle is {CYCLE_DAYS[0]} to {CYCLE_DAYS[1]} days, not {v}")
        return v

    @field_validator("daily_cap")
    @classmethod
    def _daily_cap(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= DAILY_CAP_MAX:
            raise rule_error("R-AQ-3", f"the daily cap is 1 to {DAILY_CAP_MAX:,} messages, not {v}")
        return v

    @field_validator("send_time")
    @classmethod
    def _send_time(cls, v: time) -> time:
        return check_send_time(v, "R-WIN-1", rules.WINDOW_CLOSE, latest_allowed=False)

    @model_validator(mode="after")
    def _rules(self) -> AcquireSpec:
        if (self.audience == AcquireAudience.custom) != (self.custom_filter is not None):
            raise rule_error("R-AQ-1", "custom_filter is required for the custom audience, and only for it")
        if self.end_date is not None and self.start_date is None:
            raise rule_error("R-PH-2", "end_date needs start_date")
        if self.end_date is not None and self.end_date < self.start_date:
            raise rule_error("R-PH-2", "end_date is before start_date")
        if self.end_date is not None and (self.end_date - self.start_date).days > MAX_DAYS - 1:
            raise rule_error("R-PH-2", f"an acquisition campaign runs at most {MAX_DAYS} days")
        return self


def days_of(spec: AcquireSpec, tz: str, now: datetime) -> tuple[date, date]:
    """The campaign's first and last day: the spec's, or the first open day and one cycle."""
    first = spec.start_date if spec.start_date is not None else first_open_day(now, tz)
    return first, spec.end_date or first + timedelta(days=spec.cycle_days - 1)


def cycles(first: date, last: date, cycle_days: int) -> list[tuple[date, date]]:
    """R-AQ-3: the days from `first` to `last` cut into cycles of `cycle_days` (the last one may be shorter)."""
    out, start = [], first
    while start <= last:
        out.append((start, min(start + timedelta(days=cycle_days - 1), last)))
        start += timedelta(days=cycle_days)
    return out


class Acquire(Kind):
    name: ClassVar[str] = NAME
    spec: ClassVar[type[SpecBase]] = AcquireSpec
    audiences: ClassVar[tuple[str, ...]] = tuple(a.value for a in AcquireAudience)

    async def check(self, conn: asyncpg.Connection, spec: AcquireSpec, shop: Shop, now: datetime) -> None:
        if shop.virtual_category:
            raise RuleViolation("shop_id", "R-AQ-5", f"shop {shop.shop_id!r} is in a virtual category: it cannot send SMS")
        first, last = days_of(spec, shop.timezone, now)
        if day_window(last, spec.send_time, shop.timezone).close_at <= now:
            raise RuleViolation("start_date", "R-WIN-1", "the send window of the last day has already closed")
        at = max(day_window(first, spec.send_time, shop.timezone).send_at, now)
        problem = required_benefit_problem(JOIN_GIFT, await conn.fetch(SHOP_BENEFITS, spec.shop_id, JOIN_GIFT.kinds(), at), at)
        if problem is not None:
            raise RuleViolation("benefit", "R-AQ-2", f"the shop's join gift is attached to every message: {problem}")

    def compile(self, spec: AcquireSpec, shop: Shop, now: datetime) -> list[PhasePlan]:
        params: dict[str, Any] = {}
        if spec.audience == AcquireAudience.custom:
            params["filter"] = spec.custom_filter
        if spec.industry_value:
            params[WITH_INDUSTRY_VALUE] = True
        first, last = days_of(spec, shop.timezone, now)
        return [
            PhasePlan(
                name=f"cycle-{i + 1}",
                start_date=start,
                end_date=end,
                send_time=spec.send_time,
                audience=spec.audience.value,
                audience_params=params,
                filters=[NON_MEMBERS_NON_BUYERS],  # R-AQ-1
                channel=CHANNEL,
                template_cap=TemplateCap(group=TEMPLATE_GROUP, count=1, days=spec.cycle_days),  # R-AQ-3
                text=spec.text or DEFAULT_TEXTS[spec.audience],
                text_is_template=True,
                daily_cap=spec.daily_cap,  # R-AQ-3
                benefit=JOIN_GIFT,  # R-AQ-2
                attribution=self.attribution(spec),  # R-ATT-1: the default week after the reach
            )
            for i, (start, end) in enumerate(cycles(first, last, spec.cycle_days))
        ]
