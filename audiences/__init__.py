"""The audience library: named audiences and the filters a plan may apply after them.

An audience is a set-based SQL query over the shop's data as of the snapshot
instant (R-OC-5: T+1, data before 00:00 of the send day), yielding
`consumer_id`. Its parameters are always $1 shop_id, $2 the snapshot
instant, $3 the campaign's start instant. A kind names the audience of each
phase in its plan (kinds/); the refresh (activities/audience.py) evaluates it
into the day's snapshot. A new audience is a new entry here.

A filter (audiences/filters.py) drops recipients of an audience for a named
reason (`overlap`, `low_activity`); a plan lists the filters its phase
applies.
"""

from __future__ import annotations

# $1 shop_id, $2 snapshot instant, $3 campaign start instant. Each yields consumer_id.
AUDIENCES: dict[str, str] = {
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


def names() -> frozenset[str]:
    return frozenset(AUDIENCES)
