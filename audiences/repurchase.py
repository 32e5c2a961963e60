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


# The category of a browsing event's product (NULL for none or another shop's): a products
# primary-key probe per event. A scalar subquery rather than a join inside the per-consumer
# LATERAL, where a join may be planned as a hash of the shop's products rebuilt for every consumer.
_EVENT_CATEGORY = "(SELECT bp.category FROM products bp WHERE bp.product_id = e.product_id AND bp.shop_id = $1)"

# R-RP-1. Cost model (indexes of db/migrations/0001_core.sql):
# - purchases: the shop's orders through orders_shop_consumer (shop_id, consumer_id, created_at):
#   the whole shop's index range is walked (created_at is tested in the index, it is no range on
#   the index's order), a heap fetch per order for status; a sequential scan of orders when the
#   shop is a large share of the table. order_items by its primary key (order_id, product_id), or
#   one hash join over order_items. O(shop's orders in CYCLE_HISTORY_DAYS).
# - the cycle estimate: a sort of the purchases by (consumer, product, instant) for lag(), then
#   per-product and per-category percentile_cont (a sort per group); products by primary key or
#   products_shop (shop_id). O(purchases log purchases). It depends only on the shop and the day,
#   yet the refresh evaluates the audience once per part (SLUICE_REFRESH_PARTS) and recomputes it.
# - browsing: a LATERAL aggregate per due (consumer, product): one range of behaviour_shop_consumer
#   (shop_id = $1, consumer_id, then kind and occurred_at tested in the index), a products
#   primary-key probe per event for its category. O(due pairs x the consumer's events): due pairs
#   are the buyers whose last purchase falls in the tolerance window, a small slice.
# Measured (PostgreSQL 15, 100k consumers, 400k orders, 1.5M events): 4.5 s, the purchases scan,
# DISTINCT and the sorts taking ~3 s. At 1M customers that scan dominates (~10x): it reads every
# order of the shop, pending and refunded included, and their heap pages. It would need an index
# in the window's order, `orders (shop_id, created_at) INCLUDE (order_id, consumer_id) WHERE
# status = 'paid'` (an index-only range scan of the paid orders of the window), and the per-product
# estimate would better be materialised once a day (e.g. into a products-side column) than
# recomputed per part. Browsing needs no new index. No migration is added here.
REPURCHASE_CYCLE = f"""
    WITH purchases AS (
        -- one row per buyer, product and purchase instant: the shop's paid orders before the snapshot
        SELECT DISTINCT o.consumer_id, oi.product_id, o.created_at AS bought_at
        FROM orders o JOIN order_items oi ON oi.order_id = o.order_id
        WHERE o.shop_id = $1 AND o.status = 'paid'
          AND o.created_at >= $2::timestamptz - interval '{CYCLE_HISTORY_DAYS} days'
          AND o.created_at < $2::timestamptz
    ),
    gaps AS (
        -- the intervals in days between one buyer's consecutive purchases of the same product
        SELECT g.product_id, g.days FROM (
            SELECT pu.product_id,
                   extract(epoch FROM pu.bought_at - lag(pu.bought_at) OVER (
                       PARTITION BY pu.consumer_id, pu.product_id ORDER BY pu.bought_at)) / 86400.0 AS days
            FROM purchases pu
        ) g
        WHERE g.days IS NOT NULL
    ),
    product_cycle AS (
        SELECT g.product_id, count(*) AS samples,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY g.days) AS median
        FROM gaps g GROUP BY g.product_id
    ),
    category_cycle AS (
        -- the fallback: the median over all intervals of the category's products
        SELECT p.category, percentile_cont(0.5) WITHIN GROUP (ORDER BY g.days) AS median
        FROM gaps g JOIN products p ON p.product_id = g.product_id AND p.shop_id = $1
        GROUP BY p.category
        HAVING count(*) >= {MIN_CATEGORY_SAMPLE}
    ),
    offered AS (
        -- R-RP-10: the products with an exclusive coupon, each with its cycle C (R-RP-1): the
        -- merchant's repurchase_cycle_days, else the product's own median, else its category's
        SELECT p.product_id, p.category,
               coalesce(CASE WHEN p.repurchase_cycle_days > 0 THEN p.repurchase_cycle_days::float8 END,
                        CASE WHEN pc.samples >= {MIN_CYCLE_SAMPLE} THEN pc.median END,
                        cc.median) AS cycle
        FROM products p
        LEFT JOIN product_cycle pc ON pc.product_id = p.product_id
        LEFT JOIN category_cycle cc ON cc.category = p.category
        WHERE p.shop_id = $1 AND p.on_shelf AND p.product_id IN ({_OFFERED_IDS})
    ),
    due AS (
        -- buyers whose LAST purchase of an offered product is about 0.73 C before the snapshot
        SELECT pu.consumer_id, f.product_id, f.category
        FROM purchases pu JOIN offered f ON f.product_id = pu.product_id
        WHERE f.cycle >= {MIN_CYCLE_DAYS}
        GROUP BY pu.consumer_id, f.product_id, f.category, f.cycle
        HAVING abs(extract(epoch FROM $2::timestamptz - max(pu.bought_at)) / 86400.0 - {TARGET_FRACTION} * f.cycle)
               <= greatest({TOLERANCE_MIN_DAYS}, {TOLERANCE_FRACTION} * f.cycle)
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
          AND {_EVENT_CATEGORY} = d.category
    ) b
    WHERE b.events >= {BROWSE_MIN}
      AND $3::timestamptz IS NOT NULL  -- every audience takes the same three parameters
    ORDER BY d.consumer_id, b.events DESC, b.last_at DESC, d.product_id
"""

