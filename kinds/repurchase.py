"""K-REPURCHASE: repurchase conversion with countdown-bounded coupon offers (R-RP-1..10).

The merchant picks an audience: the repurchase cycle (R-RP-1: buyers whose
last purchase of a product is about 0.73 of its cycle ago and who browse its
category), cross-sell (R-RP-2: buyers of A who have not bought B, bought
together with A), or their own filter (R-RP-3, audiences/custom.py). Each
recipient is pushed one product, chosen among the products of the campaign's
exclusive coupons by their behaviour (R-RP-10), and gets an offer of that
product's coupon that ends a chosen 2-24 hours after the message is handed
off (R-RP-5), shown as a countdown end in the text. The campaign is one day:
now, or at a time at least 2 hours ahead (R-RP-7). One message of this
template per consumer per 3 natural days, counted apart from other
templates (R-RP-8).

Benefits (R-RP-4): the repurchase-cycle audience needs one or more exclusive
coupons; cross-sell uses member benefits, and names the coupons whose
products it may push (their countdown offers are the members' and joiners'
benefit); a custom audience picks one of exclusive coupon (then it names the
coupons), member discount or member coupon (no countdown offer then).
Texts (R-RP-6): the algorithmic audiences send the platform's default text;
a custom audience's text is the merchant's, at most 50 characters, with the
placeholders {{ name }}, {{ product }}, {{ coupon }} and {{ ends_at }}.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Literal

import asyncpg
from pydantic import Field, field_validator, model_validator
from sluice.audiences import CUSTOM
from sluice.audiences.custom import parse_filter
from sluice.content.render import TemplateError, compile_template
from sluice.kinds.base import Kind, Shop, SpecBase
from sluice.schemas import rules
from sluice.schemas.campaign import (
    PERSONAL_PLACEHOLDERS,
    Channel,
    Ident,
    OfferPlan,
    PhasePlan,
    SpecInstant,
    TemplateCap,
)
from sluice.schemas.rules import RuleViolation, rule_error
from sluice.workflows.calendar import local_day, zone

NAME = "K-REPURCHASE"
TEMPLATE_GROUP = "repurchase"  # R-RP-8: counted apart from every other template
CAP_PER_DAYS = (1, 3)  # R-RP-8: one message of this template per 3 natural days
CUSTOM_TEXT_MAX = 50  # R-RP-6
OFFER_HOURS = (2, 24)  # R-RP-5
SCHEDULE_LEAD = timedelta(hours=2)  # R-RP-7
MAX_COUPONS = 3
# R-RP-6: the platform's default text of the algorithmic audiences.
DEFAULT_TEXT = "{{ product }} is due again: your exclusive coupon {{ coupon }} is yours until {{ ends_at }}"


class RepurchaseAudience(StrEnum):
    repurchase_cycle = "repurchase_cycle"  # R-RP-1
    cross_sell = "cross_sell"  # R-RP-2
    custom = CUSTOM  # R-RP-3


class Benefit(StrEnum):
    exclusive_coupon = "exclusive_coupon"
    member_benefit = "member_benefit"
    member_discount = "member_discount"
    member_coupon = "member_coupon"


# R-RP-4: the benefits each audience may use.
BENEFITS = {
    RepurchaseAudience.repurchase_cycle: {Benefit.exclusive_coupon},
    RepurchaseAudience.cross_sell: {Benefit.member_benefit},
    RepurchaseAudience.custom: {Benefit.exclusive_coupon, Benefit.member_discount, Benefit.member_coupon},
}


class RepurchaseSpec(SpecBase):
    """K-REPURCHASE: repurchase conversion (R-RP-1..10)."""

    kind: Literal["K-REPURCHASE"]
    audience: RepurchaseAudience
    custom_filter: dict[str, Any] | None = Field(default=None, description="the custom audience's filter (R-RP-3)")
    benefit: Benefit
    coupon_ids: list[Ident] = Field(default_factory=list, max_length=MAX_COUPONS,
                                    description="exclusive coupons; each for one product (R-RP-4, R-RP-10)")
    offer_hours: int = Field(default=24, strict=True, ge=OFFER_HOURS[0], le=OFFER_HOURS[1],
                             description="how long a sent offer can be claimed (R-RP-5)")
    text: str | None = Field(default=None, description="custom audience only, at most 50 characters (R-RP-6)")
    send_at: SpecInstant | None = Field(default=None, description="default now; else at least 2 hours ahead (R-RP-7)")
    channel: Channel = Channel.chat

    @field_validator("custom_filter")
    @classmethod
    def _filter(cls, v: dict | None) -> dict | None:
        if v is not None:
            try:
                parse_filter(v)
            except ValueError as exc:
                raise rule_error("R-RP-3", f"the custom filter is invalid: {str(exc)[:400]}") from None
        return v

    @model_validator(mode="after")
    def _rules(self) -> RepurchaseSpec:
        if (self.audience == RepurchaseAudience.custom) != (self.custom_filter is not None):
            raise rule_error("R-RP-3", "custom_filter is required for the custom audience, and only for it")
        if self.benefit not in BENEFITS[self.audience]:
            allowed = ", ".join(sorted(BENEFITS[self.audience]))
            raise rule_error("R-RP-4", f"the {self.audience} audience takes the benefit {allowed}, not {self.benefit}")
        if self.needs_coupons and not self.coupon_ids:
            raise rule_error("R-RP-4", f"the {self.audience} audience with {self.benefit} needs one or more coupon_ids")
        if not self.needs_coupons and self.coupon_ids:
            raise rule_error("R-RP-4", f"coupon_ids go with an exclusive coupon or member benefit, not {self.benefit}")
        if len(set(self.coupon_ids)) != len(self.coupon_ids):
            raise rule_error("R-RP-4", "a coupon is named twice")
        if self.audience == RepurchaseAudience.custom:
            if self.text is None:
                raise rule_error("R-RP-6", "a custom audience's text is required")
            if len(self.text) > CUSTOM_TEXT_MAX:
                raise rule_error("R-RP-6", f"text has {len(self.text)} characters, at most {CUSTOM_TEXT_MAX} allowed")
            try:
                compile_template(self.text, allowed=self.placeholders, rule="R-RP-6")
            except TemplateError as exc:
                raise exc.pydantic() from None
        elif self.text is not None:
            raise rule_error("R-RP-6", "the algorithmic audiences send the platform's default text: leave text out")
        return self

    @property
    def needs_coupons(self) -> bool:
        return self.benefit in (Benefit.exclusive_coupon, Benefit.member_benefit)

    @property
    def placeholders(self) -> frozenset[str]:
        # Without an offer there is no product, coupon or end to name.
        return PERSONAL_PLACEHOLDERS if self.needs_coupons else frozenset({"name"})


def send_instant(spec: RepurchaseSpec, now: datetime) -> datetime:
    return spec.send_at or now


class Repurchase(Kind):
    name: ClassVar[str] = NAME
    spec: ClassVar[type[SpecBase]] = RepurchaseSpec
    audiences: ClassVar[tuple[str, ...]] = tuple(a.value for a in RepurchaseAudience)

    async def check(self, conn: asyncpg.Connection, spec: RepurchaseSpec, shop: Shop, now: datetime) -> None:
        at = send_instant(spec, now)
        if spec.send_at is not None and spec.send_at < now + SCHEDULE_LEAD:
            raise RuleViolation("send_at", "R-RP-7", "send now (leave send_at out) or at least 2 hours ahead")
        local = at.astimezone(zone(shop.timezone)).time()
        if not (rules.WINDOW_OPEN <= local < rules.WINDOW_CLOSE) and spec.send_at is not None:
            raise RuleViolation("send_at", "R-WIN-1", f"{local:%H:%M} shop-local is outside 08:00-22:00")
        if spec.send_at is None and local >= rules.WINDOW_CLOSE:
            raise RuleViolation("send_at", "R-WIN-1", "the send window is closed now (22:00): schedule it with send_at")
        if spec.coupon_ids:
            rows = {
                r["coupon_id"]: r
                for r in await conn.fetch(
                    "SELECT coupon_id, valid_from, valid_to, stock, product_id FROM coupons"
                    " WHERE coupon_id = ANY($1::text[]) AND shop_id = $2",
                    spec.coupon_ids,
                    spec.shop_id,
                )
            }
            for i, coupon_id in enumerate(spec.coupon_ids):
                row = rows.get(coupon_id)
                where = f"coupon_ids.{i}"
                if row is None:
                    raise RuleViolation(where, "R-BEN-1", f"coupon {coupon_id!r} not found for this shop")
                if row["product_id"] is None:
                    raise RuleViolation(where, "R-RP-10", f"coupon {coupon_id!r} is for no product: it cannot be pushed")
                if not (row["valid_from"] <= at and at + timedelta(hours=spec.offer_hours) <= row["valid_to"]):
                    raise RuleViolation(where, "R-RP-5", f"coupon {coupon_id!r} is not valid for the whole offer window")
                if row["stock"] <= 0:
                    raise RuleViolation(where, "R-BEN-1", f"coupon {coupon_id!r} is out of stock")

    def compile(self, spec: RepurchaseSpec, shop: Shop, now: datetime) -> list[PhasePlan]:
        at = send_instant(spec, now)
        local = at.astimezone(zone(shop.timezone))
        day = local_day(at, shop.timezone)
        count, days = CAP_PER_DAYS
        params: dict[str, Any] = {"coupon_ids": spec.coupon_ids}
        if spec.audience == RepurchaseAudience.custom:
            params = {"filter": spec.custom_filter, **({"coupon_ids": spec.coupon_ids} if spec.coupon_ids else {})}
        return [
            PhasePlan(
                name="offer",
                start_date=day,
                end_date=day,
                # Before 08:00 the day's window opens at 08:00 (day_window clamps the send time).
                send_time=local.time().replace(second=0, microsecond=0),
                audience=spec.audience.value,
                audience_params=params,
                channel=spec.channel,
                template_cap=TemplateCap(group=TEMPLATE_GROUP, count=count, days=days),
                text=spec.text or DEFAULT_TEXT,
                text_is_template=True,
                offer=OfferPlan(coupon_ids=spec.coupon_ids, hours=spec.offer_hours) if spec.needs_coupons else None,
            )
        ]
