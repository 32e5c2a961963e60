"""The outbox: a provider inbox in sluice's own database, for platforms that dispatch messages themselves.

A chunk sent to an outbox channel commits its delivery rows `sent` together with
their outbox batch in one transaction (activities/send.py): no moment exists in
which the ledger and the hand-off disagree.
"""

from __future__ import annotations

import asyncpg
from sluice.channels.base import Outbound, Outcome


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
        """A delivery with an outbox batch was handed off (`sent`), unless the outbox dispatcher has since
        recorded it `failed` or `unknown` (channels/dispatcher.py): then the dispatcher's answer stands."""
        outcomes: list[Outcome] = []
        for (campaign_id, phase, day, _), group in _batches(messages).items():
            rows = await self.pool.fetch(
                "SELECT consumer_id, provider_ref, state, reason, dispatch_ref IS NOT NULL AND state IN ('failed', 'unknown')"
                " AS dispatcher_said FROM deliveries WHERE campaign_id = $1 AND phase = $2"
                " AND day = $3 AND channel = $4 AND consumer_id = ANY($5::bigint[]) AND provider_ref LIKE 'outbox:%'",
                campaign_id,
                phase,
                day,
                self.name,
                [m.consumer_id for m in group],
            )
            outcomes += [
                Outcome(r["consumer_id"], r["state"], r["provider_ref"], r["reason"])
                if r["dispatcher_said"]
                else Outcome(r["consumer_id"], "sent", r["provider_ref"])
                for r in rows
            ]
        return outcomes


def _batches(messages: list[Outbound]) -> dict[tuple, list[Outbound]]:
    groups: dict[tuple, list[Outbound]] = {}
    for m in messages:
        groups.setdefault((m.campaign_id, m.phase, m.day, m.body), []).append(m)
    return groups
