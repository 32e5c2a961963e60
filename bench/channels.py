"""`python -m bench.channels`: the channel adapters' throughput on loopback providers.

- email: EmailChannel (render, MAIL/RCPT/DATA per message, outcome per recipient) to an aiosmtpd
  server on loopback with N pooled connections, against the bound: a trivial aiosmtplib client
  pushing pre-rendered messages on N connections to the same server in the same run;
- sms: the real send path (SendActivities.send_slice: reserve with caps, segments and credits in
  the deciding transaction, the SMS gateway over HTTP, outcomes recorded) for a campaign day of
  `--sms-recipients` recipients, slices run concurrently outside a workflow (ActivityEnvironment),
  the gateway in a process of its own (tests/gateway.py).

Figures go to bench/results.json under "channels" (the other keys are kept; a part skipped with 0 keeps the
figures of the run that last measured it, with that run's time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.stack import bench_campaign, record_results, run_slices

ROOT = Path(__file__).resolve().parent.parent


class _Counting:
    """The bench's SMTP server handler: counts accepted messages into a shared value."""

    def __init__(self, accepted):
        self.accepted = accepted

    async def handle_DATA(self, server, session, envelope):
        with self.accepted.get_lock():
            self.accepted.value += len(envelope.rcpt_tos)
        return "250 2.0.0 queued"


