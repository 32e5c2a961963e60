"""Reports at the 1M bench shop (docs/benchmarks.md, "Reports"; goal: a phase report and the dashboard <= 1 s).

`python -m bench.reports [--admin-dsn DSN]`:

A shop of 1,000,000 customers and 1,500,000 orders, built set-based; a campaign of two phases (preheat
sends to every customer, 1% failed; promote to half of them), its outbox batches of 2,000, 1,000,000
`opened` and 50,000 `replied` outcome events, 30,000 orders after the reach; and 50 small earlier
campaigns of the shop (1,000 deliveries each) for the dashboard. Then, through the real API in process
(httpx over ASGI, real Postgres):

- the refresh of the big campaign (POST .../report/refresh: attribution, then the report tables), and
  the materialisation alone;
- GET .../report (the phase report), GET /dashboard, a page of recipients, a page of failures, and the
  whole CSV (rows/s). Read timings are the median of 5 after one warm-up.

Figures go to bench/results.json under "reports" (other keys are kept).

`--funnel`: the big campaign is a K-EDM one instead (an in-site message to every customer, then an email to
half of them, 30-day windows, the phases' audience refreshes, and a second order for one in three of the
buyers who ordered), so the refresh materialises its funnel (R-ED-5) too; the funnel's statement is also
timed alone (median of 5). Figures go under "reports_funnel".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

from bench.stack import NoTemporal, fresh_database, record_results, replace_docs_block

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results.json"
DOCS = ROOT / "docs" / "benchmarks.md"
DB_NAME = "sluice_bench_reports"
SHOP = "bench-rep"
START = "<!-- bench:reports:start (written by `python -m bench.reports`) -->"
END = "<!-- bench:reports:end -->"
FUNNEL_START = "<!-- bench:reports-funnel:start (written by `python -m bench.reports --funnel`) -->"
FUNNEL_END = "<!-- bench:reports-funnel:end -->"
GOALS = {"report_s": 1.0, "dashboard_s": 1.0}


async def _build(conn: asyncpg.Connection, customers: int, orders: int, now: datetime, funnel: bool = False) -> dict:
    """The shop, its customers and orders, the big campaign's ledger, outbox and events; its campaign id.
    funnel: the big campaign is K-EDM's (inbox then email) with its windows, refreshes and repeat orders."""
    from sluice.kinds.edm import ATTRIBUTION_DAYS, Edm
    from sluice.kinds.phased import Phased

    d0, d1 = (now - timedelta(days=3)).date(), (now - timedelta(days=1)).date()
    at0, at1 = now - timedelta(days=3), now - timedelta(days=1)
    await conn.execute("INSERT INTO shops (shop_id, name, timezone, industry) VALUES ($1, $1, 'Asia/Shanghai', 'beauty')", SHOP)
    await conn.execute("INSERT INTO consumers (consumer_id) SELECT g FROM generate_series(1, $1) g", customers)
    await conn.execute("INSERT INTO shop_customers (shop_id, consumer_id, chat_id) SELECT $1, g, 'tb' || g"
                       " FROM generate_series(1, $2) g", SHOP, customers)  # fmt: skip
    # The shop's order history: `orders` orders over the last year, none after the first reach.
    await conn.execute(
        "INSERT INTO orders (order_id, shop_id, consumer_id, created_at, paid_at, amount, status)"
        "  SELECT g, $1, 1 + (g::bigint * 7919) % $2, $3::timestamptz - (g % 360 + 4) * interval '1 day',"
        "  $3::timestamptz - (g % 360 + 4) * interval '1 day',"
        " 20 + g % 200, 'paid' FROM generate_series(1, $4) g",
        SHOP, customers, now, orders,
    )  # fmt: skip
    cid = await conn.fetchval(
        "INSERT INTO campaigns (shop_id, campaign_ref, workflow_id, kind, spec, state, phase_names)"
        " VALUES ($1, 'big', $1 || '.big', $2, '{}', 'completed', $3) RETURNING id",
        SHOP, Edm.name if funnel else Phased.name, ["inbox", "email"] if funnel else ["preheat", "promote"],
    )  # fmt: skip
    channels = ("inbox", "email") if funnel else ("chat", "chat")
    for phase, day, when, every in ((0, d0, at0, 1), (1, d1, at1, 2)):
        # Batches of 2,000 recipients in the outbox, one body each; the ledger rows name their batch.
        await conn.execute(
            "INSERT INTO outbox (id, campaign_id, phase, day, channel, body, consumer_ids, addresses)"
            " SELECT $2::int * 1000000 + b, $1, $2::int, $3, $6, 'Spring sale, phase ' || $2::int, array_agg(c ORDER BY c),"
            " array_agg('tb' || c ORDER BY c)"
            " FROM (SELECT c, c / 2000 AS b FROM generate_series(1, $4) c WHERE c % $5 = 0) x GROUP BY b",
            cid, phase, day, customers, every, channels[phase],
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO deliveries (campaign_id, phase, consumer_id, day, channel, shop_id, template_group, fatigue_day,"
            " state, reason, provider_ref, decided_at, cost)"
            " SELECT $1, $2::int, c, $3, $8, $4, 'g', $3,"
            "  CASE WHEN c % 100 = 0 THEN 'failed' ELSE 'sent' END, CASE WHEN c % 100 = 0 THEN 'rejected_by_provider' END,"
            "  CASE WHEN c % 100 = 0 THEN NULL ELSE 'outbox:' || ($2::int * 1000000 + c / 2000) END, $5,"
            "  CASE WHEN c % 100 = 0 THEN NULL ELSE 0.03 END"
            " FROM generate_series(1, $6) c WHERE c % $7 = 0",
            cid, phase, day, SHOP, when, customers, every, channels[phase],
        )  # fmt: skip
        if funnel:  # the phase's audience before exclusions, as its refresh records it
            await conn.execute("INSERT INTO audience_refreshes (campaign_id, phase, day, matched, eligible, excluded)"
                               " VALUES ($1, $2, $3, $4, $5, '{}')", cid, phase, day, customers, customers // every)  # fmt: skip
    # 1M opened and 50,000 replied events, 30,000 orders after the reach (some refunded in part).
    await conn.execute(
        "INSERT INTO outcome_events (shop_id, event_id, kind, consumer_id, campaign_id, occurred_at)"
        " SELECT $1, 'o' || c, 'opened', c, $2, $3::timestamptz + interval '1 hour' FROM generate_series(1, $4) c",
        SHOP, cid, at0, customers,
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO outcome_events (shop_id, event_id, kind, consumer_id, occurred_at)"
        " SELECT $1, 'r' || c, 'replied', c, $2::timestamptz + interval '2 hours' FROM generate_series(20, $3, 20) c",
        SHOP, at0, customers,
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO orders (order_id, shop_id, consumer_id, created_at, paid_at, amount, refunded_amount, status)"
        "  SELECT $4 + c, $1, c, $2::timestamptz + interval '5 hours', $2::timestamptz + interval '5 hours', 99,"
        "  CASE WHEN c % 330 = 0 THEN 10 ELSE 0 END,"
        "  CASE WHEN c % 330 = 0 THEN 'refunded' ELSE 'paid' END FROM generate_series(33, $3, 33) c",
        SHOP, at0, customers, orders,
    )  # fmt: skip
    if funnel:
        # K-EDM's windows as a start stores them (30 days after the reach), and a second order for one in three of
        # the buyers who ordered, after the email (the repurchase stage).
        await conn.execute("INSERT INTO attribution_windows (campaign_id, phase, mode, days)"
                           " VALUES ($1, 0, 'after_reach', $2), ($1, 1, 'after_reach', $2)", cid, ATTRIBUTION_DAYS)  # fmt: skip
        await conn.execute(
            "INSERT INTO orders (order_id, shop_id, consumer_id, created_at, paid_at, amount, status)"
            "  SELECT $4 + $3 + c, $1, c, $2::timestamptz + interval '49 hours', $2::timestamptz + interval '49 hours', 59,"
            "  'paid' FROM generate_series(99, $3, 99) c",
            SHOP, at0, customers, orders,
        )  # fmt: skip
    # 50 small earlier campaigns: 1,000 sent deliveries each, over the last months (the dashboard's split).
    for i in range(50):
        small = await conn.fetchval(
            "INSERT INTO campaigns (shop_id, campaign_ref, workflow_id, kind, spec, state, phase_names)"
            " VALUES ($1, $2, $1 || '.' || $2, 'K-OLDCUST', '{}', 'completed', '{reach}') RETURNING id", SHOP, f"old{i}"
        )
        when = now - timedelta(days=5 + i * 6)
        await conn.execute(
            "INSERT INTO deliveries (campaign_id, phase, consumer_id, day, channel, shop_id, template_group, fatigue_day,"
            " state, decided_at, cost) SELECT $1, 0, c, $2, 'sms', $3, 'g', $2, 'sent', $4, 0.05"
            " FROM generate_series($5, $5 + 999) c",
            small, when.date(), SHOP, when, 1 + i * 1000,
        )  # fmt: skip
    await conn.execute("VACUUM (ANALYZE) shops, consumers, shop_customers, orders, campaigns, outbox, deliveries, outcome_events")
    n = await conn.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1", cid)
    return {"campaign_db_id": cid, "deliveries": n}


async def _median(fn, n: int = 5) -> tuple[float, object]:
    await fn()  # warm-up
    times, last = [], None
    for _ in range(n):
        t0 = time.perf_counter()
        last = await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), last


async def main(args) -> dict:
    from sluice.api.http import create_app
    from sluice.api.keys import create_key
    from sluice.db.pool import create_pool
    from sluice.reports.refresh import refresh
    from sluice.schemas.settings import Settings

    from bench.stack import machine, say

    now = datetime.now(UTC)
    dsn = await fresh_database(args.admin_dsn, f"{DB_NAME}_funnel" if args.funnel else DB_NAME)
    say(f"building the shop ({args.customers:,} customers, {args.orders:,} orders) and its campaigns ...")
    t0 = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        built = await _build(conn, args.customers, args.orders, now, funnel=args.funnel)
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    say(f"  built in {time.perf_counter() - t0:.0f}s: {built['deliveries']:,} deliveries in the big campaign")
    cid = built["campaign_db_id"]
    pool = await create_pool(dsn, size=4)
    try:
        async with pool.acquire() as c:
            for (small,) in await c.fetch("SELECT id FROM campaigns WHERE shop_id = $1 AND id <> $2", SHOP, cid):
                await refresh(c, small)
        key = (await create_key(pool, SHOP)).key
        app = create_app(Settings(DATABASE_URL=dsn), pool=pool, client=NoTemporal())
        async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sluice", headers={"Authorization": f"Bearer {key}"},
            timeout=600,
        ) as http:  # fmt: skip
            wf = f"{SHOP}.big"
            t0 = time.perf_counter()
            r = await http.post(f"/campaigns/{wf}/report/refresh")
            refresh_s = time.perf_counter() - t0
            r.raise_for_status()
            rep = r.json()
            async with pool.acquire() as c:
                t0 = time.perf_counter()
                await refresh(c, cid, attribution=False)
                materialise_s = time.perf_counter() - t0
                funnel_s = await _funnel_alone(c, cid) if args.funnel else None

            async def get(path, **params):
                resp = await http.get(path, params=params)
                resp.raise_for_status()
                return resp

            report_s, _ = await _median(lambda: get(f"/campaigns/{wf}/report"))
            dashboard_s, dash = await _median(lambda: get("/dashboard"))
            page_s, _ = await _median(lambda: get(f"/campaigns/{wf}/recipients", limit=100))
            fail_page_s, fails = await _median(lambda: get(f"/campaigns/{wf}/recipients", failures="true", limit=100))
            t0 = time.perf_counter()
            rows = 0
            async with http.stream("GET", f"/campaigns/{wf}/recipients.csv") as resp:
                async for line in resp.aiter_lines():
                    rows += bool(line)
            csv_s = time.perf_counter() - t0
    finally:
        await pool.close()
    rows -= 1  # the header
    result = {
        "measured_at": now.isoformat(timespec="seconds"),
        "machine": {**machine(), "postgres": version},
        "customers": args.customers, "orders": args.orders + args.customers // 33 + (args.customers // 99 if args.funnel else 0),
        "campaign_deliveries": built["deliveries"],
        "report": {k: rep["totals"][k] for k in ("sent", "reached", "replied", "converted", "orders", "revenue")},
        "refresh_s": round(refresh_s, 3), "materialise_s": round(materialise_s, 3),
        "report_s": round(report_s, 4), "dashboard_s": round(dashboard_s, 4),
        "recipients_page_s": round(page_s, 4), "failures_page_s": round(fail_page_s, 4),
        "failures_page_rows": len(fails.json()["recipients"]),
        "dashboard_months": len(dash.json()["months"]),
        "csv_rows": rows, "csv_s": round(csv_s, 2), "csv_rows_per_s": round(rows / csv_s),
        "goals": GOALS,
        "goals_met": report_s <= GOALS["report_s"] and dashboard_s <= GOALS["dashboard_s"],
    }  # fmt: skip
    if args.funnel:
        result["funnel"] = {s["stage"]: s["count"] for s in rep["funnel"]["stages"]}
        result["funnel_channels"] = {c["name"]: {s["stage"]: s["count"] for s in c["stages"]} for c in rep["funnel"]["channels"]}
        result["funnel_statement_s"] = round(funnel_s, 3)
        say(f"  funnel: {result['funnel']}; its statement alone: {result['funnel_statement_s']} s")
    for k in ("refresh_s", "materialise_s", "report_s", "dashboard_s", "recipients_page_s", "failures_page_s", "csv_rows_per_s"):
        say(f"  {k}: {result[k]}")
    if not args.no_record:
        record_results(RESULTS, "reports_funnel" if args.funnel else "reports", result)
        _docs(result, funnel=args.funnel)
    return result


