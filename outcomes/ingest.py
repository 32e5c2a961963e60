"""A batch of outcome events in: checked, stored set-based, applied once (R-EV-1..3).

Two statements per batch, no explicit transaction (each is atomic on its own):
1. shape (outcomes/events.py): a malformed event is refused with its field and rule;
2. `LOOKUP`, what the events name, read in one statement (index probes for the batch's ids): the
   shop's campaigns (a campaign id the shop does not have is refused), its customers (an event of a
   consumer who is no customer of the shop is counted `unknown_customer` and not stored), the orders
   (an order of another shop or of another consumer is refused, and an order paid or refunded must
   exist or be created in the same batch); `decide` (pure) picks the events to store;
3. `STORE`, one statement: the batch inserted into outcome_events, ON CONFLICT DO NOTHING on
   (shop_id, event_id): what the insert returns are the new events (the others were sent before:
   `duplicate`), and the effects of the new events only, in data-modifying CTEs of the same
   statement: orders created (inserted if new, pending until paid), paid (paid_at, status), refunded
   (refunded_amount, never past the amount), and unsubscriptions (shop_customers.unsub_<channel>,
   read by every later send at its send time).

A resent batch therefore finds every event stored and changes nothing. Racing batches that touch
the same rows may deadlock; the loser's statement is rolled back whole and run again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
from sluice.activities.audience import CHANNELS
from sluice.outcomes.events import ORDER_KINDS, EventsAnswer, OutcomeEvent, OutcomeKind, validate

# What the batch names, in one round trip: the shop's campaigns by the merchant's id (probes of the unique
# (shop_id, campaign_ref) index), which consumers are customers of the shop and the orders as they stand.
# $1 shop, $2 campaign ids, $3 consumers, $4 orders. The customers and the orders are probed one id at a
# time through their primary keys: the LATERAL ... OFFSET 0 keeps the planner from reading a small shop's
# whole customer table for every batch instead (the bench's shop of 100,000 customers, batches of 1,000: 59 ms
# of database CPU per 1,000 events with that sequential scan, 42 to 52 ms with the probes; docs/benchmarks.md).
LOOKUP = """
    SELECT c.refs, c.ids, k.known, o.order_ids, o.shops, o.buyers
    FROM (SELECT coalesce(array_agg(campaign_ref), '{}') AS refs, coalesce(array_agg(id), '{}') AS ids
          FROM campaigns WHERE shop_id = $1 AND campaign_ref = ANY($2::text[])) c,
         (SELECT coalesce(array_agg(s.consumer_id), '{}') AS known
          FROM unnest($3::bigint[]) AS u(id),
               LATERAL (SELECT s.consumer_id FROM shop_customers s WHERE s.shop_id = $1 AND s.consumer_id = u.id OFFSET 0) s) k,
         (SELECT coalesce(array_agg(o.order_id), '{}') AS order_ids, coalesce(array_agg(o.shop_id), '{}') AS shops,
                 coalesce(array_agg(o.consumer_id), '{}') AS buyers
          FROM unnest($4::bigint[]) AS u(id),
               LATERAL (SELECT o.order_id, o.shop_id, o.consumer_id FROM orders o WHERE o.order_id = u.id OFFSET 0) o) o
