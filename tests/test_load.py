"""Loading a shop's data (ingest/) through the real API and the real `sluice load`, on real Postgres."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sluice.api.load import MAX_LOAD_BYTES, MAX_LOAD_RECORDS
from sluice.channels.registry import CHANNELS
from sluice.ingest import records as R
from sluice.ingest.files import refused_path_for
from sluice.ingest.kinds import KINDS

from tests.api_helpers import client, running_app, shop_key

T0 = "2025-03-01T10:00:00+08:00"


def _customer(cid: int, **over) -> dict:
    return {"consumer_id": cid, "nick": f"n{cid}", "phone": f"138{cid:08d}", "email": f"u{cid}@example.com",
            "tags": ["vip"], "unsub_sms": cid % 2 == 0, "timezone": "Asia/Shanghai", **over}


def _event(i: int, cid: int, **over) -> dict:
    return {"event_id": f"ev-{i}", "consumer_id": cid, "kind": "view", "product_id": 7, "occurred_at": T0, **over}


@pytest.fixture
async def app(clean_db, ts_env):
    async with running_app(clean_db, ts_env, worker=False) as app:
        yield app


@pytest.fixture
async def s1(app, clean_db):
    async with client(app, await shop_key(clean_db, "s1")) as http:
        yield http


async def _table(pool, sql: str, *args) -> list[dict]:
    return [dict(r) for r in await pool.fetch(sql, *args)]


async def _post(http, kind: str, records: list) -> dict:
    r = await http.post(f"/load/{kind}", json={"records": records})
    assert r.status_code == 200, r.text
    return r.json()


async def test_a_resent_batch_changes_nothing_and_a_changed_record_updates(s1, clean_db):
    first = await _post(s1, "customers", [_customer(c) for c in (1, 2, 3)])
    assert (first["inserted"], first["updated"], first["duplicate"], first["refused"]) == (3, 0, 0, 0)
    before = await _table(clean_db, "SELECT * FROM shop_customers ORDER BY consumer_id")

    again = await _post(s1, "customers", [_customer(c) for c in (1, 2, 3)])
    assert (again["accepted"], again["duplicate"], again["refused"]) == (0, 3, 0)
    assert await _table(clean_db, "SELECT * FROM shop_customers ORDER BY consumer_id") == before  # not even created_at

    changed = await _post(s1, "customers", [_customer(1), _customer(2, blacklisted=True, tags=["a", "b"])])
    assert (changed["inserted"], changed["updated"], changed["duplicate"]) == (0, 1, 1)
    row = await clean_db.fetchrow("SELECT blacklisted, tags, created_at FROM shop_customers WHERE consumer_id = 2")
    assert row["blacklisted"] and row["tags"] == ["a", "b"]
    assert row["created_at"] == before[1]["created_at"]  # left out: kept

    await _post(s1, "events", [_event(1, 1), _event(2, 2)])
    events = await _post(s1, "events", [_event(1, 1), _event(2, 2, kind="cart")])
    assert (events["updated"], events["duplicate"]) == (1, 1)
    assert await clean_db.fetchval("SELECT count(*) FROM behaviour_events WHERE shop_id = 's1'") == 2
    assert await clean_db.fetchval("SELECT kind FROM behaviour_events WHERE event_id = 'ev-2'") == "cart"


async def test_bad_rows_are_refused_with_field_and_reason_and_nothing_half_written(s1, clean_db):
    answer = await _post(s1, "customers", [
        _customer(1),
        _customer(2, phone="12-34"),
        _customer(3, timezone="Mars/Olympus"),
        _customer(4, is_fan="yes"),
        "not an object",
        _customer(5, unknown_field=1),
    ])  # fmt: skip
    assert (answer["received"], answer["accepted"], answer["refused"]) == (6, 1, 5)
    got = {(e["row"], e["field"], e["rule"]) for e in answer["errors"]}
    assert got >= {(1, "phone", R.RULE_CONTACT), (2, "timezone", R.RULE_ZONE), (3, "is_fan", "schema:bool_type"),
                   (4, "record", "schema:model_type"), (5, "unknown_field", "schema:extra_forbidden")}
    assert all(e["message"] for e in answer["errors"])
    assert [r["consumer_id"] for r in await _table(clean_db, "SELECT consumer_id FROM shop_customers")] == [1]

    # References the database checks: an order of a stranger, an item of no order, an event of a stranger.
    orders = await _post(s1, "orders", [
        {"order_id": 10, "consumer_id": 1, "created_at": T0, "amount": "99.90"},
        {"order_id": 11, "consumer_id": 999, "created_at": T0, "amount": 5},
    ])  # fmt: skip
    assert (orders["inserted"], orders["refused"]) == (1, 1)
    assert orders["errors"][0] | {"message": ""} == {"row": 1, "field": "consumer_id", "rule": R.RULE_REF, "message": ""}
    items = await _post(s1, "order_items", [{"order_id": 10, "product_id": 7, "quantity": 1, "price": 99.9},
                                            {"order_id": 12, "product_id": 7, "quantity": 1, "price": 1}])
    assert (items["inserted"], items["refused"], items["errors"][0]["field"]) == (1, 1, "order_id")
    assert await clean_db.fetchval("SELECT price FROM order_items WHERE order_id = 10") == Decimal("99.90")

    # Two records of one batch with one key and different values: the later is refused, the earlier written.
    dup = await _post(s1, "events", [_event(1, 1), _event(1, 1), _event(1, 1, kind="cart"), _event(2, 1)])
    assert (dup["inserted"], dup["duplicate"], dup["refused"]) == (2, 1, 1)
    assert dup["errors"][0]["row"] == 2 and dup["errors"][0]["rule"] == R.RULE_KEY
    assert await clean_db.fetchval("SELECT kind FROM behaviour_events WHERE event_id = 'ev-1'") == "view"


async def test_a_time_outside_what_postgresql_holds_is_refused_not_a_500(s1, clean_db):
    """Year 1 at +05:00 is before year 1 in UTC: no database can hold it. Refused per row, the rest written."""
    answer = await _post(s1, "customers", [_customer(1)])
    assert answer["accepted"] == 1
    orders = await _post(s1, "orders", [
        {"order_id": 20, "consumer_id": 1, "created_at": "0001-01-01T00:00:00+05:00", "amount": 1},
        {"order_id": 21, "consumer_id": 1, "created_at": "9999-12-31T23:00:00-05:00", "amount": 1},
        {"order_id": 22, "consumer_id": 1, "created_at": T0, "amount": 1},
    ])  # fmt: skip
    assert (orders["inserted"], orders["refused"]) == (1, 2), orders
    assert {(e["row"], e["field"], e["rule"]) for e in orders["errors"]} == {(0, "created_at", R.RULE_VALUE),
                                                                            (1, "created_at", R.RULE_VALUE)}
    assert [r["order_id"] for r in await _table(clean_db, "SELECT order_id FROM orders")] == [22]


async def test_a_shops_key_cannot_write_another_shop(app, s1, clean_db):
    other_key = await shop_key(clean_db, "s2")
    async with client(app, other_key) as s2:
        await _post(s2, "products", [{"product_id": 5, "title": "tea", "category": "tea", "price": 10}])
        await _post(s2, "customers", [_customer(1, nick="s2's")])
    answer = await _post(s1, "products", [
        {"product_id": 5, "title": "mine now", "category": "tea", "price": 1},  # s2's id
        {"product_id": 6, "title": "tea", "category": "tea", "price": 1, "shop_id": "s2"},  # names s2
    ])  # fmt: skip
    assert answer["accepted"] == 0 and answer["refused"] == 2
    assert {(e["field"], e["rule"]) for e in answer["errors"]} == {("product_id", R.RULE_REF), ("shop_id", R.RULE_SHOP)}
    assert await clean_db.fetchval("SELECT title FROM products WHERE product_id = 5") == "tea"
    assert await clean_db.fetchval("SELECT count(*) FROM products") == 1
    shops = await _post(s1, "shops", [{"shop_id": "s2", "name": "x", "timezone": "UTC", "industry": "x"}])
    assert shops["refused"] == 1 and await clean_db.fetchval("SELECT name FROM shops WHERE shop_id = 's2'") == "s2"
    await _post(s1, "customers", [_customer(1)])  # the same consumer, s1's own row
    assert await clean_db.fetchval("SELECT nick FROM shop_customers WHERE shop_id = 's2'") == "s2's"


async def test_agents_and_who_served_whom(s1, clean_db):
    await _post(s1, "customers", [_customer(1)])
    first = await _post(s1, "agents", [{"agent_id": "a1", "name": "Ann", "online": True}])
    assert first["inserted"] == 1
    assert (await _post(s1, "agents", [{"agent_id": "a1", "name": "Ann", "online": True}]))["duplicate"] == 1
    assert (await _post(s1, "agents", [{"agent_id": "a1", "name": "Ann", "online": False}]))["updated"] == 1
    link = await _post(s1, "customer_agents", [{"consumer_id": 1, "agent_id": "a1", "served_at": T0},
                                               {"consumer_id": 1, "agent_id": "nobody", "served_at": T0}])
    assert (link["inserted"], link["refused"], link["errors"][0]["field"]) == (1, 1, "agent_id")


async def test_batch_limits(s1):
    r = await s1.post("/load/events", json={"records": [{}] * (MAX_LOAD_RECORDS + 1)})
    assert r.status_code == 422
    r = await s1.post("/load/events", content=b"x" * (MAX_LOAD_BYTES + 1), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    r = await s1.post("/campaigns", content=b"x" * (70 * 1024), headers={"Content-Type": "application/json"})
    assert r.status_code == 413  # the other routes keep 64 KiB
    big = [_event(i, 1, event_id=f"e-{i:0>100}") for i in range(3000)]  # ~600 KiB: over 64 KiB, under the load limit
    r = await s1.post("/load/events", json={"records": big})
    assert r.status_code == 200 and r.json()["refused"] == 3000  # consumer 1 is no customer: refused, not 413
    assert (await s1.post("/load/nothing", json={"records": [{}]})).status_code == 422


async def _sluice_load(dsn: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sluice.api.cli", "load", *args, env={**os.environ, "DATABASE_URL": dsn},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode, out.decode()


async def test_sluice_load_csv_and_jsonl_round_trips(s1, clean_db, db_dsn, tmp_path: Path):
    customers = tmp_path / "customers.csv"
    with customers.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["consumer_id", "nick", "phone", "tags", "unsub_sms", "blacklisted", "created_at"])
        for c in range(1, 6):
            w.writerow([c, f"n{c}", f"+86138{c:08d}", "vip|new" if c == 1 else "", "true" if c == 2 else "", "", T0])
        w.writerow(["x", "bad", "", "", "", "", T0])  # line 7
        w.writerow([7, "bad phone", "12", "", "", "", T0])  # line 8
    code, out = await _sluice_load(db_dsn, "customers", str(customers), "--shop", "s1")
    assert code == 1, out  # some refused
    assert "accepted 5" in out and "refused 2" in out, out
    refused = [json.loads(line) for line in refused_path_for(customers).read_text().splitlines()]
    assert {(r["line"], r["field"]) for r in refused} == {(7, "consumer_id"), (8, "phone")}
    rows = await _table(clean_db, "SELECT consumer_id, tags, unsub_sms, phone FROM shop_customers ORDER BY 1")
    assert rows[0] == {"consumer_id": 1, "tags": ["vip", "new"], "unsub_sms": False, "phone": "+8613800000001"}
    assert rows[1]["unsub_sms"] and rows[1]["tags"] == []

    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(_event(i, 1 + i % 5)) for i in range(20)) + "\n")
    code, out = await _sluice_load(db_dsn, "events", str(events), "--shop", "s1")
    assert code == 0 and "accepted 20" in out, out
    assert not refused_path_for(events).exists()
    stored = await _table(clean_db, "SELECT event_id, consumer_id, kind, product_id FROM behaviour_events ORDER BY 1")
    assert stored == sorted(({k: e[k] for k in ("event_id", "consumer_id", "kind", "product_id")}
                             for e in map(lambda i: _event(i, 1 + i % 5), range(20))), key=lambda e: e["event_id"])
    code, out = await _sluice_load(db_dsn, "events", str(events), "--shop", "s1")  # resent: nothing changes
    assert code == 0 and "accepted 0" in out and "duplicate 20" in out, out

    # The API answers the file's records exactly as the CLI did: duplicates.
    again = await _post(s1, "events", [_event(i, 1 + i % 5) for i in range(20)])
    assert again["duplicate"] == 20
    code, out = await _sluice_load(db_dsn, "events", str(events), "--shop", "nope")
    assert code == 2 and "unknown shop" in out


def test_every_channel_has_its_opt_out():
    fields = set(R.CustomerRecord.model_fields)
    assert {f"unsub_{c}" for c in CHANNELS} <= fields
    for kind in KINDS.values():  # the staged columns are the model's fields
        assert kind.names == [n for n in kind.model.model_fields if n != "shop_id"] or kind.name == "shops"


_phones = st.from_regex(r"\+?[0-9]{6,15}", fullmatch=True)
_emails = st.from_regex(r"[a-z0-9._%+-]{1,20}@[a-z0-9]{1,10}\.[a-z]{2,6}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(phone=_phones, email=_emails, cid=st.integers(1, R.MAX_ID))
def test_well_formed_customers_validate(phone, email, cid):
    record = R.CustomerRecord.model_validate({"consumer_id": cid, "phone": phone, "email": email})
    assert (record.phone, record.email, record.consumer_id) == (phone, email, cid)


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.text(max_size=30), st.integers(), st.floats(), st.booleans(), st.none()),
       field=st.sampled_from(["phone", "email", "consumer_id", "timezone", "locale", "is_fan", "tags", "created_at"]))
def test_a_customer_field_is_accepted_only_when_it_follows_its_rule(value, field):
    raw = {"consumer_id": 1, field: value}
    try:
        record = R.CustomerRecord.model_validate(raw)
    except ValidationError as exc:
        assert {e["loc"][0] for e in exc.errors()} == {field}
        return
    got = getattr(record, field)
    if field == "phone":
        assert value is None or R.PHONE_PATTERN.fullmatch(value)
    elif field == "email":
        assert value is None or R.EMAIL_PATTERN.fullmatch(value)
    elif field == "consumer_id":
        assert type(value) is int and 1 <= value <= R.MAX_ID
    elif field == "timezone":
        assert value is None or R.is_iana_zone(value)
    elif field == "locale":
        assert re.fullmatch(R.LOCALE_PATTERN, value)
    elif field == "is_fan":
        assert type(value) is bool
    elif field == "created_at":
        assert value is None and got is None
    elif field == "tags":
        raise AssertionError(f"tags accepted {value!r}")  # none of the generated values is a list
    assert got == value


async def test_loaded_rows_are_counted_on_the_metrics_page(s1):
    from sluice.workers import metrics

    def count(outcome: str) -> float:
        return metrics.LOAD_ROWS.labels(kind="customers", outcome=outcome)._value.get()

    before = {o: count(o) for o in (metrics.LOAD_ACCEPTED, metrics.LOAD_DUPLICATE, metrics.LOAD_REFUSED)}
    await _post(s1, "customers", [_customer(c) for c in (901, 902)])
    await _post(s1, "customers", [_customer(901), {"consumer_id": "not a number"}])
    assert count(metrics.LOAD_ACCEPTED) - before[metrics.LOAD_ACCEPTED] == 2
    assert count(metrics.LOAD_DUPLICATE) - before[metrics.LOAD_DUPLICATE] == 1
    assert count(metrics.LOAD_REFUSED) - before[metrics.LOAD_REFUSED] == 1
