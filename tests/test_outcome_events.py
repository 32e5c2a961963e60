"""Outcome events through POST /events and `sluice events` (R-EV-1..3), and an unsubscription's effect on a
running campaign (R-EXC-1).

Each event is accepted, counted a duplicate (its id was seen), counted an unknown customer (not stored)
or refused with its field and rule; a resent batch changes nothing; a key reaches only its shop; order
events change the shop's orders once; an unsubscription stops every later send at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

from sluice.api.service import start_campaign
from sluice.kinds.phased import PhasedSpec, PhaseSpec
from sluice.outcomes.events import OutcomeKind
from sluice.schemas.settings import Settings
from sluice.workers.worker import build_worker
from sluice.workflows.calendar import local_day

from tests.api_helpers import bearer, client, running_app, shop_key
from tests.factories import add_customers, make_campaign

AT = "2026-03-02T03:00:00+00:00"


def ev(event_id: str, kind: str, consumer: int, **extra) -> dict:
    return {"event_id": event_id, "kind": kind, "consumer_id": consumer, "occurred_at": AT, **extra}


async def _shops(pool) -> tuple[str, str]:
    key1, key2 = await shop_key(pool, "ev1"), await shop_key(pool, "ev2")
    await add_customers(pool, "ev1", [1, 2, 3], ordered_at=datetime(2026, 2, 1, tzinfo=UTC))
    await add_customers(pool, "ev2", [7], ordered_at=datetime(2026, 2, 1, tzinfo=UTC))
    await make_campaign(pool, "ev1", "spring")
    await make_campaign(pool, "ev2", "other-shops")
    # An order of the other shop, by its own customer.
    await pool.execute("INSERT INTO orders (order_id, shop_id, consumer_id, created_at, amount, status)"
                       " VALUES (900, 'ev2', 7, now(), 10, 'paid')")  # fmt: skip
    return key1, key2


BATCH = [
    ev("e1", "opened", 1, campaign_id="spring", phase=0, channel="chat"),
    ev("e2", "replied", 1, campaign_id="spring", phase=0),
    ev("e3", "order_created", 1, order_id=500, amount=100, campaign_id="spring"),
    ev("e4", "order_paid", 1, order_id=500),
    ev("e5", "order_refunded", 1, order_id=500, amount="30.50"),
    ev("e6", "unsubscribed", 2, channel="sms"),
    ev("e7", "coupon_claimed", 999),  # not a customer of the shop
    ev("e8", "order_created", 1, order_id=501),  # no amount: R-EV-1
    ev("e9", "clicked", 1, campaign_id="no-such-campaign"),  # R-EV-3
    ev("e10", "order_paid", 1, order_id=900),  # the other shop's order: R-EV-3
    ev("e11", "order_paid", 2, order_id=500),  # another consumer's order: R-EV-3
    ev("e12", "order_refunded", 1, order_id=777, amount=5),  # an order nobody created: R-EV-3
    ev("e1", "opened", 1),  # the same id twice in the batch
    ev("e13", "product_clicked", 3, product_id=42),
    {"event_id": "e14", "kind": "opened"},  # no consumer, no instant
    ev("e15", "opened", 3, occurred_at=1700000000),  # a number is no instant
]


async def test_a_batch_is_counted_event_by_event_and_a_resent_batch_changes_nothing(clean_db, ts_env):
    pool = clean_db
    key1, _ = await _shops(pool)
    async with running_app(pool, ts_env, worker=False) as app, client(app, key1) as http:
        first = await http.post("/events", json={"events": BATCH})
        assert first.status_code == 200, first.text
        answer = first.json()
        assert {k: answer[k] for k in ("received", "accepted", "duplicate", "unknown_customer", "refused")} == {
            "received": 16, "accepted": 7, "duplicate": 1, "unknown_customer": 1, "refused": 7,
        }  # fmt: skip
        refusals = {(r["event_id"], r["field"], r["rule"]) for r in answer["refusals"]}
        assert refusals == {
            ("e8", "amount", "R-EV-1"), ("e9", "campaign_id", "R-EV-3"), ("e10", "order_id", "R-EV-3"),
            ("e11", "consumer_id", "R-EV-3"), ("e12", "order_id", "R-EV-3"), ("e14", "consumer_id", "schema:missing"),
            ("e15", "occurred_at", "schema:datetime_type"),
        }  # fmt: skip
        stored = await pool.fetch("SELECT event_id, kind, campaign_id, phase FROM outcome_events ORDER BY event_id")
        spring = await pool.fetchval("SELECT id FROM campaigns WHERE campaign_ref = 'spring'")
        assert [tuple(r) for r in stored] == [
            ("e1", "opened", spring, 0), ("e13", "product_clicked", None, None), ("e2", "replied", spring, 0),
            ("e3", "order_created", spring, None), ("e4", "order_paid", None, None), ("e5", "order_refunded", None, None),
            ("e6", "unsubscribed", None, None),
        ]  # fmt: skip
        order = await pool.fetchrow("SELECT * FROM orders WHERE order_id = 500")
        assert (order["shop_id"], order["consumer_id"], order["amount"], order["status"], order["refunded_amount"]) == (
            "ev1", 1, Decimal("100.00"), "paid", Decimal("30.50"))
        assert order["created_at"] == order["paid_at"] == datetime.fromisoformat(AT)
        assert await pool.fetchval("SELECT unsub_sms FROM shop_customers WHERE shop_id = 'ev1' AND consumer_id = 2")
        assert not await pool.fetchval("SELECT unsub_chat FROM shop_customers WHERE shop_id = 'ev1' AND consumer_id = 2")
        other = await pool.fetchrow("SELECT status, paid_at FROM orders WHERE order_id = 900")
        assert other["paid_at"] is None and other["status"] == "paid"  # the other shop's order untouched

        again = (await http.post("/events", json={"events": BATCH})).json()
        assert (again["accepted"], again["duplicate"], again["unknown_customer"], again["refused"]) == (0, 8, 1, 7)
        # The refund is not applied twice, nothing else moved.
        assert await pool.fetchval("SELECT refunded_amount FROM orders WHERE order_id = 500") == Decimal("30.50")
        assert await pool.fetchval("SELECT count(*) FROM outcome_events") == 7

        # A further refund adds up to the amount and no further: the order is refunded in full.
        more = [ev("e20", "order_refunded", 1, order_id=500, amount=60), ev("e21", "order_refunded", 1, order_id=500, amount=60)]
        assert (await http.post("/events", json={"events": more})).json()["accepted"] == 2
        row = await pool.fetchrow("SELECT status, refunded_amount FROM orders WHERE order_id = 500")
        assert (row["status"], row["refunded_amount"]) == ("refunded", Decimal("100.00"))


async def test_a_key_reaches_only_its_own_shop(clean_db, ts_env):
    pool = clean_db
    key1, key2 = await _shops(pool)
    # ev2's key naming ev1's customers, campaign and order: nothing of ev1 is read or written.
    foreign = [
        ev("x1", "unsubscribed", 1, channel="chat"),
        ev("x2", "opened", 7, campaign_id="spring"),
        ev("x3", "order_paid", 7, order_id=500),
        ev("x4", "order_created", 7, order_id=900, amount=1),
        ev("x5", "opened", 7),
    ]
    async with running_app(pool, ts_env, worker=False) as app:
        async with client(app, key1) as http:
            assert (await http.post("/events", json={"events": [BATCH[2]]})).json()["accepted"] == 1
        async with client(app, key2) as http:
            answer = (await http.post("/events", json={"events": foreign})).json()
        async with client(app) as anonymous:
            assert (await anonymous.post("/events", json={"events": foreign})).status_code == 401
    assert (answer["accepted"], answer["unknown_customer"], answer["refused"]) == (2, 1, 2), answer
    assert {(r["event_id"], r["rule"]) for r in answer["refusals"]} == {("x2", "R-EV-3"), ("x3", "R-EV-3")}
    assert not await pool.fetchval("SELECT unsub_chat FROM shop_customers WHERE shop_id = 'ev1' AND consumer_id = 1")
    assert await pool.fetchval("SELECT paid_at FROM orders WHERE order_id = 500") is None
    assert {tuple(r) for r in await pool.fetch("SELECT shop_id, event_id FROM outcome_events")} == {
        ("ev1", "e3"), ("ev2", "x4"), ("ev2", "x5")}
    # The same event id in two shops is two events.
    async with running_app(pool, ts_env, worker=False) as app, client(app, key2) as http:
        assert (await http.post("/events", json={"events": [ev("e3", "opened", 7)]})).json()["accepted"] == 1


async def test_the_cli_loads_a_file_through_the_same_path(clean_db, db_dsn, tmp_path):
    pool = clean_db
    await shop_key(pool, "ev1")
    await add_customers(pool, "ev1", [1, 2], ordered_at=datetime(2026, 2, 1, tzinfo=UTC))
    lines = [ev("c1", "opened", 1), ev("c2", "order_created", 2, order_id=600, amount=12), ev("c3", "opened", 5),
             ev("c4", "order_paid", 1, order_id=600)]  # fmt: skip
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")

    async def run() -> tuple[int, dict]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sluice.api.cli", "events", str(path), "--shop", "ev1", "-o", "json",
            env={**os.environ, "DATABASE_URL": db_dsn}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert out, err.decode()
        return proc.returncode, json.loads(out)

    code, answer = await run()
    assert code == 2  # something was refused
    assert (answer["accepted"], answer["unknown_customer"], answer["refused"]) == (2, 1, 1)
    assert answer["refusals"][0]["index"] == 3 and answer["refusals"][0]["field"] == "consumer_id"
    code, answer = await run()
    assert (answer["accepted"], answer["duplicate"]) == (0, 2)
    assert await pool.fetchval("SELECT count(*) FROM orders WHERE order_id = 600 AND status = 'pending'") == 1


async def test_an_unsubscription_stops_the_next_phase_of_a_running_campaign(clean_db, ts_env):
    """A real K-PHASED campaign: preheat reaches three customers; one unsubscribes from chat through the API;
    promote, the next day, reaches the other two only. An order the reached customer creates during
    preheat is attributed to it (the kind's window: the phase's days)."""
    pool = clean_db
    now = await ts_env.get_current_time()
    tz = "Asia/Shanghai"
    key = await shop_key(pool, "unsub", tz)
    await add_customers(pool, "unsub", [1, 2, 3], ordered_at=now - timedelta(days=40), inquiry_at=now - timedelta(days=1))
    first = local_day(now, tz) + timedelta(days=1)
    spec = PhasedSpec(
        kind="K-PHASED", shop_id="unsub", campaign_id="p1",
        phases=[PhaseSpec(name="preheat", start_date=first, end_date=first, send_time=time(10), text="soon"),
                PhaseSpec(name="promote", days=1, send_time=time(10), text="now")],
    )  # fmt: skip
    settings = Settings(SLUICE_TASK_QUEUE=f"unsub-{uuid.uuid4().hex[:6]}")
    async with running_app(pool, ts_env, worker=False) as app, build_worker(ts_env.client, pool, settings):
        plan, handle = await start_campaign(pool, ts_env.client, spec, task_queue=settings.task_queue, now=now)
        cid = plan.campaign_db_id
        # Skip ahead an hour at a time until preheat's day has been sent and reported.
        for _ in range(72):
            await ts_env.sleep(timedelta(hours=1))
            if await pool.fetchval("SELECT count(*) FROM campaign_day_reports WHERE campaign_id = $1 AND phase = 0", cid):
                break
        assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND state = 'sent'", cid) == 3
        sent_at = await pool.fetchval("SELECT max(decided_at) FROM deliveries WHERE campaign_id = $1", cid)
        events = [
            ev("u1", OutcomeKind.unsubscribed, 2, channel="chat", campaign_id="p1", phase=0,
               occurred_at=(sent_at + timedelta(hours=1)).isoformat()),
            ev("o1", OutcomeKind.order_created, 1, order_id=7001, amount=88,
               occurred_at=(sent_at + timedelta(hours=2)).isoformat()),
            ev("o2", OutcomeKind.order_paid, 1, order_id=7001, occurred_at=(sent_at + timedelta(hours=2)).isoformat()),
        ]  # fmt: skip
        async with client(app, key) as http:
            answer = (await http.post("/events", json={"events": events}, headers=bearer(key))).json()
        assert answer["accepted"] == 3, answer
        await handle.result()
    ledger = {
        (r["phase"], r["consumer_id"]): r["state"]
        for r in await pool.fetch("SELECT phase, consumer_id, state FROM deliveries WHERE campaign_id = $1", cid)
    }
    assert ledger == {(0, 1): "sent", (0, 2): "sent", (0, 3): "sent", (1, 1): "sent", (1, 3): "sent"}
    excluded = await pool.fetchval("SELECT excluded FROM audience_refreshes WHERE campaign_id = $1 AND phase = 1", cid)
    assert excluded.get("unsubscribed") == 1
    attributed = await pool.fetch("SELECT phase, consumer_id, order_id, revenue FROM attributions WHERE campaign_id = $1", cid)
    assert [tuple(r) for r in attributed] == [(0, 1, 7001, Decimal("88.00"))]


async def test_order_effects_of_one_batch_apply_in_order_whether_the_order_is_new_or_known(clean_db):
    """An order created, paid and refunded in one batch ends as if the three came one after the other, whether
    the batch created it or it existed already (a loaded order: its creation event changes nothing of it);
    a later batch's payment and refunds apply to it as it stands."""
    from sluice.outcomes.ingest import ingest

    pool = clean_db
    await shop_key(pool, "ev1")
    await add_customers(pool, "ev1", [1, 2], ordered_at=datetime(2026, 2, 1, tzinfo=UTC))
    await pool.execute("INSERT INTO orders (order_id, shop_id, consumer_id, created_at, amount, status)"
                       " VALUES (600, 'ev1', 1, '2026-03-01T00:00:00Z', 50, 'pending')")  # fmt: skip
    later = "2026-03-03T00:00:00+00:00"
    answer = await ingest(pool, "ev1", [
        ev("k1", "order_created", 1, order_id=600, amount=80),  # known: stays as loaded (amount 50)
        ev("k2", "order_paid", 1, order_id=600, occurred_at=later),
        ev("k3", "order_paid", 1, order_id=600),  # the first payment's instant counts
        ev("k4", "order_refunded", 1, order_id=600, amount=20),
        ev("k5", "order_refunded", 1, order_id=600, amount=40),  # 60 in all: never past the amount
        ev("n1", "order_created", 2, order_id=601, amount=30),
        ev("n2", "order_refunded", 2, order_id=601, amount=30),  # refunded in full before any payment
        ev("n3", "order_created", 2, order_id=602, amount=15, occurred_at=later),
    ])  # fmt: skip
    assert (answer.accepted, answer.refused) == (8, 0), answer
    rows = {r["order_id"]: (r["amount"], r["status"], r["paid_at"], r["refunded_amount"])
            for r in await pool.fetch("SELECT * FROM orders WHERE order_id >= 600")}  # fmt: skip
    assert rows == {
        600: (Decimal("50.00"), "refunded", datetime.fromisoformat(AT), Decimal("50.00")),
        601: (Decimal("30.00"), "refunded", None, Decimal("30.00")),
        602: (Decimal("15.00"), "pending", None, Decimal("0.00")),
    }
    assert await pool.fetchval("SELECT created_at FROM orders WHERE order_id = 602") == datetime.fromisoformat(later)
    answer = await ingest(pool, "ev1", [ev("m1", "order_paid", 2, order_id=602, occurred_at=later),
                                        ev("m2", "order_refunded", 2, order_id=602, amount="5.50")])  # fmt: skip
    assert answer.accepted == 2
    row = await pool.fetchrow("SELECT status, paid_at, refunded_amount FROM orders WHERE order_id = 602")
    assert tuple(row) == ("paid", datetime.fromisoformat(later), Decimal("5.50"))
