"""The HTTP API in-process (httpx over ASGI) with a worker, over real HTTP (uvicorn), and API keys for test shops."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import uvicorn
from sluice.api.http import create_app
from sluice.api.keys import create_key
from sluice.schemas.settings import Settings
from sluice.workers.worker import build_worker

from tests.factories import make_shop


async def shop_key(pool: asyncpg.Pool, shop_id: str, tz: str = "Asia/Shanghai") -> str:
    """The shop (created if absent) and a new API key for it."""
    await make_shop(pool, shop_id, tz)
    return (await create_key(pool, shop_id)).key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@asynccontextmanager
async def running_app(pool: asyncpg.Pool, ts_env, *, worker: bool = True):
    """The app with its lifespan entered (and a worker on its task queue when `worker`)."""
    settings = Settings(SLUICE_TASK_QUEUE=f"api-{uuid.uuid4().hex[:6]}")
    app = create_app(settings, pool=pool, client=ts_env.client)
    if worker:
        async with build_worker(ts_env.client, pool, settings), app.router.lifespan_context(app):
            yield app
    else:
        async with app.router.lifespan_context(app):
            yield app


def client(app, key: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://sluice", headers=bearer(key) if key else None
    )


@asynccontextmanager
async def serving(app) -> AsyncIterator[str]:
    """`app` (its lifespan entered, as by running_app) over real HTTP: uvicorn in this event loop on a socket
    bound first to a free port (no race for the port); yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning", log_config=None))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.02)
        if not server.started:
            raise RuntimeError(f"uvicorn did not start: {task.exception() if task.done() else 'timeout'}")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
