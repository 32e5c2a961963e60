"""`python -m bench.budget`: what the campaign budget cap (R-COST-BUDGET) costs the send path.

An SMS day of `--recipients` (100,000 by default) through the real send path
(SendActivities.send_slice: caps, segments and credits in the deciding transaction, the loopback SMS
gateway in a process of its own, outcomes recorded), slices run concurrently outside a workflow, once
without a budget (no spend row: the path before the cap existed) and once with one that never binds
(every chunk locks and bumps the campaign's spend row), `--rounds` pairs in the same run on the same
database, the order alternating (the ledger emptied between runs). Then the spend row's two statements alone: a chunk's
transaction with them against an empty one, `--micro` times on one connection. Figures go to
bench/results.json under "budget".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from bench.stack import bench_campaign, record_results, run_slices

ROOT = Path(__file__).resolve().parent.parent
# Never binds: twice what the day costs at the dearest tier (4.8 fen a segment, one segment a message).
HEADROOM = Decimal("0.096")


async def _day(pool, send, gw, n: int, slice_size: int, chunk_size: int, concurrency: int, budget: Decimal | None) -> dict:
    from sluice.schemas.activities import SendSliceInput
    from sluice.schemas.campaign import Channel

    await pool.execute("TRUNCATE deliveries, fatigue_day, sms_debits, outbox, campaign_spend")
    now = datetime.now(UTC)
    day = now.date()
    ref = uuid.uuid4().hex[:8]
    campaign = await bench_campaign(pool, "s1", ref, "K-ACQUIRE", day, n)
    text = "春季会员日:专属优惠券已到账,点击进店即可使用,本周内有效,数量有限先到先得"  # one segment, signed
    slices = [
        SendSliceInput(campaign_db_id=campaign, shop_id="s1", phase_index=0, day=day, channel=Channel.sms,
                       template_cap=None, text=text, seq_lo=lo, seq_hi=min(lo + slice_size, n), budget=slice_size,
                       decided_at=now, window_end=now + timedelta(hours=6), chunk_size=chunk_size, campaign_budget=budget)
        for lo in range(0, n, slice_size)
    ]  # fmt: skip
    before = gw.counts()["messages"]
    results, secs = await run_slices(send, slices, concurrency)
    sent = sum(r.sent for r in results)
    cost = await pool.fetchval("SELECT sum(cost) FROM deliveries WHERE campaign_id = $1", campaign)
    spend = await pool.fetchval("SELECT spent FROM campaign_spend WHERE campaign_id = $1", campaign)
    # Every recipient once at the gateway; with a budget, its spend row is the ledger's cost to the fen.
    assert sent == n == gw.counts()["messages"] - before
    assert (spend is None) == (budget is None) and (spend is None or spend == cost)
    return {"budget": str(budget) if budget is not None else None, "seconds": round(secs, 3),
            "recipients_per_s": round(n / secs, 1), "chunks": -(-n // chunk_size), "cost_yuan": str(cost)}  # fmt: skip


async def _micro(pool, reps: int) -> dict:
    """A chunk transaction's share of the cap, on one connection, lock waits aside: a transaction that writes one
    row (as every chunk does: its commit waits for the WAL flush either way) with and without the spend row's
    two statements (hold: an upsert that locks the row; take: its update). Series of 50 transactions, the two
    kinds interleaved, each series on a fresh campaign's row (a row bumped 100 times is a 100,000 day at
    chunks of 2,000: a longer series would measure a HOT chain no day grows). Then the server's own time for
    the two statements (EXPLAIN ANALYZE: planning and execution, no round trip) on a row bumped a day's 50 times."""
    from sluice.activities import budget as b
    from sluice.activities.budget import hold_budget, take_budget

    async def fresh_row(conn, bumps: int) -> int:
        ref = uuid.uuid4().hex[:8]
        campaign = await conn.fetchval(
            "INSERT INTO campaigns (shop_id, campaign_ref, workflow_id, kind, spec, state)"
            " VALUES ('s1', $1, 's1.' || $1, 'K-ACQUIRE', '{}'::jsonb, 'running') RETURNING id", ref,
        )  # fmt: skip
        for _ in range(bumps):
            async with conn.transaction():
                await hold_budget(conn, campaign, Decimal(10**9))
                await take_budget(conn, campaign, Decimal("84.0"), False)
        return campaign

    times: dict[str, list[float]] = {"chunk": [], "chunk_with_spend_row": []}
    async with pool.acquire() as conn:
        for _ in range(max(1, reps // 100)):
            for name, series in times.items():
                campaign = await fresh_row(conn, 0)
                for _ in range(50):
                    t0 = time.perf_counter()
                    async with conn.transaction():
                        await conn.execute("UPDATE campaigns SET updated_at = now() WHERE id = $1", campaign)
                        if name == "chunk_with_spend_row":
                            await hold_budget(conn, campaign, Decimal(10**9))
                            await take_budget(conn, campaign, Decimal("84.0"), False)
                    series.append(time.perf_counter() - t0)
        out = {name: round(statistics.median(series) * 1000, 3) for name, series in times.items()}
        out["added_ms_per_chunk"] = round(out["chunk_with_spend_row"] - out["chunk"], 3)
        server = []
        campaign = await fresh_row(conn, 50)
        for _ in range(100):
            tx = conn.transaction()
            await tx.start()
            ms = 0.0
            for sql, args in ((b._SPEND_LOCK, (campaign, Decimal(10**9))), (b._SPEND_TAKE, (campaign, Decimal(1), False))):
                plan = json.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args))[0]
                ms += plan["Planning Time"] + plan["Execution Time"]
            await tx.rollback()
            server.append(ms)
    return {"median_ms": out, "transactions": sum(len(v) for v in times.values()),
            "server_ms_per_chunk": round(statistics.median(server), 3)}


