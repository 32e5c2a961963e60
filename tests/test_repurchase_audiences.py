"""The K-REPURCHASE audiences (R-RP-1, R-RP-2, R-RP-10) on hand-built shops whose members are known exactly.

Every statement runs as the refresh runs it: a subquery, with $1..$3 the audience's parameters,
$4..$10 the refresh's own (placeholders here, so the numbering is exactly the refresh's) and $11
the campaign's exclusive coupon ids. S is the snapshot instant; "n days ago" is S - n x 24 h.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

from sluice.audiences import repurchase as R

S = datetime(2025, 6, 1, tzinfo=UTC)
_order_ids = itertools.count(1)


def ago(days: float) -> datetime:
    return S - timedelta(days=days)


def wrapped(sql: str) -> str:
    refresh_params = " AND ".join(f"${n}::int IS NULL" for n in range(4, 11))
    return f"SELECT consumer_id, item FROM ({sql}) a WHERE {refresh_params}"


class Shop:
    def __init__(self, pool, shop_id: str):
        self.pool, self.shop_id = pool, shop_id
        self.coupons: list[str] = []

    async def create(self) -> Shop:
        await self.pool.execute(
            "INSERT INTO shops (shop_id, name, timezone, industry) VALUES ($1, $1, 'UTC', 'grocery')", self.shop_id
        )
        return self

    async def product(
        self,
        pid: int,
        category: str,
        *,
        cycle: int | None = None,
        coupon: bool = True,
        in_campaign: bool = True,
        on_shelf: bool = True,
    ) -> int:
        """A product; with `coupon` an exclusive coupon for it, among the campaign's ($11) when `in_campaign`."""
        await self.pool.execute(
            "INSERT INTO products (product_id, shop_id, title, category, price, repurchase_cycle_days, on_shelf)"
            " VALUES ($1, $2, $3, $4, 10, $5, $6)",
            pid,
            self.shop_id,
            f"p{pid}",
            category,
            cycle,
            on_shelf,
        )
        if coupon:
            cid = f"{self.shop_id}-c{pid}"
            await self.pool.execute(
                "INSERT INTO coupons (coupon_id, shop_id, name, valid_from, valid_to, stock, product_id)"
                " VALUES ($1, $2, $1, $3, $4, 100, $5)",
                cid,
                self.shop_id,
                ago(400),
                S + timedelta(days=30),
                pid,
            )
            if in_campaign:
                self.coupons.append(cid)
        return pid

    async def order(self, consumer: int, products: list[int], days_ago: float, status: str = "paid") -> None:
        oid = next(_order_ids)
        await self.pool.execute(
            "INSERT INTO orders (order_id, shop_id, consumer_id, created_at, paid_at, amount, status)"
            " VALUES ($1, $2, $3, $4, $4, 10, $5)",
            oid,
            self.shop_id,
            consumer,
            ago(days_ago),
            status,
        )
        await self.pool.executemany(
            "INSERT INTO order_items (order_id, product_id, quantity, price) VALUES ($1, $2, 1, 10)", [(oid, p) for p in products]
        )

    async def buys(self, consumer: int, product: int, *days_ago: float, status: str = "paid") -> None:
        for d in days_ago:
            await self.order(consumer, [product], d, status)

    async def browses(self, consumer: int, product: int | None, *days_ago: float, kind: str = "view") -> None:
        await self.pool.executemany(
            "INSERT INTO behaviour_events (shop_id, consumer_id, kind, product_id, occurred_at) VALUES ($1, $2, $3, $4, $5)",
            [(self.shop_id, consumer, kind, product, ago(d)) for d in days_ago],
        )

    async def audience(self, sql: str, coupons: list[str] | None = None) -> dict[int, int]:
        """{consumer_id: item}; checks the two columns, their types and one row per consumer."""
        async with self.pool.acquire() as conn:
            stmt = await conn.prepare(wrapped(sql))
            assert [(a.name, a.type.name) for a in stmt.get_attributes()] == [("consumer_id", "int8"), ("item", "int8")]
            args = [self.shop_id, S, ago(60), *([None] * 7), self.coupons if coupons is None else coupons]
            rows = await stmt.fetch(*args)
        result = {r["consumer_id"]: r["item"] for r in rows}
        assert len(result) == len(rows), "one row per consumer"
        return result


