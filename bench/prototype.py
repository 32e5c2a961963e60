"""A measurement aid, not the product: the send path as docs/benchmarks.md proposes it.

    python -m bench --worker-module bench.prototype ...

runs the benchmark with a worker whose SendActivities._run_chunk takes a
shorter path for the common chunk (outbox channel, no coupon, nothing decided
by an earlier attempt); every other chunk goes through activities/send.py
unchanged. It exists to put a number on the proposed changes before they are
made in activities/send.py and activities/channels.py; delete it once they are.

The short path, one transaction per chunk, four statements:
1. the chunk's snapshot rows with exclusions and earlier decisions (unchanged);
2. lock each live consumer's fatigue_day row in consumer order (the consumer's
   mutex, as now) with ON CONFLICT DO UPDATE ... WHERE false, which locks an
   existing row without writing a version of it, and insert a missing row
   directly with the counts of one send: one row version per send, not two;
3. all four caps in one statement (after the lock: fresh snapshot);
4. one statement with data-modifying CTEs: the ledger rows, inserted as `sent`
   with provider_ref `outbox:<id>` for the reserved ones, the outbox rows (same
   transaction: the outbox is the provider's inbox in this database, so the
   delivery and its hand-off commit together; a dispatcher only ever sees
   committed rows), and the counter bumps driven by the ledger rows actually
   inserted (a racing duplicate attempt inserts none, so bumps none).
No second transaction marks rows sent, no per-recipient Python objects.
"""

from __future__ import annotations

from collections import Counter
from datetime import date

from activities.audience import CHANNEL_ADDRESS, CHANNEL_COLUMNS
from activities.channels import OutboxChannel
from activities.send import SendActivities, _exclusion
from schemas import activities as A
from schemas import rules

_LOCK = """
    INSERT INTO fatigue_day AS f (consumer_id, day, sent, shops)
    SELECT id, $2, 1, 1 FROM unnest($1::bigint[]) AS u(id)
    ON CONFLICT (consumer_id, day) DO UPDATE SET sent = f.sent WHERE false
    RETURNING consumer_id
"""
# ON CONFLICT DO UPDATE ... WHERE false locks an existing row without writing a new version of it
# (PostgreSQL: "all rows will be locked when the ON CONFLICT DO UPDATE action is taken"); RETURNING
# then names only the rows inserted now, which hold the tentative send. The caps are read in the
# next statement, after the locks are held (PERF pitfall 1).
_CAPS = """
    SELECT u.id,
           coalesce((SELECT f.sent FROM fatigue_day f WHERE f.consumer_id = u.id AND f.day = $3), 0) AS day_sent,
           coalesce((SELECT f.shops FROM fatigue_day f WHERE f.consumer_id = u.id AND f.day = $3), 0) AS day_shops,
           coalesce((SELECT f.sent FROM fatigue_shop_day f
                     WHERE f.consumer_id = u.id AND f.shop_id = $2 AND f.day = $3), 0) AS shop_sent,
           coalesce((SELECT sum(f.sent)::int FROM fatigue_template f
                     WHERE f.consumer_id = u.id AND f.shop_id = $2 AND f.template_group = $4
                       AND f.day > $3::date - $5::int AND f.day <= $3::date), 0) AS template_sent
    FROM unnest($1::bigint[]) AS u(id)
"""
# $1 campaign, $2 phase, $3 day, $4 channel, $5 shop, $6 template group, $7 fatigue day, $8 decided_at,
# $9 ids, $10 states, $11 reasons, $12 addresses, $13 body, $14 new_shop, $15 fresh (row inserted by step 2)
_WRITE = """
    WITH u AS (
        SELECT * FROM unnest($9::bigint[], $10::text[], $11::text[], $12::text[], $14::int[], $15::bool[])
                 AS u(id, state, reason, address, new_shop, fresh)
    ), d AS (
        INSERT INTO deliveries (campaign_id, phase, consumer_id, day, channel, shop_id, template_group,
                                fatigue_day, state, reason, provider_ref, decided_at)
        SELECT $1, $2, u.id, $3, $4, $5, $6, $7, u.state, u.reason,
               CASE WHEN u.state = 'sent' THEN 'outbox:' || nextval('outbox_id_seq') END, $8
        FROM u
        ON CONFLICT DO NOTHING
        RETURNING consumer_id, state, provider_ref
    ), o AS (
        INSERT INTO outbox (id, campaign_id, phase, day, channel, consumer_id, address, body)
        SELECT substr(d.provider_ref, 8)::bigint, $1, $2, $3, $4, d.consumer_id, u.address, $13
        FROM d JOIN u ON u.id = d.consumer_id WHERE d.state = 'sent'
    ), g AS (
        -- existing rows: one more send; fresh rows already hold one send, unless not sent after all
        UPDATE fatigue_day f
        SET sent = f.sent + 1, shops = f.shops + u.new_shop
        FROM d JOIN u ON u.id = d.consumer_id
        WHERE d.state = 'sent' AND NOT u.fresh AND f.consumer_id = d.consumer_id AND f.day = $7
    ), gz AS (
        UPDATE fatigue_day f SET sent = f.sent - 1, shops = f.shops - 1
        FROM u WHERE u.fresh AND f.consumer_id = u.id AND f.day = $7
          AND NOT EXISTS (SELECT 1 FROM d WHERE d.consumer_id = u.id AND d.state = 'sent')
    ), s AS (
        INSERT INTO fatigue_shop_day AS f (consumer_id, shop_id, day, sent)
        SELECT d.consumer_id, $5, $7, 1 FROM d WHERE d.state = 'sent'
        ON CONFLICT (consumer_id, shop_id, day) DO UPDATE SET sent = f.sent + 1
    ), t AS (
        INSERT INTO fatigue_template AS f (consumer_id, shop_id, template_group, day, sent)
        SELECT d.consumer_id, $5, $6, $7, 1 FROM d WHERE d.state = 'sent' AND $6 <> ''
        ON CONFLICT (consumer_id, shop_id, template_group, day) DO UPDATE SET sent = f.sent + 1
    )
    SELECT d.state, d.consumer_id FROM d
"""