"""


def _order_effects(row: str, paid_at: str, refund: str) -> str:
    """SET of an order `row` that exists: the first payment's instant (a pending order becomes paid), then the
    refunds, adding up, never past the amount (refunded in full: status refunded)."""
    return f"""paid_at = coalesce({row}.paid_at, {paid_at}),
        refunded_amount = CASE WHEN {refund} IS NULL THEN {row}.refunded_amount
                               ELSE least({row}.amount, {row}.refunded_amount + {refund}) END,
        status = CASE WHEN {row}.refunded_amount + {refund} >= {row}.amount THEN 'refunded'
                      WHEN {paid_at} IS NOT NULL AND {row}.status = 'pending' THEN 'paid' ELSE {row}.status END"""


def _store_sql() -> str:
    """The batch and its effects in one statement. $1 shop; $2..$11 the events to store (`decide`), one array
    per column. Returns how many were new.

    Cost: per event a primary-key probe and insert of outcome_events (plus its index entries), and per
    order and unsubscribing consumer a primary-key probe and write; with `LOOKUP`, 37 to 42 ms of database
    CPU per 1,000 events in batches of 5,000 on the 2-core bench machine, where the former six statements
    in a transaction took 51 ms (docs/benchmarks.md, "Outcome events and attribution"). The effects read only `new`, the
    rows the insert returned, so an event id sent twice with different contents is applied as it was
    stored. An order the batch creates is inserted with what the batch does to it already applied; if it
    exists by then (loaded, created before, or by a batch committed meanwhile: ON CONFLICT sees it) it gets
    the same effects as an order that existed (`upd`). Statement order cannot matter: `ins` and `upd`
    touch disjoint orders."""
    unsub = ",\n            ".join(f"{col} = c.{col} OR '{ch}' = ANY(u.channels)" for ch, (col, _, _) in CHANNELS.items())
    return f"""
    WITH new AS (
        INSERT INTO outcome_events (shop_id, event_id, kind, consumer_id, campaign_id, phase, channel, order_id,
                                    product_id, amount, occurred_at)
        SELECT $1, u.* FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::smallint[], $7::text[],
                                   $8::bigint[], $9::bigint[], $10::numeric[], $11::timestamptz[])
                            AS u(event_id, kind, consumer_id, campaign_id, phase, channel, order_id, product_id, amount, at)
        ON CONFLICT (shop_id, event_id) DO NOTHING
        RETURNING kind, consumer_id, channel, order_id, amount, occurred_at
    ),
    o AS (  -- per order: created (the earliest creation counts), first paid, refunded in sum by the new events;
            -- every new event of an order is its buyer's (decide)
        SELECT order_id, bool_or(kind = 'order_created') AS created, min(consumer_id) AS buyer,
               (array_agg(occurred_at ORDER BY occurred_at, amount) FILTER (WHERE kind = 'order_created'))[1] AS created_at,
               (array_agg(amount ORDER BY occurred_at, amount) FILTER (WHERE kind = 'order_created'))[1] AS amount,
               min(occurred_at) FILTER (WHERE kind = 'order_paid') AS paid_at,
               sum(amount) FILTER (WHERE kind = 'order_refunded') AS refund
        FROM new WHERE kind IN ('order_created', 'order_paid', 'order_refunded')
        GROUP BY order_id
    ),
    ins AS (
        INSERT INTO orders AS x (order_id, shop_id, consumer_id, created_at, amount, status, paid_at, refunded_amount)
        SELECT order_id, $1, buyer, created_at, amount,
               CASE WHEN refund >= amount THEN 'refunded' WHEN paid_at IS NOT NULL THEN 'paid' ELSE 'pending' END,
               paid_at, least(amount, coalesce(refund, 0))
        FROM o WHERE created ORDER BY order_id
        ON CONFLICT (order_id) DO UPDATE SET
            {_order_effects("x", "EXCLUDED.paid_at", "(SELECT o.refund FROM o WHERE o.order_id = EXCLUDED.order_id)")}
        WHERE x.shop_id = $1
    ),
    upd AS (
        UPDATE orders x SET {_order_effects("x", "o.paid_at", "o.refund")}
        FROM o WHERE NOT o.created AND x.order_id = o.order_id AND x.shop_id = $1
    ),
    unsub AS (  -- R-EXC-1: each consumer's opt-out of the channels named, set at once
        UPDATE shop_customers c SET
            {unsub}
        FROM (SELECT consumer_id, array_agg(channel) AS channels FROM new WHERE kind = 'unsubscribed'
              GROUP BY consumer_id) u
        WHERE c.shop_id = $1 AND c.consumer_id = u.consumer_id
    )
    SELECT count(*)::int FROM new
"""


STORE = _store_sql()
_RETRIED = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
_ATTEMPTS = 5


async def ingest(pool: asyncpg.Pool, shop_id: str, items: Sequence[Any]) -> EventsAnswer:
    """Check, store and apply one batch of the shop's outcome events; the answer counts every event once."""
    items = list(items)
    for attempt in range(_ATTEMPTS):
        answer = EventsAnswer(received=len(items))
        events = validate(items, answer)
        try:
            async with pool.acquire() as conn:
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
    answer.accepted = await conn.fetchval(
        STORE, shop_id,
        [e.event_id for e in keep], [e.kind.value for e in keep], [e.consumer_id for e in keep],
        [campaigns.get(e.campaign_id) for e in keep], [e.phase for e in keep],
        [e.channel.value if e.channel else None for e in keep], [e.order_id for e in keep],
        [e.product_id for e in keep], [e.amount for e in keep], [e.occurred_at for e in keep],
    )  # fmt: skip
    answer.duplicate += len(keep) - answer.accepted


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