RECENT = (1, 3, 5, 9)  # four category views within BROWSE_DAYS


async def _cycle_buyers(shop: Shop, product: int, first: int, gaps: list[float], start: float = 400) -> None:
    """Five buyers re-buying `product` with these intervals (days), long before the snapshot."""
    for c in range(first, first + 5):
        instants, t = [start], start
        for g in gaps:
            t -= g
            instants.append(t)
        await shop.buys(c, product, *instants)


# --- R-RP-1 ------------------------------------------------------------------------------------


async def test_repurchase_cycle_targets_buyers_at_073_of_the_cycle_who_browse_the_category(clean_db):
    shop = await Shop(clean_db, "rp").create()
    tea = await shop.product(10, "tea")
    tea_other = await shop.product(11, "tea", coupon=False)  # browsed, never pushed
    # 30-day cycle: 5 buyers x 4 intervals of 28..32 days (median 30) -> 0.73 C = 21.9, tolerance 3 days.
    await _cycle_buyers(shop, tea, 100, [28, 30, 30, 32])
    # 1: last purchase 22 days ago, four views of the category (of another tea) in 14 days -> selected.
    await shop.buys(1, tea, 80, 22)
    await shop.browses(1, tea_other, *RECENT)
    # 2: last purchase 10 days ago (an older one at 22 is not the last) -> not.
    await shop.buys(2, tea, 22, 10)
    await shop.browses(2, tea, *RECENT)
    # 3: 22 days ago, no browsing -> not.
    await shop.buys(3, tea, 22)
    # 4: 22 days ago, browsing too old (3 of 4 before the 14-day window) -> not.
    await shop.buys(4, tea, 22)
    await shop.browses(4, tea, 1, 15, 16, 20)
    # 5: 22 days ago, only BROWSE_MIN - 1 category events, plus events that name no product or
    # another category, or are not browsing -> not.
    coffee = await shop.product(20, "coffee", coupon=False)
    await shop.buys(5, tea, 22)
    await shop.browses(5, tea, 1, 2)
    await shop.browses(5, None, 1, 2, 3, kind="visit")
    await shop.browses(5, coffee, 1, 2, 3)
    await shop.browses(5, tea, 1, 2, 3, kind="inquiry")
    # 6: at the edges of the tolerance window: 0.73 x 30 +/- 3 = [18.9, 24.9].
    await shop.buys(6, tea, 19)
    await shop.browses(6, tea, *RECENT)
    await shop.buys(7, tea, 25.5)
    await shop.browses(7, tea, *RECENT)
    # 8: due, browses by favourite and cart (browsing kinds) -> selected.
    await shop.buys(8, tea, 24)
    await shop.browses(8, tea, 1, 2, kind="favourite")
    await shop.browses(8, tea_other, 3, kind="cart")

    assert await shop.audience(R.REPURCHASE_CYCLE) == {1: tea, 6: tea, 8: tea}
    # No campaign coupon: nobody.
    assert await shop.audience(R.REPURCHASE_CYCLE, []) == {}


