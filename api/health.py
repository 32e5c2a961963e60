"""Readiness: which of the API's dependencies answer now.

`/healthz` says the API process is alive (a liveness probe must not restart
a healthy API because Postgres is down). `/readyz` names each dependency and
whether it answers: Postgres, the Temporal frontend, and a worker polling the
campaigns' task queue (without one, starts and signals are accepted and kept
by Temporal, but nothing runs and status queries cannot be answered).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

CHECK_TIMEOUT_S = 3.0
# A worker long-polls its task queue continuously; one not seen for this long is gone.
POLLER_FRESH = timedelta(minutes=1)
OK = "ok"


async def check_postgres(pool: asyncpg.Pool) -> str:
    try:
        await asyncio.wait_for(pool.fetchval("SELECT 1"), CHECK_TIMEOUT_S)
        return OK
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return f"unavailable: {type(exc).__name__}"


async def check_temporal(client: Client) -> str:
    try:
        await client.service_client.check_health(timeout=timedelta(seconds=CHECK_TIMEOUT_S))
        return OK
    except (RPCError, RuntimeError) as exc:
        return f"unavailable: {getattr(exc, 'status', None) or type(exc).__name__}"


async def check_workers(client: Client, task_queue: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    try:
        res = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            ),
            timeout=timedelta(seconds=CHECK_TIMEOUT_S),
        )
    except RPCError as err:
        if err.status == RPCStatusCode.UNIMPLEMENTED:  # the time-skipping test server
            return "unknown: the server cannot describe task queues"
        return f"unavailable: {err.status.name if err.status else 'error'}"
    except RuntimeError as exc:
        return f"unavailable: {type(exc).__name__}"
    fresh = [p for p in res.pollers if now - p.last_access_time.ToDatetime(UTC) <= POLLER_FRESH]
    if not fresh:
        return f"unavailable: no worker polled task queue {task_queue!r} in the last {POLLER_FRESH.seconds} s"
    return OK


async def readiness(pool: asyncpg.Pool, client: Client, task_queue: str) -> dict[str, str]:
    postgres, temporal = await asyncio.gather(check_postgres(pool), check_temporal(client))
    workers = await check_workers(client, task_queue) if temporal == OK else "unknown: temporal is unavailable"
    return {"postgres": postgres, "temporal": temporal, "workers": workers}


def is_ready(checks: dict[str, str]) -> bool:
    return all(v == OK or v.startswith("unknown: the server") for v in checks.values())
