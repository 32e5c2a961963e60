"""The API under faults answers 2xx, 404, 409 or 503 with Retry-After, never 500 (reliability suite).

Real parts throughout: the Temporal dev server (and a second, private one
that the test kills to play "Temporal unreachable"), Postgres, the app over
ASGI with a worker that the tests stop and start.
"""

from __future__ import annotations

import asyncio
import random
import time as walltime
import uuid
from collections import Counter
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sluice.api.http import create_app
from sluice.schemas.settings import Settings
from sluice.workers.binaries import temporal_cli
from sluice.workers.worker import build_worker
from sluice.workflows.calendar import local_day
from sluice.workflows.campaign import CampaignWorkflow
from sluice.workflows.search_attributes import ALL
from temporalio.client import WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from tests.api_helpers import client as http_client
from tests.api_helpers import shop_key
from tests.conftest import DEV_SERVER_ARGS

pytestmark = pytest.mark.devserver

TZ = "Asia/Shanghai"


def spec(shop: str, ref: str, days_ahead: int = 3, text: str = "Hello again") -> dict:
    day = local_day(datetime.now(UTC), TZ) + timedelta(days=days_ahead)
    return {"kind": "K-OLDCUST", "shop_id": shop, "campaign_id": ref, "scene": "Faults", "card_text": text,
            "send_date": day.isoformat(), "send_time": "10:00"}


@asynccontextmanager
async def app_on(pool, temporal_client, queue: str):
    settings = Settings(SLUICE_TASK_QUEUE=queue, SLUICE_PLATFORM_TZ=TZ)
    app = create_app(settings, pool=pool, client=temporal_client)
    async with app.router.lifespan_context(app):
        yield app, settings


def worker_for(env, pool, settings: Settings):
    return build_worker(env.client, pool, settings)


def _assert_unavailable(res, dependency: str) -> None:
    assert res.status_code == 503, (res.status_code, res.text)
    assert int(res.headers["Retry-After"]) > 0
    assert res.json()["detail"][0]["field"] == dependency, res.text


async def test_control_of_a_finished_campaign_is_404_not_running_never_500(clean_db, dev_env):
    pool = clean_db
    key = await shop_key(pool, "fin", TZ)
    queue = f"faults-{uuid.uuid4().hex[:8]}"
    async with app_on(pool, dev_env.client, queue) as (app, settings), worker_for(dev_env, pool, settings):
        async with http_client(app, key) as c:
            res = await c.post("/campaigns", json=spec("fin", "c1"))
            assert res.status_code == 201, res.text
            wf = res.json()["workflow_id"]
            # 50 clients race the campaign's end: one cancel closes it while the others' commands arrive.
            answers = await asyncio.gather(
                *(c.post(f"/campaigns/{wf}/{random.choice(['pause', 'resume', 'cancel'])}") for _ in range(50))
            )
            assert {r.status_code for r in answers} <= {202, 404}, Counter(r.status_code for r in answers)
            await dev_env.client.get_workflow_handle(wf).result()
            for action in ("pause", "resume", "cancel"):
                res = await c.post(f"/campaigns/{wf}/{action}")
                assert res.status_code == 404, res.text
                assert "not running (completed)" in res.text


async def test_worker_down_is_503_with_retry_after_on_every_call_and_readyz_names_it(clean_db, dev_env):
    pool = clean_db
    key = await shop_key(pool, "wd", TZ)
    queue = f"faults-{uuid.uuid4().hex[:8]}"
    async with app_on(pool, dev_env.client, queue) as (app, settings), http_client(app, key) as c:
        async with worker_for(dev_env, pool, settings):
            res = await c.post("/campaigns", json=spec("wd", "c1"))
            wf = res.json()["workflow_id"]
            assert (await c.get(f"/campaigns/{wf}")).status_code == 200
            ready = await c.get("/readyz")
            assert ready.status_code == 200 and ready.json()["checks"] == {
                "postgres": "ok", "temporal": "ok", "workers": "ok"}, ready.text
        # The worker is gone. Every status call (not only the first) is a 503 with Retry-After.
        t0 = walltime.monotonic()
        for _ in range(4):
            _assert_unavailable(await c.get(f"/campaigns/{wf}"), "workers")
        seconds = walltime.monotonic() - t0
        # Control needs no worker: Temporal keeps the signal and the workflow applies it when one returns.
        assert (await c.post(f"/campaigns/{wf}/pause")).status_code == 202
        assert (await c.get("/healthz")).status_code == 200  # liveness: the API itself answers
        async with worker_for(dev_env, pool, settings):
            deadline = walltime.monotonic() + 30
            while True:
                res = await c.get(f"/campaigns/{wf}")
                if res.status_code == 200 and res.json()["progress"]["state"] == "paused":
                    break
                assert walltime.monotonic() < deadline, res.text
                await asyncio.sleep(0.3)
    print(f"\nworker down: 4 status calls answered 503 in {seconds:.1f} s; the pause sent meanwhile took effect")


