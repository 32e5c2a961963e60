"""Connecting to Temporal: a server that is still starting is waited for, a dead one is not forever."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from sluice.workers.worker import connect_when_ready
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest


async def test_connect_when_ready_gives_up_after_its_wait():
    # Nothing listens yet: the way a server that is still starting looks from outside.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="Connection refused"):
        await connect_when_ready(f"127.0.0.1:{port}", wait_s=1.5)
    waited = time.monotonic() - started
    assert waited >= 1.5, f"gave up after {waited:.2f}s instead of retrying for 1.5s"
    assert waited < 30, f"waited {waited:.2f}s for a 1.5s budget"


@pytest.mark.devserver
async def test_connect_when_ready_reaches_a_running_server(dev_env):
    address = dev_env.client.service_client.config.target_host
    client = await asyncio.wait_for(connect_when_ready(address, wait_s=5), timeout=30)
    info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
    assert info.server_version
