"""K-REPURCHASE audiences (R-RP-1, R-RP-2): each consumer with the one product to push (R-RP-10).

Each audience is ONE set-based statement, usable as a subquery of the refresh, yielding exactly
two columns: `consumer_id bigint` and `item bigint` (the product pushed to that consumer), one
row per consumer. Parameters:

- $1 shop_id, $2 the snapshot instant (R-OC-5, T+1: only data strictly before it counts),
  $3 the campaign start (unused; referenced harmlessly so every audience takes the same three);
- $4..$10 belong to the surrounding refresh statement and are never used here;
- $11 `text[]`: the campaign's exclusive coupon ids. Only products that one of these coupons
  (a coupon of this shop, `coupons.product_id`) is for are ever pushed (R-RP-10). An empty
  array yields nobody.

A purchase is an order of the shop with status 'paid' created before $2: 'pending' orders are
not purchases yet and 'refunded' ones are not purchases any more. Time windows are 24 h days
counted back from $2 (`[$2 - N days, $2)`), never calendar days, so the session's TimeZone does
not matter. A pushed product must be on the shelf (`products.on_shelf`).

Browsing is a behaviour event of a BROWSE_KINDS kind on a product (events without a product
name no category and are ignored).
"""

from __future__ import annotations

# --- R-RP-1: repurchase cycle ------------------------------------------------------------------
CYCLE_HISTORY_DAYS = 730  # purchases this far back estimate cycles and find last purchases
MIN_CYCLE_SAMPLE = 5  # a product's own median needs at least this many repurchase intervals
MIN_CATEGORY_SAMPLE = 5  # the category fallback needs at least this many intervals in the category
MIN_CYCLE_DAYS = 1  # a cycle shorter than a day (an artefact of same-day re-orders) targets nobody
TARGET_FRACTION = 0.73  # push when the last purchase is about 0.73 x C days before the snapshot
TOLERANCE_FRACTION = 0.1  # ... within +/- max(TOLERANCE_MIN_DAYS, TOLERANCE_FRACTION x C) days
TOLERANCE_MIN_DAYS = 1
BROWSE_DAYS = 14  # recent browsing of the product's category: within this many days ...
BROWSE_MIN = 3  # ... at least this many events
BROWSE_KINDS = ("view", "visit", "favourite", "cart")

# --- R-RP-2: cross-sell ------------------------------------------------------------------------
BASKET_DAYS = 180  # baskets (paid orders) of this window define the associations and the A buyers
MIN_PAIR_BASKETS = 3  # a pair (A, B) needs at least this many baskets with both
MIN_LIFT = 1.5  # and lift P(A and B) / (P(A) P(B)) strictly above this
INTEREST_DAYS = 30  # browsing interest in B or B's category within this many days
INTEREST_WEIGHT = 1.0  # score = lift + INTEREST_WEIGHT x (ln(1 + events on B) + ln(1 + events on B's category))

_KINDS = ", ".join(f"'{k}'" for k in BROWSE_KINDS)

# The products the campaign's exclusive coupons ($11) are for: coupons of this shop (primary key
# probes on coupon_id), products of this shop on the shelf.
_OFFERED_IDS = """SELECT cp.product_id FROM coupons cp
                  WHERE cp.coupon_id = ANY($11::text[]) AND cp.shop_id = $1 AND cp.product_id IS NOT NULL"""


# The shop's products of a category, as an array (R-RP-1's category, R-RP-10's browsing of it):
# products_shop (shop_id), a few hundred rows at most per shop here.
_CATEGORY_PRODUCTS = "ARRAY(SELECT cp2.product_id FROM products cp2 WHERE cp2.shop_id = $1 AND cp2.category = {category})"

# The paid purchases before the snapshot, within CYCLE_HISTORY_DAYS, of the products listed by the
# bigint[] expression {products}: order_items_product (product_id, order_id; db/migrations/
# 0014_repurchase_indexes.sql), an index-only range per product, then a primary-key probe of orders
# per line (a LATERAL, so it stays a probe under the refresh's nested-loop ban: a join would read
# every order of the shop to hash them). One row per (buyer, product, instant) and order: two
# orders at the same instant repeat the row, which only adds a zero interval (dropped below).
_PURCHASES_OF = f"""
        SELECT o.consumer_id, oi.product_id, o.bought_at
        FROM order_items oi
        CROSS JOIN LATERAL (
            SELECT o.consumer_id, o.created_at AS bought_at FROM orders o
            WHERE o.order_id = oi.order_id AND o.shop_id = $1 AND o.status = 'paid'
              AND o.created_at >= $2::timestamptz - interval '{CYCLE_HISTORY_DAYS} days'
              AND o.created_at < $2::timestamptz
            OFFSET 0) o
        WHERE oi.product_id = ANY({{products}})"""

