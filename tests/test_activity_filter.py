"""R-OC-7: the activity filter drops exactly the recipients unlikely to read, in a real K-OLDCUST run.

A hand-built shop on real Postgres and the time-skipping server: every consumer is a valid old customer
(R-OC-1: an order, a visit 60 days before the snapshot) and one consumer stands for each case of the
filter: each activity kind just inside and just outside its window, an event at the snapshot instant
(R-OC-5), kinds the filter does not count, another shop's events, and the past read rate: high, low, on
the threshold, too few messages to judge, messages outside the window, another shop's messages or reads.
The run's refresh must drop exactly the expected set, with reason low_activity, and send to the rest.
"""

from __future__ import annotations

from datetime import time, timedelta

from sluice.audiences.filters import ACTIVE_DAYS, LOW_ACTIVITY, READ_RATE_DAYS, READ_RATE_MIN, READ_RATE_MIN_MESSAGES
from sluice.kinds.oldcust import FILTERS, OldCustomerSpec
from sluice.schemas.activities import EXCLUDED_LOW_ACTIVITY
from sluice.schemas.rules import OLDCUST_MIN_AUDIENCE
from sluice.workflows.calendar import day_window, local_day

from tests.factories import add_customers, make_shop
from tests.test_oldcust_workflow import TZ, _run

SHOP, OTHER = "act", "act-other"
FILLER = list(range(1, OLDCUST_MIN_AUDIENCE + 10))  # active, never messaged: the audience is large enough to send
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


