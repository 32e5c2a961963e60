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
from sluice.activities import errors


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
    """Writes messages to the `outbox` table, one batch row per call, which a dispatcher drains.

    The provider reference is `outbox:<batch id>`, stored on the delivery in the
    same statement that writes the batch. A message whose delivery already has a
    reference (an earlier attempt handed it off) is answered with that reference
    instead of being written again: the delivery row is the idempotency key.
    """

    def __init__(self, pool: asyncpg.Pool, name: str):
        self.pool = pool
        self.name = name

    async def send(self, messages: list[Outbound]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for (campaign_id, phase, day, body), group in _batches(messages).items():
            rows = await self.pool.fetch(
                """
                WITH b AS (SELECT nextval('outbox_id_seq') AS id),
                m AS (SELECT * FROM unnest($4::bigint[], $5::text[]) AS m(consumer_id, address)),
                claimed AS (
                    UPDATE deliveries d SET provider_ref = 'outbox:' || (SELECT id FROM b), updated_at = now()
                    FROM m
                    WHERE d.campaign_id = $1 AND d.phase = $2 AND d.day = $3 AND d.channel = $6
                      AND d.consumer_id = m.consumer_id AND d.provider_ref IS NULL
                      AND d.state IN ('reserved', 'unknown')
                    RETURNING d.consumer_id, m.address, d.provider_ref
                ), batch AS (
                    INSERT INTO outbox (id, campaign_id, phase, day, channel, body, consumer_ids, addresses)
                    SELECT (SELECT id FROM b), $1, $2, $3, $6, $7, array_agg(consumer_id), array_agg(address)
                    FROM claimed HAVING count(*) > 0
                )
                SELECT consumer_id, provider_ref FROM claimed
                UNION ALL
                SELECT d.consumer_id, d.provider_ref FROM deliveries d JOIN m USING (consumer_id)
                WHERE d.campaign_id = $1 AND d.phase = $2 AND d.day = $3 AND d.channel = $6
                  AND d.provider_ref LIKE 'outbox:%'
                  AND NOT EXISTS (SELECT 1 FROM claimed c WHERE c.consumer_id = d.consumer_id)
                """,
                campaign_id,
                phase,
                day,
                [m.consumer_id for m in group],
                [m.address for m in group],
                self.name,
                body,
            )
            outcomes += [Outcome(r["consumer_id"], "sent", r["provider_ref"]) for r in rows]
        return outcomes

    async def reconcile(self, messages: list[Outbound]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for (campaign_id, phase, day, _), group in _batches(messages).items():
            rows = await self.pool.fetch(
                "SELECT consumer_id, provider_ref FROM deliveries WHERE campaign_id = $1 AND phase = $2"
                " AND day = $3 AND channel = $4 AND consumer_id = ANY($5::bigint[]) AND provider_ref LIKE 'outbox:%'",
                campaign_id,
                phase,
                day,
                self.name,
                [m.consumer_id for m in group],
            )
            outcomes += [Outcome(r["consumer_id"], "sent", r["provider_ref"]) for r in rows]
        return outcomes


def _batches(messages: list[Outbound]) -> dict[tuple, list[Outbound]]:
    groups: dict[tuple, list[Outbound]] = {}
    for m in messages:
        groups.setdefault((m.campaign_id, m.phase, m.day, m.body), []).append(m)
    return groups


CHANNELS = ("chat", "sms", "email", "inbox")


class ChannelRegistry:
    def __init__(self, channels: dict[str, Channel]):
        self._channels = channels

    def get(self, name: str) -> Channel:
        try:
            return self._channels[name]
        except KeyError:
            raise errors.not_configured(name) from None

    @classmethod
    def outbox_for_all(cls, pool: asyncpg.Pool) -> ChannelRegistry:
        return cls({name: OutboxChannel(pool, name) for name in CHANNELS})

    @classmethod
    def from_settings(cls, pool: asyncpg.Pool, settings) -> ChannelRegistry:
        """The outbox for every channel, except those SLUICE_GATEWAY_CHANNELS hands to the gateway."""
        registry = cls.outbox_for_all(pool)
        if settings.gateway_url:
            from sluice.activities.http_channel import HttpGatewayChannel

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
