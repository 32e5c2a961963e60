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
coupons (a countdown offer each); cross-sell uses the shop's member benefits
(`member_benefits`, schemas/benefits.py): a member is told the member offer
(member discount or member coupon), anyone else the join gift, membership
read at send time; it still names the coupons whose products it may push
(R-RP-10), only to choose and name the product. A custom audience picks one
of exclusive coupon (then it names the coupons), member discount or member
coupon (then every recipient is told that benefit). The benefits a campaign
uses must be in force for the send (`check`); a member coupon that names a
coupon row holds one unit per delivery like an exclusive offer.
Texts (R-RP-6): the algorithmic audiences send the platform's default text;
a custom audience's text is the merchant's, at most 50 characters, with the
placeholders {{ name }}, {{ product }}, {{ coupon }} and {{ ends_at }}
(exclusive coupon) or {{ name }} and {{ benefit }} (member benefits).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Literal

import asyncpg
from pydantic import Field, StrictBool, ValidationInfo, field_validator, model_validator
from sluice.audiences import CUSTOM, TAGS, WITH_INDUSTRY_VALUE
from sluice.audiences.custom import checked_filter
from sluice.audiences.tags import MAX_TAGS, parse_tags
from sluice.audiences.tags import describe as describe_tags
from sluice.content.render import TemplateError, compile_template
from sluice.kinds.base import Kind, Shop, SpecBase
from sluice.schemas import rules
from sluice.schemas.benefits import MEMBER_OFFER, SHOP_BENEFITS, BenefitPlan, MemberBenefit, MemberBenefitKind, pick_benefit
from sluice.schemas.campaign import (
    PERSONAL_PLACEHOLDERS,
    Channel,
    Ident,
    OfferPlan,
    PhasePlan,
    Precedence,
    SpecInstant,
    TemplateCap,
)
from sluice.schemas.rules import RuleViolation, rule_error
from sluice.workflows.calendar import local_day, zone

NAME = "K-REPURCHASE"
TEMPLATE_GROUP = "repurchase"  # R-RP-8: counted apart from every other template
PRECEDENCE_GROUP = "repurchase"  # R-RP-9: the shop's repurchase tasks, custom ones first
CAP_PER_DAYS = (1, 3)  # R-RP-8: one message of this template per 3 natural days
CUSTOM_TEXT_MAX = 50  # R-RP-6
OFFER_HOURS = (2, 24)  # R-RP-5
SCHEDULE_LEAD = timedelta(hours=2)  # R-RP-7
MAX_COUPONS = 3
# R-RP-6: the platform's default text of the algorithmic audiences.
DEFAULT_TEXT = "{{ product }} is due again: your exclusive coupon {{ coupon }} is yours until {{ ends_at }}"
CROSS_SELL_TEXT = "{{ product }} goes well with your last order. {{ benefit }}"


class RepurchaseAudience(StrEnum):
    repurchase_cycle = "repurchase_cycle"  # R-RP-1
    cross_sell = "cross_sell"  # R-RP-2
    custom = CUSTOM  # R-RP-3


class Benefit(StrEnum):
    exclusive_coupon = "exclusive_coupon"
    member_benefit = "member_benefit"  # the shop's member offer for members, its join gift for the others
    member_discount = MemberBenefitKind.member_discount.value
    member_coupon = MemberBenefitKind.member_coupon.value


# R-RP-4: the benefits each audience may use.
BENEFITS = {
    RepurchaseAudience.repurchase_cycle: {Benefit.exclusive_coupon},
    RepurchaseAudience.cross_sell: {Benefit.member_benefit},
    RepurchaseAudience.custom: {Benefit.exclusive_coupon, Benefit.member_discount, Benefit.member_coupon},
}
# R-RP-4: the shop's member benefit kinds each benefit tells of: (for members, for non-members).
MEMBER_BENEFITS: dict[Benefit, tuple[tuple[MemberBenefitKind, ...], tuple[MemberBenefitKind, ...]]] = {
    Benefit.member_benefit: (MEMBER_OFFER, (MemberBenefitKind.join_gift,)),
    Benefit.member_discount: ((MemberBenefitKind.member_discount,), (MemberBenefitKind.member_discount,)),
    Benefit.member_coupon: ((MemberBenefitKind.member_coupon,), (MemberBenefitKind.member_coupon,)),
}


