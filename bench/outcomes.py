"""Outcome events and attribution at scale (docs/benchmarks.md, "Outcome events and attribution").

`python -m bench.outcomes [--admin-dsn DSN]`:

1. ingestion: 100,000 outcome events (engagement, orders created, paid and refunded, unsubscriptions)
   POSTed to /events of a real API server (uvicorn in a subprocess, over TCP) in batches, by a few
   concurrent clients, for a shop of 100,000 customers; events/s over the whole run (goal >= 20,000), and
   the CPU that the server, the database and this client spent per 1,000 events (CpuMeter);
2. attribution: a campaign of 1,000,000 sent deliveries over three phases and 1,500,000 orders of the
   shop, built set-based, then `attribute` timed three times: from an empty attributions table (the goal,
   <= 10 s, is checked on this run), then twice again with nothing changed.

Figures go to bench/results.json under "outcomes" (other keys are kept).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import psutil

from bench.stack import NoTemporal, fresh_database, record_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results.json"
DB_NAME = "sluice_bench_outcomes"
EV_SHOP, ATT_SHOP = "bench-ev", "bench-att"
KINDS_CYCLE = ["delivered", "opened", "clicked", "replied", "opened", "coupon_claimed", "product_clicked", "order_created",
               "order_paid", "order_refunded"]  # fmt: skip


def serve(dsn: str, port: int) -> None:
    import uvicorn
    from sluice.api.http import create_app
    from sluice.schemas.settings import Settings

    settings = Settings(DATABASE_URL=dsn, SLUICE_DB_POOL=8)
    uvicorn.run(create_app(settings, client=NoTemporal()), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)  # fmt: skip


async def _customers(conn: asyncpg.Connection, shop: str, n: int, offset: int) -> None:
    await conn.execute("INSERT INTO shops (shop_id, name, timezone, industry) VALUES ($1, $1, 'Asia/Shanghai', 'beauty')", shop)
    await conn.execute("INSERT INTO consumers (consumer_id) SELECT $1 + g FROM generate_series(1, $2) g", offset, n)
    await conn.execute(
        "INSERT INTO shop_customers (shop_id, consumer_id, chat_id) SELECT $1, $2 + g, 'tb' || g FROM generate_series(1, $3) g",
        shop, offset, n,
    )  # fmt: skip


def _batches(n_events: int, batch: int, customers: int, at: datetime) -> list[list[dict]]:
    out, order = [], 0
    for lo in range(0, n_events, batch):
        events = []
        for i in range(lo, min(lo + batch, n_events)):
            kind = KINDS_CYCLE[i % len(KINDS_CYCLE)]
            e = {"event_id": f"ev-{i}", "kind": kind, "consumer_id": 1 + (i * 7919) % customers,
                 "occurred_at": (at + timedelta(seconds=i)).isoformat(), "campaign_id": "c1", "phase": 0}  # fmt: skip
            if kind == "product_clicked":
                e["product_id"] = 1 + i % 500
            elif kind == "order_created":
                order += 1
                e |= {"order_id": order, "amount": "99.00"}
            elif kind in ("order_paid", "order_refunded"):
                # The order created just before in the same batch, by the same consumer.
                e |= {"order_id": order, "consumer_id": events[-(1 if kind == "order_paid" else 2)]["consumer_id"]}
                if kind == "order_refunded":
                    e["amount"] = "10.00"
            if i % 50 == 0:
                e = {"event_id": f"ev-{i}", "kind": "unsubscribed", "consumer_id": e["consumer_id"], "channel": "sms",
                     "occurred_at": e["occurred_at"]}  # fmt: skip
            events.append(e)
        out.append(events)
    return out


BACKENDS = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"


class CpuMeter:
    """CPU time spent during a timed window by the API server process, by the database backends serving this
    database (the server's pool) and by this process (the bench client), in ms per 1,000 events. On a shared machine
    wall-clock throughput follows the load; CPU per event does much less, and says which part is the bound."""

    def __init__(self, dsn: str, server_pid: int):
        self.dsn, self.server = dsn, psutil.Process(server_pid)
        self.before: dict[str, float] = {}
        self.backends: dict[int, float] = {}

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        t = proc.cpu_times()
        return t.user + t.system

    async def _backend_cpu(self) -> dict[int, float]:
        conn = await asyncpg.connect(self.dsn)
        try:
            pids = await conn.fetch(BACKENDS)
        finally:
            await conn.close()
        out = {}
        for (pid,) in pids:
            with contextlib.suppress(psutil.Error):
                out[pid] = self._cpu(psutil.Process(pid))
        return out

    async def start(self) -> None:
        self.backends = await self._backend_cpu()
        self.before = {"server": self._cpu(self.server), "client": time.process_time()}

    async def stop(self, events: int) -> dict[str, float]:
        client, server = time.process_time(), self._cpu(self.server)
        backends = await self._backend_cpu()  # the pool's connections stay open until the server stops
        db = sum(cpu - self.backends.get(pid, 0.0) for pid, cpu in backends.items())
        per = 1000 * 1000 / events
        return {"server": round((server - self.before["server"]) * per, 1), "postgres": round(db * per, 1),
                "client": round((client - self.before["client"]) * per, 1)}


async def bench_ingest(dsn: str, n_events: int, batch: int, clients: int, customers: int) -> dict:
    from sluice.api.keys import create_key

    conn = await asyncpg.connect(dsn)
    try:
        await _customers(conn, EV_SHOP, customers, 0)
        await conn.execute("INSERT INTO campaigns (shop_id, campaign_ref, workflow_id, kind, spec) VALUES ($1, 'c1', $1 || '.c1',"
                           " 'bench', '{}')", EV_SHOP)  # fmt: skip
        await conn.execute("ANALYZE")
        key = (await create_key(conn, EV_SHOP)).key
    finally:
        await conn.close()
    batches = _batches(n_events, batch, customers, datetime(2026, 3, 1, tzinfo=UTC))
    bodies = [json.dumps({"events": b}).encode() for b in batches]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "bench.outcomes", "serve", "--dsn", dsn, "--port", str(port)], cwd=ROOT)
    try:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120) as http:
            for _ in range(200):
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            queue = list(reversed(bodies))
            totals = {"accepted": 0, "duplicate": 0, "unknown_customer": 0, "refused": 0}

            async def worker():
                while queue:
                    r = await http.post("/events", content=queue.pop())
                    r.raise_for_status()
                    for k in totals:
                        totals[k] += r.json()[k]

            cpu = CpuMeter(dsn, server.pid)
            await cpu.start()
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            seconds = time.perf_counter() - t0
            cpu_ms = await cpu.stop(n_events)
            # A resend of the first tenth: all duplicates.
            queue = list(reversed(bodies[: max(1, len(bodies) // 10)]))
            first = dict(totals)
            t1 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            resend_s = time.perf_counter() - t1
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "events": n_events, "batch": batch, "clients": clients, "seconds": round(seconds, 2),
        "events_per_s": round(n_events / seconds), "cpu_ms_per_1000_events": cpu_ms,
        "events_per_cpu_s": round(n_events / (sum(cpu_ms.values()) * n_events / 1000 / 1000)), "answer": first,
        "resend_events_per_s": round(sum(len(b) for b in batches[: max(1, len(batches) // 10)]) / resend_s),
        "resend_duplicates": totals["duplicate"] - first["duplicate"],
    }  # fmt: skip


async def bench_attribution(dsn: str, deliveries: int, orders: int) -> dict:
    from sluice.outcomes.attribution import Window, attribute, resolve, save_windows
    from sluice.schemas.campaign import AttributionMode, AttributionWindow

    offset = 10_000_000
    day0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # 10:00 shop-local
    conn = await asyncpg.connect(dsn)
    try:
        t = time.perf_counter()
        await _customers(conn, ATT_SHOP, deliveries, offset)
        cid = await conn.fetchval("INSERT INTO campaigns (shop_id, campaign_ref, workflow_id, kind, spec) VALUES ($1, 'a1',"
                                  " $1 || '.a1', 'bench', '{}') RETURNING id", ATT_SHOP)  # fmt: skip
        # Three phases on days 1, 2-3 and 4: n customers reached by phase 0, a half of them again by phase 1,
        # a quarter by phase 2 (1.75 n = the ledger rows asked for).
        await conn.execute(
            """INSERT INTO deliveries (campaign_id, phase, consumer_id, day, channel, shop_id, template_group, fatigue_day,
                                       state, decided_at)
               SELECT $1, phase, $3 + g, at::date, 'chat', $2, '', at::date, 'sent', at + (g % 3600) * interval '1 s'
               FROM (SELECT 0 AS phase, g, $5::timestamptz AS at FROM generate_series(1, $4) g
                     UNION ALL
                     SELECT 1, g, $5::timestamptz + interval '1 day' FROM generate_series(2, $4, 2) g
                     UNION ALL
                     SELECT 2, g, $5::timestamptz + interval '3 days' FROM generate_series(1, $4, 4) g
                     LIMIT $6) r""",
            cid, ATT_SHOP, offset, math.ceil(deliveries / 1.75), day0, deliveries,
        )  # fmt: skip
        # Orders spread over 30 days around the campaign, a third of them refunded in part, a tenth unpaid.
        await conn.execute(
            """INSERT INTO orders (order_id, shop_id, consumer_id, created_at, paid_at, amount, status, refunded_amount)
               SELECT $1 + g, $2, $1 + 1 + (g::bigint * 7919) % $3,
                      $4::timestamptz - interval '10 days' + (g::bigint * 2592000 / $5) * interval '1 s',
                      CASE WHEN g % 10 = 0 THEN NULL ELSE $4::timestamptz END, 100,
                      CASE WHEN g % 10 = 0 THEN 'pending' ELSE 'paid' END,
                      CASE WHEN g % 3 = 0 THEN 20 ELSE 0 END
               FROM generate_series(1, $5) g""",
            offset, ATT_SHOP, deliveries, day0, orders,
        )  # fmt: skip
        await conn.execute("ANALYZE")
        build_s = time.perf_counter() - t
        n_deliveries = await conn.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1", cid)
        windows = {
            0: resolve(AttributionWindow.phase_period(), day0.date(), day0.date(), "Asia/Shanghai"),
            1: resolve(AttributionWindow.phase_period(), (day0 + timedelta(days=1)).date(), (day0 + timedelta(days=2)).date(),
                       "Asia/Shanghai"),  # fmt: skip
            2: Window(AttributionMode.after_reach, days=7),
        }
        await save_windows(conn, cid, windows)
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            done = await attribute(conn, cid)
            runs.append(round(time.perf_counter() - t, 2))
    finally:
        await conn.close()
    return {"deliveries": n_deliveries, "orders": orders, "build_s": round(build_s, 1), "attribute_s": runs,
            "attribute_first_s": runs[0], "attribute_best_s": min(runs), "attributed_orders": done.orders,
            "attributed_revenue": str(done.revenue)}  # fmt: skip


async def main(args: argparse.Namespace) -> dict:
    dsn = await fresh_database(args.admin_dsn, DB_NAME)
    ingest = await bench_ingest(dsn, args.events, args.batch, args.clients, args.customers) if args.events else None
    print("ingest:", json.dumps(ingest), flush=True)
    att = await bench_attribution(dsn, args.deliveries, args.orders) if args.deliveries else None
    print("attribution:", json.dumps(att), flush=True)
    if ingest is None or att is None:
        return {"ingest": ingest, "attribution": att}  # a partial run is never recorded
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": f"{os.cpu_count()} cores",
        "load_average_1m_at_end": round(os.getloadavg()[0], 1),  # other work on the machine skews every figure
        "ingest": ingest, "attribution": att,
        "goals": {"events_per_s": 20_000, "attribute_s": 10},
        "goals_met": ingest["events_per_s"] >= 20_000 and att["attribute_first_s"] <= 10,
    }  # fmt: skip
    if not args.no_record:
        record_results(RESULTS, "outcomes", result)
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        p = argparse.ArgumentParser()
        p.add_argument("serve")
        p.add_argument("--dsn", required=True)
        p.add_argument("--port", type=int, required=True)
        a = p.parse_args()
        serve(a.dsn, a.port)
        sys.exit(0)
    p = argparse.ArgumentParser(prog="python -m bench.outcomes", description=__doc__.split("\n\n")[0])
    p.add_argument("--admin-dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=5_000, help="events per request (MAX_BATCH at most)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--deliveries", type=int, default=1_000_000)
    p.add_argument("--orders", type=int, default=1_500_000)
    p.add_argument("--no-record", action="store_true", help="do not write bench/results.json")
    asyncio.run(main(p.parse_args()))
