"""Chat: the sender agent of each message (R-PH-5), and the chat channel.

R-PH-5: a chat message goes out from an agent of the phase's chosen set (or of every agent of the
shop): the agent who last served the customer when that agent is online and in the set, else an
online agent of the set picked by the delivery's key, so a re-decided chunk picks the same one. When
no agent of the set is online the recipient gets no message: the delivery is `suppressed` with
`no_agent_online`, holds no cap, and the phase's next day reaches them again (R-PH-3). Presence is
data: `agents.online`, set by the chat platform through `PUT /agents/{agent_id}/presence` (or a load
of `agents`), read in the transaction that decides the chunk.

`choose_sender` is the decision for one recipient; `CHOOSE_SENDERS` makes the same decision for a
whole chunk in one statement, and the send path (activities/send.py) records the chosen agent on the
delivery (`deliveries.sender_agent`), in the outbox batch (`outbox.senders`, parallel to
`consumer_ids`) and on the message handed to an adapter (`Outbound.sender`).

Today a chat message is handed to the chat platform through the outbox (channels/outbox.py), which
that platform drains itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from datetime import date, datetime

import asyncpg
from sluice.channels.base import Outbound, delivery_key
from sluice.channels.outbox import OutboxChannel
from sluice.schemas.activities import SUPPRESS_NO_AGENT, SendSliceInput


class ChatChannel(OutboxChannel):
    def __init__(self, pool: asyncpg.Pool, name: str = "chat"):
        super().__init__(pool, name)


# ------------------------------------------------------------------ the decision (pure)


def sender_slot(key: str, n: int) -> int:
    """Which of `n` online agents (sorted by id) a recipient without their own agent gets: the first 32
    bits of the MD5 of the delivery key, modulo n. The same arithmetic as CHOOSE_SENDERS."""
    return int(hashlib.md5(key.encode()).hexdigest()[:8], 16) % n


def choose_sender(key: str, last_agent: str | None, presence: Mapping[str, bool], chosen: Collection[str] | None) -> str | None:
    """R-PH-5 for one recipient: `last_agent` (who last served them) when online and in the set `chosen`
    (None: every agent of the shop), else the online agent of the set at `sender_slot(key, ...)`, else
    None (no agent of the set is online: no message). `presence` is every agent of the shop, online or not."""
    online = sorted(a for a, on in presence.items() if on and (chosen is None or a in chosen))
    if not online:
        return None
    if last_agent in online:
        return last_agent
    return online[sender_slot(key, len(online))]


_MARK = 2**63 - 1  # a consumer id no delivery key holds anywhere else


def key_parts(campaign_id: int, phase: int, day: date, channel: str) -> tuple[str, str]:
    """delivery_key's text before and after the consumer id, for SQL that builds each row's key."""
    before, _, after = delivery_key(Outbound(campaign_id, phase, _MARK, day, channel, "", "")).partition(str(_MARK))
    return before, after


# ------------------------------------------------------------------ the same, set-based

# R-PH-5 for a chunk, in its deciding transaction. The set's online agents once (the shop's rows of the
# agents primary key: dozens to hundreds): as an array sorted by code point like `choose_sender`, and as
# a jsonb object whose `?` finds an agent by binary search (`= ANY(array)` compares with each in turn:
# a third more CPU at 134 online agents). Then per recipient one primary-key probe of customer_agents,
# and only when that agent is not online in the set, the MD5 of the delivery key.
# Measured (bench/chat_agents.py, PostgreSQL 15, 2 shared cores): 12-19 ms of PostgreSQL CPU per
# 2,000-recipient chunk, against 54-115 ms for the chunk's other statements (docs/channels.md).
# $1 shop, $2 the chunk's live ids, $3 the set (NULL: every agent of the shop), $4 / $5 the delivery
# key's text before and after the consumer id (key_parts). Answers every id of $2, agent NULL: none online.
CHOOSE_SENDERS = """
    WITH o AS (SELECT array_agg(a.agent_id ORDER BY a.agent_id COLLATE "C") AS online,
                      jsonb_object_agg(a.agent_id, true) AS is_online
               FROM agents a
               WHERE a.shop_id = $1 AND a.online AND ($3::text[] IS NULL OR a.agent_id = ANY($3::text[])))
    SELECT u.id,
           coalesce((SELECT ca.agent_id FROM customer_agents ca
                     WHERE ca.shop_id = $1 AND ca.consumer_id = u.id AND o.is_online ? ca.agent_id),
                    o.online[1 + ('x' || left(md5($4::text || u.id || $5::text), 8))::bit(32)::bigint
                                 % cardinality(o.online)]) AS agent
    FROM unnest($2::bigint[]) AS u(id) CROSS JOIN o
