"""A chunk's coupon units (R-BEN-1, R-RP-5, R-OC-9): StockTaking reads the stock unlocked, and at the chunk's end
takes its units in one statement that locks the coupon rows and re-checks them. Never oversold: a chunk whose
units were taken meanwhile by another transaction, or whose coupon is no longer valid at its hand-off instant,
raises StockRaced and takes nothing (the chunk then runs again with the lock first)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sluice.activities.send import StockRaced, StockTaking

AT = datetime(2026, 6, 1, 12, tzinfo=UTC)


async def _coupons(pool, **stock: int) -> None:
    await pool.execute("INSERT INTO shops (shop_id, name, timezone, industry) VALUES ('s', 's', 'UTC', 'grocery')")
    for cid, n in stock.items():
        await pool.execute(
            "INSERT INTO coupons (coupon_id, shop_id, name, valid_from, valid_to, stock) VALUES ($1, 's', $1, $2, $3, $4)",
            cid, AT - timedelta(days=1), AT + timedelta(hours=1), n,
        )  # fmt: skip


async def _stock(pool) -> dict[str, int]:
    return dict(await pool.fetch("SELECT coupon_id, stock FROM coupons ORDER BY coupon_id"))


async def test_units_read_unlocked_are_taken_at_the_end(clean_db):
    await _coupons(clean_db, a=5, b=3)
    async with clean_db.acquire() as conn, conn.transaction():
        taking = StockTaking(locked=False, at=AT)
        assert await taking.usable(conn, ["a", "b"], "s") == {"a": 5, "b": 3}
        taking.taken.update({"a": 5, "b": 1})
        await taking.apply(conn, "s")
    assert await _stock(clean_db) == {"a": 0, "b": 2}


async def test_units_taken_meanwhile_make_the_chunk_raced_and_nothing_is_taken(clean_db):
    await _coupons(clean_db, a=5, b=3)
    async with clean_db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        taking = StockTaking(locked=False, at=AT)
        assert await taking.usable(conn, ["a", "b"], "s") == {"a": 5, "b": 3}
        taking.taken.update({"a": 4, "b": 3})
        # Another chunk takes 2 of `a` and commits before this one's end.
        await clean_db.execute("UPDATE coupons SET stock = stock - 2 WHERE coupon_id = 'a'")
        with pytest.raises(StockRaced, match="'a'"):
            await taking.apply(conn, "s")
        await tx.rollback()
    assert await _stock(clean_db) == {"a": 3, "b": 3}


async def test_the_end_waits_for_a_chunk_holding_the_rows_and_judges_its_outcome(clean_db):
    """Two chunks' ends at once: the second waits for the first's commit and re-checks the latest stock."""
    await _coupons(clean_db, a=5)
    first, second = await clean_db.acquire(), await clean_db.acquire()
    try:
        t1, t2 = first.transaction(), second.transaction()
        await t1.start()
        await t2.start()
        one, two = StockTaking(locked=False, at=AT), StockTaking(locked=False, at=AT)
        assert await one.usable(first, ["a"], "s") == await two.usable(second, ["a"], "s") == {"a": 5}
        one.taken["a"], two.taken["a"] = 3, 3
        await one.apply(first, "s")  # holds the row
        waiting = asyncio.ensure_future(two.apply(second, "s"))
        await asyncio.sleep(0.3)
        assert not waiting.done(), "the second end did not wait for the row's lock"
        await t1.commit()
        with pytest.raises(StockRaced):
            await waiting
        await t2.rollback()
    finally:
        await clean_db.release(first)
        await clean_db.release(second)
    assert await _stock(clean_db) == {"a": 2}


async def test_a_coupon_no_longer_valid_at_the_hand_off_is_not_taken(clean_db):
    await _coupons(clean_db, a=5)
    later = AT + timedelta(hours=2)  # after valid_to
    async with clean_db.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        taking = StockTaking(locked=False, at=later)
        taking.taken["a"] = 1  # as if read while valid
        with pytest.raises(StockRaced):
            await taking.apply(conn, "s")
        await tx.rollback()
    assert await _stock(clean_db) == {"a": 5}


async def test_a_rerun_reads_under_the_lock_and_takes(clean_db):
    await _coupons(clean_db, a=2)
    async with clean_db.acquire() as conn, conn.transaction():
        taking = StockTaking(locked=True, at=AT)
        assert await taking.usable(conn, ["a"], "s") == {"a": 2}
        taking.taken["a"] = 2
        await taking.apply(conn, "s")
    assert await _stock(clean_db) == {"a": 0}