async def test_too_few_samples_fall_back_to_the_category_cycle(clean_db):
    shop = await Shop(clean_db, "rp").create()
    tea = await shop.product(10, "tea")
    rare = await shop.product(12, "tea")  # own intervals: 2 of 60 days (< MIN_CYCLE_SAMPLE)
    lone = await shop.product(30, "spice")  # its category has only 2 intervals: no cycle at all
    await _cycle_buyers(shop, tea, 100, [28, 30, 30, 32])  # 20 intervals, median 30
    await shop.buys(200, rare, 300, 240, 180)
    await shop.buys(201, lone, 300, 270, 240)
    # The category's median over all its intervals (20 x ~30 and 2 x 60) is 30, not rare's own 60.
    await shop.buys(1, rare, 22)  # 0.73 x 30: selected
    await shop.browses(1, rare, *RECENT)
    await shop.buys(2, rare, 44)  # 0.73 x 60 (its own estimate): not
    await shop.browses(2, rare, *RECENT)
    await shop.buys(3, lone, 22)  # no cycle for spice (2 intervals < MIN_CATEGORY_SAMPLE): not
    await shop.browses(3, lone, *RECENT)
    for c in range(4, 12):  # 0.73 x 30 for 30-day spice would be 22; nothing at any age
        await shop.buys(c, lone, 10 + 4 * c)
        await shop.browses(c, lone, *RECENT)

    assert await shop.audience(R.REPURCHASE_CYCLE) == {1: rare}


async def test_the_merchant_cycle_overrides_the_estimate(clean_db):
    shop = await Shop(clean_db, "rp").create()
    set_by_merchant = await shop.product(13, "tea", cycle=100)
    await _cycle_buyers(shop, set_by_merchant, 100, [28, 30, 30, 32])  # estimated 30, overridden by 100
    await shop.buys(1, set_by_merchant, 73)  # 0.73 x 100 +/- 10
    await shop.browses(1, set_by_merchant, *RECENT)
    await shop.buys(2, set_by_merchant, 22)  # 0.73 x the estimate: not
    await shop.browses(2, set_by_merchant, *RECENT)
    assert await shop.audience(R.REPURCHASE_CYCLE) == {1: set_by_merchant}


async def test_only_products_with_a_campaign_coupon_of_the_shop_are_pushed(clean_db):
    shop = await Shop(clean_db, "rp").create()
    await Shop(clean_db, "other").create()  # the owner of the foreign coupon
    no_coupon = await shop.product(10, "tea", cycle=30, coupon=False)
    not_this_campaign = await shop.product(11, "tea", cycle=30, in_campaign=False)
    foreign_coupon = await shop.product(12, "tea", cycle=30, coupon=False)
    off_shelf = await shop.product(13, "tea", cycle=30, on_shelf=False)
    pushed = await shop.product(14, "tea", cycle=30)
    # another shop's coupon naming this shop's product, listed in the campaign: not this shop's offer
    await clean_db.execute(
        "INSERT INTO coupons (coupon_id, shop_id, name, valid_from, valid_to, stock, product_id)"
        " VALUES ('x', 'other', 'x', $1, $2, 5, $3)",
        ago(10),
        S,
        foreign_coupon,
    )
    shop.coupons.append("x")
    for c, p in enumerate([no_coupon, not_this_campaign, foreign_coupon, off_shelf, pushed], start=1):
        await shop.buys(c, p, 22)
        await shop.browses(c, p, *RECENT)
    # 9 is due for all five: only the one with a campaign coupon is pushed.
    for p in [no_coupon, not_this_campaign, foreign_coupon, off_shelf, pushed]:
        await shop.buys(9, p, 22)
    await shop.browses(9, no_coupon, *RECENT, 6, 7)
    assert await shop.audience(R.REPURCHASE_CYCLE) == {5: pushed, 9: pushed}


