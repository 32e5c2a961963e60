"""Ledger invariants that hold after any campaign, however it ran or crashed (R-FAT-1..3).

See docs/design.md, "The ledger and the caps".
"""

from __future__ import annotations

from sluice.schemas import rules
from sluice.schemas.fatigue import POLICIES


async def ledger_counts(pool, campaign_db_id: int) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT state, count(*)::int AS n FROM deliveries WHERE campaign_id = $1 GROUP BY state", campaign_db_id
    )
    return {r["state"]: r["n"] for r in rows}


async def assert_ledger_exact(pool, campaign_db_id: int, *, outbox: bool = True) -> dict[str, int]:
    """The invariants a crash must never break; returns the ledger counts.

    `outbox`: the campaign's channel is the outbox table, whose rows must match the ledger one
    to one (for a provider outside the database the test compares the provider's own counts)."""
    cid = campaign_db_id
    # Each snapshot recipient has exactly one delivery row, and no delivery is outside the snapshot.
    assert await pool.fetchval(
        """SELECT count(*) FROM audience_snapshots s
           WHERE s.campaign_id = $1 AND (SELECT count(*) FROM deliveries d WHERE d.campaign_id = s.campaign_id
                 AND d.phase = s.phase AND d.day = s.day AND d.consumer_id = s.consumer_id) <> 1""",
        cid,
    ) == 0
    assert await pool.fetchval(
        """SELECT count(*) FROM deliveries d WHERE d.campaign_id = $1 AND NOT EXISTS (
               SELECT 1 FROM audience_snapshots s WHERE s.campaign_id = d.campaign_id AND s.phase = d.phase
               AND s.day = d.day AND s.consumer_id = d.consumer_id)""",
        cid,
    ) == 0
    if outbox:
        await _assert_outbox_matches(pool, cid)
    # Nothing left reserved or ambiguous.
    assert await pool.fetchval(
        "SELECT count(*) FROM deliveries WHERE state IN ('reserved', 'unknown')"
    ) == 0
    # No consumer sent twice, by this campaign or any other.
    assert await pool.fetchval(
        "SELECT count(*) FROM (SELECT consumer_id FROM deliveries WHERE state = 'sent'"
        " GROUP BY consumer_id, campaign_id HAVING count(*) > 1) x"
    ) == 0
    return await ledger_counts(pool, cid)


async def _assert_outbox_matches(pool, cid: int) -> None:
    # One outbox message per sent delivery, none for anything else. The campaign's messages counted once, then
    # joined (a count per delivery unnested every batch again: minutes at 30,000 deliveries).
    assert await pool.fetchval(
        """WITH m AS (SELECT phase, day, channel, consumer_id, count(*) AS n FROM outbox_messages
                      WHERE campaign_id = $1 GROUP BY 1, 2, 3, 4)
           SELECT count(*) FROM deliveries d LEFT JOIN m USING (phase, day, channel, consumer_id)
           WHERE d.campaign_id = $1 AND coalesce(m.n, 0) <> (d.state = 'sent')::int""",
        cid,
    ) == 0
    assert await pool.fetchval(
        """WITH o AS MATERIALIZED (SELECT * FROM outbox_messages WHERE campaign_id = $1)
           SELECT count(*) FROM o WHERE NOT EXISTS (
               SELECT 1 FROM deliveries d WHERE d.campaign_id = o.campaign_id AND d.phase = o.phase
               AND d.day = o.day AND d.channel = o.channel AND d.consumer_id = o.consumer_id)""",
        cid,
    ) == 0
    # The provider reference of each sent delivery is its outbox batch (the messages unnested once, then hashed).
    assert await pool.fetchval(
        """WITH m AS MATERIALIZED (SELECT batch_id, phase, day, channel, consumer_id FROM outbox_messages
                                   WHERE campaign_id = $1)
           SELECT count(*) FROM deliveries d JOIN m USING (phase, day, channel, consumer_id)
           WHERE d.campaign_id = $1 AND d.provider_ref IS DISTINCT FROM 'outbox:' || m.batch_id""",
        cid,
    ) == 0