def _select_sql(channel: str) -> str:
    unsub, has_contact = CHANNEL_COLUMNS[channel]
    return f"""
        SELECT s.seq, s.consumer_id, c.deleted, c.blacklisted, c.{unsub} AS unsub,
               ({has_contact}) AS has_contact, {CHANNEL_ADDRESS[channel]} AS address,
               (SELECT d.state FROM deliveries d WHERE d.campaign_id = $1 AND d.phase = $2
                   AND d.consumer_id = s.consumer_id AND d.day = $3 AND d.channel = $7) AS prior
        FROM audience_snapshots s
        JOIN shop_customers c ON c.shop_id = $4 AND c.consumer_id = s.consumer_id
        WHERE s.campaign_id = $1 AND s.phase = $2 AND s.day = $3 AND s.seq >= $5 AND s.seq < $6
        ORDER BY s.seq
    """


class PrototypeSendActivities(SendActivities):
    async def _run_chunk(self, inp, result, channel, fatigue_day: date) -> None:
        if not isinstance(channel, OutboxChannel) or inp.coupon_id:
            return await super()._run_chunk(inp, result, channel, fatigue_day)
        lo, hi = result.next_seq, min(result.next_seq + inp.chunk_size, inp.seq_hi)
        budget = inp.budget - result.reserved
        ch, cap = inp.channel.value, inp.template_cap
        body = f"{inp.title}\n{inp.text}" if inp.title else inp.text
        suppressed: Counter = Counter()
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_select_sql(ch), inp.campaign_db_id, inp.phase_index, inp.day, inp.shop_id, lo, hi, ch)
            if any(r["prior"] is not None for r in rows):
                fallback = True  # an earlier attempt decided some of them: the careful path
            else:
                fallback = False
                next_seq = hi
                decisions: dict[int, str | None] = {}
                addresses: dict[int, str] = {}
                live = 0
                for r in rows:
                    reason = _exclusion(r)
                    if reason is None:
                        if live >= budget:
                            next_seq = r["seq"]
                            break
                        live += 1
                    decisions[r["consumer_id"]] = reason
                    addresses[r["consumer_id"]] = r["address"]
                ids = sorted(decisions)
                live_ids = [c for c in ids if decisions[c] is None]
                new_shop: dict[int, int] = {}
                fresh: dict[int, bool] = {}
                if live_ids:
                    fresh = {r["consumer_id"]: True for r in await conn.fetch(_LOCK, live_ids, fatigue_day)}
                    for c in await conn.fetch(
                        _CAPS, live_ids, inp.shop_id, fatigue_day, cap.group if cap else "", cap.days if cap else 1
                    ):
                        cid = c["id"]
                        shop_sent, template_sent = c["shop_sent"], c["template_sent"]
                        # A row inserted just now holds our tentative send: nothing was sent today before it.
                        sent, shops = (0, 0) if cid in fresh else (c["day_sent"], c["day_shops"])
                        if sent >= rules.GLOBAL_DAY_MAX:
                            decisions[cid] = A.SUPPRESS_GLOBAL_DAY
                        elif shop_sent >= rules.SHOP_DAY_MAX:
                            decisions[cid] = A.SUPPRESS_SHOP_DAY
                        elif shop_sent == 0 and shops >= rules.GLOBAL_SHOPS_MAX:
                            decisions[cid] = A.SUPPRESS_GLOBAL_SHOPS
                        elif cap and template_sent >= cap.count:
                            decisions[cid] = A.SUPPRESS_TEMPLATE
                        else:
                            new_shop[cid] = 1 if shop_sent == 0 else 0
                written = await conn.fetch(
                    _WRITE, inp.campaign_db_id, inp.phase_index, inp.day, ch, inp.shop_id, cap.group if cap else "",
                    fatigue_day, inp.decided_at, ids,
                    ["sent" if decisions[c] is None else "suppressed" for c in ids],
                    [decisions[c] for c in ids],
                    [addresses[c] for c in ids],
                    body,
                    [new_shop.get(c, 0) for c in ids],
                    [c in fresh for c in ids],
                )  # fmt: skip
                sent_now = 0
                for w in written:
                    if w["state"] == "sent":
                        sent_now += 1
                    else:
                        suppressed[decisions[w["consumer_id"]]] += 1
        if fallback:
            return await super()._run_chunk(inp, result, channel, fatigue_day)
        result.next_seq = next_seq
        result.reserved += sent_now
        result.sent += sent_now
        for reason, n in suppressed.items():
            result.suppressed[reason] = result.suppressed.get(reason, 0) + n


def main() -> None:
    import workers.worker as W

    W.SendActivities = PrototypeSendActivities
    W.main()


if __name__ == "__main__":
    main()
