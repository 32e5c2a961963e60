"""`python -m bench.chat_agents`: what choosing each chat message's sender agent (R-PH-5) costs the send path.

Four shops of `--customers` customers each, `--agents` chat agents (two thirds online) and a last-serving
agent for 80% of the customers. Two days' chat slices per shop (R-FAT-2 allows two a day) through the real
send path (SendActivities.send_slice outside a workflow, chunks of 2,000, the outbox hand-off), once
without a sender set and once with every agent of the shop, in orders balanced across the shops so
both configurations meet the same fatigue states (first slice: new counter rows; second: updates).
The send path runs on one database connection, whose backend's CPU time is read from /proc (the
server is shared), next to the wall time and this process's CPU time.

Figures go to bench/results.json under "chat_agents" (the other keys are kept).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from bench.stack import fresh_database, record_results

ROOT = Path(__file__).resolve().parent.parent
TZ = "Asia/Shanghai"


def _backend_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _seed(pool: asyncpg.Pool, shop_id: str, first: int, n: int, agents: int) -> list[int]:
    ids = list(range(first, first + n))
    await pool.execute("INSERT INTO shops (shop_id, name, timezone, industry) VALUES ($1, $1, $2, 'beauty')", shop_id, TZ)
    await pool.execute("INSERT INTO consumers (consumer_id) SELECT unnest($1::bigint[])", ids)
    await pool.execute(
        "INSERT INTO shop_customers (shop_id, consumer_id, chat_id) SELECT $1, c, 'tb_' || c FROM unnest($2::bigint[]) c",
        shop_id, ids,
    )  # fmt: skip
    await pool.execute(
        "INSERT INTO agents (shop_id, agent_id, name, online) SELECT $1, 'agent-' || i, 'n', i % 3 <> 0"
        " FROM generate_series(1, $2::int) i",
        shop_id, agents,
    )  # fmt: skip
    await pool.execute(
        "INSERT INTO customer_agents (shop_id, consumer_id, agent_id, served_at)"
        " SELECT $1, c, 'agent-' || (1 + c % $3::int), now() FROM unnest($2::bigint[]) c WHERE c % 5 <> 0",
        shop_id, ids, agents,
    )  # fmt: skip
    return ids


async def _slice(pool: asyncpg.Pool, send, shop_id: str, ids: list[int], ref: str, with_agents: bool) -> dict:
    from sluice.schemas import activities as A
    from sluice.schemas.campaign import SenderAgents
    from temporalio.testing import ActivityEnvironment

    cid = await pool.fetchval(
        "INSERT INTO campaigns (shop_id, campaign_ref, workflow_id, kind, spec, state)"
        " VALUES ($1, $2, $1 || '.' || $2, 'K-PHASED', '{}'::jsonb, 'sending') RETURNING id",
        shop_id, ref,
    )  # fmt: skip
    day = datetime.now(UTC).date()
    await pool.execute(
        "INSERT INTO audience_snapshots (campaign_id, phase, day, seq, consumer_id)"
        " SELECT $1, 0, $2, i - 1, c FROM unnest($3::bigint[]) WITH ORDINALITY AS u(c, i)",
        cid, day, ids,
    )  # fmt: skip
    await pool.execute("ANALYZE audience_snapshots")
    now = datetime.now(UTC)
    inp = A.SendSliceInput(
        campaign_db_id=cid, shop_id=shop_id, phase_index=0, day=day, channel="chat", text="hi", template_cap=None,
        seq_lo=0, seq_hi=len(ids), budget=len(ids), decided_at=now, window_end=now + timedelta(hours=2),
        chunk_size=2_000, sender_agents=SenderAgents(ids=None) if with_agents else None,
    )  # fmt: skip
    pid = await pool.fetchval("SELECT pg_backend_pid()")
    pg0, py0, t0 = _backend_cpu_s(pid), time.process_time(), time.perf_counter()
    res = await ActivityEnvironment().run(send.send_slice, inp)
    wall, py, pg = time.perf_counter() - t0, time.process_time() - py0, _backend_cpu_s(pid) - pg0
    with_sender = await pool.fetchval(
        "SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND sender_agent IS NOT NULL", cid
    )
    chunks = -(-len(ids) // 2_000)
    return {
        "agents": with_agents, "recipients": len(ids), "sent": res.sent, "with_sender": with_sender,
        "wall_s": round(wall, 2), "recipients_per_s": round(len(ids) / wall), "postgres_cpu_s": round(pg, 2),
        "worker_cpu_s": round(py, 2), "postgres_cpu_ms_per_chunk": round(pg / chunks * 1000, 1),
    }  # fmt: skip


async def main(dsn: str, customers: int, agents: int) -> dict:
    from sluice.activities.send import SendActivities
    from sluice.channels.registry import ChannelRegistry
    from sluice.db.pool import create_pool
    from sluice.schemas.settings import Settings

    bench_dsn = await fresh_database(dsn, "sluice_bench_chat_agents")
    pool = await create_pool(bench_dsn, size=1)
    try:
        shops = {s: await _seed(pool, s, 1 + i * 10_000_000, customers, agents) for i, s in enumerate("wxyz")}
        await pool.execute("VACUUM ANALYZE")
        send = SendActivities(pool, ChannelRegistry.outbox_for_all(pool), platform_timezone=Settings().platform_timezone)
        order = [("w", False), ("x", True), ("y", True), ("z", False), ("w", True), ("x", False), ("y", False), ("z", True)]
        runs = [await _slice(pool, send, s, shops[s], f"{s}{n}", a) for n, (s, a) in enumerate(order)]
    finally:
        await pool.close()
    without = [r for r in runs if not r["agents"]]
    with_ = [r for r in runs if r["agents"]]
    result = {
        "customers_per_shop": customers, "agents": agents, "runs": runs,
        "postgres_cpu_ms_per_chunk": {"without_agents": sorted(r["postgres_cpu_ms_per_chunk"] for r in without),
                                      "with_agents": sorted(r["postgres_cpu_ms_per_chunk"] for r in with_)},
        "postgres_cpu_added_ms_per_chunk": round(
            sum(r["postgres_cpu_ms_per_chunk"] for r in with_) / len(with_)
            - sum(r["postgres_cpu_ms_per_chunk"] for r in without) / len(without), 1,
        ),
        "recipients_per_s": {"without_agents": [r["recipients_per_s"] for r in without],
                             "with_agents": [r["recipients_per_s"] for r in with_]},
    }  # fmt: skip
    record_results(ROOT / "bench" / "results.json", "chat_agents", result)
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--customers", type=int, default=200_000)
    p.add_argument("--agents", type=int, default=200)
    args = p.parse_args()
    import json

    print(json.dumps(asyncio.run(main(args.dsn, args.customers, args.agents)), indent=2))
