"""`python -m bench.dispatch`: the outbox dispatcher draining a campaign day into the loopback SMS gateway.

The day is written to the outbox once by the real send path (SendActivities.send_slice with the outbox
channel: caps, segments, credits, deliveries `sent` with their batches); then, for each part size, 1 and
then 2 dispatchers at once (channels/dispatcher.py) drain it into the gateway of tests/gateway.py, in a
process of its own (a fresh one per run; the day is made undispatched again between runs). The figure
is messages handed off per second from the first claim to the last batch marked dispatched; the
gateway's own totals are checked (every message once, none twice). Figures go to bench/results.json
under "dispatch" (the other keys are kept).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.stack import bench_campaign, fresh_database, record_results

ROOT = Path(__file__).resolve().parent.parent


async def _day(pool, n: int, chunk: int) -> int:
    """A K-ACQUIRE-like SMS day of `n` recipients written to the outbox by the send path; the campaign id."""
    from sluice.activities.send import SendActivities
    from sluice.channels.registry import ChannelRegistry
    from sluice.channels.sms import recharge
    from sluice.schemas.activities import SendSliceInput
    from sluice.schemas.campaign import Channel
    from temporalio.testing import ActivityEnvironment

    now = datetime.now(UTC)
    await pool.execute("INSERT INTO shops (shop_id, name, timezone, industry) VALUES ('s1', 's1', 'UTC', 'beauty')")
    await recharge(pool, "s1", 4 * n, now - timedelta(days=1))
    await pool.execute("INSERT INTO consumers (consumer_id) SELECT g FROM generate_series(1, $1) g", n)
    await pool.execute(
        "INSERT INTO shop_customers (shop_id, consumer_id, phone, phone_valid)"
        " SELECT 's1', g, '138' || lpad(g::text, 8, '0'), true FROM generate_series(1, $1) g",
        n,
    )
    campaign = await bench_campaign(pool, "s1", "d", "K-ACQUIRE", now.date(), n)
    await pool.execute("VACUUM ANALYZE")
    send = SendActivities(pool, ChannelRegistry.outbox_for_all(pool), platform_timezone="UTC")
    inp = SendSliceInput(
        campaign_db_id=campaign, shop_id="s1", phase_index=0, day=now.date(), channel=Channel.sms, template_cap=None,
        text="春季会员日:专属优惠券已到账,点击进店即可使用,本周内有效", title=None, seq_lo=0, seq_hi=n, budget=n,
        decided_at=now, window_end=now + timedelta(hours=6), chunk_size=chunk,
    )  # fmt: skip
    result = await ActivityEnvironment().run(send.send_slice, inp)
    assert result.sent == n, result
    return campaign


# Between runs the same day is made undispatched again (the dispatcher's columns cleared, dead rows vacuumed).
_RESET = [
    "UPDATE outbox SET dispatched_at = NULL, attempts = 0, claimed_by = NULL, lease_until = NULL, in_flight = NULL,"
    " next_attempt_at = NULL, last_error = NULL",
    "UPDATE deliveries SET handed_off_at = NULL, dispatch_ref = NULL",
    "VACUUM ANALYZE outbox",
    "VACUUM ANALYZE deliveries",
]


async def _drain(pool, n: int, dispatchers: int, batches: int, part: int) -> dict:
    from sluice.channels.dispatcher import Dispatcher
    from sluice.channels.sms import SmsGatewayChannel

    from tests.gateway import Gateway

    for sql in _RESET:
        await pool.execute(sql)
    gw = Gateway().start_process()
    adapters = [SmsGatewayChannel("sms", gw.url, timeout_s=30, batch_size=part) for _ in range(dispatchers)]
    try:
        t0 = time.perf_counter()
        stats = await asyncio.gather(*(Dispatcher(pool, {"sms": a}, batches=batches, part_size=part).run_once()
                                       for a in adapters))  # fmt: skip
        secs = time.perf_counter() - t0
        counts = gw.counts()
        handed = sum(s.handed_off for s in stats)
        left = await pool.fetchval("SELECT count(*) FROM deliveries WHERE handed_off_at IS NULL")
        assert handed == n == counts["messages"] == counts["numbers"] and counts["max_per_number"] == 1 and left == 0
        rate = round(n / secs, 1)
        print(f"dispatch: {dispatchers} dispatcher(s) x {batches} claims, parts of {part}: {n:,} messages in {secs:.1f}s"
              f" = {rate:,.0f}/s")
        return {"dispatchers": dispatchers, "claims_per_dispatcher": batches, "part_size": part, "messages": n,
                "seconds": round(secs, 2), "messages_per_s": rate, "gateway_requests": counts["requests"]}  # fmt: skip
    finally:
        for a in adapters:
            await a.aclose()
        gw.stop()


async def main(args) -> None:
    import asyncpg
    from sluice.db.pool import create_pool

    results: dict = {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
                     "load_avg_before": [round(x, 2) for x in os.getloadavg()], "runs": []}  # fmt: skip
    name = f"bench_dispatch_{uuid.uuid4().hex[:6]}"
    dsn = await fresh_database(args.dsn, name)
    pool = await create_pool(dsn, size=max(args.dispatchers) * args.batches + 4)
    try:
        t0 = time.perf_counter()
        await _day(pool, args.messages, args.chunk_size)
        results["outbox"] = {"messages": args.messages, "batches": -(-args.messages // args.chunk_size),
                             "written_by_send_path_s": round(time.perf_counter() - t0, 2)}  # fmt: skip
        for part in args.part_size:
            for k in args.dispatchers:
                results["runs"].append(await _drain(pool, args.messages, k, args.batches, part))
    finally:
        await pool.close()
        admin = await asyncpg.connect(args.dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    results["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    record_results(ROOT / "bench" / "results.json", "dispatch", results)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.dispatch", description=__doc__)
    p.add_argument("--dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--chunk-size", type=int, default=2_000, help="messages per outbox batch (the send path's chunk)")
    p.add_argument("--dispatchers", type=int, nargs="+", default=[1, 2], help="runs: this many dispatchers at once")
    p.add_argument("--batches", type=int, default=4, help="claims per dispatcher at once")
    p.add_argument("--part-size", type=int, nargs="+", default=[500, 2_000],
                   help="runs: messages per gateway request and recorded transaction")
    asyncio.run(main(p.parse_args()))
