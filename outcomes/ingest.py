"""A batch of outcome events in: checked, stored set-based, applied once (R-EV-1..3).

One transaction per batch:
1. shape (outcomes/events.py): a malformed event is refused with its field and rule;
2. what the events name, read in one statement (primary-key probes for the batch's ids):
   the shop's campaigns (a campaign id the shop does not have is refused), its customers (an
   event of a consumer who is no customer of the shop is counted `unknown_customer` and not
   stored), the orders (an order of another shop or of another consumer is refused, and an order
   paid or refunded must exist or be created in the same batch);
3. one INSERT of the batch into outcome_events, ON CONFLICT DO NOTHING on (shop_id, event_id):
   what it returns are the new events; the others were sent before (`duplicate`);
4. the effects of the new events only, each one statement for the batch: orders created (inserted
   if new), paid (paid_at, status), refunded (refunded_amount, never past the amount), and
   unsubscriptions (shop_customers.unsub_<channel>, read by every later send at its send time).

A resent batch therefore finds every event stored and changes nothing. Racing batches that touch
the same rows may deadlock; the loser's transaction is rolled back whole and run again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
from sluice.activities.audience import CHANNELS
from sluice.outcomes.events import ORDER_KINDS, EventsAnswer, OutcomeEvent, OutcomeKind, validate

# What the batch names, in one round trip: the shop's campaigns by the merchant's id (probes of the unique
# (shop_id, campaign_ref) index), which consumers are customers of the shop (primary-key probes of
# shop_customers) and the orders as they stand (primary-key probes of orders). $1 shop, $2 campaign ids,
# $3 consumers, $4 orders.
LOOKUP = """
    SELECT c.refs, c.ids, k.known, o.order_ids, o.shops, o.buyers
    FROM (SELECT coalesce(array_agg(campaign_ref), '{}') AS refs, coalesce(array_agg(id), '{}') AS ids
          FROM campaigns WHERE shop_id = $1 AND campaign_ref = ANY($2::text[])) c,
         (SELECT coalesce(array_agg(consumer_id), '{}') AS known
          FROM shop_customers WHERE shop_id = $1 AND consumer_id = ANY($3::bigint[])) k,
         (SELECT coalesce(array_agg(order_id), '{}') AS order_ids, coalesce(array_agg(shop_id), '{}') AS shops,
                 coalesce(array_agg(consumer_id), '{}') AS buyers
          FROM orders WHERE order_id = ANY($4::bigint[])) o
"""
# The batch in one statement; RETURNING names the events that are new (and what was stored for them).
# Primary-key probes of outcome_events plus the campaign index entry of each new row.
INSERT_EVENTS = """
    INSERT INTO outcome_events (shop_id, event_id, kind, consumer_id, campaign_id, phase, channel, order_id,
                                product_id, amount, occurred_at)
    SELECT $1, u.* FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::smallint[], $7::text[],
                               $8::bigint[], $9::bigint[], $10::numeric[], $11::timestamptz[])
                        AS u(event_id, kind, consumer_id, campaign_id, phase, channel, order_id, product_id, amount, at)
    ON CONFLICT (shop_id, event_id) DO NOTHING
    RETURNING event_id, kind, consumer_id, channel, order_id, amount, occurred_at
"""
# Orders created: inserted when new (a loaded order, or one created before, stays as it is), pending
# until paid. $2 ids, $3 consumers, $4 created_at, $5 amounts.
CREATE_ORDERS = """
    INSERT INTO orders (order_id, shop_id, consumer_id, created_at, amount, status)
    SELECT u.id, $1, u.consumer_id, u.at, u.amount, 'pending'
    FROM unnest($2::bigint[], $3::bigint[], $4::timestamptz[], $5::numeric[]) AS u(id, consumer_id, at, amount)
    ORDER BY u.id
    ON CONFLICT (order_id) DO NOTHING
"""
# Orders paid: the first payment's instant; a pending order becomes paid. One row per order ($2, $3).
PAY_ORDERS = """
    UPDATE orders o SET paid_at = coalesce(o.paid_at, u.at), status = CASE WHEN o.status = 'pending' THEN 'paid' ELSE o.status END
    FROM unnest($2::bigint[], $3::timestamptz[]) AS u(id, at)
    WHERE o.order_id = u.id AND o.shop_id = $1
"""
# Refunds add up, never past the amount; refunded in full, the order's status is refunded. One row per
# order ($2, with the batch's new refunds summed in $3).
REFUND_ORDERS = """
    UPDATE orders o SET refunded_amount = least(o.amount, o.refunded_amount + u.refund),
                        status = CASE WHEN o.refunded_amount + u.refund >= o.amount THEN 'refunded' ELSE o.status END
    FROM unnest($2::bigint[], $3::numeric[]) AS u(id, refund)
    WHERE o.order_id = u.id AND o.shop_id = $1
"""


def _unsubscribe_sql() -> str:
    """R-EXC-1: each consumer's opt-out of the channels named, set at once. One row per consumer ($2),
    with the channels named for them ($3, text[] joined by ','). Primary-key probes of shop_customers."""
    sets = ", ".join(f"{unsub} = c.{unsub} OR '{ch}' = ANY(string_to_array(u.channels, ','))"
                     for ch, (unsub, _, _) in CHANNELS.items())  # fmt: skip
    return f"""
    UPDATE shop_customers c SET {sets}
    FROM unnest($2::bigint[], $3::text[]) AS u(consumer_id, channels)
    WHERE c.shop_id = $1 AND c.consumer_id = u.consumer_id
