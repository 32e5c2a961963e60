"""Named SQL parameters (db/params.py): names numbered in order of first use, casts and literals left alone, and
an argument list that refuses a missing or an unknown name; then the send path's write statements, numbered the
same way, run against PostgreSQL."""

from __future__ import annotations

import pytest
from sluice.activities.send import _HOLD_OFFERS, _WRITE_HANDED_OFF, _WRITE_RESERVED
from sluice.db.params import Named


def test_names_are_numbered_in_order_of_first_use_and_casts_and_literals_are_left_alone():
    st = Named.of("SELECT :b::bigint[], :a, '08:00'::time, 'outbox:' || :b::text, x::int FROM t WHERE y = :a_2")
    assert st.sql == "SELECT $1::bigint[], $2, '08:00'::time, 'outbox:' || $1::text, x::int FROM t WHERE y = $3"
    assert st.names == ("b", "a", "a_2")
    assert st.args(a=1, a_2=3, b=[2]) == [[2], 1, 3]


def test_a_missing_or_an_unknown_name_is_refused():
    st = Named.of("SELECT :a, :b")
    with pytest.raises(TypeError, match=r"missing \['b'\], unknown \[\]"):
        st.args(a=1)
    with pytest.raises(TypeError, match=r"missing \[\], unknown \['c'\]"):
        st.args(a=1, b=2, c=3)
    with pytest.raises(TypeError, match=r"missing \['b'\], unknown \['c'\]"):
        st.args(a=1, c=3)
    with pytest.raises(ValueError, match="names only"):
        Named.of("SELECT $1, :a")


def test_the_send_paths_write_statements_name_what_the_call_site_gives():
    """The reserved write is the handed-off one without the outbox and the offers; both are numbered densely."""
    outbox = {"live_ids", "addresses", "body", "bodies", "live_agents", "window_end"}
    offers = {"coupons", "items", "handed_at", "hours"}
    assert set(_WRITE_HANDED_OFF.names) == set(_WRITE_RESERVED.names) | outbox | offers
    assert set(_HOLD_OFFERS.names) == {"campaign", "phase", "day", "channel", "shop", "live_ids"} | offers
    for st in (_WRITE_HANDED_OFF, _WRITE_RESERVED, _HOLD_OFFERS):
        assert ":" + st.names[0] not in st.sql
        assert f"${len(st.names)}" in st.sql and f"${len(st.names) + 1}" not in st.sql


async def test_postgresql_takes_a_named_statement(pool):
    st = Named.of("SELECT :n::int + 1 AS m, :xs::text[] AS xs, :n::int * 2 AS d")
    row = await pool.fetchrow(st.sql, *st.args(xs=["a", "b"], n=20))
    assert (row["m"], row["xs"], row["d"]) == (21, ["a", "b"], 40)