def _cases(snap):
    """consumer -> (events [(shop, kind, at)], messages received [(shop, days before the send day, n)], dropped).

    Each case consumer also has the base visit 60 days before the snapshot (in the audience, not active)."""
    active = [(SHOP, "login", snap - 5 * DAY)]
    judged = READ_RATE_MIN_MESSAGES * 2  # 10 messages: the rate is judged
    at_threshold = round(READ_RATE_MIN * judged)  # 2 of 10 read: exactly the lowest rate kept

    def reads(n, shop=SHOP):
        return [(shop, "message_read", snap - (10 + i) * DAY) for i in range(n)]

    inside, outside = snap - (ACTIVE_DAYS * DAY - HOUR), snap - (ACTIVE_DAYS * DAY + HOUR)
    cases = {}
    n = 1000
    for kind in ("login", "visit", "live_view", "favourite"):
        cases[n] = ([(SHOP, kind, inside)], [], False)
        cases[n + 1] = ([(SHOP, kind, outside)], [], True)
        n += 2
    cases.update({
        1010: ([], [], True),  # only the base visit 60 days ago
        1011: ([(SHOP, "message_read", snap - (READ_RATE_DAYS * DAY - HOUR))], [], False),  # a read within 90 days
        1012: ([(SHOP, "message_read", snap - (READ_RATE_DAYS * DAY + HOUR))], [], True),  # a read just before
        1013: ([(SHOP, "login", snap)], [], True),  # at the snapshot instant: after it (R-OC-5)
        1014: ([(SHOP, "visit", snap + 9 * HOUR)], [], True),  # on the send day
        1015: ([(SHOP, k, snap - 2 * DAY) for k in ("cart", "inquiry", "coupon_claim", "message_click")], [], True),
        1016: ([(OTHER, k, snap - 2 * DAY) for k in ("login", "visit", "live_view", "favourite", "message_read")],
               [], True),  # active at another shop only
        # Past read rate (every one of these is active: a login 5 days ago).
        1020: (active + reads(judged // 2), [(SHOP, 20, judged)], False),  # half read
        1022: (active, [(SHOP, 20, judged)], True),  # none of 10 read
        1023: (active + reads(at_threshold), [(SHOP, 20, judged)], False),  # on the threshold: kept
        1024: (active + reads(at_threshold - 1), [(SHOP, 20, judged)], True),  # just below it
        1025: (active, [(SHOP, 20, READ_RATE_MIN_MESSAGES - 1)], False),  # too few messages to judge
        1026: (active, [(SHOP, 20, READ_RATE_MIN_MESSAGES)], True),  # just enough, none read
        1027: (active, [(SHOP, READ_RATE_DAYS + 1, judged)], False),  # messages before the window
        1028: (active, [(SHOP, 0, judged)], False),  # messages on the send day: after the snapshot
        1029: (active, [(OTHER, 20, judged)], False),  # another shop's messages
        1030: (active + reads(judged, OTHER), [(SHOP, 20, judged)], True),  # read another shop's messages only
        1031: (active, [(SHOP, 20, 3), (SHOP, 40, 3), (OTHER, 40, 5)], True),  # 6 of the shop's over two days
        # A high read rate keeps a consumer whose only activity is reading (within 90 days).
        1032: (reads(judged // 2), [(SHOP, 20, judged)], False),
    })  # fmt: skip
    return cases


async def _shop(pool, now, send_day) -> set[int]:
    """The shop, its customers and their history; the consumers the filter must drop."""
    snap = day_window(send_day, time(9, 30), TZ).snapshot_at
    await make_shop(pool, SHOP, TZ)
    await make_shop(pool, OTHER, TZ)
    ordered = now - timedelta(days=40)
    await add_customers(pool, SHOP, FILLER, ordered_at=ordered, visited_at=snap - 3 * DAY)
    cases = _cases(snap)
    await add_customers(pool, SHOP, list(cases), ordered_at=ordered, visited_at=snap - 60 * DAY)
    events, counters = [], {}
    for consumer, (evs, messages, _) in cases.items():
        events += [(shop, consumer, kind, at) for shop, kind, at in evs]
        for shop, days_before, n in messages:
            per_shop = counters.setdefault((consumer, send_day - timedelta(days=days_before)), {})
            per_shop[shop] = per_shop.get(shop, 0) + n
    await pool.copy_records_to_table(
        "behaviour_events", columns=["shop_id", "consumer_id", "kind", "occurred_at"], records=events)
    await pool.executemany(
        "INSERT INTO fatigue_day (consumer_id, day, sent, shops, per_shop) VALUES ($1, $2, $3, $4, $5)",
        [(c, d, sum(m.values()), len(m), m) for (c, d), m in counters.items()])
    return {c for c, (_, _, dropped) in cases.items() if dropped}


async def test_the_activity_filter_drops_exactly_the_unlikely_readers(clean_db, ts_env):
    pool = clean_db
    assert LOW_ACTIVITY in FILTERS  # K-OLDCUST applies the filter (R-OC-7)
    now = await ts_env.get_current_time()
    send_day = local_day(now, TZ) + DAY
    dropped = await _shop(pool, now, send_day)
    cases = _cases(day_window(send_day, time(9, 30), TZ).snapshot_at)
    assert dropped and dropped < set(cases)
    spec = OldCustomerSpec(kind="K-OLDCUST", shop_id=SHOP, campaign_id="act", scene="Spring", card_text="Hi",
                           send_date=send_day, send_time=time(9, 30))
    _, [result] = await _run(ts_env, pool, [spec])
    assert result.state == "completed"

    refresh = await pool.fetchrow("SELECT matched, eligible, excluded FROM audience_refreshes")
    assert refresh["matched"] == len(FILLER) + len(cases)
    assert refresh["excluded"] == {EXCLUDED_LOW_ACTIVITY: len(dropped)}
    kept = {r["consumer_id"] for r in await pool.fetch("SELECT consumer_id FROM audience_snapshots")}
    assert set(cases) - kept == dropped, sorted((set(cases) - kept) ^ dropped)
    assert kept == set(FILLER) | (set(cases) - dropped)
    sent = {r["consumer_id"] for r in await pool.fetch("SELECT consumer_id FROM deliveries WHERE state = 'sent'")}
    assert sent == kept - {1028}  # 1028's messages of the send day leave no room under the shop's daily cap (R-FAT-2)