# R-RP-2. Cost model (indexes of db/migrations/0001_core.sql):
# - baskets: the shop's paid orders of the last BASKET_DAYS, read as REPURCHASE_CYCLE reads its
#   purchases (orders_shop_consumer over the whole shop or a sequential scan; order_items by primary
#   key or a hash join), materialised once (the CTE is read four times). O(shop's orders).
# - pairs: a self-join of the window's basket lines on order_id (merge or hash join), only with B
#   among the offered products: O(sum over baskets of lines x offered lines), small for ordinary
#   baskets (a giant basket costs its square). Frequencies, the basket count: hash aggregates.
# - targets: the window's lines of A joined to the kept pairs (hash), grouped per (consumer, B);
#   per candidate, NOT EXISTS a paid purchase of B: orders_shop_consumer (shop_id, consumer_id,
#   created_at < $2) and an order_items primary-key probe (order_id, B) per order of the consumer;
#   and the interest: one range of behaviour_shop_consumer (shop_id, consumer_id; kind and
#   occurred_at tested in the index) with a products primary-key probe per event.
#   O(candidates x (the consumer's orders + the consumer's events)).
# Measured (PostgreSQL 15, 100k consumers, 400k orders, 1.5M events, 85 kept pairs, 280k
# candidates): 9.4 s, the per-candidate probes taking ~7 s. At 1M customers the candidates grow
# with the shop (~10x); no index is missing for the probes (each is an index range of one
# consumer), the basket scan wants the same `orders (shop_id, created_at) INCLUDE (order_id,
# consumer_id) WHERE status = 'paid'` as REPURCHASE_CYCLE, and the association rules depend only
# on the shop and the day: computing them once a day would spare recomputing them per refresh
# part. No migration is added here.
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
        SELECT p.product_id, p.category FROM products p
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
        SELECT r.a_id, r.b_id, r.category, r.support, r.confidence, r.lift FROM (
            SELECT pr.a_id, pr.b_id, f.category,
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
    candidates AS (
        -- buyers of A in the window, each B with its best lift over the A they bought
        SELECT i.consumer_id, r.b_id, r.category, max(r.lift) AS lift
        FROM items i JOIN rules r ON r.a_id = i.product_id
        GROUP BY i.consumer_id, r.b_id, r.category
    )
    SELECT DISTINCT ON (c.consumer_id) c.consumer_id, c.b_id AS item
    FROM candidates c
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE e.product_id = c.b_id) AS on_b, count(*) AS on_category
        FROM behaviour_events e
        WHERE e.shop_id = $1 AND e.consumer_id = c.consumer_id AND e.kind IN ({_KINDS})
          AND e.occurred_at >= $2::timestamptz - interval '{INTEREST_DAYS} days'
          AND e.occurred_at < $2::timestamptz
          AND {_EVENT_CATEGORY} = c.category
    ) b
    WHERE NOT EXISTS (
            -- who already bought B (a paid order at any time before the snapshot) is not pushed B
            SELECT 1 FROM orders o JOIN order_items oi ON oi.order_id = o.order_id AND oi.product_id = c.b_id
            WHERE o.shop_id = $1 AND o.consumer_id = c.consumer_id AND o.status = 'paid'
              AND o.created_at < $2::timestamptz)
      AND $3::timestamptz IS NOT NULL  -- every audience takes the same three parameters
    -- R-RP-10: the best B by lift plus browsing interest, then by lift, then the lowest product_id
    ORDER BY c.consumer_id,
             c.lift + {INTEREST_WEIGHT} * (ln(1 + b.on_b) + ln(1 + b.on_category)) DESC,
             c.lift DESC, c.b_id
"""

AUDIENCES: dict[str, str] = {"repurchase_cycle": REPURCHASE_CYCLE, "cross_sell": CROSS_SELL}


def names() -> frozenset[str]:
    return frozenset(AUDIENCES)
