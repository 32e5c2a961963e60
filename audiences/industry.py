"""The platform's industry-value audience (R-RP-3): consumers of high value in the shop's industry.

A consumer is in it when, over every shop of the shop's industry (`shops.industry`, the
top-level category; this shop included), their paid orders created in the window
[snapshot - INDUSTRY_VALUE_DAYS x 24 h, snapshot) number at least INDUSTRY_VALUE_MIN_ORDERS
and add up to at least INDUSTRY_VALUE_MIN_AMOUNT. A paid order is one with status 'paid'
(as for the repurchase audiences: 'pending' is no purchase yet, 'refunded' none any more);
nothing at or after the snapshot instant counts (R-OC-5).

It is the platform's audience, not the shop's: it yields consumers who are not customers of
the shop (no shop_customers row) as well as customers. The refresh reaches the former through
the platform's row (`Audience.reaches_non_customers`, activities/audience.py).

Parameters as every audience: $1 shop_id, $2 the snapshot instant, $3 the campaign start
(unused, referenced so every audience takes the same three).
"""

from __future__ import annotations

INDUSTRY_VALUE_DAYS = 180  # the window of paid orders, in 24 h days before the snapshot
INDUSTRY_VALUE_MIN_ORDERS = 2  # at least this many paid orders in the industry's shops ...
INDUSTRY_VALUE_MIN_AMOUNT = 300  # ... adding up to at least this amount (orders.amount)

# Cost model (indexes of db/migrations/0001_core.sql and 0006): the industry's shops through
# shops_industry (an InitPlan, once); then orders_shop_consumer (shop_id, consumer_id, created_at)
# with shop_id = ANY(those shops), created_at tested in the index, a heap fetch per order for its
# status and amount; a hash aggregate per consumer. O(the industry's orders): every order of every
# shop of the industry is walked, as REPURCHASE_CYCLE walks its shop's. The ANY keeps it an index
# scan: a join with shops would be a hash join over all orders under the refresh's nested-loop ban.
# Measured (PostgreSQL 15; 40 shops, 30 of the industry; 1M orders, 340k of the industry in the window;
# 100k customers of the shop, 95k consumers in the audience): 0.9 s for the refresh statement (parts=1),
# the orders bitmap scan 0.4 s, the aggregate 0.2 s, the platform-row probes of the 71k non-customers
# 0.2 s. It depends only on the industry and the day, yet the refresh evaluates it per part and per shop:
# at platform scale it should be materialised once a day per industry (and would want
# `orders (shop_id, created_at) INCLUDE (consumer_id, amount) WHERE status = 'paid'`).
INDUSTRY_VALUE = f"""
    SELECT o.consumer_id FROM orders o
    WHERE o.shop_id = ANY(ARRAY(SELECT s.shop_id FROM shops s
                                WHERE s.industry = (SELECT own.industry FROM shops own WHERE own.shop_id = $1)))
      AND o.status = 'paid'
      AND o.created_at >= $2::timestamptz - {INDUSTRY_VALUE_DAYS} * interval '24 hours' AND o.created_at < $2::timestamptz
      AND $3::timestamptz IS NOT NULL  -- every audience takes the same three parameters
    GROUP BY o.consumer_id
    HAVING count(*) >= {INDUSTRY_VALUE_MIN_ORDERS} AND sum(o.amount) >= {INDUSTRY_VALUE_MIN_AMOUNT}
"""