async def main(args) -> None:
    import asyncpg
    from sluice.activities.send import SendActivities
    from sluice.channels.registry import ChannelRegistry
    from sluice.channels.sms import SmsGatewayChannel, recharge
    from sluice.db.migrate import migrate
    from sluice.db.pool import create_pool

    from tests.gateway import Gateway

    n = args.recipients
    db = f"bench_budget_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f"CREATE DATABASE {db}")
    await admin.close()
    dsn = args.dsn.rsplit("/", 1)[0] + f"/{db}"
    pool = await create_pool(dsn, size=args.concurrency + 4)
    gw = Gateway().start_process()
    results: dict = {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
                     "load_avg_before": [round(x, 2) for x in os.getloadavg()], "recipients": n,
                     "slice_size": args.slice_size, "chunk_size": args.chunk_size, "concurrency": args.concurrency}
    sms = SmsGatewayChannel("sms", gw.url, timeout_s=30, batch_size=2000)
    try:
        await migrate(dsn)
        now = datetime.now(UTC)
        await pool.execute("INSERT INTO shops (shop_id, name, timezone, industry) VALUES ('s1', 's1', 'UTC', 'beauty')")
        await recharge(pool, "s1", 2 * n * (args.rounds * 2 + 1), now - timedelta(days=1))
        await pool.execute("INSERT INTO consumers (consumer_id) SELECT g FROM generate_series(1, $1) g", n)
        await pool.execute(
            "INSERT INTO shop_customers (shop_id, consumer_id, phone, phone_valid)"
            " SELECT 's1', g, '138' || lpad(g::text, 8, '0'), true FROM generate_series(1, $1) g", n,
        )  # fmt: skip
        await pool.execute("VACUUM ANALYZE")
        send = SendActivities(pool, ChannelRegistry({"sms": sms}), platform_timezone="UTC")
        budget = HEADROOM * n
        await _day(pool, send, gw, min(n, 5_000), args.slice_size, args.chunk_size, args.concurrency, budget)  # warm-up
        runs: dict[str, list] = {"without_budget": [], "with_budget": []}
        pair = [("without_budget", None), ("with_budget", budget)]
        for k in range(args.rounds):
            for name, b in pair if k % 2 == 0 else pair[::-1]:  # the order alternates: A B, B A, ...
                r = await _day(pool, send, gw, n, args.slice_size, args.chunk_size, args.concurrency, b)
                print(f"{name}: {n:,} in {r['seconds']:.2f}s = {r['recipients_per_s']:,.0f}/s")
                runs[name].append(r)
        if args.rounds:
            best = {k: min(r["seconds"] for r in v) for k, v in runs.items()}
            results["median_seconds"] = {k: round(statistics.median(r["seconds"] for r in v), 3) for k, v in runs.items()}
            chunks = runs["with_budget"][0]["chunks"]
            results.update(runs)
            results["best_seconds"] = best
            results["end_to_end_ms_per_chunk"] = round((best["with_budget"] - best["without_budget"]) / chunks * 1000, 2)
        else:  # the statements only: the last end-to-end figures stay
            path = ROOT / "bench" / "results.json"
            results = {**(json.loads(path.read_text()).get("budget", {}) if path.exists() else {}),
                       "micro_measured_at": results["measured_at"], "micro_load_avg_before": results["load_avg_before"]}
        results["micro"] = await _micro(pool, args.micro)
        results["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
        print(f"end to end {results.get('end_to_end_ms_per_chunk')} ms per chunk of {args.chunk_size};"
              f" the spend row alone {results['micro']}")
    finally:
        await sms.aclose()
        gw.stop()
        await pool.close()
        admin = await asyncpg.connect(args.dsn)
        await admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        await admin.close()
    record_results(ROOT / "bench" / "results.json", "budget", results)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.budget", description=__doc__)
    p.add_argument("--dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--recipients", type=int, default=100_000)
    p.add_argument("--slice-size", type=int, default=12_500, help="8 slices of the 100,000 in flight at once")
    p.add_argument("--chunk-size", type=int, default=2_000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rounds", type=int, default=4, help="runs of each, the order alternating (0: the statements only)")
    p.add_argument("--micro", type=int, default=2_000, help="transactions of each kind in the statements' benchmark")
    asyncio.run(main(p.parse_args()))