async def test_readyz_names_a_missing_worker_and_a_missing_database(clean_db, dev_env, db_dsn):
    from sluice.db.pool import create_pool

    pool = clean_db
    queue = f"faults-{uuid.uuid4().hex[:8]}"
    async with app_on(pool, dev_env.client, queue) as (app, _settings), http_client(app) as c:
        res = await c.get("/readyz")
        assert res.status_code == 503 and res.headers["Retry-After"]
        checks = res.json()["checks"]
        assert checks["postgres"] == "ok" and checks["temporal"] == "ok"
        assert checks["workers"].startswith("unavailable: no worker polled task queue"), checks
    closed = await create_pool(db_dsn, size=1)
    await closed.close()
    key = await shop_key(pool, "rz", TZ)
    async with app_on(closed, dev_env.client, queue) as (app, _settings), http_client(app, key) as c:
        res = await c.get("/readyz")
        assert res.status_code == 503 and res.json()["checks"]["postgres"].startswith("unavailable"), res.text
        # The key check itself needs Postgres: 503 naming it, not a 500 (and not a 401: the key may be good).
        for res in (await c.get("/campaigns/rz.c1"), await c.post("/campaigns", json=spec("rz", "c1"))):
            _assert_unavailable(res, "postgres")


async def test_temporal_unreachable_is_503_and_a_retry_completes_only_the_same_spec(clean_db, dev_env):
    """Temporal dies under a running API: every route that needs it answers 503 quickly; the start's row
    stays 'created'; a retry with another spec is 409, the same spec (Temporal back) is 201 and runs."""
    pool = clean_db
    key = await shop_key(pool, "td", TZ)
    queue = f"faults-{uuid.uuid4().hex[:8]}"
    doomed = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(), data_converter=pydantic_data_converter, ui=False,
        search_attributes=ALL, dev_server_extra_args=DEV_SERVER_ARGS,
    )
    async with app_on(pool, doomed.client, queue) as (app, _settings), http_client(app, key) as c:
        res = await c.post("/campaigns", json=spec("td", "before"))
        assert res.status_code == 201, res.text
        await doomed.shutdown()
        t0 = walltime.monotonic()
        _assert_unavailable(await c.post("/campaigns", json=spec("td", "c1")), "temporal")
        start_s = walltime.monotonic() - t0
        assert await pool.fetchval("SELECT state FROM campaigns WHERE workflow_id = 'td.c1'") == "created"
        _assert_unavailable(await c.post("/campaigns/td.before/pause"), "temporal")
        res = await c.get("/campaigns/td.before")
        assert res.status_code == 503, res.text
        ready = await c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["temporal"].startswith("unavailable"), ready.text
        # The same id with another spec is another campaign: refused, and the row keeps the first spec.
        res = await c.post("/campaigns", json=spec("td", "c1", text="Something else"))
        assert res.status_code == 409 and "different spec" in res.text, res.text
    # Temporal is back (here: the session's server), the same spec completes the start.
    async with app_on(pool, dev_env.client, queue) as (app, settings), http_client(app, key) as c:
        res = await c.post("/campaigns", json=spec("td", "c1", text="Something else"))
        assert res.status_code == 409, res.text
        async with worker_for(dev_env, pool, settings):
            res = await c.post("/campaigns", json=spec("td", "c1"))
            assert res.status_code == 201, res.text
            assert (await c.post("/campaigns", json=spec("td", "c1"))).status_code == 409
            stored = await pool.fetchval("SELECT spec->>'card_text' FROM campaigns WHERE workflow_id = 'td.c1'")
            assert stored == "Hello again"
            st = await dev_env.client.get_workflow_handle_for(CampaignWorkflow.run, "td.c1").query(
                CampaignWorkflow.progress_query)
            assert st.campaign_id == "c1"
    print(f"\ntemporal down: POST /campaigns answered 503 in {start_s:.1f} s")


