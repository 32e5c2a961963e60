"""The schema as migrated: every file applied once, and the fatigue map functions inlined.

A SQL function the planner does not inline runs through the SQL-function
executor on every row (about 2 us a call here, four calls per reserved
recipient); 0003 rewrote them so the planner inlines them. These tests fail if
a later change makes them opaque again (a STABLE call inside, SET, STRICT ...).
"""

from __future__ import annotations

import pytest
from sluice.db.migrate import MIGRATIONS_DIR

INCREMENT_CASES = [
    ({}, "shop-a", {"shop-a": 1}),
    ({"shop-a": 1}, "shop-a", {"shop-a": 2}),
    ({"shop-a": 2, "shop-b": 1}, "shop-b", {"shop-a": 2, "shop-b": 2}),
    ({"shop-a": 1}, "", {"shop-a": 1}),  # a phase without a template cap counts nothing (R-FAT-1)
]
DECREMENT_CASES = [
    ({"shop-a": 2}, "shop-a", {"shop-a": 1}),
    ({"shop-a": 1, "shop-b": 1}, "shop-a", {"shop-b": 1}),  # at zero the key leaves the map
    ({"shop-b": 1}, "shop-a", {"shop-b": 1}),
    ({"shop-a": 1}, "", {"shop-a": 1}),
]


async def test_every_migration_is_recorded_once(pool):
    files = sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))
    recorded = [r["name"] for r in await pool.fetch("SELECT name FROM schema_migrations ORDER BY name")]
    assert recorded == files


@pytest.mark.parametrize("fn", ["fatigue_increment", "fatigue_decrement"])
async def test_fatigue_map_functions_are_inlined(pool, fn):
    # Over a column, so the call cannot be folded into a constant before the plan shows it.
    rows = await pool.fetch(f"EXPLAIN VERBOSE SELECT {fn}(per_shop, 'x') FROM fatigue_day")
    output = "\n".join(r[0] for r in rows)
    assert fn not in output, f"{fn} is called, not inlined:\n{output}"
    assert "jsonb_set" in output


@pytest.mark.parametrize(("fn", "counts", "key", "expected"),
                         [("fatigue_increment", *c) for c in INCREMENT_CASES]
                         + [("fatigue_decrement", *c) for c in DECREMENT_CASES])  # fmt: skip
async def test_fatigue_map_functions_count(pool, fn, counts, key, expected):
    got = await pool.fetchval(f"SELECT {fn}($1::jsonb, $2)", counts, key)
    assert got == expected
    # The counts stay jsonb numbers, as the views (fatigue_shop_day, fatigue_template) read them.
    kinds = await pool.fetchval(
        "SELECT coalesce(array_agg(DISTINCT jsonb_typeof(value)), '{}') FROM jsonb_each(" + fn + "($1::jsonb, $2))",
        counts, key,
    )  # fmt: skip
    assert set(kinds) <= {"number"}


async def test_outbox_arrays_skip_pglz(pool):
    """The batch's per-recipient arrays (0004: ids, addresses; 0031: bodies, senders) are not compressed by pglz."""
    available = await pool.fetchval("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
    rows = await pool.fetch(
        "SELECT attname, attcompression::text AS compression, attstorage::text AS storage FROM pg_attribute"
        " WHERE attrelid = 'outbox'::regclass AND attname IN ('consumer_ids', 'addresses', 'bodies', 'senders')"
    )
    assert len(rows) == 4
    for r in rows:
        if "lz4" in available:
            assert (r["compression"], r["storage"]) == ("l", "x"), dict(r)
        else:  # x: extended (compressed), e: external (out of line, uncompressed)
            assert r["storage"] == "e", dict(r)
