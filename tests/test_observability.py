"""Metrics, traces and third-party logs (docs/observability.md), on real parts.

A small K-REPURCHASE campaign started through the API on the time-skipping server, its
messages either handed off to the outbox in the deciding transaction or sent through a
provider that refuses two recipients for good: the worker's /metrics and the API's GET
/metrics, scraped over HTTP, move by exactly the ledger's counts (deliveries per state and
channel, suppressed per reason, claims held / claimed / expired / released) and carry the
Temporal SDK's own metrics; an in-memory span exporter sees one trace from the API request
through the workflow to its activities; a third-party log record is one JSON line, masked.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from datetime import timedelta

import httpx
import pytest
import pytest_asyncio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from sluice.activities.offers import CLAIMED, EXPIRED, HELD, RELEASED
from sluice.api.http import create_app
from sluice.channels.base import Outbound, Outcome, delivery_key
from sluice.channels.registry import ChannelRegistry
from sluice.schemas.settings import Settings
from sluice.workers import metrics
from sluice.workers.logs import configure_logging
from sluice.workers.metrics import MetricsServer, temporal_runtime
from sluice.workers.tracing import TRACER_NAME, temporal_interceptors, tracer_provider
from sluice.workers.worker import build_worker
from temporalio.client import WorkflowExecutionStatus

from tests.api_helpers import bearer, client, shop_key
from tests.test_repurchase import SHOP
from tests.test_repurchase import _shop as repurchase_shop

N, STOCK = 12, 10  # twelve due buyers, coupon units for ten: two suppressed benefit_unavailable
REFUSED = {1, 2}  # the refusing provider's permanent refusals: failed, their claims released


class RefusingProvider:
    """A chat provider in the test process: refuses REFUSED's messages for good, accepts the others
    (idempotently, by delivery reference)."""

    name = "chat"

    def __init__(self):
        self.accepted: set[str] = set()

    async def send(self, messages: list[Outbound]) -> list[Outcome]:
        out = []
        for m in messages:
            if m.consumer_id in REFUSED:
                out.append(Outcome(m.consumer_id, "failed", None, "recipient_refused"))
            else:
                self.accepted.add(delivery_key(m))
                out.append(Outcome(m.consumer_id, "sent", delivery_key(m)))
        return out

    async def reconcile(self, messages: list[Outbound]) -> list[Outcome]:
        return [Outcome(m.consumer_id, "sent", delivery_key(m)) for m in messages if delivery_key(m) in self.accepted]


@pytest_asyncio.fixture
async def traced_env():
    """The time-skipping server, its client on the process's metrics runtime with the tracing interceptor."""
    from sluice.workers.binaries import temporal_test_server
    from sluice.workflows.search_attributes import register
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    exporter = InMemorySpanExporter()
    tracer = tracer_provider(Settings(), "sluice-test", exporter=exporter).get_tracer(TRACER_NAME)
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=temporal_test_server(), data_converter=pydantic_data_converter,
        runtime=temporal_runtime(), interceptors=temporal_interceptors(tracer),
    )  # fmt: skip
    await register(env.client)
    yield env, tracer, exporter
    await env.shutdown()


