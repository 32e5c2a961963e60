"""K-EDM's system audiences (R-ED-1): active customers, L1+ potential customers, EDM read but not replied.

Each is one set-based statement yielding `consumer_id` once, over the shop's
own data strictly before the snapshot instant $2 (R-OC-5: T+1), windows
counted back from $2 in 24-hour days; $1 shop_id, $3 the campaign start
(unused, referenced so every audience takes the same three). The
definitions, in words (docs/rules.md, R-ED-1):

- `active_7d`, `active_30d`, `active_90d`: a customer who did something on
  the shop's pages within the last 7 / 30 / 90 days: one of SITE_KINDS
  (login, visit, product view, favourite, cart, inquiry, live view, coupon
  claim). Reading or clicking a message is not activity on the site.
- `l1_potential`: a potential customer is one who has never bought from the
  shop (no order other than a pending one before $2); "L1+" keeps the
  potential customers who showed purchase intent within the last 30 days: a
  cart, a favourite or an inquiry (INTENT_KINDS), more than a visit.
- `edm_read_no_reply_60d`: the shop emailed them (a `sent` email delivery
  of any of its campaigns) within the last 60 days, they read one of the
  shop's messages after that email (a `message_read` event) and sent no
  reply to the shop (`message_reply`) within the 60 days.

Every statement walks the (shop_id, consumer_id, kind, occurred_at) index of
behaviour_events; the emails are probed through the partial index
deliveries_shop_email (migration 0016).
"""

from __future__ import annotations

SITE_KINDS = ("login", "visit", "view", "favourite", "cart", "inquiry", "live_view", "coupon_claim")
INTENT_KINDS = ("cart", "favourite", "inquiry")

ACTIVE_7D, ACTIVE_30D, ACTIVE_90D = "active_7d", "active_30d", "active_90d"
L1_POTENTIAL = "l1_potential"  # intent within 30 days, never bought
READ_NO_REPLY = "edm_read_no_reply_60d"  # within 60 days


_SITE_KINDS_SQL = ", ".join(f"'{k}'" for k in SITE_KINDS)
_INTENT_KINDS_SQL = ", ".join(f"'{k}'" for k in INTENT_KINDS)

# R-ED-1: active on the shop's pages within `days`; one statement per window (the days are literals: SQL is
# constant text).
def _active_within(days: int) -> str:
    return f"""
        SELECT DISTINCT e.consumer_id FROM behaviour_events e
        WHERE e.shop_id = $1 AND e.kind IN ({_SITE_KINDS_SQL})
          AND e.occurred_at >= $2::timestamptz - interval '{int(days)} days' AND e.occurred_at < $2::timestamptz
          AND $3::timestamptz IS NOT NULL  -- every audience takes the same three parameters
    """


_L1_POTENTIAL = f"""
        SELECT DISTINCT e.consumer_id FROM behaviour_events e
        WHERE e.shop_id = $1 AND e.kind IN ({_INTENT_KINDS_SQL})
          AND e.occurred_at >= $2::timestamptz - interval '30 days' AND e.occurred_at < $2::timestamptz
          AND NOT EXISTS (SELECT 1 FROM orders o
                          WHERE o.shop_id = $1 AND o.consumer_id = e.consumer_id AND o.status <> 'pending'
                            AND o.created_at < $2::timestamptz)
          AND $3::timestamptz IS NOT NULL  -- every audience takes the same three parameters
    """

_READ_NO_REPLY = """
        SELECT DISTINCT e.consumer_id FROM behaviour_events e
        WHERE e.shop_id = $1 AND e.kind = 'message_read'
          AND e.occurred_at >= $2::timestamptz - interval '60 days' AND e.occurred_at < $2::timestamptz
          AND EXISTS (SELECT 1 FROM deliveries d
                      WHERE d.shop_id = $1 AND d.consumer_id = e.consumer_id AND d.channel = 'email' AND d.state = 'sent'
                        AND d.decided_at >= $2::timestamptz - interval '60 days'
                        AND d.decided_at <= e.occurred_at)
          AND NOT EXISTS (SELECT 1 FROM behaviour_events r
                          WHERE r.shop_id = $1 AND r.consumer_id = e.consumer_id AND r.kind = 'message_reply'
                            AND r.occurred_at >= $2::timestamptz - interval '60 days'
                            AND r.occurred_at < $2::timestamptz)
          AND $3::timestamptz IS NOT NULL  -- every audience takes the same three parameters
    """

# name -> SQL; registered in audiences.AUDIENCES.
AUDIENCES: dict[str, str] = {
    ACTIVE_7D: _active_within(7),
    ACTIVE_30D: _active_within(30),
    ACTIVE_90D: _active_within(90),
    L1_POTENTIAL: _L1_POTENTIAL,
    READ_NO_REPLY: _READ_NO_REPLY,
}