# R-RP-1. Cost model (indexes of db/migrations/0001_core.sql and 0014_repurchase_indexes.sql):
# - purchases: only the offered products' (R-RP-10: nothing else is pushed, and a product's own
#   cycle is the median of its own intervals): an index-only range of order_items_product per
#   offered product and an orders primary-key probe per line. O(offered products' lines in
#   CYCLE_HISTORY_DAYS), not O(the shop's orders).
# - one sort of those purchases by (buyer, product, instant) for lag() and lead(): each buyer's
#   intervals and last purchase in one pass, materialised once (read twice); the per-product
#   median: one sort of the intervals per offered product.
# - the category fallback (an offered product without the merchant's cycle and with fewer than
#   MIN_CYCLE_SAMPLE intervals of its own) reads the purchases of the category's products the same
#   way, only for the categories that need it: none needed, an empty array, no read at all.
# - browsing: per due (consumer, product), one range of behaviour_shop_consumer (shop_id,
#   consumer_id, kind IN 4 kinds, occurred_at in BROWSE_DAYS), events of the category's products
#   tested against the category's product ids (an array computed once per offered product).
#   O(due pairs x the consumer's recent events); due pairs are a small slice of the buyers.
# Measured (PostgreSQL 18, the 1,000,000-customer bench shop: 3.4M orders, 936k lines of the three
# offered products, 20k due pairs per part; one part of the refresh statement, backend CPU seconds
# as the machine was shared, load average 9-12): 4.0 s and 5.9 s against 30.8 s and 36.2 s for the
# statement that read and sorted every order of the shop (same rows out). One EXPLAIN ANALYZE
# (16.4 s wall under load): orders probes 6.0 s, sort and window 2.0 s, medians 1.3 s, browsing
# ranges 3.3 s, the refresh's join with shop_customers 1.5 s. A
# hash join of the lines with the orders instead of the probes was slower here too (12.7 s and
# 13.0 s against 7.7 s and 9.5 s wall, alternated) although the offered lines are 28% of the orders.
REPURCHASE_CYCLE = f"""
    WITH offered AS MATERIALIZED (
        -- R-RP-10: the products with an exclusive coupon, on the shelf; the merchant's cycle if set
        SELECT p.product_id, p.category,
               CASE WHEN p.repurchase_cycle_days > 0 THEN p.repurchase_cycle_days::float8 END AS merchant_cycle,
               {_CATEGORY_PRODUCTS.format(category="p.category")} AS category_products
        FROM products p
        WHERE p.shop_id = $1 AND p.on_shelf AND p.product_id IN ({_OFFERED_IDS})
    ),
    runs AS MATERIALIZED (
        -- per buyer and offered product, in time order: the interval in days since the previous
        -- purchase (0 for a second order at the same instant, NULL for the first), and whether it
        -- is the last purchase (lead() is NULL on exactly one row of a buyer and product)
        SELECT pu.consumer_id, pu.product_id, pu.bought_at,
               extract(epoch FROM pu.bought_at - lag(pu.bought_at) OVER w) / 86400.0 AS days,
               lead(pu.bought_at) OVER w IS NULL AS is_last
        FROM ({_PURCHASES_OF.format(products="ARRAY(SELECT f.product_id FROM offered f)")}) pu
        WINDOW w AS (PARTITION BY pu.consumer_id, pu.product_id ORDER BY pu.bought_at)
    ),
    product_cycle AS (
        SELECT r.product_id, count(*) AS samples, percentile_cont(0.5) WITHIN GROUP (ORDER BY r.days) AS median
        FROM runs r WHERE r.days > 0 GROUP BY r.product_id
    ),
    fallback AS (
        -- the offered products whose cycle falls back on their category's median
        SELECT f.category FROM offered f LEFT JOIN product_cycle pc ON pc.product_id = f.product_id
        WHERE f.merchant_cycle IS NULL AND coalesce(pc.samples, 0) < {MIN_CYCLE_SAMPLE}
    ),
    category_cycle AS (
        -- the fallback: the median over all intervals of the category's products (of the shop)
        SELECT p.category, percentile_cont(0.5) WITHIN GROUP (ORDER BY g.days) AS median
        FROM (
            SELECT pu.product_id,
                   extract(epoch FROM pu.bought_at - lag(pu.bought_at) OVER (
                       PARTITION BY pu.consumer_id, pu.product_id ORDER BY pu.bought_at)) / 86400.0 AS days
            FROM ({_PURCHASES_OF.format(products=_CATEGORY_PRODUCTS.format(
                category="ANY(ARRAY(SELECT fb.category FROM fallback fb))"))}) pu
        ) g
        JOIN products p ON p.product_id = g.product_id AND p.shop_id = $1
        WHERE g.days > 0
        GROUP BY p.category
        HAVING count(*) >= {MIN_CATEGORY_SAMPLE}
    ),
    cycles AS (
        -- each offered product's cycle C (R-RP-1): the merchant's, else its own median, else its category's
        SELECT f.product_id, f.category, f.category_products,
               coalesce(f.merchant_cycle, CASE WHEN pc.samples >= {MIN_CYCLE_SAMPLE} THEN pc.median END, cc.median) AS cycle
        FROM offered f
        LEFT JOIN product_cycle pc ON pc.product_id = f.product_id
        LEFT JOIN category_cycle cc ON cc.category = f.category
    ),
    due AS (
        -- buyers whose LAST purchase of an offered product is about 0.73 C before the snapshot
        SELECT r.consumer_id, c.product_id, c.category_products
        FROM runs r JOIN cycles c ON c.product_id = r.product_id
        WHERE r.is_last AND c.cycle >= {MIN_CYCLE_DAYS}
          AND abs(extract(epoch FROM $2::timestamptz - r.bought_at) / 86400.0 - {TARGET_FRACTION} * c.cycle)
              <= greatest({TOLERANCE_MIN_DAYS}, {TOLERANCE_FRACTION} * c.cycle)
    )
    -- who browsed the product's category recently and often; R-RP-10: among a consumer's due
    -- products the one behaviour favours most (most category events, then the most recent
    -- event, then the lowest product_id)
    SELECT DISTINCT ON (d.consumer_id) d.consumer_id, d.product_id AS item
    FROM due d
    CROSS JOIN LATERAL (
        SELECT count(*) AS events, max(e.occurred_at) AS last_at
        FROM behaviour_events e
        WHERE e.shop_id = $1 AND e.consumer_id = d.consumer_id AND e.kind IN ({_KINDS})
          AND e.occurred_at >= $2::timestamptz - interval '{BROWSE_DAYS} days'
          AND e.occurred_at < $2::timestamptz
          AND e.product_id = ANY(d.category_products)
    ) b
    WHERE b.events >= {BROWSE_MIN}
      AND $3::timestamptz IS NOT NULL  -- every audience takes the same three parameters
    ORDER BY d.consumer_id, b.events DESC, b.last_at DESC, d.product_id
"""