async def test_concurrent_identical_starts_answer_201_once_and_409_otherwise(clean_db, dev_env):
    pool = clean_db
    key = await shop_key(pool, "cc", TZ)
    queue = f"faults-{uuid.uuid4().hex[:8]}"
    rounds, clients = 5, 200
    async with app_on(pool, dev_env.client, queue) as (app, _settings), http_client(app, key) as c:
        for r in range(rounds):
            body = spec("cc", f"same{r}")
            answers = Counter(
                res.status_code for res in await asyncio.gather(*(c.post("/campaigns", json=body) for _ in range(clients)))
            )
            assert answers == {201: 1, 409: clients - 1}, answers
            assert await pool.fetchval("SELECT count(*) FROM campaigns WHERE campaign_ref = $1", f"same{r}") == 1
            desc = await dev_env.client.get_workflow_handle(f"cc.same{r}").describe()
            assert desc.status == WorkflowExecutionStatus.RUNNING


async def test_storm_of_clients_mixing_commands_never_gets_500_and_ends_consistent(clean_db, dev_env):
    """N clients mix start/pause/resume/cancel on the same few campaigns for a while, with the worker
    stopped and started under them. No 500; at the end every campaign shows the same state in Temporal
    (progress query / result) and in Postgres."""
    pool = clean_db
    key = await shop_key(pool, "st", TZ)
    queue = f"faults-{uuid.uuid4().hex[:8]}"
    n_clients, seconds, refs = 24, 12.0, [f"c{i}" for i in range(6)]
    answers: Counter = Counter()
    rng = random.Random(11)
    async with app_on(pool, dev_env.client, queue) as (app, settings), http_client(app, key) as c:
        stop_at = walltime.monotonic() + seconds

        async def client_loop():
            while walltime.monotonic() < stop_at:
                ref = rng.choice(refs)
                op = rng.choice(["start", "pause", "resume", "cancel", "status"])
                if op == "start":
                    res = await c.post("/campaigns", json=spec("st", ref))
                elif op == "status":
                    res = await c.get(f"/campaigns/st.{ref}")
                else:
                    res = await c.post(f"/campaigns/st.{ref}/{op}")
                answers[(op, res.status_code)] += 1

        async def worker_flaps():
            while walltime.monotonic() < stop_at:
                async with worker_for(dev_env, pool, settings):
                    await asyncio.sleep(rng.uniform(1, 3))
                await asyncio.sleep(rng.uniform(0.5, 2))

        await asyncio.gather(worker_flaps(), *(client_loop() for _ in range(n_clients)))
        statuses = Counter(code for (_op, code) in answers.elements())
        assert 500 not in statuses, answers
        assert set(statuses) <= {200, 201, 202, 404, 409, 503}, answers
        # Settle with a worker: every campaign's state agrees between Temporal and Postgres.
        async with worker_for(dev_env, pool, settings):
            deadline = walltime.monotonic() + 60
            while True:
                mismatched = await _mismatched(pool, dev_env.client)
                if not mismatched or walltime.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
    assert mismatched == {}, mismatched
    print(f"\nstorm: {n_clients} clients, {seconds:.0f} s, {sum(answers.values())} requests, answers {dict(statuses)}")


async def _mismatched(pool, temporal) -> dict:
    out = {}
    for wf, row_state in await pool.fetch("SELECT workflow_id, state FROM campaigns WHERE shop_id = 'st'"):
        handle = temporal.get_workflow_handle_for(CampaignWorkflow.run, wf)
        desc = await handle.describe()
        if desc.status == WorkflowExecutionStatus.COMPLETED:
            wf_state = (await handle.result()).state
        else:
            progress = (await handle.query(CampaignWorkflow.progress_query)).progress
            wf_state = progress.state
            if progress.paused != (wf_state == "paused"):
                wf_state = f"{wf_state} (paused={progress.paused})"
        if wf_state != row_state:
            out[wf] = (wf_state, row_state)
    return out