class RepurchaseSpec(SpecBase):
    """K-REPURCHASE: repurchase conversion (R-RP-1..10)."""

    kind: Literal["K-REPURCHASE"]
    audience: RepurchaseAudience
    custom_filter: dict[str, Any] | None = Field(default=None, description="the custom audience's filter (R-RP-3)")
    industry_value: StrictBool = Field(default=False, description="custom audience only: joined with the platform's"
                                       " industry-value audience, reaching non-customers too (R-RP-3)")
    tags: list[str] | None = Field(default=None, description="the shop's tags: narrows any audience to its customers"
                                   f" holding one of them; 1 to {MAX_TAGS} non-empty tags (R-RP-3)")
    benefit: Benefit
    coupon_ids: list[Ident] = Field(default_factory=list, max_length=MAX_COUPONS,
                                    description="exclusive coupons; each for one product (R-RP-4, R-RP-10)")
    offer_hours: int = Field(default=24, strict=True, ge=OFFER_HOURS[0], le=OFFER_HOURS[1],
                             description="how long a sent offer, or a held member coupon, can be claimed (R-RP-5, R-RP-4)")
    text: str | None = Field(default=None, description="custom audience only, at most 50 characters (R-RP-6)")
    send_at: SpecInstant | None = Field(default=None, description="default now; else at least 2 hours ahead (R-RP-7)")
    channel: Channel = Channel.chat

    @field_validator("custom_filter")
    @classmethod
    def _filter(cls, v: dict | None) -> dict | None:
        return checked_filter(v, "R-RP-3")

    @field_validator("industry_value")
    @classmethod
    def _industry_value(cls, v: bool, info: ValidationInfo) -> bool:
        if v and info.data.get("audience") != RepurchaseAudience.custom:
            raise rule_error("R-RP-3", "the industry-value audience is joined with the custom audience only")
        return v

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, v: Any) -> Any:
        if v is not None:
            try:
                return parse_tags(v)
            except ValueError as exc:
                raise rule_error("R-RP-3", describe_tags(exc)[:400]) from None
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
        # A member benefit has no countdown; without coupon_ids there is no product to name either.
        if self.benefit == Benefit.exclusive_coupon:
            return PERSONAL_PLACEHOLDERS - {"benefit"}
        return frozenset({"name", "benefit"} | ({"product"} if self.needs_coupons else set()))

    def benefit_plan(self) -> BenefitPlan | None:
        """R-RP-4: the member benefits the campaign tells of, by membership; None for exclusive coupons."""
        if self.benefit not in MEMBER_BENEFITS:
            return None
        members, others = MEMBER_BENEFITS[self.benefit]
        return BenefitPlan(members=list(members), non_members=list(others), hours=self.offer_hours,
                           coupon_ids=self.coupon_ids)


def send_instant(spec: RepurchaseSpec, now: datetime) -> datetime:
    return spec.send_at or now


