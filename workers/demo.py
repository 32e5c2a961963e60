"""The demo: a shop whose send window is open now, and a K-OLDCUST campaign through the real API.

The shop's time zone is chosen among real IANA zones so that it is between
09:00 and 19:00 there now: the campaign sends within a minute at any time of
day without bending the 08:00-22:00 rule (R-WIN-1).
"""

from __future__ import annotations

import time as walltime
from datetime import UTC, datetime

import httpx
from sluice.workflows.calendar import local_day, zone

ZONES = [
    "Pacific/Auckland", "Australia/Sydney", "Asia/Tokyo", "Asia/Shanghai", "Asia/Bangkok", "Asia/Kolkata",
    "Asia/Dubai", "Europe/Moscow", "Europe/Berlin", "Europe/London", "Atlantic/Azores", "America/Sao_Paulo",
    "America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles", "America/Anchorage",
    "Pacific/Honolulu", "Pacific/Tahiti", "Asia/Kathmandu", "Asia/Karachi", "America/Halifax",
    "Atlantic/South_Georgia", "Pacific/Kiritimati",
]  # fmt: skip


def open_window_zone(now: datetime) -> str:
    """The zone whose local time now is closest to 14:00 (always within 09:00-19:00 given these zones)."""

    def distance(tz: str) -> float:
        t = now.astimezone(zone(tz))
        return abs(t.hour + t.minute / 60 - 14)

    return min(ZONES, key=distance)


def demo_spec(shop_id: str, tz: str, now: datetime) -> dict:
    return {
        "kind": "K-OLDCUST",
        "shop_id": shop_id,
        "campaign_id": f"demo-{now:%Y%m%d-%H%M%S}",
        "scene": "Old friends",
        "card_text": "A gift for returning customers: 20% off this week",
        "body": "Thank you for shopping with us. Your coupon is waiting in the shop.",
        "send_date": local_day(now, tz).isoformat(),
        "send_time": "08:00",
    }


def watch(api_base: str, workflow_id: str, *, api_key: str, timeout_s: float = 600, echo=print) -> dict:
    """Print progress until the campaign completes; returns the last status."""
    started = walltime.monotonic()
    last = {}
    auth = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=api_base, headers=auth, timeout=10) as http:
        while walltime.monotonic() - started < timeout_s:
            last = http.get(f"/campaigns/{workflow_id}").json()
            p = last.get("progress", {})
            totals = p.get("totals", {}).get("reach", {})
            echo(
                f"  state={p.get('state'):<9} decided={p.get('day_done', 0):>8,} / {p.get('day_eligible', 0):,}"
                f"  sent={totals.get('sent', 0):,}  ({walltime.monotonic() - started:5.1f}s)"
            )
            if p.get("state") in ("completed", "cancelled"):
                break
            walltime.sleep(2)
    return last


async def create_demo_key(dsn: str, shop_id: str) -> str:
    """An API key for the demo shop (the API answers no campaign request without one)."""
    import asyncpg
    from sluice.api.keys import create_key

    conn = await asyncpg.connect(dsn)
    try:
        return (await create_key(conn, shop_id)).key
    finally:
        await conn.close()


async def same_zone_as_shop(dsn: str, shop_id: str, tz: str) -> int:
    """Move the shop's customers who have a zone of their own into the shop's (db/seed.py zones_into)."""
    import asyncpg
    from sluice.db.seed import zones_into

    conn = await asyncpg.connect(dsn)
    try:
        return await zones_into(conn, shop_id, tz)
    finally:
        await conn.close()


async def next_consumer_offset(dsn: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT coalesce(max(consumer_id), 0) FROM consumers")
    finally:
        await conn.close()


def utcnow() -> datetime:
    return datetime.now(UTC)