async def test_the_product_pushed_is_the_one_behaviour_favours(clean_db):
    """R-RP-10: among a consumer's due products, most category events, then most recent, then lowest id."""
    shop = await Shop(clean_db, "rp").create()
    tea = await shop.product(10, "tea", cycle=30)
    coffee = await shop.product(20, "coffee", cycle=30)
    tea2 = await shop.product(11, "tea", cycle=30)
    for c in (1, 2, 3, 4):
        await shop.buys(c, tea, 22)
        await shop.buys(c, coffee, 23)
    await shop.browses(1, tea, 1, 2, 3, 4)  # tea 4, coffee 6 -> coffee
    await shop.browses(1, coffee, 5, 6, 7, 8, 9, 10)
    await shop.browses(2, tea, 1, 2, 3, 4, 5)  # tea 5, coffee 3 -> tea
    await shop.browses(2, coffee, 6, 7, 8)
    await shop.browses(3, tea, 2, 3, 4)  # 3 each, coffee's most recent -> coffee
    await shop.browses(3, coffee, 1, 5, 6)
    await shop.browses(4, tea, 1, 3, 4)  # 3 each, tea's most recent -> tea
    await shop.browses(4, coffee, 2, 5, 6)
    # 5: two due teas, the same category events -> the lower product id.
    await shop.buys(5, tea2, 22)
    await shop.buys(5, tea, 21)
    await shop.browses(5, tea2, *RECENT)
    assert await shop.audience(R.REPURCHASE_CYCLE) == {1: coffee, 2: tea, 3: coffee, 4: tea, 5: tea}


async def test_refunded_and_pending_orders_are_not_purchases(clean_db):
    shop = await Shop(clean_db, "rp").create()
    tea = await shop.product(10, "tea")
    fake = await shop.product(15, "herb")
    await _cycle_buyers(shop, tea, 100, [28, 30, 30, 32])
    # herb re-bought every 30 days, but only in refunded and pending orders: no cycle (counted,
    # they would give 20 intervals of 30 days and select 1).
    for c in range(200, 205):
        await shop.buys(c, fake, 400, 340, status="refunded")
        await shop.buys(c, fake, 370, 310, status="pending")
        await shop.buys(c, fake, 280, status="refunded")
    await shop.buys(1, fake, 22)
    await shop.browses(1, fake, *RECENT)
    # 2: last paid purchase 22 days ago; a refunded one 5 and a pending one 3 days ago don't move it.
    await shop.buys(2, tea, 22)
    await shop.buys(2, tea, 5, status="refunded")
    await shop.buys(2, tea, 3, status="pending")
    await shop.browses(2, tea, *RECENT)
    # 3: 22 days ago only refunded, 4: only pending.
    await shop.buys(3, tea, 22, status="refunded")
    await shop.buys(4, tea, 22, status="pending")
    for c in (3, 4):
        await shop.browses(c, tea, *RECENT)
    assert await shop.audience(R.REPURCHASE_CYCLE) == {2: tea}


async def test_data_at_or_after_the_snapshot_is_ignored(clean_db):
    shop = await Shop(clean_db, "rp").create()
    tea = await shop.product(10, "tea")
    await _cycle_buyers(shop, tea, 100, [28, 30, 30, 32])
    # Re-purchases at and after the snapshot every 5 days would make the median 5 if counted.
    for c in range(300, 320):
        await shop.buys(c, tea, 0, -5, -10)
    # 1: a purchase at the snapshot instant and after it: the last one is still 22 days ago.
    await shop.buys(1, tea, 22, 0, -1)
    await shop.browses(1, tea, *RECENT)
    # 2: two category views before the snapshot, two at and after it -> not.
    await shop.buys(2, tea, 22)
    await shop.browses(2, tea, 1, 2, 0, -1)
    # 3: the window's first instant (S - 14 days) counts: three views -> selected.
    await shop.buys(3, tea, 22)
    await shop.browses(3, tea, 14, 1, 2)
    assert await shop.audience(R.REPURCHASE_CYCLE) == {1: tea, 3: tea}


# --- R-RP-2 ------------------------------------------------------------------------------------