async def _check_member_benefits(conn: asyncpg.Connection, spec: RepurchaseSpec, plan: BenefitPlan, at: datetime) -> None:
    """R-RP-4: the benefit the send will tell each group of (the shop's newest in force at the send, the
    same choice as the send's) exists and stays in force through the offer's hours; a limited one's coupon
    is this shop's, valid as long, and in stock (R-BEN-1)."""
    end = at + timedelta(hours=plan.hours)
    rows = await conn.fetch(SHOP_BENEFITS, spec.shop_id, plan.kinds(), at)
    found = [MemberBenefit.of(r) for r in rows]
    coupon = {r["benefit_id"]: r for r in rows}
    groups = [("every recipient", plan.members)] if plan.members == plan.non_members else [
        ("members", plan.members), ("non-members", plan.non_members)]
    for who, kinds in groups:
        what = " or ".join(k.replace("_", " ") for k in kinds)
        b = pick_benefit(found, kinds, at, at)
        if b is None:
            raise RuleViolation("benefit", "R-RP-4", f"the shop has no {what} in force at the send: {who} get one "
                                                     f"with {spec.benefit} (add it to the shop's member benefits)")
        if end > b.valid_to:
            raise RuleViolation("benefit", "R-RP-4", f"the {what} {b.benefit_id!r} ends before the offer's "
                                                     f"{plan.hours} hours are over")
        if b.coupon_id is not None:
            c = coupon[b.benefit_id]
            if c["coupon_stock"] is None:
                raise RuleViolation("benefit", "R-RP-4", f"the {what} {b.benefit_id!r} hands out coupon {b.coupon_id!r},"
                                                         " which is not this shop's")
            if not (c["coupon_from"] <= at and end <= c["coupon_to"]):
                raise RuleViolation("benefit", "R-RP-4", f"coupon {b.coupon_id!r} of the {what} {b.benefit_id!r} is not"
                                                         " valid for the whole offer window")
            if c["coupon_stock"] <= 0:
                raise RuleViolation("benefit", "R-BEN-1", f"coupon {b.coupon_id!r} of the {what} {b.benefit_id!r}"
                                                          " is out of stock")


class Repurchase(Kind):
    name: ClassVar[str] = NAME
    spec: ClassVar[type[SpecBase]] = RepurchaseSpec
    audiences: ClassVar[tuple[str, ...]] = tuple(a.value for a in RepurchaseAudience)

    def precedence(self, spec: RepurchaseSpec) -> Precedence:
        # R-RP-9: the merchant's custom task holds the shop's repurchase tasks; the algorithmic ones yield.
        return Precedence(group=PRECEDENCE_GROUP, takes=spec.audience == RepurchaseAudience.custom)

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
                if spec.benefit != Benefit.exclusive_coupon:
                    continue  # cross-sell: the coupon only names a product it may push; its stock is not sent
                if not (row["valid_from"] <= at and at + timedelta(hours=spec.offer_hours) <= row["valid_to"]):
                    raise RuleViolation(where, "R-RP-5", f"coupon {coupon_id!r} is not valid for the whole offer window")
                if row["stock"] <= 0:
                    raise RuleViolation(where, "R-BEN-1", f"coupon {coupon_id!r} is out of stock")
        plan = spec.benefit_plan()
        if plan is not None:
            await _check_member_benefits(conn, spec, plan, at)

    def compile(self, spec: RepurchaseSpec, shop: Shop, now: datetime) -> list[PhasePlan]:
        at = send_instant(spec, now)
        local = at.astimezone(zone(shop.timezone))
        day = local_day(at, shop.timezone)
        count, days = CAP_PER_DAYS
        params: dict[str, Any] = {"coupon_ids": spec.coupon_ids}
        if spec.audience == RepurchaseAudience.custom:
            params = {"filter": spec.custom_filter, **({"coupon_ids": spec.coupon_ids} if spec.coupon_ids else {})}
        if spec.industry_value:  # R-RP-3
            params[WITH_INDUSTRY_VALUE] = True
        if spec.tags:  # R-RP-3: narrows any of the audiences
            params[TAGS] = spec.tags
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
                text=spec.text or (CROSS_SELL_TEXT if spec.audience == RepurchaseAudience.cross_sell else DEFAULT_TEXT),
                text_is_template=True,
                offer=(OfferPlan(coupon_ids=spec.coupon_ids, hours=spec.offer_hours)
                       if spec.benefit == Benefit.exclusive_coupon else None),
                benefit=spec.benefit_plan(),
                attribution=self.attribution(spec),  # R-ATT-1: the default week after the reach
            )
        ]
