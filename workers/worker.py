"""The Temporal worker: the campaign workflow and its activities on one task queue, and with
SLUICE_PROVIDER_QUEUES the send activities on each provider's rate-limited queue as well.

Workers are stateless; run as many as load needs on the same task queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Sequence
from datetime import timedelta

import asyncpg
import structlog
from sluice.activities.audience import AudienceActivities
from sluice.activities.offers import OfferActivities
from sluice.activities.precedence import PrecedenceActivities
from sluice.activities.report import ReportActivities
from sluice.activities.send import SendActivities
from sluice.activities.window import WindowActivities
from sluice.channels.dispatcher import Dispatcher
from sluice.channels.registry import ChannelRegistry, dispatch_adapters
from sluice.db.pool import create_pool
from sluice.schemas import providers
from sluice.schemas.settings import Settings, get_settings
from sluice.workers.logs import configure_logging
from sluice.workers.metrics import MetricsServer, temporal_runtime
from sluice.workers.tracing import setup_tracing, temporal_interceptors
from sluice.workflows.campaign import CampaignWorkflow
from temporalio.client import Client, Interceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime
from temporalio.worker import Worker

log = structlog.get_logger("sluice.worker")


def build_worker(
    client: Client,
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    channels: ChannelRegistry | None = None,
    task_queue: str | None = None,
) -> Worker:
    channels = channels or ChannelRegistry.outbox_for_all(pool)
    audience = AudienceActivities(pool, parts=settings.refresh_parts)
    send = SendActivities(pool, channels, platform_timezone=settings.platform_timezone)
    report = ReportActivities(pool)
    offers = OfferActivities(pool)
    precedence = PrecedenceActivities(pool)
    window = WindowActivities(pool)
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=[CampaignWorkflow],
        activities=[
            audience.refresh_audience,
            send.send_slice,
            send.reconcile_pending,
            report.close_day,
            report.day_report,
            report.refresh_report,
            report.set_campaign_state,
            offers.day_offers,
            offers.expire_offers,
            precedence.precedence_holder,
            window.waiting_zones,  # R-WIN-1
            window.close_waiting,
        ],
        max_concurrent_activities=settings.max_concurrent_activities,
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=settings.sticky_timeout_s),
    )


def build_send_workers(
    client: Client,
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    channels: ChannelRegistry | None = None,
    task_queue: str | None = None,
    only: Sequence[str] | None = None,
) -> list[Worker]:
    """One worker per provider's send queue (`<queue>-send-<channel>`, schemas/providers.py), running only
    `send_slice`. Each sets the queue-wide rate: Temporal's matching service hands out at most that many
    activities a second over every worker polling the queue, so the provider's messages/s hold however
    many workers run (every worker must be given the same rates: the last poller's value wins)."""
    channels = channels or ChannelRegistry.outbox_for_all(pool)
    send = SendActivities(pool, channels, platform_timezone=settings.platform_timezone)
    rates = providers.rates(settings.provider_rates)
    base = task_queue or settings.task_queue
    return [
        Worker(
            client,
            task_queue=providers.send_queue(base, name),
            activities=[send.send_slice],
            max_concurrent_activities=settings.max_concurrent_activities,
            max_task_queue_activities_per_second=providers.queue_rate(rates[name], p.slice_max),
        )
        for name, p in providers.PROVIDERS.items()
        if only is None or name in only
    ]


def build_dispatcher(pool: asyncpg.Pool, adapters: dict, settings: Settings) -> Dispatcher:
    """The outbox dispatcher over `adapters` (channels/registry.py, dispatch_adapters) with the settings' tuning."""
    return Dispatcher(pool, adapters, batches=settings.dispatch_batches, part_size=settings.dispatch_part_size,
                      lease_s=settings.dispatch_lease_s)


async def connect_client(
    settings: Settings, *, runtime: Runtime | None = None, interceptors: Sequence[Interceptor] = ()
) -> Client:
    """`runtime` (workers/metrics.py) and `interceptors` (workers/tracing.py): the long-running
    processes' metrics and traces; CLI commands go without."""
    if not settings.temporal_address:
        raise SystemExit("TEMPORAL_ADDRESS is not set; start the local stack with `sluice dev`")
    return await connect_when_ready(
        settings.temporal_address, settings.temporal_namespace, wait_s=settings.temporal_connect_wait_s,
        runtime=runtime, interceptors=interceptors,
    )  # fmt: skip


async def connect_when_ready(
    address: str, namespace: str = "default", *, wait_s: float = 30.0, runtime: Runtime | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> Client:
    """Connect, waiting up to `wait_s` for a server that is still starting.

    A Temporal server opens its port before its frontend is healthy ("Frontend is not healthy
    yet"); a worker started beside it (compose, systemd, a restart) must not die of that.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    waited = False
    while True:
        try:
            client = await Client.connect(
                address, namespace=namespace, data_converter=pydantic_data_converter, runtime=runtime,
                interceptors=interceptors,
            )  # fmt: skip
        except RuntimeError as exc:
            if loop.time() >= deadline:
                raise
            if not waited:
                log.warning("temporal not ready, waiting", temporal=address, wait_s=wait_s, error=str(exc)[:200])
                waited = True
            await asyncio.sleep(0.5)
            continue
        if waited:
            log.info("temporal ready", temporal=address)
        return client


# The worker allocates a container per database row it reads (2,000 a chunk) and keeps tens of thousands of long-lived
# objects (modules, models, the Temporal SDK): with CPython's default thresholds (700, 10, 10) its collector ran
# 2,800 times and took 17% of the worker's CPU in the whole-shop K-REPURCHASE bench, a full collection walking every
# long-lived object (77 ms each). So what exists once the worker is built is frozen out of collection (gc.freeze), and
# the youngest generation is collected every GC_THRESHOLDS[0] allocations: rows die by reference counting, not by
# the collector, and a chunk's garbage cycles are rare (docs/design.md, "The worker's garbage collector").
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Freeze what the worker built at start and collect the young generation less often (GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def run_worker(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is not set; start the local stack with `sluice dev`")
    tracer = setup_tracing(settings, "sluice-worker")
    # The worker takes its client's interceptors: the tracing one opens workflow and activity spans.
    client = await connect_client(settings, runtime=temporal_runtime(), interceptors=temporal_interceptors(tracer))
    metrics_server = None
    if settings.metrics_port is not None:
        metrics_server = MetricsServer(settings.metrics_host, settings.metrics_port)
        log.info("metrics served", url=f"http://{settings.metrics_host}:{metrics_server.port}/metrics")
    pool = await create_pool(settings.database_url, size=settings.pool_size)
    channels = ChannelRegistry.from_settings(pool, settings)
    worker = build_worker(client, pool, settings, channels=channels)
    send_workers = build_send_workers(client, pool, settings, channels=channels) if settings.provider_queues else []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tune_gc()
    log.info("worker started", task_queue=settings.task_queue, temporal=settings.temporal_address,
             send_queues=[w.task_queue for w in send_workers])  # fmt: skip
    # SLUICE_DISPATCH_CHANNELS: the outbox dispatcher runs beside the workers (any number of processes may).
    adapters = dispatch_adapters(settings)
    dispatcher = build_dispatcher(pool, adapters, settings) if adapters else None
    dispatching = asyncio.create_task(dispatcher.run(stop, idle_s=settings.dispatch_idle_s)) if dispatcher else None
    async with contextlib.AsyncExitStack() as running:
        for w in (worker, *send_workers):
            await running.enter_async_context(w)
        await stop.wait()
        log.info("worker stopping")
    if dispatching is not None:
        await dispatching
        await ChannelRegistry(adapters).aclose()
    await channels.aclose()
    await pool.close()
    if metrics_server is not None:
        metrics_server.close()


def main() -> None:
    asyncio.run(run_worker())


if __name__ == "__main__":
    main()
