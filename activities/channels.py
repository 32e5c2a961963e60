"""The channel interface and the outbox channel.

A channel takes deliveries that the ledger has already committed as
`reserved` and hands them to a provider. It must be idempotent per delivery
key: after a crash the same reserved delivery is offered again, and the
channel answers with the provider's reference instead of sending twice.
Real providers (SMS gateway, SMTP, chat) implement the same Protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Literal, Protocol

import asyncpg


@dataclass(frozen=True, slots=True)
class Outbound:
    campaign_id: int
    phase: int
    consumer_id: int
    day: date
    channel: str
    address: str
    body: str


@dataclass(frozen=True, slots=True)
class Outcome:
    consumer_id: int
    state: Literal["sent", "failed", "unknown"]
    provider_ref: str | None = None
    reason: str | None = None


class Channel(Protocol):
    name: str

    async def send(self, messages: list[Outbound]) -> list[Outcome]:
        """Hand messages to the provider; one Outcome per message, in any order.
        Raise activities.http_channel.ChannelUnavailable when the outcome is unknown."""
        ...

    async def reconcile(self, messages: list[Outbound]) -> list[Outcome]:
        """Ask the provider which of these it already has, by delivery reference;
        returns outcomes only for the ones it knows."""
        ...


class InDatabaseChannel:
    """A channel whose provider inbox is the `outbox` table of sluice's own database.

    The send path writes the hand-off in the ledger's own transaction (the
    delivery commits `sent` together with its outbox row) instead of committing
    `reserved` and calling send() after the commit: one transaction per chunk
    instead of three, and the ledger still never holds a send that did not
    happen. send() and reconcile() remain for deliveries reserved otherwise.
    """


class OutboxChannel(InDatabaseChannel):
    """Writes messages to the `outbox` table, which a dispatcher drains.

    The provider reference is the outbox row id; the unique delivery key
    makes a repeated offer return the existing row instead of a second one.
    """

    def __init__(self, pool: asyncpg.Pool, name: str):
        self.pool = pool
        self.name = name

    async def send(self, messages: list[Outbound]) -> list[Outcome]:
        if not messages:
            return []
        m0 = messages[0]
        rows = await self.pool.fetch(
            """
            WITH input AS (
                SELECT * FROM unnest($4::bigint[], $5::text[], $6::text[]) AS t(consumer_id, address, body)
            ), ins AS (
                INSERT INTO outbox (campaign_id, phase, day, channel, consumer_id, address, body)
                SELECT $1, $2, $3, $7, consumer_id, address, body FROM input
                ON CONFLICT (campaign_id, phase, consumer_id, day, channel) DO NOTHING
                RETURNING consumer_id, id
            )
            SELECT consumer_id, id FROM ins
            UNION ALL
            SELECT o.consumer_id, o.id FROM outbox o JOIN input i USING (consumer_id)
            WHERE o.campaign_id = $1 AND o.phase = $2 AND o.day = $3 AND o.channel = $7
              AND NOT EXISTS (SELECT 1 FROM ins WHERE ins.consumer_id = o.consumer_id)
            """,
            m0.campaign_id,
            m0.phase,
            m0.day,
            [m.consumer_id for m in messages],
            [m.address for m in messages],
            [m.body for m in messages],
            self.name,
        )
        return [Outcome(r["consumer_id"], "sent", f"outbox:{r['id']}") for r in rows]

    async def reconcile(self, messages: list[Outbound]) -> list[Outcome]:
        if not messages:
            return []
        m0 = messages[0]
        rows = await self.pool.fetch(
            "SELECT consumer_id, id FROM outbox WHERE campaign_id = $1 AND phase = $2 AND day = $3"
            " AND channel = $4 AND consumer_id = ANY($5::bigint[])",
            m0.campaign_id,
            m0.phase,
            m0.day,
            self.name,
            [m.consumer_id for m in messages],
        )
        return [Outcome(r["consumer_id"], "sent", f"outbox:{r['id']}") for r in rows]


CHANNELS = ("chat", "sms", "email", "inbox")


class ChannelRegistry:
    def __init__(self, channels: dict[str, Channel]):
        self._channels = channels

    def get(self, name: str) -> Channel:
        try:
            return self._channels[name]
        except KeyError:
            raise LookupError(f"no channel configured for {name!r}") from None

    @classmethod
    def outbox_for_all(cls, pool: asyncpg.Pool) -> ChannelRegistry:
        return cls({name: OutboxChannel(pool, name) for name in CHANNELS})

    @classmethod
    def from_settings(cls, pool: asyncpg.Pool, settings) -> ChannelRegistry:
        """The outbox for every channel, except those SLUICE_GATEWAY_CHANNELS hands to the gateway."""
        registry = cls.outbox_for_all(pool)
        if settings.gateway_url:
            from activities.http_channel import HttpGatewayChannel

            for name in (n.strip() for n in settings.gateway_channels.split(",") if n.strip()):
                if name not in CHANNELS:
                    raise ValueError(f"SLUICE_GATEWAY_CHANNELS: unknown channel {name!r} (one of {', '.join(CHANNELS)})")
                registry._channels[name] = HttpGatewayChannel(
                    name, settings.gateway_url, timeout_s=settings.gateway_timeout_s
                )
        return registry

    async def aclose(self) -> None:
        for channel in self._channels.values():
            close = getattr(channel, "aclose", None)
            if close:
                await close()
