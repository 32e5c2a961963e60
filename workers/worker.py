"""The Temporal worker: the campaign workflow and its activities on one task queue.

Workers are stateless; run as many as load needs on the same task queue.
"""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta

import asyncpg
import structlog
from sluice.activities.audience import AudienceActivities
from sluice.activities.channels import ChannelRegistry
from sluice.activities.offers import OfferActivities
from sluice.activities.precedence import PrecedenceActivities
from sluice.activities.report import ReportActivities
from sluice.activities.send import SendActivities
from sluice.db.pool import create_pool
from sluice.schemas.settings import Settings, get_settings
from sluice.workers.logs import configure_logging
from sluice.workflows.campaign import CampaignWorkflow
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
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
            report.set_campaign_state,
            offers.day_offers,
            offers.expire_offers,
            precedence.precedence_holder,
        ],
        max_concurrent_activities=settings.max_concurrent_activities,
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=settings.sticky_timeout_s),
    )


async def connect_client(settings: Settings) -> Client:
    if not settings.temporal_address:
        raise SystemExit("TEMPORAL_ADDRESS is not set; start the local stack with `sluice dev`")
    return await connect_when_ready(
        settings.temporal_address, settings.temporal_namespace, wait_s=settings.temporal_connect_wait_s
    )


async def connect_when_ready(address: str, namespace: str = "default", *, wait_s: float = 30.0) -> Client:
    """Connect, waiting up to `wait_s` for a server that is still starting.

    A Temporal server opens its port before its frontend is healthy ("Frontend is not healthy
    yet"); a worker started beside it (compose, systemd, a restart) must not die of that.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    waited = False
    while True:
        try:
            client = await Client.connect(address, namespace=namespace, data_converter=pydantic_data_converter)
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


async def run_worker(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is not set; start the local stack with `sluice dev`")
    client = await connect_client(settings)
    pool = await create_pool(settings.database_url, size=settings.pool_size)
    channels = ChannelRegistry.from_settings(pool, settings)
    worker = build_worker(client, pool, settings, channels=channels)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker started", task_queue=settings.task_queue, temporal=settings.temporal_address)
    async with worker:
        await stop.wait()
        log.info("worker stopping")
    await channels.aclose()
    await pool.close()


def main() -> None:
    asyncio.run(run_worker())


if __name__ == "__main__":
    main()
