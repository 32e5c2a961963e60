"""Chat: today a chat message is handed to the chat platform through the outbox (channels/outbox.py),
which that platform drains itself."""

from __future__ import annotations

import asyncpg
from sluice.channels.outbox import OutboxChannel


class ChatChannel(OutboxChannel):
    def __init__(self, pool: asyncpg.Pool, name: str = "chat"):
        super().__init__(pool, name)