async def _funnel_alone(conn: asyncpg.Connection, cid: int, n: int = 5) -> float:
    """The funnel's statement (R-ED-5) alone, under the refresh's settings, each run in a transaction rolled back;
    the median of `n`."""
    from sluice.reports.definitions import CAMPAIGN_FUNNEL
    from sluice.reports.refresh import CLEAR_FUNNEL, FUNNEL, SETTINGS
    from sluice.schemas.campaign import DEFAULT_ATTRIBUTION_DAYS

    async def once() -> float:
        tr = conn.transaction()
        await tr.start()
        try:
            await conn.execute(SETTINGS)
            await conn.execute(CLEAR_FUNNEL, cid)
            t0 = time.perf_counter()
            await conn.execute(FUNNEL, cid, DEFAULT_ATTRIBUTION_DAYS, CAMPAIGN_FUNNEL)
            return time.perf_counter() - t0
        finally:
            await tr.rollback()

    return statistics.median([await once() for _ in range(n)])


def _docs(r: dict, funnel: bool = False) -> None:
    """The figures as a table between this benchmark's markers in docs/benchmarks.md (the rest is prose)."""
    m = r["machine"]
    start, end = (FUNNEL_START, FUNNEL_END) if funnel else (START, END)
    kind = "a K-EDM campaign (in-site message to all, email to half)" if funnel else "a campaign"
    lines = [
        start,
        f"Last run: {r['measured_at']}; {m['cpus']} cores ({m['cpu_model']}), {m['ram_gb']} GB RAM, PostgreSQL "
        f"{m['postgres']}, load average before {m['load_avg_before']}.",
        "",
        "| figure | value | goal |",
        "|---|---|---|",
        f"| shop | {r['customers']:,} customers, {r['orders']:,} orders; {kind} of {r['campaign_deliveries']:,} "
        f"deliveries in 2 phases, 50 earlier campaigns | |",
        f"| refresh: attribution + report tables (POST .../report/refresh) | {r['refresh_s']:.2f} s | |",
        f"| report tables alone | {r['materialise_s']:.2f} s | |",
        f"| GET .../report (phases, totals, trend), median of 5 | {r['report_s'] * 1000:.1f} ms | <= 1 s |",
        f"| GET /dashboard, median of 5 | {r['dashboard_s'] * 1000:.1f} ms | <= 1 s |",
        f"| GET .../recipients, first page of 100 | {r['recipients_page_s'] * 1000:.1f} ms | |",
        f"| GET .../recipients?failures=true, first page of 100 | {r['failures_page_s'] * 1000:.1f} ms | |",
        f"| GET .../recipients.csv, every row | {r['csv_rows']:,} rows in {r['csv_s']:.1f} s "
        f"({r['csv_rows_per_s']:,} rows/s) | |",
    ]
    if funnel:
        f = r["funnel"]
        lines += [
            f"| the funnel's statement alone (part of the refresh above), median of 5 | {r['funnel_statement_s']:.2f} s | |",
            f"| funnel (campaign) | {' -> '.join(f'{k} {v:,}' for k, v in f.items())} | |",
        ]
    lines.append(end)
    replace_docs_block(DOCS, start, end, "\n".join(lines), "## Reports")


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.reports", description=__doc__.split("\n\n")[0])
    p.add_argument("--admin-dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--orders", type=int, default=1_500_000)
    p.add_argument("--funnel", action="store_true", help="the big campaign is K-EDM's: its refresh materialises the funnel")
    p.add_argument("--no-record", action="store_true", help="do not write bench/results.json nor docs/benchmarks.md")
    asyncio.run(main(p.parse_args()))
