"""The outcome events a shop reports after a send, and how one batch of them is answered (R-EV-1).

An event names its kind, the consumer, when it happened and the shop's own id for it (`event_id`,
the idempotency key, R-EV-2). It may name the campaign (the merchant's campaign id, as in the spec)
and the phase index that caused it. Order events name the order; an order created or a refund
gives its amount; an unsubscription names the channel it ends.
"""

from __future__ import annotations

import re
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, Field, TypeAdapter, ValidationError
from sluice.schemas.campaign import Channel, Ident, Strict
from sluice.schemas.campaign import _instant_string as instant_string
from sluice.schemas.rules import error_details


class OutcomeKind(StrEnum):
    delivered = "delivered"
    opened = "opened"
    clicked = "clicked"
    replied = "replied"  # an inquiry: the buyer answered (R-REP-1's inquiry rate)
    coupon_claimed = "coupon_claimed"
    product_clicked = "product_clicked"
    order_created = "order_created"
    order_paid = "order_paid"
    order_refunded = "order_refunded"
    unsubscribed = "unsubscribed"  # R-EXC-1: at once, for every later send on the channel


ORDER_KINDS = frozenset({OutcomeKind.order_created, OutcomeKind.order_paid, OutcomeKind.order_refunded})
# R-EV-1: what each kind must carry besides the common fields.
REQUIRED: dict[OutcomeKind, tuple[str, ...]] = {
    OutcomeKind.order_created: ("order_id", "amount"),
    OutcomeKind.order_paid: ("order_id",),
    OutcomeKind.order_refunded: ("order_id", "amount"),
    OutcomeKind.product_clicked: ("product_id",),
    OutcomeKind.unsubscribed: ("channel",),
}
EVENT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
MAX_BATCH = 5_000  # events per request or CLI batch
MAX_EVENTS_BYTES = 2 * 1024 * 1024  # R-API-SIZE for POST /events (api/gate.py, per route): a full batch fits
MAX_ID = 2**63 - 1
MAX_PHASE = 31
# An instant with its UTC offset, as a spec gives one (never a number), without the spec's 2000..2100 bounds:
# comparing every event's instant with them cost more than all the rest of its validation.
Instant = Annotated[AwareDatetime, BeforeValidator(instant_string), Field(description="ISO 8601 with a UTC offset")]


class OutcomeEvent(Strict):
    event_id: str = Field(pattern=EVENT_ID_PATTERN, description="the shop's own id of the event: resent, it changes nothing")
    kind: OutcomeKind
    consumer_id: int = Field(ge=1, le=MAX_ID)
    occurred_at: Instant
    campaign_id: Ident | None = Field(default=None, description="the campaign that caused it (the merchant's campaign id)")
    phase: int | None = Field(default=None, ge=0, le=MAX_PHASE, description="the phase index within that campaign")
    channel: Channel | None = None
    order_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    product_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    amount: Decimal | None = Field(
        default=None, ge=0, max_digits=12, decimal_places=2, description="order_created: its amount; order_refunded: refunded now"
    )

    def problem(self) -> tuple[str, str] | None:
        """R-EV-1 between fields: (field, message) of what the kind needs and the event lacks, or None."""
        for name in REQUIRED.get(self.kind, ()):
            if getattr(self, name) is None:
                return name, f"a {self.kind.value} event needs {name}"
        if self.phase is not None and self.campaign_id is None:
            return "campaign_id", "a phase needs its campaign_id"
        return None


class Refusal(BaseModel):
    index: int = Field(description="the event's position in the batch")
    event_id: str | None
    field: str
    rule: str
    message: str


class EventsAnswer(BaseModel):
    received: int = 0
    accepted: int = Field(default=0, description="new events, stored and applied")
    duplicate: int = Field(default=0, description="event ids the shop sent before (or twice in the batch): nothing changed")
    unknown_customer: int = Field(default=0, description="consumers who are not customers of the shop: not stored")
    refused: int = 0
    refusals: list[Refusal] = Field(default_factory=list)

    def refuse(self, index: int, event_id: str | None, field: str, rule: str, message: str) -> None:
        self.refused += 1
        self.refusals.append(Refusal(index=index, event_id=event_id, field=field, rule=rule, message=message))


class EventBatch(BaseModel):
    events: list[Any] = Field(
        min_length=1, max_length=MAX_BATCH,
        description="outcome events (OutcomeEvent: event_id, kind, consumer_id, occurred_at, and campaign_id, phase, "
                    "channel, order_id, product_id, amount as the kind needs); each is accepted or refused on its own",
    )  # fmt: skip


_BATCH = TypeAdapter(list[OutcomeEvent])
_EVENT_ID = re.compile(EVENT_ID_PATTERN)
_ONE = TypeAdapter(OutcomeEvent)


def validate(items: list[Any], answer: EventsAnswer) -> list[tuple[int, OutcomeEvent]]:
    """The well-formed events with their positions; every other one refused in `answer` with its reason.
    The whole batch is validated in one call; only a batch with a bad event is looked at one by one."""
    try:
        shaped = list(enumerate(_BATCH.validate_python(items)))
    except ValidationError:
        shaped = []
        for i, item in enumerate(items):
            try:
                shaped.append((i, _ONE.validate_python(item)))
            except ValidationError as exc:
                first = error_details(exc.errors())[0]
                raw = item.get("event_id") if isinstance(item, dict) else None
                event_id = raw if isinstance(raw, str) and _EVENT_ID.fullmatch(raw) else None  # echoed only when well-formed
                answer.refuse(i, event_id, first["field"], first["rule"], first["message"])
    good: list[tuple[int, OutcomeEvent]] = []
    for i, e in shaped:
        problem = e.problem()
        if problem is None:
            good.append((i, e))
        else:
            answer.refuse(i, e.event_id, problem[0], "R-EV-1", problem[1])
    return good
