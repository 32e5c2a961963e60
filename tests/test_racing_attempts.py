"""Two attempts of the same send slice at once (the ledger's key decides: docs/design.md, "The ledger and the caps").

A worker that lost its heartbeat keeps working while Temporal hands the slice to
another worker: both run the same chunks. The ledger insert is a plain INSERT, so
the attempt that comes second fails on the ledger's key, its transaction (counter
bumps included) rolls back whole, and it reads the chunk again, now seeing the
first attempt's rows. Whoever wins each chunk, every recipient is decided once,
counted once and handed to the outbox once.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
from sluice.activities.send import SendActivities
from sluice.channels.registry import ChannelRegistry
from sluice.schemas.activities import SendSliceInput
from sluice.schemas.campaign import TemplateCap
from temporalio.testing import ActivityEnvironment

from tests.factories import add_customers, make_campaign, make_shop
from tests.ledger_checks import assert_fatigue_matches_ledger, assert_ledger_exact

CONSUMERS = 600


class CountingSend(SendActivities):
    """The real send activities, counting the chunks an attempt lost to another one."""

    lost = 0

    async def _reserve(self, *args, **kwargs):
        try:
            return await super()._reserve(*args, **kwargs)
        except asyncpg.UniqueViolationError:
            self.lost += 1
            raise


async def _campaign_with_snapshot(pool, shop: str, day) -> int:
    cid = await make_campaign(pool, shop, "race", state="sending")
    await pool.execute(
        "INSERT INTO audience_snapshots (campaign_id, phase, day, seq, consumer_id)"
        " SELECT $1, 0, $2, g - 1, g FROM generate_series(1, $3::int) g",
        cid,
        day,
        CONSUMERS,
    )
    return cid


async def test_racing_attempts_of_one_slice_send_each_recipient_once(clean_db):
    pool = clean_db
    now = datetime.now(UTC)
    shop = "race-shop"
    await make_shop(pool, shop, "Asia/Shanghai")
    await add_customers(pool, shop, list(range(1, CONSUMERS + 1)), ordered_at=now - timedelta(days=3))
    day = now.date()
    cid = await _campaign_with_snapshot(pool, shop, day)
    send = CountingSend(pool, ChannelRegistry.outbox_for_all(pool), platform_timezone="Asia/Shanghai")
    inp = SendSliceInput(
        campaign_db_id=cid, shop_id=shop, phase_index=0, day=day, channel="chat",
        template_cap=TemplateCap(group="g1", count=1, days=1), text="race", seq_lo=0, seq_hi=CONSUMERS,
        budget=CONSUMERS, decided_at=now, window_end=now + timedelta(hours=1), chunk_size=20,
    )  # fmt: skip

    # Three attempts at once over 30 chunks: they collide on most of them.
    results = await asyncio.gather(*(ActivityEnvironment().run(send.send_slice, inp) for _ in range(3)))

    counts = await assert_ledger_exact(pool, cid)
    assert counts == {"sent": CONSUMERS}
    await assert_fatigue_matches_ledger(pool)
    # Each counter holds exactly one send: no attempt's bump survived without its ledger row.
    assert await pool.fetchval("SELECT count(*) FROM fatigue_day WHERE sent <> 1") == 0
    # Every attempt accounts for the whole slice, as sent by itself or found sent by another.
    assert [r.sent for r in results] == [CONSUMERS] * 3, [r.model_dump() for r in results]
    assert [r.next_seq for r in results] == [CONSUMERS] * 3
    # The attempts really raced: some chunk was decided by two of them at once, and the loser's
    # transaction rolled back (its template-cap suppressions and counter bumps with it).
    assert send.lost >= 1
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE campaign_id = $1", cid) == CONSUMERS // 20