# R-RP-2. Cost model (indexes of db/migrations/0001_core.sql and 0014_repurchase_indexes.sql):
# - baskets: the shop's paid orders of the last BASKET_DAYS joined to their lines (a hash join or
#   orders_shop_consumer), materialised once (the CTE is read four times). O(shop's orders in
#   BASKET_DAYS): the basket count and A's frequencies need every basket.
# - pairs: a self-join of the window's basket lines on order_id (merge or hash join), only with B
#   among the offered products: O(sum over baskets of lines x offered lines), small for ordinary
#   baskets (a giant basket costs its square). Frequencies, the basket count: hash aggregates.
# - owners of a kept B (any time before the snapshot): B's lines through order_items_product and
#   an orders primary-key probe per line, as REPURCHASE_CYCLE reads its purchases. O(B's lines).
# - targets: the window's lines of A joined to the kept rules, and the owners' rows, in ONE
#   aggregate per (consumer, B) that drops the groups holding an owner: "never bought B" is an
#   anti-join no plan setting can turn into a per-candidate probe (it was a NOT EXISTS that, under
#   the refresh's nested-loop ban, scanned order_items per candidate: minutes at 200,000
#   customers; a NOT EXISTS over the owners became a nested-loop anti-join with nested loops on).
#   Then the interest: one range of behaviour_shop_consumer (shop_id, consumer_id; kind and
#   occurred_at tested in the index) per remaining candidate, events tested against the array of
#   B's category's products. O(candidates x the consumer's recent events).
# Measured (PostgreSQL 18, the 200,000-customer bench shop: 570k basket lines in the window, 24k
# lines of the Bs, 11,057 recipients; one part, backend CPU seconds, load average 9-16): 1.87 s
# with the refresh's nested-loop ban and 1.83 s without it; the former statement: 2.38 s without
# the ban and minutes with it. The same (consumer, item) rows at two snapshots.
CROSS_SELL = f"""
    WITH items AS (
        -- basket lines: the shop's paid orders of the window before the snapshot
        SELECT o.order_id, o.consumer_id, oi.product_id
        FROM orders o JOIN order_items oi ON oi.order_id = o.order_id
        WHERE o.shop_id = $1 AND o.status = 'paid'
          AND o.created_at >= $2::timestamptz - interval '{BASKET_DAYS} days'
          AND o.created_at < $2::timestamptz
    ),
    baskets AS (SELECT count(DISTINCT i.order_id)::float8 AS n FROM items i),
    freq AS (SELECT i.product_id, count(*)::float8 AS n FROM items i GROUP BY i.product_id),
    offered AS (
        SELECT p.product_id, {_CATEGORY_PRODUCTS.format(category="p.category")} AS category_products FROM products p
        WHERE p.shop_id = $1 AND p.on_shelf AND p.product_id IN ({_OFFERED_IDS})
    ),
    pairs AS (
        -- (A, B): baskets holding both, B a product with an exclusive coupon (R-RP-10)
        SELECT a.product_id AS a_id, b.product_id AS b_id, count(*)::float8 AS n_ab
        FROM items a JOIN items b ON b.order_id = a.order_id AND b.product_id <> a.product_id
        WHERE b.product_id IN (SELECT f.product_id FROM offered f)
        GROUP BY a.product_id, b.product_id
        HAVING count(*) >= {MIN_PAIR_BASKETS}
    ),
    rules AS (
        -- support = n_ab / N, confidence = n_ab / n_a, lift = P(A and B) / (P(A) P(B)) = n_ab N / (n_a n_b)
        SELECT r.a_id, r.b_id, r.support, r.confidence, r.lift FROM (
            SELECT pr.a_id, pr.b_id,
                   pr.n_ab / bk.n AS support,
                   pr.n_ab / fa.n AS confidence,
                   pr.n_ab * bk.n / (fa.n * fb.n) AS lift
            FROM pairs pr
            JOIN freq fa ON fa.product_id = pr.a_id
            JOIN freq fb ON fb.product_id = pr.b_id
            JOIN offered f ON f.product_id = pr.b_id
            CROSS JOIN baskets bk
        ) r
        WHERE r.lift > {MIN_LIFT}
    ),
    owners AS (
        -- who already bought a kept B (a paid order at any time before the snapshot) is not pushed B:
        -- B's lines through order_items_product, an orders primary-key probe per line
        SELECT o.consumer_id, oi.product_id AS b_id
        FROM order_items oi
        CROSS JOIN LATERAL (
            SELECT o.consumer_id FROM orders o
            WHERE o.order_id = oi.order_id AND o.shop_id = $1 AND o.status = 'paid' AND o.created_at < $2::timestamptz
            OFFSET 0) o
        WHERE oi.product_id = ANY(ARRAY(SELECT DISTINCT r.b_id FROM rules r))
    ),
    candidates AS (
        -- buyers of A in the window who never bought B, each B with its best lift over the A they bought:
        -- one aggregate over the (buyer, B) rows and the owners' rows, so that no plan setting can turn
        -- "never bought B" into a probe of the owners per candidate (the anti-join it is)
        SELECT x.consumer_id, x.b_id, max(x.lift) AS lift
        FROM (
            SELECT i.consumer_id, r.b_id, r.lift, false AS owner FROM items i JOIN rules r ON r.a_id = i.product_id
            UNION ALL
            SELECT w.consumer_id, w.b_id, NULL, true FROM owners w
        ) x
        GROUP BY x.consumer_id, x.b_id
        HAVING NOT bool_or(x.owner)
    )
    SELECT DISTINCT ON (c.consumer_id) c.consumer_id, c.b_id AS item
    FROM candidates c
    JOIN offered f ON f.product_id = c.b_id
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE e.product_id = c.b_id) AS on_b, count(*) AS on_category
        FROM behaviour_events e
        WHERE e.shop_id = $1 AND e.consumer_id = c.consumer_id AND e.kind IN ({_KINDS})
          AND e.occurred_at >= $2::timestamptz - interval '{INTEREST_DAYS} days'
          AND e.occurred_at < $2::timestamptz
          AND e.product_id = ANY(f.category_products)
    ) b
    WHERE $3::timestamptz IS NOT NULL  -- every audience takes the same three parameters
    -- R-RP-10: the best B by lift plus browsing interest, then by lift, then the lowest product_id
    ORDER BY c.consumer_id,
             c.lift + {INTEREST_WEIGHT} * (ln(1 + b.on_b) + ln(1 + b.on_category)) DESC,
             c.lift DESC, c.b_id
"""

AUDIENCES: dict[str, str] = {"repurchase_cycle": REPURCHASE_CYCLE, "cross_sell": CROSS_SELL}


def names() -> frozenset[str]:
    return frozenset(AUDIENCES)