async def test_cross_sell_pairs_above_the_lift_threshold_target_buyers_of_a_without_b(clean_db):
    shop = await Shop(clean_db, "xs").create()
    a = await shop.product(1, "shampoo", coupon=False)
    b = await shop.product(2, "conditioner")
    c = await shop.product(3, "snack")
    e = await shop.product(5, "filler", coupon=False)
    f = await shop.product(6, "towel")
    g = await shop.product(7, "brush")
    h = await shop.product(8, "comb")
    k = await shop.product(9, "mask", coupon=False)  # no campaign coupon: never pushed
    for cons in (101, 102, 103):
        await shop.order(cons, [a, b, c], 30)
    await shop.order(104, [a, b], 40)
    await shop.order(200, [a], 50)
    await shop.order(105, [b, e], 60)
    for cons in range(106, 115):
        await shop.order(cons, [c], 70)
    for cons in range(115, 120):
        await shop.order(cons, [e], 80)
    await shop.order(201, [a], 20)
    await shop.order(201, [b], 300)  # bought B long ago (outside the window): excluded
    await shop.order(202, [a], 20)
    await shop.order(202, [b], 10, status="refunded")  # a refunded B is no purchase: still targeted
    await shop.order(203, [a], 20)
    await shop.order(203, [b], 10, status="pending")  # nor a pending one
    for cons in (120, 121):  # (A, H): high lift but only 2 baskets < MIN_PAIR_BASKETS
        await shop.order(cons, [a, h], 90)
    for cons in (130, 131, 132):  # (A, K): lift 2.25, K has no campaign coupon
        await shop.order(cons, [a, k], 100)
    # Not baskets: refunded and pending (A, F), (A, G) at and after the snapshot, (A, F) before the window.
    await shop.order(300, [a, f], 30, status="refunded")
    await shop.order(301, [a, f], 30, status="refunded")
    await shop.order(302, [a, f], 30, status="pending")
    await shop.order(400, [a, g], 0)
    await shop.order(401, [a, g], -1)
    await shop.order(402, [a, g], -2)
    for cons in (500, 501, 502):
        await shop.order(cons, [a, f], 200)

    # Baskets (paid, within BASKET_DAYS, before S): N = 28; n_A = 13 (3 ABC, AB, 200..203, 2 AH,
    # 3 AK), n_B = 5 (3 ABC, AB, BE), n_C = 12. Lift = n_ab N / (n_a n_b):
    def lift(n_ab, n_a, n_b, n=28):
        return n_ab * n / (n_a * n_b)

    assert lift(4, 13, 5) > R.MIN_LIFT  # (A, B) kept: 1.72
    assert lift(3, 13, 12) < R.MIN_LIFT  # (A, C): 0.54
    assert lift(3, 5, 12) < R.MIN_LIFT  # (B, C): 1.4, so C's buyers are not pushed B
    assert lift(2, 13, 2) > R.MIN_LIFT  # (A, H): 2.15 but 2 baskets < MIN_PAIR_BASKETS
    # Counted, the refunded/pending (A, F), the late (A, G) or the old (A, F) baskets would each
    # beat (A, B) for A's buyers: lift 3 x 31 / (16 x 3) = 1.94 > 4 x 31 / (16 x 5) = 1.55.
    assert lift(3, 16, 3, 31) > lift(4, 16, 5, 31) > R.MIN_LIFT

    expected = {cons: b for cons in (200, 202, 203, 120, 121, 130, 131, 132)}
    assert await shop.audience(R.CROSS_SELL) == expected
    # Without B's coupon in the campaign nothing qualifies.
    assert await shop.audience(R.CROSS_SELL, [cid for cid in shop.coupons if cid != "xs-c2"]) == {}


