"""Reports (R-REP-1, R-REP-2) against a campaign computed by hand, through the real API and CLI on real Postgres.

The campaign below has two phases, deliveries in every state that matters,
costs (one missing), replies before and after the reach and from another shop,
orders inside and outside the attribution window, a refund, an unpaid order,
and one buyer reached by both phases. Its orders are written together with the
attributions they give (R-ATT-1, the last phase that reached the buyer before
the order, within 7 days, revenue paid minus refunded), so the report is the
same whether the refresh rebuilds the attributions or reads the rows as written.
Every expected figure is written out by hand.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sluice.api.cli import app as cli_app
from sluice.reports import queries
from sluice.reports.definitions import FAILURE_STATES, change, decode_cursor, encode_cursor, rate, roi
from sluice.reports.refresh import refresh
from sluice.schemas.rules import RuleViolation
from typer.testing import CliRunner

from tests.api_helpers import client, running_app, shop_key
from tests.factories import make_campaign, make_shop

TZ = "Asia/Shanghai"
SHOP, OTHER = "rs1", "rs2"
WF = f"{SHOP}.c1"

# ------------------------------------------------------------------ pure parts


def test_rates_and_roi():
    assert rate(1, 4) == 0.25
    assert rate(0, 0) is None  # nobody reached: no rate, not 0%
    assert roi(Decimal("50"), Decimal("0.2")) == 249.0
    assert roi(Decimal("50"), Decimal("0")) is None
    assert roi(Decimal("0.1"), Decimal("0.2")) == -0.5


def test_change_is_today_minus_yesterday():
    today = dict(sent=3, failed=0, reached=2, replied=1, converted=1, orders=1, revenue=Decimal("5"), cost=Decimal("1"))
    yesterday = dict(sent=5, failed=1, reached=2, replied=0, converted=0, orders=0, revenue=Decimal("0"), cost=Decimal("2"))
    assert change(today, yesterday) == dict(sent=-2, failed=-1, reached=0, replied=1, converted=1, orders=1,
                                            revenue=Decimal("5"), cost=Decimal("-1"))  # fmt: skip


def test_cursor_round_trip_and_refusal():
    key = (1, 42, date(2026, 3, 1), "chat")
    assert decode_cursor(encode_cursor(key), (int, int, date, str)) == key
    for bad in ("", "!!", encode_cursor((1, 2)), encode_cursor(("x", 2, "2026-03-01", "c")), encode_cursor((1, 2, "no", "c"))):
        with pytest.raises(RuleViolation) as exc:
            decode_cursor(bad, (int, int, date, str))
        assert exc.value.field == "after"


# ------------------------------------------------------------------ the hand-computed campaign


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), ZoneInfo(TZ))


def shop_today() -> date:
    return datetime.now(UTC).astimezone(ZoneInfo(TZ)).date()


async def hand_campaign(pool, ref: str = "c1") -> dict:
    """The campaign; its days are D1 = today - 5, D2 = D1 + 1, D3 = yesterday, D4 = today (shop-local)."""
    today = shop_today()
    d1, d2, d3, d4 = today - timedelta(days=5), today - timedelta(days=4), today - timedelta(days=1), today
    cid = await make_campaign(pool, SHOP, ref, state="completed")
    await pool.execute("UPDATE campaigns SET phase_names = '{preheat,promote}' WHERE id = $1", cid)
    batch_a, batch_b, batch_c = 9001, 9002, 9003
    await pool.executemany(
        "INSERT INTO outbox (id, campaign_id, phase, day, channel, body, consumer_ids, addresses, bodies)"
        " VALUES ($1, $2, $3, $4, 'chat', $5, $6, $7, $8)",
        [
            (batch_a, cid, 0, d1, "Spring is here", [1, 2, 3, 4], ["a1", "a2", "a3", "a4"], None),
            (batch_b, cid, 0, d2, "-", [1], ["a1"], ["Hi one, day two"]),
            (batch_c, cid, 1, d3, "-", [1, 7], ["a1", "a7"], ["Hi one", "Hi seven"]),
        ],
    )

    def delivery(phase, consumer, day, state, reason=None, cost=None, ref=None):
        return (cid, phase, consumer, day, "chat", SHOP, "g", day, state, reason, ref, at(day, 10), cost)

    await pool.executemany(
        "INSERT INTO deliveries (campaign_id, phase, consumer_id, day, channel, shop_id, template_group, fatigue_day,"
        " state, reason, provider_ref, decided_at, cost) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        [
            delivery(0, 1, d1, "sent", cost=Decimal("0.05"), ref=f"outbox:{batch_a}"),
            delivery(0, 1, d2, "sent", cost=Decimal("0.05"), ref=f"outbox:{batch_b}"),
            delivery(0, 2, d1, "sent", cost=Decimal("0.05"), ref=f"outbox:{batch_a}"),
            delivery(0, 3, d1, "sent", cost=Decimal("0.05"), ref=f"outbox:{batch_a}"),
            delivery(0, 4, d1, "sent", cost=None, ref=f"outbox:{batch_a}"),  # no cost recorded: counts 0
            delivery(0, 5, d1, "failed", reason="rejected_by_provider"),
            delivery(0, 6, d1, "suppressed", reason="fatigue_shop_day"),
            delivery(1, 1, d3, "sent", cost=Decimal("0.10"), ref=f"outbox:{batch_c}"),
            delivery(1, 7, d3, "sent", cost=Decimal("0.10"), ref=f"outbox:{batch_c}"),
            delivery(1, 8, d3, "not_sent", reason="campaign_cancelled"),
        ],
    )
    await pool.executemany(
        "INSERT INTO outcome_events (shop_id, event_id, kind, consumer_id, occurred_at) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT DO NOTHING",
        [
            (SHOP, f"{ref}-r2", "replied", 2, at(d1, 12)),  # after its reach: counts (D1)
            (SHOP, f"{ref}-r3", "replied", 3, at(d1, 9)),  # before its reach: does not
            (SHOP, f"{ref}-r1", "replied", 1, at(d2, 15)),  # after the campaign's first reach: both phases (D2)
            (SHOP, f"{ref}-r9", "replied", 9, at(d1, 12)),  # never reached
            (OTHER, f"{ref}-r4", "replied", 4, at(d1, 12)),  # another shop's
            (SHOP, f"{ref}-r7a", "replied", 7, at(d3, 11)),  # counted once (D3)
            (SHOP, f"{ref}-r7b", "replied", 7, at(d3, 12)),
            (SHOP, f"{ref}-o2", "opened", 2, at(d1, 11)),  # not a reply
        ],
    )
    base = cid * 100
    orders = [  # order, consumer, created, paid, amount, refunded, status, attributed phase (None: not attributed)
        (base + 0, 2, at(d1, 14), True, "50.00", "0", "paid", 0),
        (base + 1, 1, at(d3, 12), True, "30.00", "0", "paid", 1),  # the last phase that reached buyer 1 before it
        (base + 2, 1, at(d4, 9), True, "20.00", "5.00", "refunded", 1),  # revenue 15.00
        (base + 3, 3, at(d1 - timedelta(days=10), 9), True, "40.00", "0", "paid", None),  # before the reach
        (base + 4, 4, at(d1 + timedelta(days=9), 9), True, "60.00", "0", "paid", None),  # past the 7-day window
        (base + 5, 7, at(d3, 13), False, "25.00", "0", "pending", 1),  # created, not paid: revenue 0
    ]
    await pool.executemany(
        "INSERT INTO orders (order_id, shop_id, consumer_id, created_at, paid_at, amount, refunded_amount, status)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [(o, SHOP, c, t, t + timedelta(minutes=5) if paid else None, Decimal(a), Decimal(r), s)
         for o, c, t, paid, a, r, s, _ in orders],
    )  # fmt: skip
    revenue = {base + 0: "50.00", base + 1: "30.00", base + 2: "15.00", base + 5: "0.00"}
    await pool.executemany(
        "INSERT INTO attributions (campaign_id, phase, consumer_id, order_id, shop_id, ordered_at, revenue)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [(cid, p, c, o, SHOP, t, Decimal(revenue[o])) for o, c, t, _, _, _, _, p in orders if p is not None],
    )
    return {"id": cid, "days": (d1, d2, d3, d4)}


def figures(sent, failed, reached, replied, converted, orders, revenue, cost, inquiry, conversion, roi_):
    return dict(sent=sent, failed=failed, reached=reached, replied=replied, converted=converted, orders=orders,
                revenue=revenue, cost=cost, inquiry_rate=inquiry, conversion_rate=conversion, roi=roi_)  # fmt: skip


# By hand. Preheat reached 1, 2, 3, 4 (5 sends: buyer 1 twice); replied: 2 (D1) and 1 (D2); converted: 2.
# Promote reached 1 and 7; replied: 1 (D2, after the campaign first reached them) and 7; converted 1 and 7.
PREHEAT = figures(5, 1, 4, 2, 1, 1, "50.00", "0.2000", 0.5, 0.25, 249.0)
PROMOTE = figures(2, 0, 2, 2, 2, 3, "45.00", "0.2000", 1.0, 1.0, 224.0)
TOTALS = figures(7, 1, 5, 3, 3, 4, "95.00", "0.4000", 0.6, 0.6, 236.5)
ZERO = dict(sent=0, failed=0, reached=0, replied=0, converted=0, orders=0, revenue="0.00", cost="0.0000")


def expected_trend(d1, d2, d3, d4) -> list[dict]:
    def day(phase, d, **kw):
        row = {**ZERO, **kw}
        return {"phase": phase, "day": d.isoformat(), **row}

    return [
        day(0, d1, sent=4, failed=1, reached=4, replied=1, converted=1, orders=1, revenue="50.00", cost="0.1500"),
        day(0, d2, sent=1, replied=1, cost="0.0500"),
        day(1, d2, replied=1),
        day(1, d3, sent=2, reached=2, replied=1, converted=2, orders=2, revenue="30.00", cost="0.2000"),
        day(1, d4, orders=1, revenue="15.00"),
    ]


def _money(d: dict) -> dict:
    """JSON money strings as Decimals, so 45 == 45.00 (the JSON keeps the column's scale)."""
    return {k: Decimal(v) if k in ("revenue", "cost") else v for k, v in d.items()}


def _strip_rates(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("inquiry_rate", "conversion_rate", "roi")}


def check_report(rep: dict, days: tuple[date, ...]) -> None:
    d1, d2, d3, d4 = days
    assert _money(rep["totals"]) == _money(TOTALS)
    assert [p["name"] for p in rep["phases"]] == ["preheat", "promote"]
    assert _money({k: rep["phases"][0][k] for k in PREHEAT}) == _money(PREHEAT)
    assert _money({k: rep["phases"][1][k] for k in PROMOTE}) == _money(PROMOTE)
    assert (rep["phases"][0]["first_day"], rep["phases"][0]["last_day"]) == (d1.isoformat(), d2.isoformat())
    assert rep["phases"][0]["states"] == {"sent": 5, "failed:rejected_by_provider": 1, "suppressed:fatigue_shop_day": 1}
    assert rep["phases"][1]["states"] == {"sent": 2, "not_sent:campaign_cancelled": 1}
    assert [_money(_strip_rates(t)) for t in rep["trend"]] == [_money(t) for t in expected_trend(d1, d2, d3, d4)]


# Every ledger row in (phase, buyer, day, channel) order: (phase, buyer, day index, state, reason, content,
# ordered, orders, revenue).
def expected_recipients(days) -> list[tuple]:
    d1, d2, d3, _ = days
    return [
        (0, 1, d1, "sent", None, "Spring is here", False, 0, "0"),  # buyer 1's orders went to promote
        (0, 1, d2, "sent", None, "Hi one, day two", False, 0, "0"),
        (0, 2, d1, "sent", None, "Spring is here", True, 1, "50.00"),
        (0, 3, d1, "sent", None, "Spring is here", False, 0, "0"),
        (0, 4, d1, "sent", None, "Spring is here", False, 0, "0"),
        (0, 5, d1, "failed", "rejected_by_provider", None, False, 0, "0"),
        (0, 6, d1, "suppressed", "fatigue_shop_day", None, False, 0, "0"),
        (1, 1, d3, "sent", None, "Hi one", True, 2, "45.00"),
        (1, 7, d3, "sent", None, "Hi seven", True, 1, "0"),
        (1, 8, d3, "not_sent", "campaign_cancelled", None, False, 0, "0"),
    ]


def _row(r: dict) -> tuple:
    return (r["phase"], r["consumer_id"], date.fromisoformat(r["day"]), r["state"], r["reason"], r["content"],
            r["ordered"], r["orders"], Decimal(r["revenue"]))  # fmt: skip


def _expected(rows) -> list[tuple]:
    return [(*r[:-1], Decimal(r[-1])) for r in rows]


async def test_materialised_report_equals_the_hand_computation(clean_db):
    pool = clean_db
    await make_shop(pool, SHOP, TZ)
    await make_shop(pool, OTHER, TZ)
    camp = await hand_campaign(pool)
    async with pool.acquire() as conn:
        done = await refresh(conn, camp["id"], attribution=False)  # the attributions as written
        assert not done.attributed
        rep = await queries.read_report(conn, await queries.campaign(conn, SHOP, WF))
    check_report(json.loads(rep.model_dump_json()), camp["days"])
    # A phase's figures are the sums of its days (each count is counted on one day only).
    for p in rep.phases:
        days = [d for d in rep.trend if d.phase == p.phase]
        for k in ("sent", "failed", "reached", "replied", "converted", "orders", "revenue", "cost"):
            assert getattr(p, k) == sum(getattr(d, k) for d in days), (p.name, k)


async def test_refresh_rewrites_what_changed(clean_db):
    pool = clean_db
    await make_shop(pool, SHOP, TZ)
    camp = await hand_campaign(pool)
    async with pool.acquire() as conn:
        await refresh(conn, camp["id"], attribution=False)
        # A later reply, a full refund of order base+0 (its attribution's revenue 0), and a failed delivery resent.
        await conn.execute("INSERT INTO outcome_events (shop_id, event_id, kind, consumer_id, occurred_at)"
                           " VALUES ($1, 'late', 'replied', 4, now())", SHOP)  # fmt: skip
        await conn.execute("UPDATE attributions SET revenue = 0 WHERE order_id = $1", camp["id"] * 100)
        await conn.execute("UPDATE deliveries SET state = 'sent', reason = NULL WHERE campaign_id = $1 AND consumer_id = 5",
                           camp["id"])  # fmt: skip
        await refresh(conn, camp["id"], attribution=False)
        rep = await queries.read_report(conn, await queries.campaign(conn, SHOP, WF))
    pre = rep.phases[0]
    assert (pre.sent, pre.failed, pre.reached, pre.replied, pre.revenue) == (6, 0, 5, 3, Decimal("0.00"))
    assert (rep.totals.reached, rep.totals.replied, rep.totals.revenue) == (6, 4, Decimal("45.00"))
    assert pre.states == {"sent": 6, "suppressed:fatigue_shop_day": 1}


async def test_api_report_recipients_csv_dashboard_and_cli_agree(clean_db, ts_env, db_dsn):
    pool = clean_db
    key = await shop_key(pool, SHOP, TZ)
    other_key = await shop_key(pool, OTHER, TZ)
    camp = await hand_campaign(pool)
    days = camp["days"]
    other = await make_campaign(pool, OTHER, "x1", state="completed")  # another shop's: never in rs1's figures
    await pool.execute("INSERT INTO deliveries (campaign_id, phase, consumer_id, day, channel, shop_id, template_group,"
                       " fatigue_day, state, decided_at, cost) VALUES ($1, 0, 1, $2, 'chat', $3, 'g', $2, 'sent', now(), 9)",
                       other, days[3], OTHER)  # fmt: skip
    async with running_app(pool, ts_env, worker=False) as app, client(app, key) as http:
        # The report: materialised on first read (attribution included), equal to the hand computation.
        r = await http.get(f"/campaigns/{WF}/report")
        assert r.status_code == 200, r.text
        rep = r.json()
        check_report(rep, days)
        assert rep["attributed"] is True  # the outcomes domain rebuilt the attributions from the orders
        r = await http.post(f"/campaigns/{WF}/report/refresh")
        assert r.status_code == 200, r.text
        check_report(r.json(), days)
        assert r.json()["refreshed_at"] >= rep["refreshed_at"]
        rep = r.json()

        # Per-buyer detail: pages of 3 add up to every row, in order, with content and ordered-or-not.
        rows, after = [], None
        for _ in range(10):
            r = await http.get(f"/campaigns/{WF}/recipients", params={"limit": 3, **({"after": after} if after else {})})
            assert r.status_code == 200, r.text
            page = r.json()
            assert len(page["recipients"]) <= 3
            rows += page["recipients"]
            after = page["next"]
            if after is None:
                break
        assert [_row(x) for x in rows] == _expected(expected_recipients(days))
        assert rows[0]["cost"] == "0.0500" and rows[4]["cost"] is None

        # Failures with their reasons; one state; one reason; one phase.
        r = await http.get(f"/campaigns/{WF}/recipients", params={"failures": "true"})
        assert [(x["consumer_id"], x["state"], x["reason"]) for x in r.json()["recipients"]] == [
            (5, "failed", "rejected_by_provider"), (6, "suppressed", "fatigue_shop_day"), (8, "not_sent", "campaign_cancelled")]
        assert {x["state"] for x in r.json()["recipients"]} <= set(FAILURE_STATES)
        r = await http.get(f"/campaigns/{WF}/recipients", params={"state": "failed"})
        assert [(x["consumer_id"], x["reason"]) for x in r.json()["recipients"]] == [(5, "rejected_by_provider")]
        r = await http.get(f"/campaigns/{WF}/recipients", params={"reason": "fatigue_shop_day"})
        assert [x["consumer_id"] for x in r.json()["recipients"]] == [6]
        r = await http.get(f"/campaigns/{WF}/recipients", params={"phase": 1, "state": ["sent", "not_sent"]})
        assert [x["consumer_id"] for x in r.json()["recipients"]] == [1, 7, 8]
        r = await http.get(f"/campaigns/{WF}/recipients", params={"after": "not-a-cursor"})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "after"
        r = await http.get(f"/campaigns/{WF}/recipients", params={"state": "delivered"})
        assert r.status_code == 422

        # The CSV: the same rows as the pages.
        r = await http.get(f"/campaigns/{WF}/recipients.csv")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        table = list(csv.DictReader(io.StringIO(r.text)))
        assert [(int(x["phase"]), int(x["consumer_id"]), date.fromisoformat(x["day"]), x["state"], x["reason"] or None,
                 x["content"] or None, x["ordered"] == "yes", int(x["orders"]), Decimal(x["revenue"])) for x in table
                ] == _expected(expected_recipients(days))  # fmt: skip
        r = await http.get(f"/campaigns/{WF}/recipients.csv", params={"failures": "true", "phase": 0})
        assert [x["consumer_id"] for x in csv.DictReader(io.StringIO(r.text))] == ["5", "6"]

        # The dashboard: totals, today (D4) against yesterday (D3), the monthly split by phase.
        r = await http.get("/dashboard")
        assert r.status_code == 200, r.text
        dash = r.json()
        assert dash["campaigns"] == 1 and dash["today"] == days[3].isoformat()
        assert _money(dash["totals"]) == _money(TOTALS)
        today = {**ZERO, "orders": 1, "revenue": "15.00"}
        yesterday = {**ZERO, "sent": 2, "reached": 2, "replied": 1, "converted": 2, "orders": 2, "revenue": "30.00",
                     "cost": "0.2000"}  # fmt: skip
        assert _money(_strip_rates(dash["today_figures"])) == _money(today)
        assert _money(_strip_rates(dash["yesterday_figures"])) == _money(yesterday)
        assert {k: Decimal(str(v)) for k, v in dash["change"].items()} == {
            "sent": -2, "failed": 0, "reached": -2, "replied": -1, "converted": -2, "orders": -1,
            "revenue": Decimal("-15.00"), "cost": Decimal("-0.2000")}  # fmt: skip
        months: dict[tuple[str, str], dict] = {}
        for t in expected_trend(*days):
            m = months.setdefault((date.fromisoformat(t["day"]).replace(day=1).isoformat(), ["preheat", "promote"][t["phase"]]),
                                  {k: 0 for k in ZERO})  # fmt: skip
            for k in ZERO:
                m[k] += Decimal(t[k]) if k in ("revenue", "cost") else t[k]
        got = {(m["month"], m["phase_name"]): _money({k: m[k] for k in ZERO}) for m in dash["months"]}
        assert got == months

        # GET /campaigns: this shop's only, filtered and paginated.
        await make_campaign(pool, SHOP, "c2", state="sending")
        await make_campaign(pool, SHOP, "c3", state="completed")
        r = await http.get("/campaigns", params={"limit": 2})
        first = r.json()
        assert [c["workflow_id"] for c in first["campaigns"]] == [f"{SHOP}.c3", f"{SHOP}.c2"]
        r = await http.get("/campaigns", params={"limit": 2, "after": first["next"]})
        assert [c["workflow_id"] for c in r.json()["campaigns"]] == [WF] and r.json()["next"] is None
        assert r.json()["campaigns"][0]["report_url"].endswith(f"/campaigns/{WF}/report")
        r = await http.get("/campaigns", params={"state": "completed", "kind": "K-PHASED"})
        assert [c["workflow_id"] for c in r.json()["campaigns"]] == [f"{SHOP}.c3", WF]
        r = await http.get("/campaigns", params={"kind": "K-EDM"})
        assert r.json() == {"campaigns": [], "next": None}

    async with running_app(pool, ts_env, worker=False) as app, client(app, other_key) as http:
        # Another shop's key: every route answers as for a campaign that does not exist.
        for method, path in [("GET", f"/campaigns/{WF}/report"), ("POST", f"/campaigns/{WF}/report/refresh"),
                             ("GET", f"/campaigns/{WF}/recipients"), ("GET", f"/campaigns/{WF}/recipients.csv")]:
            r = await http.request(method, path)
            assert r.status_code == 404, (path, r.text)
        assert [c["workflow_id"] for c in (await http.get("/campaigns")).json()["campaigns"]] == [f"{OTHER}.x1"]
        dash = (await http.get("/dashboard")).json()
        assert dash["totals"]["sent"] == 0 and dash["campaigns"] == 0  # x1 was never materialised

    # The CLI reads the same tables: its JSON is the API's.
    env = {"DATABASE_URL": db_dsn, "COLUMNS": "200"}

    async def cli(*args: str):
        return await asyncio.to_thread(CliRunner().invoke, cli_app, list(args), env=env)  # it runs its own loop

    result = await cli("report", WF, "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == rep
    result = await cli("report", WF)
    assert result.exit_code == 0 and "preheat" in result.output and "rejected_by_provider" in result.output, result.output
    result = await cli("campaigns", "--shop", SHOP, "--state", "completed", "-o", "json")
    assert result.exit_code == 0, result.output
    assert [c["workflow_id"] for c in json.loads(result.output)["campaigns"]] == [f"{SHOP}.c3", WF]
    result = await cli("report", f"{SHOP}.nope")
    assert result.exit_code == 1 and "not found" in result.output


async def test_workflow_materialises_its_report_and_links_it_in_its_memo(clean_db, ts_env):
    import uuid

    from sluice.api.service import start_campaign
    from sluice.kinds.oldcust import OldCustomerSpec
    from sluice.schemas.settings import Settings
    from sluice.workers.worker import build_worker
    from sluice.workflows.calendar import local_day

    from tests.factories import add_customers

    pool = clean_db
    now = await ts_env.get_current_time()
    await make_shop(pool, SHOP, TZ)
    await add_customers(pool, SHOP, list(range(1, 401)), ordered_at=now - timedelta(days=5), visited_at=now - timedelta(days=1))
    day = local_day(now, TZ) + timedelta(days=1)
    spec = OldCustomerSpec(kind="K-OLDCUST", shop_id=SHOP, campaign_id="wf1", scene="x", card_text="hi", send_date=day)
    settings = Settings(SLUICE_TASK_QUEUE=f"reports-{uuid.uuid4().hex[:6]}")
    async with build_worker(ts_env.client, pool, settings):
        plan, handle = await start_campaign(pool, ts_env.client, spec, task_queue=settings.task_queue, now=now,
                                            api_base_url="https://sluice.example/")  # fmt: skip
        await handle.result()
    assert await (await handle.describe()).memo_value("report") == f"https://sluice.example/campaigns/{plan.workflow_id}/report"
    sent = await pool.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND state = 'sent'", plan.campaign_db_id)
    assert sent > 0
    # Materialised by the workflow after its day: nobody asked for the report.
    row = await pool.fetchrow("SELECT * FROM report_campaigns WHERE campaign_id = $1", plan.campaign_db_id)
    assert row is not None and (row["sent"], row["reached"]) == (sent, sent)
    assert await pool.fetchval("SELECT name FROM report_phases WHERE campaign_id = $1", plan.campaign_db_id) == "reach"


async def test_concurrent_refreshes_of_one_campaign_take_turns(clean_db):
    # The workflow's refresh and an on-demand one at once: each rewrites the same attributions and report rows.
    pool = clean_db
    await make_shop(pool, SHOP, TZ)
    camp = await hand_campaign(pool)

    async def one():
        async with pool.acquire() as conn:
            return await refresh(conn, camp["id"])

    done = await asyncio.gather(*(one() for _ in range(4)))
    assert all(d.attributed for d in done)
    async with pool.acquire() as conn:
        rep = await queries.read_report(conn, await queries.campaign(conn, SHOP, WF))
    check_report(json.loads(rep.model_dump_json()), camp["days"])
