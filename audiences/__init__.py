"""The audience library: named audiences and the filters a plan may apply after them.

An audience is a set-based SQL query over the shop's data as of the snapshot
instant (R-OC-5: T+1, data before 00:00 of the send day), yielding
`consumer_id` and, for audiences that choose a product per recipient
(R-RP-10), `item`. Its parameters are $1 shop_id, $2 the snapshot instant,
$3 the campaign's start instant, and from $11 on the audience's own
parameters (`Audience.params`, taken by name from the plan's
`audience_params`). A kind names the audience of each phase in its plan
(kinds/); the refresh (activities/audience.py) evaluates it into the day's
snapshot. A new audience is a new entry here. The merchant's custom audience
(`custom`) is a filter compiled to SQL at refresh (audiences/custom.py).

An audience yields the shop's customers unless it says otherwise
(`reaches_non_customers`): the platform's industry-value audience
(audiences/industry.py) yields consumers without a shop_customers row too,
and the refresh and the send path then read their contact and opt-outs from
the platform's row (activities/audience.py). A plan's `audience_params["tags"]`
narrows any audience to the shop's customers holding one of the tags
(audiences/tags.py, R-RP-3).

A filter (audiences/filters.py) drops recipients of an audience for a named
reason (`overlap`, `low_activity`); a plan lists the filters its phase
applies.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Audience:
    sql: str
    yields_item: bool = False  # the query yields `item` too: the product pushed to the recipient
    params: tuple[str, ...] = ()  # names of the plan's audience_params bound as $11, $12, ...
    description: str = ""
    # It yields consumers who are not customers of the shop (no shop_customers row): the refresh and the
    # send path then LEFT JOIN the shop's row and fall back on the platform's (consumers) for contact
    # and opt-outs. Off, they keep the inner join of the shop's customers.
    reaches_non_customers: bool = False


CUSTOM = "custom"  # the merchant's filter (audiences/custom.py), compiled at refresh
INDUSTRY_VALUE = "industry_value"  # the platform's (audiences/industry.py), R-RP-3
# audience_params: the custom audience joined with the industry-value audience (R-RP-3), and the tags
# narrowing any audience (audiences/tags.py).
WITH_INDUSTRY_VALUE = "industry_value"
TAGS = "tags"


# $1 shop_id, $2 snapshot instant, $3 campaign start instant. Each yields consumer_id.
_SQL: dict[str, str] = {
    # R-OC-1: purchase within 365 days and a shop visit or live view within 90 days.
    "oldcust_valid": """
        SELECT c.consumer_id FROM shop_customers c
        WHERE c.shop_id = $1
          AND EXISTS (SELECT 1 FROM orders o
                      WHERE o.shop_id = $1 AND o.consumer_id = c.consumer_id AND o.status <> 'pending'
                        AND o.created_at >= $2::timestamptz - interval '365 days' AND o.created_at < $2::timestamptz)
          AND EXISTS (SELECT 1 FROM behaviour_events e
                      WHERE e.shop_id = $1 AND e.consumer_id = c.consumer_id
                        AND e.kind IN ('visit', 'live_view')
                        AND e.occurred_at >= $2::timestamptz - interval '90 days' AND e.occurred_at < $2::timestamptz)
          AND $3::timestamptz IS NOT NULL  -- every audience takes the same three parameters
    """,
    # R-PH-4: an inquiry (chat consultation) in the last 30 days.
    "inquired_30d": """
        SELECT DISTINCT e.consumer_id FROM behaviour_events e
        WHERE e.shop_id = $1 AND e.kind = 'inquiry'
          AND e.occurred_at >= $2::timestamptz - interval '30 days' AND e.occurred_at < $2::timestamptz
          AND $3::timestamptz IS NOT NULL  -- every audience takes the same three parameters
    """,
    # R-PH-4: recall = inquired in the last 30 days and no order since the campaign started.
    "inquired_30d_no_order_since_start": """
        SELECT DISTINCT e.consumer_id FROM behaviour_events e
        WHERE e.shop_id = $1 AND e.kind = 'inquiry'
          AND e.occurred_at >= $2::timestamptz - interval '30 days' AND e.occurred_at < $2::timestamptz
          AND NOT EXISTS (SELECT 1 FROM orders o
                          WHERE o.shop_id = $1 AND o.consumer_id = e.consumer_id
                            AND o.created_at >= $3 AND o.created_at < $2::timestamptz)
    """,
    # R-RP-3: a merchant's custom audience: every customer of the shop (the benchmark's phase day).
    "shop_all": """
        SELECT c.consumer_id FROM shop_customers c
        WHERE c.shop_id = $1
          AND $2::timestamptz IS NOT NULL AND $3::timestamptz IS NOT NULL  -- the same three parameters
    """,
}


AUDIENCES: dict[str, Audience] = {name: Audience(sql) for name, sql in _SQL.items()}


def _register_item_audiences() -> None:
    # K-REPURCHASE's own (R-RP-1, R-RP-2): each recipient with the product to push, among the products of
    # the campaign's exclusive coupons ($11, R-RP-10).
    from sluice.audiences import repurchase

    for name, sql in repurchase.AUDIENCES.items():
        AUDIENCES[name] = Audience(sql, yields_item=True, params=("coupon_ids",))


_register_item_audiences()


def _register_platform_audiences() -> None:
    from sluice.audiences import industry

    AUDIENCES[INDUSTRY_VALUE] = Audience(industry.INDUSTRY_VALUE, reaches_non_customers=True,
                                         description="consumers of high value in the shop's industry (R-RP-3)")


_register_platform_audiences()


def _register_acquire_audiences() -> None:
    # K-ACQUIRE's (R-AQ-1): consumers of the shop's industry, mostly not its customers.
    from sluice.audiences import acquire

    for name, (sql, description) in acquire.AUDIENCES.items():
        AUDIENCES[name] = Audience(sql, reaches_non_customers=True, description=description)


_register_acquire_audiences()


def _register_edm_audiences() -> None:
    # K-EDM's system audiences (R-ED-1, audiences/edm.py).
    from sluice.audiences import edm

    for name, sql in edm.AUDIENCES.items():
        AUDIENCES[name] = Audience(sql)


_register_edm_audiences()


def reaches_non_customers(audience: str, params: dict) -> bool:
    """Whether the audience (with these audience_params) may yield consumers who are not customers of
    the shop: the one answer the refresh and the send path both follow."""
    if audience == CUSTOM:
        return params.get(WITH_INDUSTRY_VALUE) is True
    aud = AUDIENCES.get(audience)
    return aud is not None and aud.reaches_non_customers


# R-RP-3: the merchant's filter and the platform's industry-value audience, as one audience: whoever
# either selects (the industry-value audience is one more audience the merchant may add to theirs).
_UNION = """
    SELECT u.consumer_id FROM (({custom}) UNION ({industry})) u