async def assert_fatigue_matches_ledger(pool) -> None:
    """Fatigue counters equal the sent deliveries they stand for, per channel and each delivery's own
    fatigue day (R-FAT-DAY); no cap of the channel's policy exceeded (R-FAT-1..3).

    Counters are compared on the days the ledger counted on: rows a test seeded on other days
    (earlier messages, for the template window) are checked by the test itself."""
    mismatch = await pool.fetch(
        """WITH led AS (SELECT consumer_id, fatigue_day AS day, channel, count(*)::int AS sent,
                               count(DISTINCT shop_id)::int AS shops
                        FROM deliveries WHERE state = 'sent' GROUP BY 1, 2, 3),
                cnt AS (SELECT * FROM fatigue_day WHERE day IN (SELECT fatigue_day FROM deliveries))
           SELECT coalesce(f.consumer_id, l.consumer_id) AS consumer_id, f.sent AS counter, l.sent AS ledger,
                  f.shops AS counter_shops, l.shops AS ledger_shops
           FROM cnt f FULL JOIN led l ON l.consumer_id = f.consumer_id AND l.day = f.day AND l.channel = f.channel
           WHERE coalesce(f.sent, 0) <> coalesce(l.sent, 0) OR coalesce(f.shops, 0) <> coalesce(l.shops, 0)
           LIMIT 5"""
    )
    assert not mismatch, [dict(r) for r in mismatch]
    mismatch = await pool.fetch(
        """WITH led AS (SELECT consumer_id, shop_id, fatigue_day AS day, channel, count(*)::int AS sent
                        FROM deliveries WHERE state = 'sent' GROUP BY 1, 2, 3, 4),
                cnt AS (SELECT * FROM fatigue_shop_day WHERE day IN (SELECT fatigue_day FROM deliveries))
           SELECT f.*, l.sent AS ledger FROM cnt f
           FULL JOIN led l ON l.consumer_id = f.consumer_id AND l.shop_id = f.shop_id AND l.day = f.day
                AND l.channel = f.channel
           WHERE coalesce(f.sent, 0) <> coalesce(l.sent, 0) LIMIT 5"""
    )
    assert not mismatch, [dict(r) for r in mismatch]
    mismatch = await pool.fetch(
        """WITH led AS (SELECT consumer_id, shop_id, template_group, fatigue_day AS day, channel, count(*)::int AS sent
                        -- a phase without a template cap (group '') counts no template (R-FAT-1)
                        FROM deliveries WHERE state = 'sent' AND template_group <> '' GROUP BY 1, 2, 3, 4, 5),
                cnt AS (SELECT * FROM fatigue_template WHERE day IN (SELECT fatigue_day FROM deliveries))
           SELECT f.consumer_id, f.sent, l.consumer_id AS ledger_consumer, l.sent AS ledger FROM cnt f
           FULL JOIN led l ON l.consumer_id = f.consumer_id AND l.shop_id = f.shop_id
                AND l.template_group = f.template_group AND l.day = f.day AND l.channel = f.channel
           WHERE coalesce(f.sent, 0) <> coalesce(l.sent, 0) LIMIT 5"""
    )
    assert not mismatch, [dict(r) for r in mismatch]
    for channel, policy in POLICIES.items():
        global_day, shop_day, shops = policy.limits
        assert await pool.fetchval("SELECT coalesce(max(sent), 0) FROM fatigue_day WHERE channel = $1", channel) <= global_day
        assert await pool.fetchval("SELECT coalesce(max(shops), 0) FROM fatigue_day WHERE channel = $1", channel) <= shops
        assert await pool.fetchval("SELECT coalesce(max(sent), 0) FROM fatigue_shop_day WHERE channel = $1", channel) <= shop_day
    assert (await pool.fetchval("SELECT coalesce(min(sent), 0) FROM fatigue_day")) >= 0
    assert (await pool.fetchval("SELECT coalesce(min(sent), 0) FROM fatigue_shop_day")) >= 0
    count, days = rules.OLDCUST_CAP_PER_DAYS
    over = await pool.fetchval(
        """SELECT count(*) FROM fatigue_template a WHERE a.template_group = $1 AND (
               SELECT sum(b.sent) FROM fatigue_template b WHERE b.consumer_id = a.consumer_id
               AND b.shop_id = a.shop_id AND b.template_group = a.template_group
               AND b.day > a.day - $2::int AND b.day <= a.day) > $3""",
        rules.OLDCUST_TEMPLATE_GROUP,
        days,
        count,
    )
    assert over == 0
