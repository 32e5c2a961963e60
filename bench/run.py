"""One benchmark run: seed, naive sample, the phase day end to end, the Postgres bound, the figures.

Order inside the run:
1. seed a shop of N customers (db/seed.py, realistic behaviour and contact mix);
2. the naive design on a sample of the same recipients (bench/naive.py), then its
   ledger rows and fatigue counters are removed, so the phase day starts clean;
3. one K-PHASED promote day to every reachable customer of the shop (audience
   `shop_all`) through the real workflow, activities, fatigue reservation, ledger
   and outbox channel, with the worker in its own process (`python -m sluice.workers.worker`);
   timed from the workflow start to the last delivery committed;
4. the Postgres bound: INSERT ... SELECT ... ON CONFLICT of as many ledger rows
   into a scratch copy of `deliveries` (and COPY, for reference);
5. ratios, worker peak RSS, history events, tuning; bench/results.json and the
   table in docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from datetime import time as dtime
from pathlib import Path

import asyncpg

from bench.stack import (
    ROOT,
    CpuMeter,
    Postgres,
    WorkerProcess,
    machine,
    say,
    settle,
    start_temporal,
    temporal_cli_version,
    wait_for_pollers,
)

SHOP_ID = "bench-shop"
LEDGER_TABLES = [
    "outbox",
    "deliveries",
    "fatigue_day",
    "audience_snapshots",
    "audience_refreshes",
    "campaign_day_reports",
    "campaign_spend",  # references campaigns (R-COST-BUDGET)
    "campaigns",
]
# K-REPURCHASE's figures live under this key of results.json (bench/repurchase.py); a K-PHASED run keeps it.
REPURCHASE_RESULTS_KEY = "K-REPURCHASE"
KINDS = ("K-PHASED", REPURCHASE_RESULTS_KEY)
GOALS = {
    "recipients_per_s": 50_000,
    "ratio_vs_naive": 300,
    "ratio_vs_postgres_bound": 0.25,
    "worker_peak_rss_mb": 300,
}


@dataclass
class BenchConfig:
    recipients: int = 1_000_000
    # The best tuning found on a 2-core machine (docs/benchmarks.md); None or 0: the Tuning defaults
    slice_size: int | None = 20_000
    chunk_size: int | None = 2_000
    concurrency: int | None = 8
    pool_size: int = 16  # SLUICE_DB_POOL of the worker
    max_activities: int = 16  # SLUICE_MAX_ACTIVITIES of the worker
    naive_sample: int = 2_000
    naive_inflight: int = 100  # the naive design at its best here: 50-500 in flight all give ~250/s
    channel: str = "chat"
    all_reachable: bool = False  # seed every customer with every contact and no opt-out
    data_dir: Path = field(default_factory=lambda: ROOT / ".sluice" / "bench")
    admin_dsn: str | None = None
    reuse: bool = False  # keep and reuse an already seeded database of the same size
    results_path: Path | None = field(default_factory=lambda: ROOT / "bench" / "results.json")
    docs_path: Path | None = field(default_factory=lambda: ROOT / "docs" / "benchmarks.md")
    profile: Path | None = None  # py-spy raw profile of the worker during the phase day
    skip_naive: bool = False
    skip_bound: bool = False
    log_level: str = "INFO"
    pg_tune: bool = True
    pg_shared_buffers: str = "1GB"  # the embedded server's (initdb's default is 128MB)
    settle_s: float = 45.0  # after seeding, before any measured part (see _settle)
    pg_stats: bool = False  # pg_stat_statements: the phase day's top statements (restarts the server)
    label: str = ""
    worker_env: dict[str, str] = field(default_factory=dict)  # extra env for the worker process
    drop_db: bool = False  # drop the database at the end (tests)
    db_name: str | None = None  # default bench_<recipients>
    workers: int = 1  # worker processes on the one task queue (scaling)
    worker_module: str = "sluice.workers.worker"  # a variant of the worker, for comparison
    kind: str = "K-PHASED"  # K-REPURCHASE: bench/repurchase.py on a shop seeded with its repurchase catalogue
    pairs: int = 3  # K-REPURCHASE: (p) then (c) this many times, alternating; the share is their median ratio


def _tuning(cfg: BenchConfig) -> dict:
    from sluice.schemas.campaign import Tuning

    chosen = {k: getattr(cfg, k) for k in ("slice_size", "chunk_size", "concurrency") if getattr(cfg, k)}
    return Tuning(**chosen).model_dump() | {"explicit": chosen}


async def _seed(pg: Postgres, cfg: BenchConfig, now: datetime, tz: str) -> tuple[str, dict]:
    from sluice.db.seed import seed_shop

    repurchase = cfg.kind == REPURCHASE_RESULTS_KEY
    name = cfg.db_name or f"bench_{cfg.recipients}{'_all' if cfg.all_reachable else ''}{'_rp' if repurchase else ''}"
    dsn = await pg.database(name, fresh=not cfg.reuse)
    conn = await asyncpg.connect(dsn)
    try:
        have = await conn.fetchval("SELECT count(*) FROM shop_customers WHERE shop_id = $1", SHOP_ID)
        if have and have != cfg.recipients:
            raise SystemExit(f"database {name} holds {have} customers, not {cfg.recipients}: drop it or run without --reuse")
        # Whatever an earlier run left: the phase day starts on an empty ledger.
        await conn.execute(f"TRUNCATE {', '.join(LEDGER_TABLES)} RESTART IDENTITY")
        # ... and with the statistics of a fresh install (what a clean clone runs on): an earlier run's
        # statistics know today's rows, and plans that only hold with them would pass unnoticed.
        try:
            await conn.execute(
                "DELETE FROM pg_statistic WHERE starelid IN (SELECT to_regclass(t) FROM unnest($1::text[]) t)",
                LEDGER_TABLES,
            )
        except asyncpg.InsufficientPrivilegeError:
            say("  (not a superuser on --admin-dsn: the ledger tables keep their statistics)")
        await conn.execute(f"ANALYZE {', '.join(LEDGER_TABLES)}")
        await conn.execute("DROP TABLE IF EXISTS bench_deliveries, bench_deliveries_copy")
        if have:
            # The send window must be open now: move the shop into a zone where it is, and its customers who
            # have a zone of their own with it (R-WIN-1 sends them in their own window).
            from sluice.db.seed import zones_into

            await conn.execute("UPDATE shops SET timezone = $2 WHERE shop_id = $1", SHOP_ID, tz)
            await zones_into(conn, SHOP_ID, tz)
            return dsn, {"seeded": False, "customers": have, "seconds": 0.0}
    finally:
        await conn.close()
    say(f"seeding {cfg.recipients:,} customers into {name} ...")
    r = await seed_shop(dsn, shop_id=SHOP_ID, customers=cfg.recipients, timezone=tz, now=now, channel_mix=not cfg.all_reachable,
                        repurchase=repurchase)
    say(f"  seeded in {r.seconds:.1f}s: {r.orders:,} orders, {r.order_items:,} items, {r.events:,} events")
    # A shop's customers were not bulk-loaded a second ago: set hint bits and the visibility map now,
    # so the phase day does not pay for the seed's first read (and every run starts alike).
    from sluice.db.seed import SEEDED_TABLES, zones_into

    t0 = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        # The seed's customers abroad (and in Shanghai) have zones of their own, whose windows may be closed now:
        # they take the shop's, open now, as the shop did (R-WIN-1), so the day ends within minutes.
        await zones_into(conn, SHOP_ID, tz)
        await conn.execute(f"VACUUM (ANALYZE) {', '.join(SEEDED_TABLES)}")
    finally:
        await conn.close()
    say(f"  vacuumed in {time.perf_counter() - t0:.1f}s (a shop's data is not a second old; no autovacuum mid-run)")
    return dsn, {"seeded": True, "customers": r.customers, "orders": r.orders, "events": r.events, "seconds": r.seconds}


# ------------------------------------------------------------------ naive


async def _naive(pool: asyncpg.Pool, env, cfg: BenchConfig, tz: str, now: datetime) -> dict:
    from sluice.activities.audience import CHANNEL_COLUMNS
    from sluice.channels.registry import ChannelRegistry
    from sluice.schemas.settings import Settings
    from sluice.workflows.calendar import local_day, platform_day
    from temporalio.worker import Worker

    from bench.naive import NaiveActivities, NaiveInput, NaiveWorkflow

    day = local_day(now, tz)
    campaign = await pool.fetchval(
        "INSERT INTO campaigns (shop_id, campaign_ref, workflow_id, kind, spec, state)"
        " VALUES ($1, $2, $3, 'K-PHASED', '{}'::jsonb, 'naive') RETURNING id",
        SHOP_ID,
        f"naive-{uuid.uuid4().hex[:8]}",
        f"bench.naive-{uuid.uuid4().hex[:8]}",
    )
    unsub, has_contact = CHANNEL_COLUMNS[cfg.channel]
    # The sample: the first reachable customers, as the refresh would number them.
    n = int(
        (
            await pool.execute(
                f"""INSERT INTO audience_snapshots (campaign_id, phase, day, seq, consumer_id)
                    SELECT $1, 0, $2, (row_number() OVER (ORDER BY consumer_id) - 1)::int, consumer_id FROM (
                        SELECT c.consumer_id FROM shop_customers c
                        WHERE c.shop_id = $3 AND NOT c.deleted AND NOT c.blacklisted AND NOT c.{unsub}
                          AND ({has_contact})
                        ORDER BY c.consumer_id LIMIT $4) x""",
                campaign,
                day,
                SHOP_ID,
                cfg.naive_sample,
            )
        ).split()[-1]
    )
    settings = Settings()
    inp = NaiveInput(
        campaign_db_id=campaign,
        shop_id=SHOP_ID,
        day=day,
        channel=cfg.channel,
        template_group="phased-promote",
        text="Spring sale: 20% off everything this week",
        fatigue_day=platform_day(now, settings.platform_timezone),
        decided_at=now,
        recipients=n,
        inflight=cfg.naive_inflight,
    )
    acts = NaiveActivities(pool, ChannelRegistry.outbox_for_all(pool))
    queue = f"bench-naive-{uuid.uuid4().hex[:8]}"
    say(f"naive: one activity per recipient, {n:,} recipients, {cfg.naive_inflight} in flight ...")
    async with Worker(
        env.client,
        task_queue=queue,
        workflows=[NaiveWorkflow],
        activities=[acts.send_one],
        max_concurrent_activities=cfg.naive_inflight,
    ):
        t0 = time.perf_counter()
        counts = await env.client.execute_workflow(NaiveWorkflow.run, inp, id=f"naive-{campaign}", task_queue=queue)
        elapsed = time.perf_counter() - t0
    sent = await pool.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND state = 'sent'", campaign)
    rps = n / elapsed
    say(f"  naive: {n:,} recipients in {elapsed:.1f}s = {rps:,.0f} recipients/s ({sent:,} sent, {counts})")
    # The phase day starts as the day's first campaign: no naive rows, no counters.
    async with pool.acquire() as conn, conn.transaction():
        for table in ("deliveries", "outbox", "audience_snapshots"):
            await conn.execute(f"DELETE FROM {table} WHERE campaign_id = $1", campaign)
        await conn.execute("TRUNCATE fatigue_day")
        await conn.execute("DELETE FROM campaigns WHERE id = $1", campaign)
    return {"recipients": n, "seconds": round(elapsed, 3), "recipients_per_s": round(rps, 1), "sent": sent,
            "inflight": cfg.naive_inflight}  # fmt: skip


# ------------------------------------------------------------------ the phase day


class Profiler:
    """py-spy record of the worker process (raw collapsed stacks), when py-spy is installed."""

    def __init__(self, pid: int, out: Path, rate: int = 100):
        exe = shutil.which("py-spy") or str(Path(__import__("sys").executable).parent / "py-spy")
        if not Path(exe).exists():
            raise SystemExit("--profile needs py-spy: pip install py-spy (into this virtualenv)")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--output", str(out),
             "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip

    def stop(self) -> Path:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.out


async def _history_events(client, workflow_id: str) -> dict:
    """Events of every run of the workflow, walking continue-as-new back to the first run, and when each
    kind of activity first started and last completed (seconds from the first run's start)."""
    from temporalio.api.enums.v1 import EventType

    total, runs, largest, run_id = 0, 0, 0, None
    spans: dict[str, dict] = {}
    first_event = None
    while True:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        n = len(history.events)
        total, runs, largest = total + n, runs + 1, max(largest, n)
        scheduled: dict[int, str] = {}
        task: dict = {}  # the run's first workflow task
        for e in history.events:
            at = e.event_time.ToDatetime(tzinfo=UTC)
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                scheduled[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
                spans.setdefault(scheduled[e.event_id], {"count": 0, "start": at, "end": at})["count"] += 1
            elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                task.setdefault("start", at)
            elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                task.setdefault("end", at)
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                name = scheduled.get(e.activity_task_completed_event_attributes.scheduled_event_id)
                if name:
                    spans[name]["end"] = max(spans[name]["end"], at)
        first_event = history.events[0].event_time.ToDatetime(tzinfo=UTC)
        previous = history.events[0].workflow_execution_started_event_attributes.continued_execution_run_id
        if not previous:
            break
        run_id = previous
    # The first run's first workflow task: the worker picking the campaign up (and building its sandbox).
    spans["first_workflow_task"] = {"count": 1, **task}
    activities = {
        name: {"count": s["count"], "from_s": round((s["start"] - first_event).total_seconds(), 3),
               "to_s": round((s["end"] - first_event).total_seconds(), 3)}
        for name, s in spans.items()
    }  # fmt: skip
    return {"total": total, "runs": runs, "largest_run": largest, "activities": activities,
            "started_at": first_event}  # fmt: skip


async def _phase_day(dsn: str, pg: Postgres, env, cfg: BenchConfig, tz: str, now: datetime) -> dict:
    from sluice.api.service import start_campaign, status
    from sluice.db.pool import create_pool
    from sluice.kinds.phased import PhasedSpec
    from sluice.workflows.calendar import local_day

    address = env.client.service_client.config.target_host
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    workers = [
        WorkerProcess(
            cfg.data_dir / f"worker{'' if i == 0 else '-' + str(i)}.log",
            {
                "DATABASE_URL": dsn,
                "TEMPORAL_ADDRESS": address,
                "SLUICE_TASK_QUEUE": queue,
                "SLUICE_DB_POOL": str(cfg.pool_size),
                "SLUICE_MAX_ACTIVITIES": str(cfg.max_activities),
                "SLUICE_LOG_LEVEL": cfg.log_level,
                **cfg.worker_env,
            },
            module=cfg.worker_module,
        )
        for i in range(cfg.workers)
    ]
    worker = workers[0]
    profiler = None
    pool = await create_pool(dsn, size=2)
    try:
        for w in workers:
            await w.wait_ready()
        await wait_for_pollers(env.client, queue, len(workers))
        await pool.execute("CHECKPOINT")  # start from a quiet server, whatever seeding left
        if cfg.pg_stats:
            await pool.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await pool.execute("SELECT pg_stat_statements_reset()")
        day = local_day(now, tz)
        spec = PhasedSpec(
            kind="K-PHASED",
            shop_id=SHOP_ID,
            campaign_id=f"bench-{datetime.now(UTC):%Y%m%d-%H%M%S}",
            channel=cfg.channel,
            phases=[
                {
                    "name": "promote",
                    "start_date": day,
                    "end_date": day,
                    "send_time": dtime(8, 0),
                    "audience": "shop_all",
                    "text": "Spring sale: 20% off everything this week",
                }
            ],
        )
        tuning = _tuning(cfg)
        meter = CpuMeter([w.pid for w in workers], pg.postmaster_pid)
        if cfg.profile:
            profiler = Profiler(worker.pid, cfg.profile)  # the first worker
            await asyncio.sleep(1.0)  # py-spy attaches
        wal0 = await pool.fetchval("SELECT pg_current_wal_lsn()::text")
        meter.start()
        say(
            f"phase day: K-PHASED promote to every reachable customer, slice_size={tuning['slice_size']:,}"
            f" chunk_size={tuning['chunk_size']:,} concurrency={tuning['concurrency']}"
            f" pool={cfg.pool_size} max_activities={cfg.max_activities} workers={cfg.workers} ..."
        )
        started_at = datetime.now(UTC)
        t0 = time.perf_counter()
        plan, handle = await start_campaign(pool, env.client, spec, task_queue=queue, tuning=tuning["explicit"])
        result = asyncio.ensure_future(handle.result())
        while not result.done():
            await asyncio.wait([result], timeout=5)
            if not result.done():
                try:
                    st = await status(env.client, plan.workflow_id)
                    p = st.progress
                    say(f"  {time.perf_counter() - t0:6.1f}s  {p.state:<8} {p.day_done:>10,} / {p.day_eligible:,} decided")
                except Exception:  # noqa: BLE001 - progress lines are best effort
                    pass
        progress = result.result()
        workflow_seconds = time.perf_counter() - t0
        cpu = meter.stop()
        wal_bytes = await pool.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint", wal0)
        if profiler:
            profiler.stop()
            profiler = None
        row = await pool.fetchrow(
            """SELECT count(*) AS rows, count(*) FILTER (WHERE state = 'sent') AS sent,
                      count(DISTINCT consumer_id) AS consumers,
                      min(updated_at) AS first_at, max(updated_at) AS last_at
               FROM deliveries WHERE campaign_id = $1""",
            plan.campaign_db_id,
        )
        states = dict(
            await pool.fetch(
                "SELECT coalesce(state || ':' || reason, state), count(*)::int FROM deliveries WHERE campaign_id = $1 GROUP BY 1",
                plan.campaign_db_id,
            )
        )
        refresh = await pool.fetchrow(
            "SELECT eligible, matched, excluded, refreshed_at FROM audience_refreshes WHERE campaign_id = $1",
            plan.campaign_db_id,
        )
        outbox = await pool.fetchval("SELECT count(*) FROM outbox_messages WHERE campaign_id = $1", plan.campaign_db_id)
        history = await _history_events(env.client, plan.workflow_id)
        statements = await _top_statements(pool) if cfg.pg_stats else None
        ledger = await _verify_ledger(pool, plan.campaign_db_id)
    finally:
        if profiler:
            profiler.stop()
        peaks = [w.stop() for w in workers]
        peak = max(peaks)
        await pool.close()
    recipients = refresh["eligible"] if refresh else 0
    elapsed = (row["last_at"] - started_at).total_seconds() if row["last_at"] else workflow_seconds
    acts = history["activities"]
    # Workflow start as the server saw it, against the clock of the bench process (same machine).
    lag = (history["started_at"] - started_at).total_seconds()
    timeline = {
        "workflow_started_s": round(lag, 3),
        **{f"{name}_s": [round(a["from_s"] + lag, 3), round(a["to_s"] + lag, 3), a["count"]] for name, a in acts.items()},
        "first_delivery_s": round((row["first_at"] - started_at).total_seconds(), 3) if row["first_at"] else None,
        "last_delivery_s": round(elapsed, 3),
        "workflow_closed_s": round(workflow_seconds, 3),
    }
    send = acts.get("send_slice")
    send_seconds = (send["to_s"] - send["from_s"]) if send else None
    history = {k: v for k, v in history.items() if k != "started_at"}
    say(
        f"  {recipients:,} recipients, {row['sent']:,} sent, in {elapsed:.1f}s from workflow start to the last"
        f" delivery = {recipients / elapsed:,.0f} recipients/s (workflow closed after {workflow_seconds:.1f}s)"
    )
    say(f"  timeline: {timeline}")
    say(
        f"  cpu seconds: {cpu}  (2 cores x {elapsed:.1f}s = {2 * elapsed:.0f} available);"
        f" WAL {wal_bytes / 2**20:,.0f} MB = {wal_bytes / max(recipients, 1):,.0f} bytes per recipient"
    )
    return {
        "workflow_id": plan.workflow_id,
        "campaign_db_id": plan.campaign_db_id,
        "recipients": recipients,
        "matched": refresh["matched"] if refresh else 0,
        "excluded": refresh["excluded"] if refresh else {},
        "ledger_rows": row["rows"],
        "ledger_consumers": row["consumers"],
        "sent": row["sent"],
        "outbox_rows": outbox,
        "states": states,
        "seconds": round(elapsed, 3),
        "recipients_per_s": round(recipients / elapsed, 1),
        "send_recipients_per_s": round(recipients / send_seconds, 1) if send_seconds else None,
        "timeline": timeline,
        "cpu_seconds": cpu,
        "wal_mb": round(wal_bytes / 2**20, 1),
        "worker_peak_rss_mb": round(peak / 2**20, 1),
        "workers": cfg.workers,
        "worker_peak_rss_mb_each": [round(p / 2**20, 1) for p in peaks],
        "history": history,
        "tuning": {k: v for k, v in tuning.items() if k != "explicit"},
        "totals": progress.totals if hasattr(progress, "totals") else {},
        "top_statements": statements,
        "ledger_check": ledger,
    }


async def _verify_ledger(pool, campaign_db_id: int) -> dict:
    """After the phase day (outside the timing): the ledger and the counters agree, per recipient."""
    checks = {
        "recipients_without_delivery": """
            SELECT count(*) FROM audience_snapshots s WHERE s.campaign_id = $1 AND NOT EXISTS (
                SELECT 1 FROM deliveries d WHERE d.campaign_id = s.campaign_id AND d.phase = s.phase
                AND d.consumer_id = s.consumer_id AND d.day = s.day)""",
        "deliveries_outside_snapshot": """
            SELECT count(*) FROM deliveries d WHERE d.campaign_id = $1 AND NOT EXISTS (
                SELECT 1 FROM audience_snapshots s WHERE s.campaign_id = d.campaign_id AND s.phase = d.phase
                AND s.day = d.day AND s.consumer_id = d.consumer_id)""",
        "left_reserved_or_unknown": "SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND state IN ('reserved', 'unknown')",
        "sent_without_matching_outbox_row": """
            SELECT count(*) FROM deliveries d WHERE d.campaign_id = $1 AND d.state = 'sent' AND NOT EXISTS (
                SELECT 1 FROM outbox_messages o WHERE o.campaign_id = d.campaign_id AND o.phase = d.phase
                AND o.day = d.day AND o.channel = d.channel AND o.consumer_id = d.consumer_id
                AND d.provider_ref = 'outbox:' || o.batch_id)""",
        "outbox_rows_without_sent_delivery": """
            SELECT count(*) FROM outbox_messages o WHERE o.campaign_id = $1 AND NOT EXISTS (
                SELECT 1 FROM deliveries d WHERE d.campaign_id = o.campaign_id AND d.phase = o.phase AND d.day = o.day
                AND d.channel = o.channel AND d.consumer_id = o.consumer_id AND d.state = 'sent')""",
        # the day's first campaign: every counter equals this campaign's sent deliveries
        "fatigue_day_mismatch": """
            SELECT count(*) FROM fatigue_day f FULL JOIN (
                SELECT consumer_id, fatigue_day AS day, count(*) AS n FROM deliveries
                WHERE campaign_id = $1 AND state = 'sent' GROUP BY 1, 2) l USING (consumer_id, day)
            WHERE coalesce(f.sent, 0) <> coalesce(l.n, 0) OR coalesce(f.shops, 0) <> least(coalesce(l.n, 0), 1)""",
        "fatigue_shop_day_mismatch": """
            SELECT count(*) FROM fatigue_shop_day f FULL JOIN (
                SELECT consumer_id, shop_id, fatigue_day AS day, count(*) AS n FROM deliveries
                WHERE campaign_id = $1 AND state = 'sent' GROUP BY 1, 2, 3) l USING (consumer_id, shop_id, day)
            WHERE coalesce(f.sent, 0) <> coalesce(l.n, 0)""",
        "fatigue_template_mismatch": """
            SELECT count(*) FROM fatigue_template f FULL JOIN (
                SELECT consumer_id, shop_id, template_group, fatigue_day AS day, count(*) AS n FROM deliveries
                WHERE campaign_id = $1 AND state = 'sent' GROUP BY 1, 2, 3, 4) l
                USING (consumer_id, shop_id, template_group, day)
            WHERE coalesce(f.sent, 0) <> coalesce(l.n, 0)""",
    }
    # Today's rows are newer than the statistics: without ANALYZE the anti-joins below plan as
    # nested loops over a million rows each (docs/design.md, "Statistics that do not know today").
    await pool.execute("ANALYZE deliveries, outbox, audience_snapshots, fatigue_day")
    out = {name: await pool.fetchval(sql, campaign_db_id) for name, sql in checks.items()}
    bad = {k: v for k, v in out.items() if v}
    say(f"  ledger exact: {'yes' if not bad else 'NO ' + str(bad)}")
    return out | {"exact": not bad}


async def _top_statements(pool, limit: int = 15) -> list[dict]:
    rows = await pool.fetch(
        """SELECT calls, rows, round(total_exec_time::numeric / 1000, 2)::float AS total_s,
                  round(mean_exec_time::numeric, 2)::float AS mean_ms,
                  shared_blks_hit + shared_blks_read AS blocks, wal_records,
                  regexp_replace(left(query, 200), '\\s+', ' ', 'g') AS query
           FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
           ORDER BY total_exec_time DESC LIMIT $1""",
        limit,
    )
    out = [dict(r) for r in rows]
    total = sum(r["total_s"] for r in out) or 1
    say("  top statements (pg_stat_statements, execution time):")
    for r in out[:10]:
        say(f"    {r['total_s']:7.2f}s {r['total_s'] / total:5.1%} calls={r['calls']:>6,} mean={r['mean_ms']:8.2f}ms"
            f" rows={r['rows']:>9,}  {r['query'][:110]}")  # fmt: skip
    return out


# ------------------------------------------------------------------ the Postgres bound


async def quiesce(dsn: str, timeout: float = 300) -> float:
    """Wait until no autovacuum worker runs, then checkpoint: every measured part starts on a quiet server."""
    conn = await asyncpg.connect(dsn)
    t0 = time.perf_counter()
    try:
        while time.perf_counter() - t0 < timeout:
            busy = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")
            if not busy:
                break
            await asyncio.sleep(1)
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return time.perf_counter() - t0


async def _postgres_bound(dsn: str, campaign_db_id: int, channel: str) -> dict:
    """INSERT ... SELECT ... ON CONFLICT of the phase day's ledger rows into a scratch copy of deliveries."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS bench_deliveries, bench_deliveries_copy")
        await conn.execute("CREATE TABLE bench_deliveries (LIKE deliveries INCLUDING ALL)")
        await conn.execute("CREATE TABLE bench_deliveries_copy (LIKE deliveries INCLUDING ALL)")
        await conn.execute("CHECKPOINT")
        t0 = time.perf_counter()
        status = await conn.execute(
            """INSERT INTO bench_deliveries (campaign_id, phase, consumer_id, day, channel, shop_id, template_group,
                                            fatigue_day, state, reason, provider_ref, decided_at)
               SELECT s.campaign_id, s.phase, s.consumer_id, s.day, $2, $3, 'phased-promote', s.day, 'sent', NULL,
                      'outbox:' || s.seq, now()
               FROM audience_snapshots s WHERE s.campaign_id = $1
               ON CONFLICT DO NOTHING""",
            campaign_db_id,
            channel,
            SHOP_ID,
        )
        insert_s = time.perf_counter() - t0
        rows = int(status.split()[-1])
        records = await conn.fetch(
            "SELECT campaign_id, phase, consumer_id, day, channel, shop_id, template_group, fatigue_day, state,"
            " reason, provider_ref, decided_at, updated_at FROM bench_deliveries"
        )
        t0 = time.perf_counter()
        await conn.copy_records_to_table(
            "bench_deliveries_copy",
            records=[tuple(r) for r in records],
            columns=["campaign_id", "phase", "consumer_id", "day", "channel", "shop_id", "template_group",
                     "fatigue_day", "state", "reason", "provider_ref", "decided_at", "updated_at"],
        )  # fmt: skip
        copy_s = time.perf_counter() - t0
        await conn.execute("DROP TABLE bench_deliveries, bench_deliveries_copy")
    finally:
        await conn.close()
    bound = rows / insert_s if insert_s else 0.0
    say(f"postgres bound: INSERT ... SELECT ... ON CONFLICT of {rows:,} ledger rows in {insert_s:.2f}s"
        f" = {bound:,.0f} rows/s (COPY: {rows / copy_s:,.0f} rows/s)")  # fmt: skip
    return {"rows": rows, "insert_select_s": round(insert_s, 3), "rows_per_s": round(bound, 1),
            "copy_rows_per_s": round(rows / copy_s, 1) if copy_s else None}  # fmt: skip


# ------------------------------------------------------------------ the run


async def run(cfg: BenchConfig) -> dict:
    from sluice.workers.demo import open_window_zone

    cfg.data_dir = Path(cfg.data_dir).resolve()
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    host = machine()
    now = datetime.now(UTC)
    tz = open_window_zone(now)
    pg = Postgres(cfg.data_dir, cfg.admin_dsn, tune=cfg.pg_tune)
    env = None
    db_name = None
    try:
        await pg.apply_tuning()
        if pg.server is not None:
            await pg.configure({
                "shared_buffers": cfg.pg_shared_buffers,
                "shared_preload_libraries": "pg_stat_statements" if cfg.pg_stats else "",
            })  # fmt: skip
        pg_version = await pg.version()
        temporal_version = temporal_cli_version()
        say(f"machine: {host['cpus']} cores ({host['cpu_model']}), {host['ram_gb']} GB RAM,"
            f" PostgreSQL {pg_version}, {temporal_version.splitlines()[0] if temporal_version else ''}")  # fmt: skip
        say(f"shop time zone {tz} (local time {now.astimezone(__import__('zoneinfo').ZoneInfo(tz)):%H:%M})")
        dsn, seed = await _seed(pg, cfg, now, tz)
        if seed["seeded"]:
            seed["settle"] = await settle(cfg.settle_s)
        db_name = dsn.rsplit("/", 1)[-1].split("?")[0]
        env = await start_temporal()
        waited = await quiesce(dsn)
        if waited > 2:
            say(f"  waited {waited:.0f}s for autovacuum to finish")
        naive = None
        if not cfg.skip_naive and cfg.naive_sample > 0:
            from sluice.db.pool import create_pool

            pool = await create_pool(dsn, size=20)
            try:
                naive = await _naive(pool, env, cfg, tz, now)
            finally:
                await pool.close()
        await quiesce(dsn)
        day = await _phase_day(dsn, pg, env, cfg, tz, now)
        if not cfg.skip_bound:
            await quiesce(dsn)
        bound = None if cfg.skip_bound else await _postgres_bound(dsn, day["campaign_db_id"], cfg.channel)
        pg_settings = await pg.settings(["shared_buffers", "max_wal_size", "synchronous_commit", "fsync"])
        pg_settings = {k: pg_settings[k] for k in ("shared_buffers", "max_wal_size", "synchronous_commit", "fsync")
                       if k in pg_settings}  # fmt: skip
    finally:
        if env is not None:
            await env.shutdown()
        if cfg.drop_db and db_name:
            await pg.drop(db_name)
        pg.close()

    rps = day["recipients_per_s"]
    naive_rps = naive["recipients_per_s"] if naive else None
    bound_rps = bound["rows_per_s"] if bound else None
    results = {
        "recipients": day["recipients"],
        "recipients_per_s": rps,
        "naive_recipients_per_s": naive_rps,
        "postgres_bound_rows_per_s": bound_rps,
        "ratio_vs_naive": round(rps / naive_rps, 1) if naive_rps else None,
        "ratio_vs_postgres_bound": round(rps / bound_rps, 3) if bound_rps else None,
        "worker_peak_rss_mb": day["worker_peak_rss_mb"],
        "history_events": day["history"]["total"],
        "batch_size": {"chunk_size": day["tuning"]["chunk_size"], "slice_size": day["tuning"]["slice_size"]},
        "concurrency": {
            "send_activities_per_campaign": day["tuning"]["concurrency"],
            "worker_max_concurrent_activities": cfg.max_activities,
            "worker_db_pool": cfg.pool_size,
            "worker_processes": cfg.workers,
        },
        "customers": seed["customers"],
        "label": cfg.label,
        "measured_at": now.isoformat(timespec="seconds"),
        "machine": host | {"postgres": pg_version, "temporal_cli": temporal_version, "postgres_settings": pg_settings},
        "seed": seed,
        "phase_day": day,
        "naive": naive,
        "postgres_bound": bound,
        "goals": GOALS,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
    }
    results["goals_met"] = goals_met(results)
    say("")
    for line in summary_lines(results):
        say(line)
    if cfg.results_path:
        path = Path(cfg.results_path)
        kept = json.loads(path.read_text()) if path.exists() else {}
        kept = {k: kept[k] for k in KINDS if k in kept}  # the other kinds' figures stay
        path.write_text(json.dumps(results | kept, indent=2, default=str) + "\n")
        say(f"\nwrote {cfg.results_path}")
    with (cfg.data_dir / "runs.jsonl").open("a") as log:
        log.write(json.dumps(results, default=str) + "\n")
    if cfg.docs_path:
        from bench.report import update_docs

        update_docs(Path(cfg.docs_path), results)
        say(f"updated {cfg.docs_path}")
    return results


def goals_met(r: dict) -> dict[str, bool | None]:
    def ge(v, goal):
        return None if v is None else v >= goal

    return {
        "recipients_per_s >= 50,000": ge(r["recipients_per_s"], GOALS["recipients_per_s"]),
        "ratio_vs_naive >= 300": ge(r["ratio_vs_naive"], GOALS["ratio_vs_naive"]),
        "ratio_vs_postgres_bound >= 0.25": ge(r["ratio_vs_postgres_bound"], GOALS["ratio_vs_postgres_bound"]),
        "worker_peak_rss_mb <= 300": r["worker_peak_rss_mb"] <= GOALS["worker_peak_rss_mb"],
    }


def summary_lines(r: dict) -> list[str]:
    def num(v, fmt=",.0f"):
        return "n/a" if v is None else format(v, fmt)

    met = r["goals_met"]

    def mark(key):
        return {True: "ok", False: "MISSED", None: "n/a"}[met[key]]

    b, c = r["batch_size"], r["concurrency"]
    return [
        f"recipients                   {r['recipients']:,} (of {r['customers']:,} customers)",
        f"end to end                   {num(r['recipients_per_s'])} recipients/s"
        f"   [{mark('recipients_per_s >= 50,000')}: >= 50,000]",
        f"naive (1 activity/recipient) {num(r['naive_recipients_per_s'], ',.1f')} recipients/s",
        f"postgres bound               {num(r['postgres_bound_rows_per_s'])} rows/s (INSERT ... SELECT ... ON CONFLICT)",
        f"ratio vs naive               {num(r['ratio_vs_naive'], ',.0f')}x   [{mark('ratio_vs_naive >= 300')}: >= 300x]",
        f"ratio vs postgres bound      {num(r['ratio_vs_postgres_bound'], '.1%')}"
        f"   [{mark('ratio_vs_postgres_bound >= 0.25')}: >= 25%]",
        f"worker peak RSS              {r['worker_peak_rss_mb']:.0f} MB   [{mark('worker_peak_rss_mb <= 300')}: <= 300 MB]",
        f"history events               {r['history_events']:,} ({r['phase_day']['history']['runs']} run(s))",
        f"batch size                   chunk_size {b['chunk_size']:,} per transaction, slice_size {b['slice_size']:,}"
        " per activity",
        f"concurrency                  {c['send_activities_per_campaign']} send activities per campaign,"
        f" {c.get('worker_processes', 1)} worker process(es), each max {c['worker_max_concurrent_activities']}"
        f" activities and pool {c['worker_db_pool']}",
    ]
