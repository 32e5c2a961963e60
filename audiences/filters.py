"""Named filters a plan applies after its audience, each dropping recipients for one reason.

The refresh evaluates them as CASE branches after the exclusions (R-EXC-1) and
"already reached", in the order the plan lists them; the first that applies
names the reason counted in the refresh's exclusions. Parameters as in the
refresh statement: $1 shop_id, $2 snapshot instant, $6 day, $10 the earlier
overlapping campaigns' ids (read with EARLIER_SAME_KIND).
"""

from __future__ import annotations

OVERLAP = "overlap_same_kind"
LOW_ACTIVITY = "low_activity"

# R-OC-7: likely readers logged in, visited, viewed live, favourited within 30 days or read a message within 90.
_LOW_ACTIVITY = """NOT EXISTS (
    SELECT 1 FROM behaviour_events a
    WHERE a.shop_id = $1 AND a.consumer_id = m.consumer_id AND a.occurred_at < $2::timestamptz
      AND ((a.kind IN ('login', 'visit', 'live_view', 'favourite') AND a.occurred_at >= $2::timestamptz - interval '30 days')
        OR (a.kind = 'message_read' AND a.occurred_at >= $2::timestamptz - interval '90 days')))"""

# R-OC-6: the shop's earlier live campaigns of the same kind; $1 shop_id, $2 this campaign's id, $3 its kind.
EARLIER_SAME_KIND = """SELECT coalesce(array_agg(id), '{}') FROM campaigns
    WHERE shop_id = $1 AND kind = $3 AND id < $2 AND state NOT IN ('cancelled', 'failed')"""

# name -> (CASE branch, join it needs)
_FILTERS: dict[str, tuple[str, str]] = {
    # R-OC-6: who an earlier task of the shop has in today's snapshot, as one hashed set
    # (a probe per recipient needed an index on the snapshot that cost more to keep than it saved).
    OVERLAP: (
        "WHEN o.consumer_id IS NOT NULL THEN 'overlap'",
        "LEFT JOIN (SELECT DISTINCT consumer_id FROM audience_snapshots"
        " WHERE campaign_id = ANY($10::bigint[]) AND day = $6) o ON o.consumer_id = m.consumer_id",
    ),
    LOW_ACTIVITY: (f"WHEN {_LOW_ACTIVITY} THEN 'low_activity'", ""),
}
NAMES = frozenset(_FILTERS)


def sql(filters) -> tuple[str, str]:
    """The CASE branches and joins of these filters (names checked against NAMES by the caller)."""
    chosen = [_FILTERS[name] for name in filters]
    return "\n                 ".join(b for b, _ in chosen), "\n        ".join(j for _, j in chosen if j)
