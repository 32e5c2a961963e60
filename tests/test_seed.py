"""db/seed.py against a real PostgreSQL: what it loads, and that the shape is the one the audiences expect."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sluice.db.seed import SeedResult, seed_shop

NOW = datetime(2026, 3, 1, 4, 30, tzinfo=UTC)  # 12:30 in Asia/Shanghai
N = 3_000

# R-OC-1, as activities/audience.py has it: an order (not pending) within 365 days
# and a visit or live view within 90, both before the snapshot instant.
VALID_OLD = """
    SELECT count(*) FROM shop_customers c
    WHERE c.shop_id = $1
      AND EXISTS (SELECT 1 FROM orders o
                  WHERE o.shop_id = $1 AND o.consumer_id = c.consumer_id AND o.status <> 'pending'
                    AND o.created_at >= $2::timestamptz - interval '365 days' AND o.created_at < $2)
      AND EXISTS (SELECT 1 FROM behaviour_events e
                  WHERE e.shop_id = $1 AND e.consumer_id = c.consumer_id AND e.kind IN ('visit', 'live_view')
                    AND e.occurred_at >= $2::timestamptz - interval '90 days' AND e.occurred_at < $2)
"""


@pytest.fixture
async def seeded(clean_db, db_dsn) -> SeedResult:
    return await seed_shop(db_dsn, shop_id="s1", customers=N, now=NOW)


async def _share(pool, sql: str, *args) -> float:
    return await pool.fetchval(sql, *args) / N


async def test_seed_loads_every_table_and_counts_match(seeded, clean_db):
    pool, res = clean_db, seeded
    assert (res.shop_id, res.customers, res.coupons) == ("s1", N, 3)
    counts = {
        t: await pool.fetchval(f"SELECT count(*) FROM {t} WHERE shop_id = 's1'")
        for t in ("shops", "shop_customers", "products", "orders", "behaviour_events", "coupons")
    }
    counts["order_items"] = await pool.fetchval(
        "SELECT count(*) FROM order_items i JOIN orders o USING (order_id) WHERE o.shop_id = 's1'"
    )
    counts["consumers"] = await pool.fetchval("SELECT count(*) FROM consumers")
    assert counts == {
        "shops": 1,
        "consumers": N,
        "shop_customers": N,
        "products": res.products,
        "orders": res.orders,
        "order_items": res.order_items,
        "behaviour_events": res.events,
        "coupons": 3,
    }
    assert 100 <= res.products <= 200
    assert N * 1.1 < res.orders < N * 2.5
    assert res.orders < res.order_items < res.orders * 2
    assert N * 5 < res.events < N * 10  # ~6-10 events a customer
    assert res.seconds > 0

    shop = await pool.fetchrow("SELECT * FROM shops WHERE shop_id = 's1'")
    assert (shop["timezone"], shop["industry"]) == ("Asia/Shanghai", "beauty")
    assert shop["sms_signature"]
    # every product carries its category's repurchase cycle
    cycles = dict(await pool.fetch("SELECT category, min(repurchase_cycle_days) FROM products GROUP BY 1"))
    assert cycles["face_mask"] == 30 and cycles["shampoo"] == 45 and cycles["perfume"] == 180
    assert await pool.fetchval("SELECT count(*) FROM products WHERE repurchase_cycle_days IS NULL") == 0
    # coupons: one usable now, one expired, one sold out
    coupons = await pool.fetch("SELECT * FROM coupons WHERE shop_id = 's1'")
    usable = [c for c in coupons if c["valid_from"] <= NOW < c["valid_to"] and c["stock"] > 0]
    assert len(usable) == 1 and usable[0]["stock"] == 100_000
    assert sum(c["valid_to"] <= NOW for c in coupons) == 1
    assert sum(c["stock"] == 0 and c["valid_to"] > NOW for c in coupons) == 1
    # ANALYZE ran: the planner knows the new rows
    reltuples = await pool.fetchval("SELECT reltuples FROM pg_class WHERE relname = 'behaviour_events'")
    assert reltuples > res.events * 0.5


async def test_contacts_and_flags_are_distributed_like_a_shop(seeded, clean_db):
    pool = clean_db

    async def share(where: str) -> float:
        return await _share(pool, f"SELECT count(*) FROM shop_customers WHERE shop_id = 's1' AND ({where})")

    assert 0.03 <= await share("phone IS NULL") <= 0.08
    assert 0.015 <= await share("NOT phone_valid") <= 0.05
    assert await share(r"phone ~ '^1[3-9]\d{9}$' AND phone_valid") >= 0.88
    assert 0.25 <= await share("email IS NULL") <= 0.35
    assert 0.015 <= await share("NOT email_valid") <= 0.05
    assert 0.92 <= await share("chat_id IS NOT NULL") <= 0.98
    assert await share("chat_id = 'tb_' || consumer_id") == await share("chat_id IS NOT NULL")
    assert 0.85 <= await share("locale = 'zh-CN'") < 1 and await share("locale = 'en-US'") > 0
    assert await share("timezone IS NULL") >= 0.9
    assert 0.20 <= await share("is_member") <= 0.30
    assert 0.34 <= await share("is_fan") <= 0.46
    assert 0.001 <= await share("blacklisted") <= 0.012
    assert 0.001 <= await share("deleted") <= 0.012
    assert 0.01 <= await share("unsub_chat") <= 0.035
    assert 0.03 <= await share("unsub_sms") <= 0.07
    assert 0.025 <= await share("unsub_email") <= 0.06
    assert await share("unsub_inbox") <= 0.025


async def test_audiences_have_plausible_sizes(seeded, clean_db):
    pool = clean_db
    buyers = await _share(
        pool,
        "SELECT count(DISTINCT consumer_id) FROM orders WHERE shop_id = 's1' AND created_at >= $1",
        NOW - timedelta(days=400),
    )
    assert 0.52 <= buyers <= 0.68
    valid_old = await _share(pool, VALID_OLD, "s1", NOW)
    assert 0.35 <= valid_old <= 0.50  # ~42%
    inquired = await _share(
        pool,
        "SELECT count(DISTINCT consumer_id) FROM behaviour_events"
        " WHERE shop_id = 's1' AND kind = 'inquiry' AND occurred_at >= $1",
        NOW - timedelta(days=30),
    )
    assert 0.09 <= inquired <= 0.16  # ~12%
    kinds = {r["kind"] for r in await pool.fetch("SELECT DISTINCT kind FROM behaviour_events")}
    assert kinds == {
        "visit",
        "favourite",
        "cart",
        "inquiry",
        "live_view",
        "coupon_claim",
        "login",
        "message_read",
    }
    # activity follows the shop's local day: far more at 20-23h than at 2-6h Shanghai time
    by_hour = dict(
        await pool.fetch(
            "SELECT extract(hour FROM occurred_at AT TIME ZONE 'Asia/Shanghai')::int, count(*)"
            " FROM behaviour_events GROUP BY 1"
        )
    )
    assert sum(by_hour.get(h, 0) for h in (20, 21, 22)) > 5 * sum(by_hour.get(h, 0) for h in (2, 3, 4))


async def test_repeat_buyers_come_back_about_once_a_cycle(seeded, clean_db):
    # consecutive orders of a customer holding the same category: gap / that category's cycle
    ratio = await clean_db.fetchval(
        """
        WITH oc AS (
            SELECT DISTINCT o.consumer_id, o.order_id, o.created_at, p.category, p.repurchase_cycle_days AS cycle
            FROM orders o JOIN order_items i USING (order_id) JOIN products p USING (product_id)
            WHERE o.shop_id = 's1'),
        gaps AS (
            SELECT extract(epoch FROM created_at - lag(created_at) OVER w) / 86400 / cycle AS r
            FROM oc WINDOW w AS (PARTITION BY consumer_id, category ORDER BY created_at))
        SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY r) FROM gaps WHERE r IS NOT NULL
        """
    )
    assert 0.8 <= ratio <= 1.3


async def test_nothing_after_now_and_orders_are_consistent(seeded, clean_db):
    pool = clean_db
    latest = await pool.fetchrow(
        """SELECT (SELECT max(occurred_at) FROM behaviour_events) AS event,
                  (SELECT max(created_at) FROM orders) AS ordered,
                  (SELECT max(paid_at) FROM orders) AS paid,
                  (SELECT max(created_at) FROM shop_customers) AS joined,
                  (SELECT min(occurred_at) FROM behaviour_events) AS first_event,
                  (SELECT min(created_at) FROM orders) AS first_order"""
    )
    assert max(latest["event"], latest["ordered"], latest["paid"], latest["joined"]) < NOW
    assert latest["event"] > NOW - timedelta(days=2)  # and it runs right up to now
    assert min(latest["first_event"], latest["first_order"]) > NOW - timedelta(days=401)

    statuses = dict(await pool.fetch("SELECT status, count(*) FROM orders GROUP BY 1"))
    assert set(statuses) <= {"paid", "pending", "refunded"}
    assert statuses["paid"] > 0.9 * sum(statuses.values()) and statuses["refunded"] > 0
    bad = await pool.fetchval(
        """SELECT count(*) FROM orders WHERE
             (status = 'pending' AND (paid_at IS NOT NULL OR created_at < $1::timestamptz - interval '5 days'))
          OR (status <> 'pending' AND (paid_at IS NULL OR paid_at < created_at))""",
        NOW,
    )
    assert bad == 0
    # amount = sum of the items (unit price x quantity), for every order; none without items
    mismatched = await pool.fetchval(
        """SELECT count(*) FROM orders o
           LEFT JOIN (SELECT order_id, sum(quantity * price) AS s FROM order_items GROUP BY 1) i USING (order_id)
           WHERE i.s IS DISTINCT FROM o.amount"""
    )
    assert mismatched == 0
    # items point at this shop's products; shop_customers precede their activity
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM order_items i LEFT JOIN products p USING (product_id) WHERE p.shop_id IS DISTINCT FROM 's1'"
        )
        == 0
    )
    assert (
        await pool.fetchval(
            """SELECT count(*) FROM shop_customers c
           JOIN (SELECT consumer_id, min(occurred_at) AS first FROM behaviour_events GROUP BY 1) e USING (consumer_id)
           WHERE c.created_at > e.first + interval '1 day'"""
        )
        == 0
    )


async def test_two_shops_share_consumers_and_keep_ids_apart(seeded, clean_db, db_dsn):
    pool = clean_db
    s2 = await seed_shop(
        db_dsn, shop_id="s2", customers=2_000, now=NOW, timezone="Europe/Berlin", industry="pet"
    )
    assert await pool.fetchval("SELECT count(*) FROM consumers") == N  # 1..2000 shared, not duplicated
    shared = await pool.fetch(
        """SELECT a.consumer_id, a.phone AS pa, b.phone AS pb, a.chat_id AS ca, b.chat_id AS cb
           FROM shop_customers a JOIN shop_customers b USING (consumer_id)
           WHERE a.shop_id = 's1' AND b.shop_id = 's2'"""
    )
    assert len(shared) == 2_000
    assert {r["consumer_id"] for r in shared} == set(range(1, 2_001))
    # the platform identity is the consumer's: same number and chat id in both shops when both have them
    both = [r for r in shared if r["pa"] and r["pb"] and len(r["pa"]) == len(r["pb"]) == 11]
    assert len(both) > 1_500 and all(r["pa"] == r["pb"] for r in both)
    assert all(r["ca"] == r["cb"] for r in shared if r["ca"] and r["cb"])
    # the shops are generated independently otherwise
    assert (
        await pool.fetchval(
            """SELECT count(*) FROM (SELECT consumer_id, count(*) FROM orders WHERE shop_id = 's1' GROUP BY 1) a
           JOIN (SELECT consumer_id, count(*) FROM orders WHERE shop_id = 's2' GROUP BY 1) b USING (consumer_id)"""
        )
        < 1_500
    )
    # ids never collide across shops (the primary keys would have refused the load)
    ranges = await pool.fetch(
        "SELECT shop_id, min(order_id) AS lo, max(order_id) AS hi, count(*) AS n FROM orders GROUP BY 1 ORDER BY 1"
    )
    assert ranges[0]["hi"] < ranges[1]["lo"] and ranges[1]["n"] == s2.orders
    assert await pool.fetchval("SELECT count(DISTINCT category) FROM products WHERE shop_id = 's2'") == 6
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM order_items i JOIN orders o USING (order_id)"
            " JOIN products p USING (product_id) WHERE p.shop_id <> o.shop_id"
        )
        == 0
    )
    # a consumer range beyond the first is new consumers
    await seed_shop(db_dsn, shop_id="s3", customers=500, now=NOW, consumer_id_offset=N)
    assert await pool.fetchval("SELECT count(*) FROM consumers") == N + 500
    assert await pool.fetchval("SELECT min(consumer_id) FROM shop_customers WHERE shop_id = 's3'") == N + 1


async def test_second_seed_of_a_shop_raises_and_changes_nothing(seeded, clean_db, db_dsn):
    pool = clean_db
    before = await pool.fetchval("SELECT count(*) FROM orders")
    with pytest.raises(ValueError, match="shop s1 already seeded"):
        await seed_shop(db_dsn, shop_id="s1", customers=10, now=NOW, consumer_id_offset=10_000)
    assert await pool.fetchval("SELECT count(*) FROM orders") == before
    assert await pool.fetchval("SELECT count(*) FROM consumers") == N
    assert await pool.fetchval("SELECT count(*) FROM products") == seeded.products


async def test_seed_is_reproducible(clean_db, db_dsn):
    pool = clean_db
    digest_sql = """SELECT md5(string_agg(x, '|' ORDER BY x)) FROM (
        SELECT concat_ws(',', consumer_id, nick, phone, email, chat_id, is_member, is_fan, created_at) AS x
          FROM shop_customers
        UNION ALL SELECT concat_ws(',', order_id, consumer_id, created_at, paid_at, amount, status) FROM orders
        UNION ALL SELECT concat_ws(',', consumer_id, kind, product_id, occurred_at) FROM behaviour_events) t"""
    await seed_shop(db_dsn, shop_id="r1", customers=500, now=NOW, seed=3)
    first = await pool.fetchval(digest_sql)
    await pool.execute(
        "TRUNCATE coupons, behaviour_events, order_items, orders, products, shop_customers, consumers, shops CASCADE"
    )
    await seed_shop(db_dsn, shop_id="r1", customers=500, now=NOW, seed=3)
    assert await pool.fetchval(digest_sql) == first
    await pool.execute(
        "TRUNCATE coupons, behaviour_events, order_items, orders, products, shop_customers, consumers, shops CASCADE"
    )
    await seed_shop(db_dsn, shop_id="r1", customers=500, now=NOW, seed=4)
    assert await pool.fetchval(digest_sql) != first


async def test_without_channel_mix_every_contact_is_usable(clean_db, db_dsn):
    res = await seed_shop(db_dsn, shop_id="m1", customers=800, now=NOW, channel_mix=False)
    assert res.customers == 800
    unusable = await clean_db.fetchval(
        """SELECT count(*) FROM shop_customers WHERE shop_id = 'm1' AND (
             phone IS NULL OR NOT phone_valid OR email IS NULL OR NOT email_valid OR chat_id IS NULL
             OR blacklisted OR deleted OR unsub_chat OR unsub_sms OR unsub_email OR unsub_inbox)"""
    )
    assert unusable == 0


async def test_small_shop_and_bad_arguments(clean_db, db_dsn):
    res = await seed_shop(db_dsn, shop_id="tiny", customers=40, now=NOW)
    assert res.customers == 40 and 13 <= res.products < 40  # fewer products, every category present
    assert await clean_db.fetchval("SELECT count(DISTINCT category) FROM products") == 13
    with pytest.raises(ValueError, match="aware"):
        await seed_shop(db_dsn, shop_id="x", customers=1, now=NOW.replace(tzinfo=None))
    assert await clean_db.fetchval("SELECT count(*) FROM shops WHERE shop_id = 'x'") == 0