async def test_cross_sell_chooses_b_by_lift_plus_browsing_interest(clean_db):
    shop = await Shop(clean_db, "xs").create()
    a = await shop.product(1, "shampoo", coupon=False)
    b1 = await shop.product(2, "conditioner")
    b2 = await shop.product(3, "mask")
    b2_kin = await shop.product(4, "mask", coupon=False)
    e = await shop.product(5, "filler", coupon=False)
    for cons in (1, 2, 3):
        await shop.order(cons, [a, b1], 30)
    for cons in (4, 5, 6):
        await shop.order(cons, [a, b2], 30)
    await shop.order(7, [b1], 30)
    await shop.order(8, [b2], 30)
    await shop.order(9, [b2], 30)
    for cons in (10, 11, 12):  # A buyers without B
        await shop.order(cons, [a], 20)
    for cons in range(20, 31):
        await shop.order(cons, [e], 40)
    # N = 23, n_A = 9, n_B1 = 4, n_B2 = 5: lift (A, B1) = 3 x 23 / 36 = 1.92 > lift (A, B2) = 3 x 23 / 45 = 1.53 > 1.5.
    lift1, lift2 = 3 * 23 / 36, 3 * 23 / 45
    assert lift1 > lift2 > R.MIN_LIFT
    await shop.browses(11, b2, 1, 2, 3)  # interest in B2 itself: ln 4 + ln 4 outweighs the lift gap
    assert lift2 + 2 * math.log(4) > lift1
    await shop.browses(12, b2_kin, 5, 6, 7, 40)  # B2's category (the 40-day one is too old): ln 4
    assert lift2 + math.log(4) > lift1
    await shop.browses(10, b2_kin, 31, 35, 45)  # only older than INTEREST_DAYS: no interest -> B1
    # 1..3 bought B1, so B2 is theirs; 4..6 bought B2, so B1.
    assert await shop.audience(R.CROSS_SELL) == {1: b2, 2: b2, 3: b2, 4: b1, 5: b1, 6: b1, 10: b1, 11: b2, 12: b2}


# --- R-RP-10 for a custom audience, as the refresh's parts evaluate it ----------------------------


async def _browsing_shop(pool) -> tuple[Shop, dict[int, int]]:
    """Customers 1..40 of shop 'rp', each with their own mix of events on three coupon products (10, 20, 30) and an
    uncouponed one; with {consumer: the product R-RP-10 chooses for them}, evaluated independently in Python."""
    shop = await Shop(pool, "rp").create()
    products = [await shop.product(p, "tea", cycle=30) for p in (10, 20, 30)]
    uncouponed = await shop.product(40, "tea", cycle=30, coupon=False)
    views: dict[int, list[tuple[int, float, str]]] = {}
    for c in range(1, 41):
        await pool.execute("INSERT INTO consumers (consumer_id) VALUES ($1) ON CONFLICT DO NOTHING", c)
        await pool.execute("INSERT INTO shop_customers (shop_id, consumer_id) VALUES ('rp', $1)", c)
        # c's own mix: product i gets (c * (i + 1)) % 4 events, i days and more ago; some out of the window or kind
        views[c] = [(products[i], 1 + i + k, "view") for i in range(3) for k in range((c * (i + 1)) % 4)]
        views[c] += [(products[c % 3], 31, "view"), (products[(c + 1) % 3], 2, "order_paid"), (uncouponed, 1, "view")]
        for p, d, kind in views[c]:
            await shop.browses(c, p, d, kind=kind)

    def favoured(c: int) -> int:
        counted = [(p, d) for p, d, kind in views[c] if p in products and d <= 30 and kind == "view"]
        if not counted:
            return min(products)
        best = {p: (sum(1 for q, _ in counted if q == p), -min(d for q, d in counted if q == p), -p) for p, _ in counted}
        return max(best, key=best.get)

    return shop, {c: favoured(c) for c in range(1, 41)}