def samples(text: str) -> dict[tuple, float]:
    """Every sample of a Prometheus text page: (sample name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sluice_deltas(before: dict, after: dict) -> dict[tuple, float]:
    keys = {k for k in after if k[0].startswith("sluice_") and k[0].endswith("_total")}
    return {k: after[k] - before.get(k, 0.0) for k in keys if after[k] - before.get(k, 0.0)}


def total(values: dict, name: str) -> float:
    return sum(v for (n, _), v in values.items() if n == name)


@pytest.mark.parametrize("provider", ["outbox", "refusing"])
async def test_metrics_equal_the_ledger_and_one_trace_spans_api_workflow_activity(clean_db, traced_env, provider):
    env, tracer, exporter = traced_env
    pool = clean_db
    now = await env.get_current_time()
    tz = await repurchase_shop(pool, now, N, stock=STOCK)
    key = await shop_key(pool, SHOP, tz)
    settings = Settings(SLUICE_TASK_QUEUE=f"obs-{uuid.uuid4().hex[:6]}", SLUICE_PLATFORM_TZ=tz)
    channels = ChannelRegistry.outbox_for_all(pool)
    refused = set()
    if provider == "refusing":
        channels._channels["chat"] = RefusingProvider()
        refused = REFUSED
    server = MetricsServer("127.0.0.1", 0)
    scrape_url = f"http://127.0.0.1:{server.port}/metrics"
    app = create_app(settings, pool=pool, client=env.client, tracer=tracer)
    try:
        async with httpx.AsyncClient() as http:
            before = samples((await http.get(scrape_url)).text)
            async with (
                build_worker(env.client, pool, settings, channels=channels),
                app.router.lifespan_context(app),
                client(app, key) as api,
            ):
                spec = {"kind": "K-REPURCHASE", "shop_id": SHOP, "campaign_id": "tea", "audience": "repurchase_cycle",
                        "benefit": "exclusive_coupon", "coupon_ids": ["tea5", "soap2"], "offer_hours": 2}
                started = await api.post("/campaigns", json=spec)
                assert started.status_code == 201, started.text
                workflow_id = started.json()["workflow_id"]
                for _ in range(300):  # every buyer decided and settled
                    if await pool.fetchval("SELECT count(*) FILTER (WHERE state NOT IN ('reserved', 'unknown'))"
                                           " FROM deliveries") == N:
                        break
                    await asyncio.sleep(0.1)
                offer = await pool.fetchval("SELECT min(id) FROM claims WHERE state = 'held'")
                assert (await api.post(f"/offers/{offer}/claim")).status_code == 200
                assert (await api.post(f"/offers/{offer}/claim")).status_code == 200  # again: counted once
                # The API kept no handle: skip time on the test server until the offers' timer fired.
                handle = env.client.get_workflow_handle(workflow_id)
                for _ in range(24):
                    if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
                        break
                    await env.sleep(timedelta(hours=1))
                result = await asyncio.wait_for(handle.result(), timeout=60)
                assert result["state"] == "completed"
                async with client(app) as anonymous:  # the API's /metrics needs no shop key
                    api_page = await anonymous.get("/metrics")
            after = samples((await http.get(scrape_url)).text)
    finally:
        server.close()

    # The ledger as it ended, and the campaign exercised the counters it should.
    states = {(r["state"], r["channel"]): r["n"] for r in await pool.fetch(
        "SELECT state, channel, count(*)::int AS n FROM deliveries GROUP BY 1, 2")}
    reasons = {(r["reason"], r["channel"]): r["n"] for r in await pool.fetch(
        "SELECT reason, channel, count(*)::int AS n FROM deliveries WHERE state = 'suppressed' GROUP BY 1, 2")}
    claims = dict(await pool.fetch("SELECT state, count(*)::int FROM claims GROUP BY 1"))
    sent = STOCK - len(refused)
    assert states == {("sent", "chat"): sent, ("suppressed", "chat"): N - STOCK} | (
        {("failed", "chat"): len(refused)} if refused else {}), states
    assert claims == {CLAIMED: 1, EXPIRED: sent - 1} | ({RELEASED: len(refused)} if refused else {}), claims

    expected = {("sluice_deliveries_total", (("channel", ch), ("state", st))): n for (st, ch), n in states.items()}
    expected |= {("sluice_suppressed_total", (("channel", ch), ("reason", why))): n for (why, ch), n in reasons.items()}
    expected |= {("sluice_claims_total", (("state", st),)): n for st, n in claims.items()}
    expected[("sluice_claims_total", (("state", HELD),))] = sum(claims.values())  # every claim was held first
    assert sluice_deltas(before, after) == expected

    # The API's page serves the same process's counters, and each endpoint the Temporal SDK's own metrics.
    assert api_page.status_code == 200 and api_page.headers["content-type"].startswith("text/plain")
    api_after = samples(api_page.text)
    assert sluice_deltas(before, api_after) == expected
    assert total(after, "temporal_workflow_completed_total") - total(before, "temporal_workflow_completed_total") >= 1
    assert total(after, "temporal_activity_execution_latency_count") > total(before, "temporal_activity_execution_latency_count")
    assert total(api_after, "temporal_request_total") > 0
    assert not any("consumer" in label or "shop" in label for (_, labels) in after for label, _ in labels)

    # One trace: the API request -> StartWorkflow -> RunWorkflow / StartActivity -> RunActivity.
    spans = exporter.get_finished_spans()
    request = [s for s in spans if s.name == "POST /campaigns"]
    assert len(request) == 1, [s.name for s in spans]
    trace_id = request[0].context.trace_id
    by_id = {s.context.span_id: s for s in spans if s.context.trace_id == trace_id}
    names = {s.name for s in by_id.values()}
    assert {"StartWorkflow:CampaignWorkflow", "RunWorkflow:CampaignWorkflow", "RunActivity:send_slice"} <= names, names

    def chain(span) -> list[str]:
        out = [span.name]
        while span.parent is not None:
            span = by_id[span.parent.span_id]
            out.append(span.name)
        return out

    # The workflow's run and the activity it scheduled both descend from the request, through the start.
    send = next(s for s in by_id.values() if s.name == "RunActivity:send_slice")
    run = next(s for s in by_id.values() if s.name == "RunWorkflow:CampaignWorkflow")
    assert chain(send) == ["RunActivity:send_slice", "StartActivity:send_slice", "StartWorkflow:CampaignWorkflow",
                           "POST /campaigns"], chain(send)
    assert chain(run) == ["RunWorkflow:CampaignWorkflow", "StartWorkflow:CampaignWorkflow", "POST /campaigns"], chain(run)


async def test_metrics_token_guards_the_api_page(pool):
    app = create_app(Settings(SLUICE_METRICS_TOKEN="s3cret-token"), pool=pool)
    open_app = create_app(Settings(), pool=pool)
    key = await shop_key(pool, "obs-token")
    async with client(app) as http, client(open_app) as open_http:
        refused = await http.get("/metrics")
        assert refused.status_code == 401 and refused.json()["detail"][0]["rule"] == "R-API-METRICS"
        assert (await http.get("/metrics", headers=bearer(key))).status_code == 401  # a shop's key is not it
        assert (await http.get("/metrics", headers=bearer("s3cret-token"))).status_code == 200
        assert (await open_http.get("/metrics")).status_code == 200
        assert "sluice_deliveries" in (await open_http.get("/metrics")).text


def test_third_party_log_records_are_one_masked_json_line_each():
    out = io.StringIO()
    configure_logging("INFO", stream=out)
    try:
        raise ConnectionError("peer li.lei@example.com at 13812345678 went away")
    except ConnectionError:
        logging.getLogger("asyncpg.pool").warning("connection to %s lost", "li.lei@example.com", exc_info=True)
    logging.getLogger("temporalio.activity").info("Completing activity for 13812345678")
    logging.getLogger("uvicorn.error").error("request from a.b@example.org failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    records = [json.loads(line) for line in lines]
    assert [r["logger"] for r in records] == ["asyncpg.pool", "temporalio.activity", "uvicorn.error"]
    assert records[0]["level"] == "warning" and "Traceback" in records[0]["exception"]
    text = out.getvalue()
    for secret in ("li.lei@example.com", "13812345678", "a.b@example.org"):
        assert secret not in text
    assert records[0]["msg"] == "connection to l***@example.com lost"


def test_label_values_are_the_ledgers_constants():
    # The counters' label names: nothing that could hold a shop, campaign or consumer id.
    assert metrics.DELIVERIES._labelnames == ("state", "channel")
    assert metrics.SUPPRESSIONS._labelnames == ("reason", "channel")
    assert metrics.CLAIMS._labelnames == ("state",)
    assert metrics.LOAD_ROWS._labelnames == ("kind", "outcome")
