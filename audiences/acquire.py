"""K-ACQUIRE's audiences (R-AQ-1): consumers of the shop's industry who are not yet its members or buyers.

The shop's industry is its top-level category (`shops.industry`, as for the industry-value
audience, audiences/industry.py); the industry's shops are every shop of that industry, this
one included. All three reach consumers who are not customers of the shop (no shop_customers
row): the platform's contacts (`Audience.reaches_non_customers`).

- `industry_active` (行业高活): high activity in the industry over ACTIVE_DAYS (views, visits,
  carts and favourites at the industry's shops, plus its orders that are not pending: at least
  ACTIVE_MIN_ACTIONS in all), and an interaction with this shop in the same days (any of
  SHOP_INTERACTION_KINDS). The seed lays the shop interaction over the industry activity; we read
  that as both, as the repurchase audience's "叠加" is read (R-RP-1): with "either" this audience
  and the brand switchers would be nearly the same set.
- `brand_switchers` (品牌摇摆): high activity in the industry as above, whose deep interactions
  (carts, favourites, orders not pending) happen at other shops of the industry: at least
  SWITCHER_MIN_DEEP of them at shops other than this one, over the same days.
- `external_members` (上翻): the shop's members outside the platform matched to platform
  consumers before the snapshot (`external_members`, db/migrations/0015_external_members.sql).

"Not members, not buyers" is one definition for every K-ACQUIRE audience, the custom one
included: the filter `non_members_non_buyers` (audiences/filters.py) drops the shop's members
(`shop_member`) and who ever ordered at the shop (`shop_buyer`), counted apart in the refresh.

Parameters as every audience: $1 shop_id, $2 the snapshot instant, $3 the campaign start
(unused, referenced so every audience takes the same three). Nothing at or after $2 counts.
"""

from __future__ import annotations

ACTIVE_DAYS = 90  # the window of the industry activity and the shop interaction, 24 h days before the snapshot
ACTIVE_MIN_ACTIONS = 5  # views / visits / carts / favourites / orders in the industry's shops: "多次" (several)
SWITCHER_MIN_DEEP = 3  # carts / favourites / orders at the industry's other shops: "高频" (frequent)
ACTIVE_KINDS = ("view", "visit", "cart", "favourite")
DEEP_KINDS = ("cart", "favourite")  # with the orders
SHOP_INTERACTION_KINDS = ("view", "visit", "cart", "favourite", "inquiry", "live_view", "coupon_claim")
ORDER = "order"  # the action an order counts as
_ACTIVE_SQL = ", ".join(f"'{k}'" for k in (*ACTIVE_KINDS, ORDER))
_DEEP_SQL = ", ".join(f"'{k}'" for k in (*DEEP_KINDS, ORDER))
_INTERACTION_SQL = ", ".join(f"'{k}'" for k in SHOP_INTERACTION_KINDS)  # ACTIVE_KINDS are among them

_INDUSTRY_SHOPS = (
    "ARRAY(SELECT s.shop_id FROM shops s WHERE s.industry = (SELECT own.industry FROM shops own WHERE own.shop_id = $1))"
)
_WINDOW = f"$2::timestamptz - {ACTIVE_DAYS} * interval '24 hours'"

# Every action of the window in the industry's shops: (consumer, shop, kind). Cost model (indexes of
# db/migrations/0001_core.sql and 0006): the industry's shops once (shops_industry, an InitPlan); then
# behaviour_shop_consumer (shop_id, consumer_id, kind, occurred_at) walked over each of those shops'
# whole range, kind and time tested in the index, and orders_shop_consumer (shop_id, consumer_id,
# created_at) likewise with a heap fetch per order in the window for its status; a hash aggregate per
# consumer. O(the industry's events and orders), like the industry-value audience, and like it a
# candidate for a daily per-industry materialisation at platform scale. Not measured yet.
_ACTIONS = f"""
    SELECT e.consumer_id, e.shop_id, e.kind FROM behaviour_events e
    WHERE e.shop_id = ANY({_INDUSTRY_SHOPS})
      AND e.kind IN ({_INTERACTION_SQL})
      AND e.occurred_at >= {_WINDOW} AND e.occurred_at < $2::timestamptz
    UNION ALL
    SELECT o.consumer_id, o.shop_id, '{ORDER}' FROM orders o
    WHERE o.shop_id = ANY({_INDUSTRY_SHOPS}) AND o.status <> 'pending'
      AND o.created_at >= {_WINDOW} AND o.created_at < $2::timestamptz
"""
_HIGH_ACTIVITY = f"count(*) FILTER (WHERE x.kind IN ({_ACTIVE_SQL})) >= {ACTIVE_MIN_ACTIONS}"

INDUSTRY_ACTIVE = f"""
    SELECT x.consumer_id FROM ({_ACTIONS}) x
    WHERE $3::timestamptz IS NOT NULL  -- every audience takes the same three parameters
    GROUP BY x.consumer_id
    HAVING {_HIGH_ACTIVITY}
       AND bool_or(x.shop_id = $1 AND x.kind IN ({_INTERACTION_SQL}))
"""

BRAND_SWITCHERS = f"""
    SELECT x.consumer_id FROM ({_ACTIONS}) x
    WHERE $3::timestamptz IS NOT NULL  -- every audience takes the same three parameters
    GROUP BY x.consumer_id
    HAVING {_HIGH_ACTIVITY}
       AND count(*) FILTER (WHERE x.shop_id <> $1 AND x.kind IN ({_DEEP_SQL})) >= {SWITCHER_MIN_DEEP}
"""

# One shop's range of the primary key external_members (shop_id, consumer_id).
EXTERNAL_MEMBERS = """
    SELECT x.consumer_id FROM external_members x
    WHERE x.shop_id = $1 AND x.matched_at < $2::timestamptz
      AND $3::timestamptz IS NOT NULL  -- every audience takes the same three parameters
"""

AUDIENCES: dict[str, tuple[str, str]] = {
    "industry_active": (INDUSTRY_ACTIVE, "high activity in the shop's industry and an interaction with the shop (R-AQ-1)"),
    "brand_switchers": (BRAND_SWITCHERS, "high activity in the shop's industry, deep at its other shops (R-AQ-1)"),
    "external_members": (EXTERNAL_MEMBERS, "the shop's members outside the platform, matched to consumers (R-AQ-1)"),
}
