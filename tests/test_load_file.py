"""`sluice load`'s file path (ingest/files.py load_file) on real Postgres, chunk by chunk, and the fast paths of
loading: the plain-text shortcut of the text rule and the two-step upsert (existing keys, then new ones)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sluice.ingest import records as R
from sluice.ingest.files import load_file
from sluice.ingest.kinds import KINDS, load_batch
from sluice.schemas.text import _blank, is_refused_character, text_problem

from tests.api_helpers import make_shop

T0 = "2025-03-01T10:00:00+08:00"
PLAIN_CHARS = [chr(c) for c in [*range(0x20, 0x7F), *range(0x4E00, 0xA000)]]


def test_every_character_of_the_plain_text_shortcut_passes_the_text_rule():
    """R-LOAD-VALUE: a text PLAIN_TEXT matches is one text_problem passes: no character of the class is refused,
    and only the space is blank (the shortcut asks for one character other than a space)."""
    assert not [c for c in PLAIN_CHARS if is_refused_character(c)]
    assert [c for c in PLAIN_CHARS if _blank(c)] == [" "]
    assert R.PLAIN_TEXT.fullmatch("张雪糕 yoyo_cn280") and R.PLAIN_TEXT.fullmatch("  a")
    assert not R.PLAIN_TEXT.fullmatch("   ") and not R.PLAIN_TEXT.fullmatch("") and not R.PLAIN_TEXT.fullmatch("a\u200b")


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(st.text(max_size=12), st.text(alphabet=st.sampled_from([" ", "a", "张", "\u3000", "\u200b", "\u3164",
                                                                              "\n", "\x00", "é"]), max_size=8)))
def test_a_name_is_refused_exactly_when_the_text_rule_refuses_it(text):
    """The same refusal, with the same reason, as the text rule gives (with or without the shortcut)."""
    problem = text_problem(text)
    raw = {"consumer_id": 1, "nick": text}
    try:
        R.CustomerRecord.model_validate(raw)
    except Exception as exc:  # noqa: BLE001 - the model's ValidationError
        errors = exc.errors()
        assert text == "" or (problem and problem in errors[0]["msg"]), (text, errors)
        return
    assert problem is None and text


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _refused(path: Path) -> list[tuple]:
    text = Path(str(path) + ".refused.jsonl").read_text()
    return sorted((r["line"], r["field"], r["rule"]) for r in map(json.loads, text.splitlines()))


@pytest.mark.parametrize("chunk", [2, 1000])
async def test_a_file_loads_in_chunks_once_and_a_resend_changes_nothing(clean_db, tmp_path: Path, chunk: int):
    """Chunk by chunk in one transaction: new keys by the plain insert, repeated keys of a chunk (identical:
    duplicate; other values: R-LOAD-KEY), unknown customers (R-LOAD-REF), bad rows (per-row reasons); a resend
    writes nothing; a changed row updates its event only; another shop's rows stay as they are."""
    for shop in ("s1", "s2"):
        await make_shop(clean_db, shop, "Asia/Shanghai")
    cust = [[c, f"n{c}", f"138{c:08d}", "vip|new" if c == 1 else "", T0] for c in (1, 2, 3)]
    customers = _write_csv(tmp_path / "c.csv", ["consumer_id", "nick", "phone", "tags", "created_at"],
                           cust + [[4, "   ", "", "", T0], [5, "n5", "12-34", "", T0]])
    events_rows = [
        ["e1", 1, "view", 7, T0],  # line 2
        ["e2", 2, "cart", "", T0],
        ["e2", 2, "cart", "", T0],  # line 4: e2 again, identical: a duplicate when in e2's chunk
        ["e3", 3, "view", 7, T0],
        ["e4", 99, "view", 7, T0],  # line 6: no customer of s1
        ["e5", "x", "view", 7, T0],  # line 7: not an id
        ["e6", 1, "shout", 7, T0],  # line 8: no such kind
        ["e7", 1, "view", 7, "2025-03-01 10:00:00"],  # line 9: no UTC offset
    ]  # fmt: skip
    events = _write_csv(tmp_path / "e.csv", ["event_id", "consumer_id", "kind", "product_id", "occurred_at"], events_rows)
    async with clean_db.acquire() as conn:
        other = await load_file(conn, KINDS["customers"], "s2", customers, chunk=chunk)
        assert other.outcome.inserted == 3
        await conn.execute("UPDATE shop_customers SET nick = 's2''s' WHERE shop_id = 's2'")

        c = await load_file(conn, KINDS["customers"], "s1", customers, chunk=chunk)
        assert (c.rows, c.outcome.inserted, c.outcome.refused_rows) == (5, 3, 2)
        assert _refused(customers) == [(5, "nick", R.RULE_VALUE), (6, "phone", R.RULE_CONTACT)]

        first = await load_file(conn, KINDS["events"], "s1", events, chunk=chunk)
        o = first.outcome
        refused = _refused(events)
        assert [r[0] for r in refused] == [6, 7, 8, 9]
        assert refused[0] == (6, "consumer_id", R.RULE_REF)
        assert (o.inserted, o.updated, o.duplicate, o.refused_rows) == (3, 0, 1, 4)
        before = [dict(r) for r in await conn.fetch("SELECT * FROM behaviour_events ORDER BY event_id")]
        assert [r["event_id"] for r in before] == ["e1", "e2", "e3"]

        again = await load_file(conn, KINDS["events"], "s1", events, chunk=chunk)  # resent: nothing changes
        o = again.outcome
        assert (o.inserted, o.updated, o.duplicate, o.refused_rows) == (0, 0, 4, 4)
        assert _refused(events) == refused
        assert [dict(r) for r in await conn.fetch("SELECT * FROM behaviour_events ORDER BY event_id")] == before

        changed = [["e1", 1, "cart", 7, T0], ["e2", 2, "cart", "", T0], ["e3", 3, "view", 7, T0], ["e8", 3, "view", 7, T0],
                   ["e1", 1, "visit", 7, T0]]  # line 6: e1 again with other values
        _write_csv(events, ["event_id", "consumer_id", "kind", "product_id", "occurred_at"], changed)
        third = await load_file(conn, KINDS["events"], "s1", events, chunk=chunk)
        o = third.outcome
        if chunk == 2:  # e1 (line 6) is in a later chunk: it updates the row again, as a later batch would
            assert (o.inserted, o.updated, o.duplicate, o.refused_rows) == (1, 2, 2, 0)
            assert await conn.fetchval("SELECT kind FROM behaviour_events WHERE event_id = 'e1'") == "visit"
        else:  # one chunk: the later e1 is refused, the earlier one written
            assert (o.inserted, o.updated, o.duplicate, o.refused_rows) == (1, 1, 2, 1)
            assert _refused(events) == [(6, "event_id", R.RULE_KEY)]
            assert await conn.fetchval("SELECT kind FROM behaviour_events WHERE event_id = 'e1'") == "cart"

        # Customers resent with a change: updated through the existing-key step, created_at kept when left out.
        created = await conn.fetchval("SELECT created_at FROM shop_customers WHERE shop_id = 's1' AND consumer_id = 2")
        _write_csv(customers, ["consumer_id", "nick", "phone", "tags"], [[1, "n1", "13800000001", "vip|new"],
                                                                         [2, "renamed", "13800000002", ""], [6, "n6", "", ""]])
        fourth = await load_file(conn, KINDS["customers"], "s1", customers, chunk=chunk)
        o = fourth.outcome
        assert (o.inserted, o.updated, o.duplicate, o.refused_rows) == (1, 1, 1, 0)
        row = await conn.fetchrow("SELECT nick, created_at FROM shop_customers WHERE shop_id = 's1' AND consumer_id = 2")
        assert (row["nick"], row["created_at"]) == ("renamed", created)
        assert await conn.fetchval("SELECT count(*) FROM shop_customers WHERE shop_id = 's2' AND nick = 's2''s'") == 3
    assert await clean_db.fetchval("SELECT count(*) FROM behaviour_events WHERE shop_id <> 's1'") == 0


async def test_a_repeated_existing_key_in_one_batch_is_refused_and_the_rest_written(clean_db):
    """Two records of one batch for a key the table holds (the existing-key step's ON CONFLICT would touch the
    row twice): the later one is refused (R-LOAD-KEY), the earlier updates, the new key is inserted."""
    await make_shop(clean_db, "s1", "Asia/Shanghai")
    customer = {"consumer_id": 1, "nick": "n1"}
    async with clean_db.acquire() as conn:
        await load_batch(conn, KINDS["customers"], "s1", [customer])
        event = {"event_id": "e1", "consumer_id": 1, "kind": "view", "occurred_at": T0}
        await load_batch(conn, KINDS["events"], "s1", [event])
        out = await load_batch(conn, KINDS["events"], "s1", [event | {"kind": "cart"}, event | {"kind": "visit"},
                                                             event | {"event_id": "e2"}])
        assert (out.inserted, out.updated, out.duplicate) == (1, 1, 0)
        assert [(r.row, r.rule) for r in out.refused] == [(1, R.RULE_KEY)]
        assert await conn.fetchval("SELECT kind FROM behaviour_events WHERE event_id = 'e1'") == "cart"