async def test_a_custom_audience_gets_each_recipient_the_product_behaviour_favours_in_every_part(clean_db):
    """with_item_choice over a merchant's audience, evaluated per refresh part ($8 parts, $9 the part, in_part over
    the events too): the parts split the audience without overlap, and each recipient's product is the one of the
    campaign's coupon products they engaged with most in the last 30 days (then the most recent, then the lowest
    id; without such events the lowest id), the same whichever part they fall in (an independent evaluation)."""
    from sluice.activities.audience import in_part
    from sluice.audiences import with_item_choice

    shop, favoured = await _browsing_shop(clean_db)
    audience = "SELECT c.consumer_id FROM shop_customers c WHERE c.shop_id = $1"
    sql = with_item_choice(audience, 11, in_part("e.consumer_id"))
    wrapped_sql = f"SELECT a.consumer_id, a.item FROM ({sql}) a WHERE {in_part('a.consumer_id')}" \
        " AND $3::timestamptz IS NOT NULL AND $4::int IS NULL AND $5::int IS NULL AND $6::int IS NULL" \
        " AND $7::int IS NULL AND $10::int IS NULL"
    for parts in (1, 2, 3):
        chosen: dict[int, int] = {}
        for part in range(parts):
            rows = await clean_db.fetch(wrapped_sql, "rp", S, ago(60), None, None, None, None, parts, part, None, shop.coupons)
            assert not chosen.keys() & {r["consumer_id"] for r in rows}, "a consumer in two parts"
            chosen.update({r["consumer_id"]: r["item"] for r in rows})
        assert chosen == favoured, parts


async def test_the_refresh_of_a_custom_audience_snapshots_the_favoured_product_of_each_eligible_recipient(clean_db):
    """The refresh activity (checked_refresh_sql: the custom filter read over the shop's customers once, the choice
    joined to them) in 1, 2 and 3 parts: the filter's customers, the exclusions (R-EXC-1), and each eligible
    recipient's product as the independent evaluation chooses it (R-RP-10); the preview's counts agree."""
    from sluice.activities.audience import AudienceActivities, checked_preview_sql, checked_refresh_sql
    from sluice.schemas.activities import RefreshAudienceInput
    from temporalio.testing import ActivityEnvironment

    from tests.factories import make_campaign

    shop, favoured = await _browsing_shop(clean_db)
    # 1..40 became customers 100 days ago but every 7th after S (the filter leaves them out); every 5th is blacklisted,
    # every 11th has no chat id.
    for c in range(1, 41):
        await clean_db.execute(
            "UPDATE shop_customers SET created_at = $2, blacklisted = $3, chat_id = $4 WHERE shop_id = 'rp' AND consumer_id = $1",
            c, S + timedelta(days=1) if c % 7 == 0 else ago(100), c % 5 == 0, None if c % 11 == 0 else f"chat-{c}",
        )  # fmt: skip
    matched = [c for c in range(1, 41) if c % 7]
    eligible = {c: favoured[c] for c in matched if c % 5 and c % 11}
    cid = await make_campaign(clean_db, "rp", "custom-choice")
    inp = RefreshAudienceInput(
        campaign_db_id=cid, shop_id="rp", kind="K-REPURCHASE", phase_index=0, audience="custom", channel="chat",
        audience_params={"filter": {"op": "lt", "field": "created_at", "value": S.isoformat()}, "coupon_ids": shop.coupons},
        day=S.date(), snapshot_at=S, campaign_started_at=ago(1),
    )  # fmt: skip
    assert "matched AS" not in checked_refresh_sql(inp).sql  # the shop's customers are read once
    assert "matched AS" not in checked_preview_sql(inp, []).sql
    for parts in (1, 2, 3):
        result = await ActivityEnvironment().run(AudienceActivities(clean_db, parts=parts).refresh_audience, inp)
        assert (result.matched, result.eligible) == (len(matched), len(eligible)), parts
        assert result.excluded == {"blacklisted": sum(1 for c in matched if c % 5 == 0),
                                   "no_contact": sum(1 for c in matched if c % 5 and c % 11 == 0)}, parts  # fmt: skip
        rows = await clean_db.fetch("SELECT consumer_id, item FROM audience_snapshots WHERE campaign_id = $1", cid)
        assert {r["consumer_id"]: r["item"] for r in rows} == eligible, parts
