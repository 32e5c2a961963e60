"""`python -m bench.fairness`: a small shop's campaign started while a big shop's 1M-recipient day sends.

Both campaigns are K-PHASED promote days over their shops' customers (channel chat), their slices
on the provider's send queue (`SLUICE_PROVIDER_QUEUES`, schemas/providers.py), one worker process.
The big day is started first; once it has decided `--head-start` recipients the small shop's
campaign (`--small`, default 1,000) is started, and the figures are the time from that start to
the small campaign's first `sent` row and to its last, with the big day's progress at those points.
`--rate chat=N` limits the provider to N messages/s (the queue then hands out N / slice_max
activities a second over all workers), so the small shop's slice also queues behind the big day's.

Figures go to bench/results.json under "fairness" (other keys kept) and to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from datetime import time as dtime
from pathlib import Path

import asyncpg

from bench.stack import (
    ROOT,
    Postgres,
    WorkerProcess,
    machine,
    record_results,
    replace_docs_block,
    say,
    start_temporal,
    wait_for_pollers,
)

RESULTS_KEY = "fairness"
GOAL_FIRST_SEND_S = 5.0
BIG, SMALL = "fair-big", "fair-small"
SENT_COUNT = "SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND state = 'sent'"  # campaign_id index; ms
DECIDED_COUNT = "SELECT count(*) FROM deliveries WHERE campaign_id = $1"  # campaign_id index; ~100 ms at 1M


def _spec(shop: str, day, campaign: str):
    from sluice.kinds.phased import PhasedSpec

    return PhasedSpec(kind="K-PHASED", shop_id=shop, campaign_id=campaign, channel="chat", phases=[{
        "name": "promote", "start_date": day, "end_date": day, "send_time": dtime(8, 0), "audience": "shop_all",
        "text": "Spring sale: 20% off everything this week"}])  # fmt: skip


async def run(args) -> dict:
    from sluice.api.service import start_campaign
    from sluice.db.pool import create_pool
    from sluice.db.seed import seed_shop, zones_into
    from sluice.workers.demo import open_window_zone
    from sluice.workflows.calendar import local_day

    now = datetime.now(UTC)
    tz = open_window_zone(now)
    pg = Postgres(Path(args.data_dir).resolve(), args.admin_dsn)
    env = worker = None
    try:
        name = f"bench_fair_{args.recipients}"
        dsn = await pg.database(name, fresh=not args.reuse)
        conn = await asyncpg.connect(dsn)
        try:
            have = await conn.fetchval("SELECT count(*) FROM shop_customers WHERE shop_id = $1", BIG)
            await conn.execute("TRUNCATE outbox, deliveries, fatigue_day, audience_snapshots, audience_refreshes,"
                               " campaign_day_reports, campaigns RESTART IDENTITY CASCADE")  # fmt: skip
            await conn.execute("UPDATE shops SET timezone = $1", tz)
            for shop in (BIG, SMALL):  # a reused database: its customers' own zones follow the shop's
                await zones_into(conn, shop, tz)
        finally:
            await conn.close()
        if have != args.recipients:
            say(f"seeding {args.recipients:,} + {args.small:,} customers ...")
            await seed_shop(dsn, shop_id=BIG, customers=args.recipients, timezone=tz, now=now, channel_mix=False)
            # The small shop's customers are other consumers: no platform cap is shared with the big day.
            await seed_shop(dsn, shop_id=SMALL, customers=args.small, timezone=tz, now=now, channel_mix=False,
                            consumer_id_offset=args.recipients)  # fmt: skip
            conn = await asyncpg.connect(dsn)
            try:
                # R-WIN-1: customers with a zone of their own would be sent hours later in their own window.
                for shop in (BIG, SMALL):
                    await zones_into(conn, shop, tz)
                await conn.execute("VACUUM (ANALYZE)")
            finally:
                await conn.close()
        env = await start_temporal()
        queue = f"fair-{uuid.uuid4().hex[:6]}"
        worker_env = {
            "DATABASE_URL": dsn, "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
            "SLUICE_TASK_QUEUE": queue, "SLUICE_PROVIDER_QUEUES": "true", "SLUICE_PROVIDER_RATES": args.rate,
            "SLUICE_PLATFORM_TZ": tz,  # INFO: wait_ready reads the "worker started" line
        }  # fmt: skip
        log_dir = Path(args.data_dir).resolve()
        log_dir.mkdir(parents=True, exist_ok=True)
        worker = WorkerProcess(log_dir / "fairness-worker.log", worker_env)
        await worker.wait_ready()
        await wait_for_pollers(env.client, queue, 1)
        pool = await create_pool(dsn, size=4)
        try:
            day = local_day(now, tz)
            stamp = f"{datetime.now(UTC):%H%M%S}"
            tuning = {"provider_queues": True}
            t_big = time.perf_counter()
            big, big_handle = await start_campaign(pool, env.client, _spec(BIG, day, f"day-{stamp}"), task_queue=queue,
                                                   tuning=tuning)  # fmt: skip
            while await pool.fetchval(SENT_COUNT, big.campaign_db_id) < args.head_start:
                await asyncio.sleep(0.05)
            big_at_start = await pool.fetchval(DECIDED_COUNT, big.campaign_db_id)
            say(f"big day under way: {big_at_start:,} decided after {time.perf_counter() - t_big:.1f}s;"
                f" starting the small shop's {args.small:,}")  # fmt: skip
            t0 = time.perf_counter()
            small, small_handle = await start_campaign(pool, env.client, _spec(SMALL, day, f"small-{stamp}"),
                                                       task_queue=queue, tuning=tuning)  # fmt: skip
            first = None
            while first is None:
                if await pool.fetchval(SENT_COUNT, small.campaign_db_id):
                    first = time.perf_counter() - t0
                else:
                    await asyncio.sleep(0.02)
            big_at_first = await pool.fetchval(DECIDED_COUNT, big.campaign_db_id)
            small_result = await small_handle.result()
            done = time.perf_counter() - t0
            big_at_done = await pool.fetchval(DECIDED_COUNT, big.campaign_db_id)
            small_sent = await pool.fetchval(SENT_COUNT, small.campaign_db_id)
            say(f"small shop: first send after {first:.2f}s, all {small_sent:,} sent after {done:.2f}s"
                f" (big day: {big_at_first:,} then {big_at_done:,} decided)")  # fmt: skip
            big_result = await big_handle.result()
            big_s = time.perf_counter() - t_big
            big_sent = await pool.fetchval(SENT_COUNT, big.campaign_db_id)
            say(f"big day: {big_sent:,} sent in {big_s:.1f}s ({big_result.state})")
        finally:
            await pool.close()
        host = machine()
        return {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {k: host[k] for k in ("cpus", "cpu_model", "ram_gb") if k in host},
            "big_recipients": args.recipients,
            "small_recipients": args.small,
            "provider_rates": args.rate or "defaults (chat unlimited)",
            "head_start_sent": args.head_start,
            "big_decided_when_small_started": big_at_start,
            "small_first_send_s": round(first, 3),
            "small_all_sent_s": round(done, 3),
            "small_sent": small_sent,
            "small_state": small_result.state,
            "big_decided_at_small_first_send": big_at_first,
            "big_decided_at_small_done": big_at_done,
            "big_sent": big_sent,
            "big_day_s": round(big_s, 1),
            "goal_first_send_s": GOAL_FIRST_SEND_S,
            "goal_met": first <= GOAL_FIRST_SEND_S,
        }
    finally:
        if worker is not None:
            worker.stop()
        if env is not None:
            await env.shutdown()
        pg.close()


def _runs(results_path: Path | None, result: dict) -> list[dict]:
    """The runs kept under RESULTS_KEY: the latest run per provider-rate setting, this one included."""
    earlier = []
    if results_path and results_path.exists():
        kept = json.loads(results_path.read_text()).get(RESULTS_KEY) or {}
        earlier = kept.get("runs", [kept] if "small_first_send_s" in kept else [])
    return [r for r in earlier if r.get("provider_rates") != result["provider_rates"]] + [result]


def save(result: dict, results_path: Path | None, docs_path: Path | None) -> None:
    """Records the run beside the latest run of every other provider-rate setting (the unlimited provider and a
    limited one answer different questions: the fairness key alone, and the per-provider queue's own limit)."""
    runs = _runs(results_path, result)
    if results_path:
        record_results(results_path, RESULTS_KEY, {"runs": runs, "goal_first_send_s": GOAL_FIRST_SEND_S,
                                                   "goal_met": all(r["goal_met"] for r in runs)})  # fmt: skip
    if docs_path and docs_path.exists():
        begin, end = "<!-- fairness:begin -->", "<!-- fairness:end -->"
        rows = [
            f"| {r['measured_at']} | {r['big_recipients']:,} | {r['small_recipients']:,} | {r['provider_rates']}"
            f" | {r['small_first_send_s']:.2f} s | {r['small_all_sent_s']:.2f} s"
            f" | {r['big_decided_at_small_first_send']:,} -> {r['big_decided_at_small_done']:,} of {r['big_recipients']:,}"
            f" | {r['big_day_s']} s | <= {r['goal_first_send_s']:.0f} s: {'met' if r['goal_met'] else 'NOT met'} |"
            for r in runs
        ]
        table = "\n".join([
            begin,
            "| measured | big day | small campaign | provider rates | small: first send | small: all sent"
            " | big day decided meanwhile | big day took | goal |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            end,
        ])  # fmt: skip
        replace_docs_block(docs_path, begin, end, table, "## Fairness: a small shop during a 1M day (`python -m bench.fairness`)")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__.splitlines()[0])
    p.add_argument("--recipients", type=int, default=1_000_000, help="the big shop's customers (its day)")
    p.add_argument("--small", type=int, default=1_000, help="the small shop's customers")
    p.add_argument("--head-start", type=int, default=50_000, help="big-day sends before the small campaign starts")
    p.add_argument("--rate", default="", help='SLUICE_PROVIDER_RATES for the worker, e.g. "chat=100000"')
    p.add_argument("--reuse", action="store_true", help="reuse an already seeded database of the same size")
    p.add_argument("--data-dir", type=Path, default=ROOT / ".sluice" / "bench")
    p.add_argument("--admin-dsn", default=None, help="a PostgreSQL admin DSN instead of the embedded server")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results.json")
    p.add_argument("--no-results", dest="results", action="store_const", const=None)
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no-docs", dest="docs", action="store_const", const=None)
    args = p.parse_args()
    result = asyncio.run(run(args))
    save(result, args.results, args.docs)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
