"""POST /events: a batch of the key's shop's outcome events (R-EV-1..3), each accepted or refused on its own."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request
from sluice.api.deps import ErrorBody, KeyShop
from sluice.outcomes.events import EventBatch, EventsAnswer
from sluice.outcomes.ingest import ingest

router = APIRouter()
EVENTS_PATH = "/events"


@router.post(
    EVENTS_PATH,
    response_model=EventsAnswer,
    responses={401: {"model": ErrorBody}, 413: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
async def post_events(request: Request, shop: KeyShop, batch: Annotated[EventBatch, Body()]) -> EventsAnswer:
    """Outcome events of the key's shop (delivered, opened, clicked, replied, coupon_claimed, product_clicked,
    order_created, order_paid, order_refunded, unsubscribed). Idempotent on `event_id`: a resent event is
    counted `duplicate` and changes nothing. A consumer who is not a customer of the shop is counted
    `unknown_customer` and not stored; a malformed event, or one naming a campaign or order the shop does not
    have, is refused with its field and rule. An unsubscription holds for every later send at once."""
    return await ingest(request.app.state.pool, shop, batch.events)