def _smtp_serve(port: int, accepted, ready) -> None:
    from aiosmtpd.controller import Controller

    controller = Controller(_Counting(accepted), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    threading.Event().wait()


class _SmtpProcess:
    """aiosmtpd in a process of its own: the sender and the server do not share an interpreter lock."""

    def __init__(self):
        from tests.smtp_server import _free_port

        ctx = multiprocessing.get_context("spawn")
        self.port = _free_port()
        self.accepted = ctx.Value("q", 0)
        ready = ctx.Event()
        self._process = ctx.Process(target=_smtp_serve, args=(self.port, self.accepted, ready), daemon=True)
        self._process.start()
        if not ready.wait(20):
            raise TimeoutError("smtp server did not start")

    def stop(self) -> int:
        self._process.terminate()
        self._process.join(5)
        return self.accepted.value


async def _email(n: int, connections: list[int]) -> dict:
    import aiosmtplib
    from sluice.channels.base import Backoff, Outbound
    from sluice.channels.email import EmailChannel, render

    day = datetime.now(UTC).date()
    msgs = [Outbound(1, 0, c, day, "email", f"c{c}@example.com", f"Spring sale\nHello {c}, 20% off.") for c in range(n)]
    out: dict = {"messages": n, "adapter": {}, "bound": {}}
    for k in connections:
        server = _SmtpProcess()
        ch = EmailChannel(host="127.0.0.1", port=server.port, sender="shop@mail.example", connections=k,
                          backoff=Backoff(attempts=3), unsubscribe_url="https://shop.example/u")
        t0 = time.perf_counter()
        outcomes = await ch.send(msgs)
        secs = time.perf_counter() - t0
        await ch.aclose()
        assert sum(o.state == "sent" for o in outcomes) == n and server.stop() == n
        out["adapter"][str(k)] = round(n / secs, 1)

        # The bound: pre-rendered bytes, no outcome bookkeeping, k connections.
        raw = [render(m, "shop@mail.example", "https://shop.example/u", datetime.now(UTC)) for m in msgs]
        server = _SmtpProcess()

        async def push(share, port=server.port):
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
            await client.connect()
            for m, data in share:
                await client.sendmail("shop@mail.example", [m.address], data)
            await client.quit()

        pairs = list(zip(msgs, raw, strict=True))
        t0 = time.perf_counter()
        await asyncio.gather(*(push(pairs[i::k]) for i in range(k)))
        secs = time.perf_counter() - t0
        assert server.stop() == n
        out["bound"][str(k)] = round(n / secs, 1)
        print(f"email {k} connection(s): adapter {out['adapter'][str(k)]:,.0f}/s, trivial client {out['bound'][str(k)]:,.0f}/s")
    return out


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The bench database's server processes (their CPU is the run's PostgreSQL cost; the server's shared
# background processes are not counted).
_BACKENDS = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"


async def _sms(dsn: str, n: int, slice_size: int, chunk_size: int, concurrency: int) -> dict:
    import asyncpg
    from sluice.activities.send import SendActivities
    from sluice.channels.outbox import OutboxChannel
    from sluice.channels.registry import ChannelRegistry
    from sluice.channels.sms import SmsGatewayChannel, recharge
    from sluice.db.migrate import migrate
    from sluice.db.pool import create_pool
    from sluice.schemas.activities import SendSliceInput
    from sluice.schemas.campaign import Channel

    from tests.gateway import Gateway

    db = f"bench_channels_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f"CREATE DATABASE {db}")
    await admin.close()
    bench_dsn = dsn.rsplit("/", 1)[0] + f"/{db}"
    pool = await create_pool(bench_dsn, size=concurrency + 4)
    gw = Gateway().start_process()
    try:
        await migrate(bench_dsn)
        now = datetime.now(UTC)
        day = now.date()
        await pool.execute("INSERT INTO shops (shop_id, name, timezone, industry) VALUES ('s1', 's1', 'UTC', 'beauty')")
        await recharge(pool, "s1", 4 * n, now - timedelta(days=1))
        await pool.execute("INSERT INTO consumers (consumer_id) SELECT g FROM generate_series(1, $1) g", n)
        await pool.execute(
            """INSERT INTO shop_customers (shop_id, consumer_id, phone, phone_valid)
               SELECT 's1', g, '138' || lpad(g::text, 8, '0'), true FROM generate_series(1, $1) g""",
            n,
        )
        campaign = await bench_campaign(pool, "s1", "b", "K-ACQUIRE", day, n)
        await pool.execute("VACUUM ANALYZE")
        sms = SmsGatewayChannel("sms", gw.url, timeout_s=30, batch_size=2000)
        send = SendActivities(pool, ChannelRegistry({"sms": sms, "chat": OutboxChannel(pool, "chat")}),
                              platform_timezone="UTC")
        text = "春季会员日:专属优惠券已到账,点击进店即可使用,本周内有效,数量有限先到先得"  # one segment, signed
        slices = [
            SendSliceInput(campaign_db_id=campaign, shop_id="s1", phase_index=0, day=day, channel=Channel.sms,
                           template_cap=None, text=text, title=None, seq_lo=lo, seq_hi=min(lo + slice_size, n),
                           budget=slice_size, decided_at=now, window_end=now + timedelta(hours=6), chunk_size=chunk_size)
            for lo in range(0, n, slice_size)
        ]  # fmt: skip
        # CPU seconds of the three processes over the run: this one (the worker side), the gateway, the backends.
        backends = {r[0]: _cpu_s(r[0]) for r in await pool.fetch(_BACKENDS)}
        cpu0 = (time.process_time(), _cpu_s(gw._process.pid))
        results, secs = await run_slices(send, slices, concurrency)
        for (pid,) in await pool.fetch(_BACKENDS):
            backends.setdefault(pid, 0.0)
        cpu = {"worker": time.process_time() - cpu0[0], "gateway": _cpu_s(gw._process.pid) - cpu0[1],
               "postgres": sum(_cpu_s(pid) - before for pid, before in backends.items())}
        cpu_per_1000 = {k: round(v * 1000 / n, 4) for k, v in cpu.items()}
        await sms.aclose()
        sent = sum(r.sent for r in results)
        counts = gw.counts()
        cost, segs = await pool.fetchrow(
            "SELECT sum(cost), (SELECT 4 * $2 - sum(remaining) FROM sms_credits) FROM deliveries WHERE campaign_id = $1",
            campaign, n,
        )  # fmt: skip
        # The gateway's own count: every recipient once, none twice; the credits spent = its billed segments.
        assert sent == n == counts["numbers"] == counts["messages"] and counts["max_per_number"] == 1, (sent, counts)
        assert segs == counts["segments"]
        rate = round(n / secs, 1)
        print(f"sms: {n:,} recipients in {secs:.1f}s = {rate:,.0f}/s; {segs:,} segments, cost {cost} yuan")
        print(f"sms: CPU seconds per 1,000 recipients: {cpu_per_1000}; load {os.getloadavg()}")
        return {"recipients": n, "seconds": round(secs, 2), "recipients_per_s": rate, "segments": segs,
                "cost_yuan": str(cost), "slice_size": slice_size, "chunk_size": chunk_size, "concurrency": concurrency,
                "gateway_batch": 2000, "goal_recipients_per_s": 30_000, "goal_met": rate >= 30_000,
                "cpu_s_per_1000": cpu_per_1000, "load_avg_after": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
    finally:
        gw.stop()
        await pool.close()
        admin = await asyncpg.connect(dsn)
        await admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        await admin.close()


async def main(args) -> None:
    results: dict = {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
                     "load_avg_before": [round(x, 2) for x in os.getloadavg()]}
    if args.email:
        results["email"] = await _email(args.email, args.connections)
    if args.sms_recipients:
        results["sms"] = await _sms(args.dsn, args.sms_recipients, args.slice_size, args.chunk_size, args.concurrency)
    # A part skipped in this run (--email 0, --sms-recipients 0) keeps its figures of the last run that measured it.
    path = ROOT / "bench" / "results.json"
    earlier = json.loads(path.read_text()).get("channels", {}) if path.exists() else {}
    for part in ("email", "sms"):
        if part not in results and part in earlier:
            results[part] = {"measured_at": earlier.get("measured_at"), **earlier[part]}
    record_results(path, "channels", results)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m bench.channels", description=__doc__)
    p.add_argument("--dsn", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--email", type=int, default=5_000, help="messages per email run (0: skip)")
    p.add_argument("--connections", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--sms-recipients", type=int, default=1_000_000, help="recipients of the SMS day (0: skip)")
    p.add_argument("--slice-size", type=int, default=20_000)
    p.add_argument("--chunk-size", type=int, default=2_000)
    p.add_argument("--concurrency", type=int, default=8)
    asyncio.run(main(p.parse_args()))