"""


async def choose_senders(conn: asyncpg.Connection, inp: SendSliceInput, decisions: dict[int, str | None]) -> dict[int, str]:
    """The sender agent of each consumer of `decisions` still to be sent (reason None), in the chunk's
    transaction; who has none gets `no_agent_online` in `decisions` (before any cap is taken for them)."""
    live = sorted(c for c, why in decisions.items() if why is None)
    if not live:
        return {}
    before, after = key_parts(inp.campaign_db_id, inp.phase_index, inp.day, inp.channel.value)
    rows = await conn.fetch(CHOOSE_SENDERS, inp.shop_id, live, inp.sender_agents.ids, before, after)
    senders = {r["id"]: r["agent"] for r in rows if r["agent"] is not None}
    decisions.update(dict.fromkeys((c for c in live if c not in senders), SUPPRESS_NO_AGENT))
    return senders


# ------------------------------------------------------------------ the spec's set, and presence

# The named agents that are the shop's, and whether the shop has any agent (a campaign's start, R-PH-5):
# primary-key probes of agents. $1 shop, $2 the named ids.
SHOP_AGENTS = """
    SELECT ARRAY(SELECT agent_id FROM agents WHERE shop_id = $1 AND agent_id = ANY($2::text[])) AS known,
           EXISTS (SELECT 1 FROM agents WHERE shop_id = $1) AS any
"""


async def agents_problem(conn: asyncpg.Connection, shop_id: str, ids: list[str] | None) -> str | None:
    """Why the set `ids` (None: every agent of the shop) cannot send the shop's chat messages, or None."""
    row = await conn.fetchrow(SHOP_AGENTS, shop_id, ids or [])
    if ids is None:
        return None if row["any"] else "the shop has no chat agents (load agents first)"
    known = set(row["known"])
    unknown = [a for a in ids if a not in known]
    if not unknown:
        return None
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    return f"not an agent of this shop: {', '.join(unknown[:5])}{more}"


# An agent's presence as the chat platform reports it: a primary-key update, unless the stored presence
# was seen later than this report (`seen_at`, never after now): reports that arrive out of order leave
# the newest. Answers the stored row and whether this report changed it; no row: not an agent of the shop.
# $1 shop, $2 agent, $3 online, $4 seen at (NULL: now).
SET_PRESENCE = """
    WITH u AS (
        UPDATE agents SET online = $3, updated_at = least(coalesce($4::timestamptz, now()), now())
        WHERE shop_id = $1 AND agent_id = $2 AND updated_at <= least(coalesce($4::timestamptz, now()), now())
        RETURNING online, updated_at)
    SELECT online, updated_at, true AS applied FROM u
    UNION ALL
    SELECT online, updated_at, false FROM agents
    WHERE shop_id = $1 AND agent_id = $2 AND NOT EXISTS (SELECT 1 FROM u)
"""


async def set_presence(
    conn: asyncpg.Connection, shop_id: str, agent_id: str, online: bool, seen_at: datetime | None
) -> asyncpg.Record | None:
    """Store an agent's presence (see SET_PRESENCE): the row (online, updated_at, applied), or None when
    the shop has no such agent."""
    return await conn.fetchrow(SET_PRESENCE, shop_id, agent_id, online, seen_at)
