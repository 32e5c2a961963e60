"""K-OLDCUST: reach a shop's valid old customers once, with a card (R-OC-1..10).

The spec names a scene, a card (text, title, optional image and body), a send
day (default: the first day whose window is still open) with optional days to
send leftovers, a channel and an optional coupon. It compiles to one phase
`reach` over the `oldcust_valid` audience (R-OC-1) with two filters: the
overlap with the shop's earlier old-customer tasks (R-OC-6) and the activity
filter (R-OC-7); the shared 1-per-7-days template cap of custom scenes
(R-OC-2); and no send when the audience is 100 or fewer (R-OC-4).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import ClassVar, Literal

import asyncpg
from pydantic import Field, field_validator, model_validator
from sluice.kinds.base import Kind, Shop, SpecBase
from sluice.schemas import rules
from sluice.schemas.campaign import (
    Channel,
    Ident,
    OfferPlan,
    Pacing,
    PhasePlan,
    SpecDate,
    SpecInstant,
    SpecTime,
    Strict,
    TemplateCap,
    check_send_time,
)
from sluice.schemas.rules import RuleViolation, rule_error
from sluice.schemas.text import check_text
from sluice.schemas.urls import url_problem
from sluice.workflows.calendar import day_window, first_open_day

NAME = "K-OLDCUST"
AUDIENCE = "oldcust_valid"  # R-OC-1
FILTERS = ["overlap_same_kind", "low_activity"]  # R-OC-6, R-OC-7
MAX_DAYS = 31  # the send day and up to 30 days of leftovers


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


class OldCustomerSpec(SpecBase):
    """K-OLDCUST: old-customer reach (R-OC-1..10)."""

    kind: Literal["K-OLDCUST"]
    scene: str = Field(min_length=1, max_length=30, description="scene name, shown in the default title")
    title: str | None = Field(default=None, max_length=60)
    card_text: str = Field(min_length=1, description="R-OC-3: at most 50 characters")
    body: str = Field(default="", max_length=1000)
    image: OldCustomerImage | None = None
    send_date: SpecDate | None = Field(
        default=None, description="the first send day; default: today (shop-local) if its window is still open, else tomorrow"
    )
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
        return check_send_time(v, "R-WIN-1", rules.WINDOW_CLOSE, latest_allowed=False)

    @model_validator(mode="after")
    def _dates(self) -> OldCustomerSpec:
        if self.end_date is not None and self.send_date is None:
            raise rule_error("R-PH-2", "end_date needs send_date")
        if self.end_date is not None and self.end_date < self.send_date:
            raise rule_error("R-PH-2", "end_date is before send_date")
        if self.end_date is not None and (self.end_date - self.send_date).days > MAX_DAYS - 1:
            raise rule_error("R-PH-2", f"an old-customer task runs at most {MAX_DAYS} days")
        return self


def first_send_day(spec: OldCustomerSpec, tz: str, now: datetime) -> date:
    """The spec's send day, or the first day whose window (at the spec's send time) is still open."""
    return spec.send_date if spec.send_date is not None else first_open_day(now, tz)


def default_title(spec: OldCustomerSpec, send_date: date) -> str:
    # R-OC-3: the title defaults to scene name plus time.
    return spec.title or f"{spec.scene} {send_date:%m-%d} {spec.send_time:%H:%M}"


class OldCustomer(Kind):
    name: ClassVar[str] = NAME
    spec: ClassVar[type[SpecBase]] = OldCustomerSpec
    audiences: ClassVar[tuple[str, ...]] = (AUDIENCE,)

    async def check(self, conn: asyncpg.Connection, spec: OldCustomerSpec, shop: Shop, now: datetime) -> None:
        tz = shop.timezone
        first = first_send_day(spec, tz, now)
        last = spec.end_date or first
        if day_window(last, spec.send_time, tz).close_at <= now:
            raise RuleViolation("send_date", "R-WIN-1", "the send window of the last day has already closed")
        first_send = day_window(first, spec.send_time, tz).send_at
        if spec.image is not None:
            ready = spec.image.configured_at + timedelta(hours=rules.OLDCUST_IMAGE_REVIEW_HOURS)
            if ready > max(first_send, now):
                raise RuleViolation(
                    "image.configured_at", "R-OC-3", "a custom image must be configured at least 24 hours before sending"
                )
        if spec.coupon_id is not None:
            coupon = await conn.fetchrow(
                "SELECT valid_from, valid_to, stock FROM coupons WHERE coupon_id = $1 AND shop_id = $2",
                spec.coupon_id,
                spec.shop_id,
            )
            send_at = max(first_send, now)
            if coupon is None:
                raise RuleViolation("coupon_id", "R-BEN-1", f"coupon {spec.coupon_id!r} not found for this shop")
            if not (coupon["valid_from"] <= send_at < coupon["valid_to"]):
                raise RuleViolation("coupon_id", "R-OC-9", "the coupon is not valid when the message is sent")
            if coupon["stock"] <= 0:
                raise RuleViolation("coupon_id", "R-BEN-1", "the coupon is out of stock")

    def compile(self, spec: OldCustomerSpec, shop: Shop, now: datetime) -> list[PhasePlan]:
        first = first_send_day(spec, shop.timezone, now)
        count, days = rules.OLDCUST_CAP_PER_DAYS
        return [
            PhasePlan(
                name="reach",
                start_date=first,
                end_date=spec.end_date or first,
                send_time=spec.send_time,
                audience=AUDIENCE,
                filters=FILTERS,
                channel=spec.channel,
                template_cap=TemplateCap(group=rules.OLDCUST_TEMPLATE_GROUP, count=count, days=days),
                text=spec.card_text if not spec.body else f"{spec.card_text}\n{spec.body}",
                title=default_title(spec, first),
                min_audience=rules.OLDCUST_MIN_AUDIENCE,
                # R-OC-9 / R-BEN-1: the coupon every message carries, one unit of stock held per sent message.
                offer=OfferPlan(coupon_ids=[spec.coupon_id], shared=True) if spec.coupon_id else None,
                pacing_per_hour=spec.pacing.per_hour,
                attribution=self.attribution(spec),  # R-ATT-1: the default week after the reach
            )
        ]
