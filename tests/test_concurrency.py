"""50 campaigns of 20 shops over the same consumers, all sending at once (R-FAT-2..4, R-BEN-1).

Every shop has the same 400 platform consumers as customers. Each shop runs a
K-OLDCUST task and one or two K-PHASED campaigns the same day, in small
concurrent slices, so hundreds of transactions race for the same consumers.
Afterwards SQL over the ledger shows the global caps and the per-template caps
held exactly, and that no coupon was handed out beyond its stock.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, time, timedelta

from sluice.api.service import start_campaign
from sluice.kinds.oldcust import OldCustomerSpec
from sluice.kinds.phased import PhasedSpec, PhaseSpec
from sluice.schemas import rules
from sluice.schemas.settings import Settings
from sluice.workers.worker import build_worker
from sluice.workflows.calendar import local_day

from tests.factories import add_customers, make_shop
from tests.ledger_checks import assert_fatigue_matches_ledger

SHOPS, CONSUMERS, COUPON_STOCK = 20, 400, 150


async def test_fifty_campaigns_twenty_shops_caps_and_coupons_exact(clean_db, ts_env):
    pool = clean_db
    now = await ts_env.get_current_time()
    tz = "Asia/Shanghai"
    day = local_day(now, tz) + timedelta(days=1)
    ids = list(range(1, CONSUMERS + 1))
    specs = []
    for s in range(SHOPS):
        shop = f"shop{s:02d}"
        await make_shop(pool, shop, tz)
        await add_customers(pool, shop, ids, ordered_at=now - timedelta(days=15), visited_at=now - timedelta(days=2),
                            inquiry_at=now - timedelta(days=3))
        coupon = None
        if s % 4 == 0:  # every fourth shop's old-customer task carries a coupon with too little stock
            coupon = f"cpn-{shop}"
            await pool.execute(
                "INSERT INTO coupons (coupon_id, shop_id, name, valid_from, valid_to, stock)"
                " VALUES ($1, $2, 'gift', $3, $4, $5)",
                coupon, shop, now - timedelta(days=1), now + timedelta(days=10), COUPON_STOCK,
            )
        specs.append(OldCustomerSpec(kind="K-OLDCUST", shop_id=shop, campaign_id="old", scene="x", card_text="hi",
                                     send_date=day, send_time=time(9), coupon_id=coupon))
        for k in range(2 if s < 10 else 1):
            specs.append(PhasedSpec(kind="K-PHASED", shop_id=shop, campaign_id=f"ph{k}", phases=[
                PhaseSpec(name="promote", start_date=day, end_date=day, send_time=time(9), text="sale")]))
    assert len(specs) == 50
    settings = Settings(SLUICE_TASK_QUEUE=f"conc-{uuid.uuid4().hex[:6]}", SLUICE_MAX_ACTIVITIES=40)
    tuning = {"slice_size": 100, "chunk_size": 50, "concurrency": 4}
    async with build_worker(ts_env.client, pool, settings):
        started = await asyncio.gather(*(
            start_campaign(pool, ts_env.client, spec, task_queue=settings.task_queue, now=now, tuning=tuning)
            for spec in specs))
        # One result at a time: each wait unlocks the test server's clock. Fifty waits at once
        # (asyncio.gather) left the clock still here and the test hung with every campaign waiting.
        results = [await h.result() for _, h in started]
    assert {r.state for r in results} == {"completed"}

    await assert_fatigue_matches_ledger(pool)
    # Straight from the ledger: per consumer and platform day, <= 10 sent, <= 5 shops, <= 2 per shop.
    worst = await pool.fetchrow(
        """SELECT max(n) AS per_day, max(shops) AS shops FROM (
               SELECT consumer_id, fatigue_day, count(*) AS n, count(DISTINCT shop_id) AS shops
               FROM deliveries WHERE state = 'sent' GROUP BY 1, 2) x"""
    )
    per_shop = await pool.fetchval(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM deliveries WHERE state = 'sent'"
        " GROUP BY consumer_id, shop_id, fatigue_day) x"
    )
    assert worst["per_day"] == rules.GLOBAL_DAY_MAX and worst["shops"] == rules.GLOBAL_SHOPS_MAX
    assert per_shop == rules.SHOP_DAY_MAX
    # Everyone reached the caps exactly: with this much demand no consumer is left below them.
    assert await pool.fetchval(
        "SELECT count(DISTINCT consumer_id) FROM deliveries WHERE state = 'sent'") == CONSUMERS
    # Per template: one message per template group and shop per day at most.
    assert await pool.fetchval(
        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM deliveries WHERE state = 'sent'"
        " GROUP BY consumer_id, shop_id, template_group, fatigue_day) x") == 1
    # Every decision has a reason when it is not a send.
    assert await pool.fetchval(
        "SELECT count(*) FROM deliveries WHERE state = 'suppressed' AND reason IS NULL") == 0
    # Coupons never oversold: sends carrying a coupon <= its initial stock, and stock + sends == initial;
    # each send holds its unit as one claim.
    rows = await pool.fetch(
        """SELECT c.coupon_id, c.stock, (SELECT count(*) FROM deliveries d JOIN campaigns k ON k.id = d.campaign_id
                                          WHERE k.spec->>'coupon_id' = c.coupon_id AND d.state = 'sent') AS sent,
                  (SELECT count(*) FROM claims h WHERE h.coupon_id = c.coupon_id AND h.state = 'held') AS held
           FROM coupons c""")
    assert rows
    for r in rows:
        assert r["stock"] >= 0 and r["sent"] <= COUPON_STOCK and r["stock"] + r["sent"] == COUPON_STOCK, dict(r)
        assert r["held"] == r["sent"], dict(r)
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE state IN ('reserved', 'unknown')") == 0
    total = await pool.fetchval("SELECT count(*) FROM deliveries WHERE state = 'sent'")
    print(f"\nconcurrency: 50 campaigns, 20 shops, {CONSUMERS} shared consumers, {total:,} sent, caps exact"
          f" ({datetime.now(UTC):%H:%M:%S})")