"""


UNSUBSCRIBE = _unsubscribe_sql()
_RETRIED = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
_ATTEMPTS = 5


async def ingest(pool: asyncpg.Pool, shop_id: str, items: Sequence[Any]) -> EventsAnswer:
    """Check, store and apply one batch of the shop's outcome events; the answer counts every event once."""
    items = list(items)
    for attempt in range(_ATTEMPTS):
        answer = EventsAnswer(received=len(items))
        events = validate(items, answer)
        try:
            async with pool.acquire() as conn, conn.transaction():
                await _store(conn, shop_id, events, answer)
            answer.refusals.sort(key=lambda r: r.index)
            return answer
        except _RETRIED:
            if attempt == _ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


async def _store(conn: asyncpg.Connection, shop_id: str, events: list[tuple[int, OutcomeEvent]], answer: EventsAnswer) -> None:
    if not events:
        return
    found = await conn.fetchrow(
        LOOKUP, shop_id, sorted({e.campaign_id for _, e in events if e.campaign_id is not None}),
        sorted({e.consumer_id for _, e in events}), sorted({e.order_id for _, e in events if e.kind in ORDER_KINDS}),
    )  # fmt: skip
    campaigns = dict(zip(found["refs"], found["ids"], strict=True))
    known = set(found["known"])
    orders = {o: (shop, buyer) for o, shop, buyer in zip(found["order_ids"], found["shops"], found["buyers"], strict=True)}
    keep = decide(shop_id, events, campaigns, known, orders, answer)
    if not keep:
        return
    rows = await conn.fetch(
        INSERT_EVENTS, shop_id,
        [e.event_id for e in keep], [e.kind.value for e in keep], [e.consumer_id for e in keep],
        [campaigns.get(e.campaign_id) for e in keep], [e.phase for e in keep],
        [e.channel.value if e.channel else None for e in keep], [e.order_id for e in keep],
        [e.product_id for e in keep], [e.amount for e in keep], [e.occurred_at for e in keep],
    )  # fmt: skip
    answer.accepted = len(rows)
    answer.duplicate += len(keep) - len(rows)
    await _apply(conn, shop_id, rows)


def decide(
    shop_id: str, events: list[tuple[int, OutcomeEvent]], campaigns: dict[str, int], known: set[int],
    orders: dict[int, tuple[str, int]], answer: EventsAnswer,
) -> list[OutcomeEvent]:
    """R-EV-3: which events may be stored, given what the shop has; the others counted or refused in
    `answer`. An event id twice in the batch: the first is kept, the second counted as a duplicate."""
    created = {e.order_id: e.consumer_id for _, e in events if e.kind == OutcomeKind.order_created and e.consumer_id in known}
    keep: list[OutcomeEvent] = []
    seen: set[str] = set()
    for i, e in events:
        if e.campaign_id is not None and e.campaign_id not in campaigns:
            answer.refuse(i, e.event_id, "campaign_id", "R-EV-3", f"no campaign {e.campaign_id!r} in this shop")
            continue
        if e.consumer_id not in known:
            answer.unknown_customer += 1
            continue
        if e.kind in ORDER_KINDS:
            owner = orders.get(e.order_id)
            if owner is not None and owner[0] != shop_id:
                answer.refuse(i, e.event_id, "order_id", "R-EV-3", f"order {e.order_id} is not an order of this shop")
                continue
            buyer = owner[1] if owner is not None else created.get(e.order_id)
            if buyer is None:
                answer.refuse(i, e.event_id, "order_id", "R-EV-3", f"unknown order {e.order_id}: report order_created first")
                continue
            if buyer != e.consumer_id:
                answer.refuse(i, e.event_id, "consumer_id", "R-EV-3", f"order {e.order_id} is not this consumer's")
                continue
        if e.event_id in seen:
            answer.duplicate += 1
            continue
        seen.add(e.event_id)
        keep.append(e)
    return keep


async def _apply(conn: asyncpg.Connection, shop_id: str, rows: list) -> None:
    """The effects of the new events (`INSERT_EVENTS` rows), each kind one statement, in order: created,
    paid, refunded, unsubscribed. Rows are taken in ascending key order so racing batches lock alike."""
    created = sorted((r["order_id"], r["consumer_id"], r["occurred_at"], r["amount"])
                     for r in rows if r["kind"] == OutcomeKind.order_created)  # fmt: skip
    if created:
        await conn.execute(CREATE_ORDERS, shop_id, *map(list, zip(*created, strict=True)))
    paid: dict[int, Any] = {}
    refunds: dict[int, Any] = {}
    unsub: dict[int, set[str]] = {}
    for r in rows:
        if r["kind"] == OutcomeKind.order_paid:
            paid[r["order_id"]] = min(paid.get(r["order_id"], r["occurred_at"]), r["occurred_at"])
        elif r["kind"] == OutcomeKind.order_refunded:
            refunds[r["order_id"]] = refunds.get(r["order_id"], 0) + r["amount"]
        elif r["kind"] == OutcomeKind.unsubscribed:
            unsub.setdefault(r["consumer_id"], set()).add(r["channel"])
    if paid:
        ids = sorted(paid)
        await conn.execute(PAY_ORDERS, shop_id, ids, [paid[i] for i in ids])
    if refunds:
        ids = sorted(refunds)
        await conn.execute(REFUND_ORDERS, shop_id, ids, [refunds[i] for i in ids])
    if unsub:
        ids = sorted(unsub)
        await conn.execute(UNSUBSCRIBE, shop_id, ids, [",".join(sorted(unsub[i])) for i in ids])
