"""Small, exact test data: shops and customers whose eligibility a test controls to the minute."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg


async def make_shop(
    pool: asyncpg.Pool, shop_id: str, timezone: str, industry: str = "beauty", *, sms_credits: int = 1_000_000
) -> None:
    """A shop; with `sms_credits` > 0 one SMS recharge of that many messages bought yesterday (R-AQ-5)."""
    inserted = await pool.fetchval(
        "INSERT INTO shops (shop_id, name, timezone, industry) VALUES ($1, $1, $2, $3) ON CONFLICT DO NOTHING"
        " RETURNING true",
        shop_id,
        timezone,
        industry,
    )
    if inserted and sms_credits > 0:
        from sluice.channels.sms import recharge

        await recharge(pool, shop_id, sms_credits, datetime.now(UTC) - timedelta(days=1))


async def make_campaign(pool: asyncpg.Pool, shop_id: str, ref: str, state: str = "created") -> int:
    """A campaigns row for tests that drive activities directly, without a workflow; its id."""
    return await pool.fetchval(
        "INSERT INTO campaigns (shop_id, campaign_ref, workflow_id, kind, spec, state)"
        " VALUES ($1, $2, $1 || '.' || $2, 'K-PHASED', '{}'::jsonb, $3) RETURNING id",
        shop_id,
        ref,
        state,
    )


async def add_customers(
    pool: asyncpg.Pool,
    shop_id: str,
    consumer_ids: list[int],
    *,
    ordered_at: datetime,
    visited_at: datetime | None = None,
    inquiry_at: datetime | None = None,
    **flags,
) -> None:
    """Old customers (R-OC-1) when ordered_at and visited_at fall in the windows; flags set
    shop_customers columns (blacklisted=True, unsub_chat=True, chat_id=None, ...)."""
    visited_at = visited_at or ordered_at
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(
            "INSERT INTO consumers (consumer_id) VALUES ($1) ON CONFLICT DO NOTHING", [(c,) for c in consumer_ids]
        )
        chat = flags.pop("chat_id", "present")
        await conn.copy_records_to_table(
            "shop_customers",
            columns=["shop_id", "consumer_id", "chat_id", "phone", "email", *flags.keys()],
            records=[
                (
                    shop_id,
                    c,
                    None if chat is None else f"tb_{c}",
                    f"138{c:08d}",
                    f"user{c}@example.com",
                    *flags.values(),
                )
                for c in consumer_ids
            ],
        )
        base = await conn.fetchval("SELECT coalesce(max(order_id), 0) FROM orders")
        await conn.copy_records_to_table(
            "orders",
            columns=["order_id", "shop_id", "consumer_id", "created_at", "paid_at", "amount", "status"],
            records=[
                (base + i + 1, shop_id, c, ordered_at, ordered_at + timedelta(minutes=5), 99, "paid")
                for i, c in enumerate(consumer_ids)
            ],
        )
        events = [(shop_id, c, "visit", visited_at) for c in consumer_ids]
        if inquiry_at:
            events += [(shop_id, c, "inquiry", inquiry_at) for c in consumer_ids]
        await conn.copy_records_to_table(
            "behaviour_events", columns=["shop_id", "consumer_id", "kind", "occurred_at"], records=events
        )