"""


def custom_with_industry_value(custom_sql: str) -> str:
    """The custom audience's query joined with the industry-value audience (same $1..$3)."""
    return _UNION.replace("{industry}", AUDIENCES[INDUSTRY_VALUE].sql).replace("{custom}", custom_sql)

# R-RP-10 for an audience that chooses no product (a custom one): each recipient's product is the one of
# the campaign's coupons' products ($n) they engaged with most in the last 30 days (views, visits, carts,
# favourites), the most recent first on a tie, then the lowest id; without such events, the lowest id.
# Set-based: one aggregate of those products' events per (consumer, product), the best product per consumer
# (DISTINCT ON), hashed and joined to the audience, instead of an index range of behaviour_shop_consumer per
# recipient and coupon (3,000,000 ranges for a 1,000,000-recipient audience with three coupons). The events
# are an index-only range per product (behaviour_product_engagement, migration 0026), and only the consumers
# of the refresh's part ({part}) are aggregated. At the 1M bench shop (PostgreSQL 15, one of two parts): 840,000
# index entries read in 0.18 s, their 420,000 of the part aggregated into 213,700 (consumer, product) groups and
# 206,300 choices in 0.4 s more (a hash aggregate instead of the sort measured the same). Measured: see
# docs/benchmarks.md (K-REPURCHASE).
_FAVOURED_ITEM = """
        SELECT DISTINCT ON (b.consumer_id) b.consumer_id, b.product_id
        FROM (
            SELECT e.consumer_id, e.product_id, count(*) AS n, max(e.occurred_at) AS last FROM behaviour_events e
            WHERE e.shop_id = $1
              AND e.product_id = ANY(ARRAY(SELECT cp.product_id FROM coupons cp
                  WHERE cp.coupon_id = ANY(${coupons}::text[]) AND cp.shop_id = $1 AND cp.product_id IS NOT NULL))
              AND e.kind IN ('view', 'visit', 'cart', 'favourite')
              AND e.occurred_at >= $2::timestamptz - interval '30 days' AND e.occurred_at < $2::timestamptz
              AND {part}
            GROUP BY e.consumer_id, e.product_id
        ) b
        ORDER BY b.consumer_id, b.n DESC, b.last DESC, b.product_id
"""
# The recipient's product over `ch`, a row of _FAVOURED_ITEM; without one (no such events) the coupons' lowest
# product id.
_ITEM = """coalesce(ch.product_id, (SELECT min(cp.product_id) FROM coupons cp
        WHERE cp.coupon_id = ANY(${coupons}::text[]) AND cp.shop_id = $1 AND cp.product_id IS NOT NULL))"""
_CHOOSE_ITEM = """
    SELECT a.consumer_id, {item} AS item
    FROM ({audience}) a
    LEFT JOIN ({favoured}) ch ON ch.consumer_id = a.consumer_id
"""


@dataclass(frozen=True)
class ItemChoice:
    """R-RP-10's choice as SQL pieces: `favoured` yields (consumer_id, product_id) for the consumers with events
    (LEFT JOIN it as `ch`), `item` the recipient's product over `ch` (the lowest coupon product without a row)."""

    favoured: str
    item: str


def item_choice(coupons_param: int, part: str = "true") -> ItemChoice:
    """The product choice (R-RP-10) with the coupons at $coupons_param. `part`: a predicate over the events'
    `e.consumer_id` keeping the consumers of the statement's part (the refresh's parts split the audience by
    consumer; each needs only its own consumers' choices)."""
    coupons = str(int(coupons_param))
    return ItemChoice(_FAVOURED_ITEM.replace("{coupons}", coupons).replace("{part}", part), _ITEM.replace("{coupons}", coupons))


def with_item_choice(audience_sql: str, coupons_param: int, part: str = "true") -> str:
    """An audience yielding only consumer_id, given each recipient's product (R-RP-10); the coupons at $n.
    `part` as in `item_choice`."""
    choice = item_choice(coupons_param, part)
    return (_CHOOSE_ITEM.replace("{item}", choice.item).replace("{favoured}", choice.favoured)
            .replace("{audience}", audience_sql))


def names() -> frozenset[str]:
    return frozenset(AUDIENCES) | {CUSTOM}
