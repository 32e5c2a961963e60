"""R-WIN-1 per recipient: a recipient with a zone of their own is sent inside their own 08:00-22:00.

The day's first pass (activities/send.py) leaves a recipient whose local clock is outside the window at the
chunk's hand-off undecided (`window_deferred_sql`): no ledger row, no cap taken. The workflow then asks which
zones still wait (`waiting_zones`: zones and counts, never recipients), sleeps until the next of them opens
(workflows/calendar.py, `next_window_open`) and runs the day's slices again; when none opens before the
shop's next day, whoever still waits is recorded `not_sent` with the reason (`close_waiting`), so the
ledger holds one decision per snapshot row (docs/rules.md, R-WIN-1; docs/design.md, "Recipients in their
own window").
"""

from __future__ import annotations

import asyncpg
from sluice.activities.context import bind_activity_context
from sluice.schemas.activities import NOT_SENT_RECIPIENT_WINDOW, WaitingInput, WaitingZones
from sluice.schemas.rules import WINDOW_CLOSE, WINDOW_OPEN
from sluice.workers import metrics
from temporalio import activity


def window_deferred_sql(instant: str, later_pass: bool) -> str:
    """R-WIN-1 for the snapshot row `s` at the hand-off `instant`: true when the recipient waits.

    With a zone (audience_snapshots.timezone, resolved by the refresh): while their local clock is outside
    [WINDOW_OPEN, WINDOW_CLOSE) of schemas/rules.py, the test of calendar.in_window; the zone is read only for
    these rows. Without: the shop's window, which is the slice's `window_end` in the day's first pass (never
    waiting there) and has closed or was used up by then in a later one (always waiting there)."""
    local = f"({instant}::timestamptz AT TIME ZONE s.timezone)::time"
    outside = f"NOT ({local} >= '{WINDOW_OPEN.isoformat()}'::time AND {local} < '{WINDOW_CLOSE.isoformat()}'::time)"
    return f"CASE WHEN s.timezone IS NULL THEN {'true' if later_pass else 'false'} ELSE {outside} END"


# The zones of a phase day's recipients that have a zone and no ledger row yet, with their counts. $1 campaign,
# $2 phase, $3 day, $4 channel. A range of the snapshot's key and a primary-key probe of the ledger per zoned row,
# as a scalar subquery: as NOT EXISTS, a day newer than the statistics was planned as a nested-loop anti join
# that scanned the day's ledger for every zoned row (12 s at 18,000 recipients; docs/design.md, "Statistics
# that do not know today").
WAITING_ZONES = """
    SELECT s.timezone, count(*)::int AS n
    FROM audience_snapshots s
    WHERE s.campaign_id = $1 AND s.phase = $2 AND s.day = $3 AND s.timezone IS NOT NULL
      AND (SELECT d.state FROM deliveries d WHERE d.campaign_id = $1 AND d.phase = $2 AND d.consumer_id = s.consumer_id
                                              AND d.day = $3 AND d.channel = $4) IS NULL
    GROUP BY s.timezone ORDER BY s.timezone
"""
# Who still waits when no zone of theirs opens before the shop's next day: not_sent with the reason $7, no cap
# taken (R-OC-8). Idempotent: decided rows keep their decision. $5 shop, $6 template group, $8 decided_at.
CLOSE_WAITING = """
    WITH ins AS (
        INSERT INTO deliveries (campaign_id, phase, consumer_id, day, channel, shop_id, template_group,
                                fatigue_day, state, reason, decided_at)
        SELECT s.campaign_id, s.phase, s.consumer_id, s.day, $4, $5, $6, $3, 'not_sent', $7, $8
        FROM audience_snapshots s
        WHERE s.campaign_id = $1 AND s.phase = $2 AND s.day = $3 AND s.timezone IS NOT NULL
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT count(*)::int FROM ins
"""


class WindowActivities:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    @activity.defn
    async def waiting_zones(self, inp: WaitingInput) -> WaitingZones:
        rows = await self.pool.fetch(WAITING_ZONES, inp.campaign_db_id, inp.phase_index, inp.day, inp.channel.value)
        return WaitingZones(zones={r["timezone"]: r["n"] for r in rows})

    @activity.defn
    async def close_waiting(self, inp: WaitingInput) -> int:
        n = await self.pool.fetchval(
            CLOSE_WAITING, inp.campaign_db_id, inp.phase_index, inp.day, inp.channel.value, inp.shop_id,
            inp.template_group, NOT_SENT_RECIPIENT_WINDOW, inp.decided_at,
        )  # fmt: skip
        metrics.count_deliveries(inp.channel.value, metrics.NOT_SENT, n)
        bind_activity_context(shop_id=inp.shop_id, campaign_db_id=inp.campaign_db_id).info(
            "recipients outside their own window all day", day=str(inp.day), not_sent=n
        )
        return n
