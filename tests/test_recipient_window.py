"""R-WIN-1 per recipient: one with a zone of their own is sent inside their own 08:00-22:00.

The pure part: workflows/calendar.py's window arithmetic (DST, zones ahead and behind the shop, a zone whose
window never opens in the shop's day) and the send path's SQL test agreeing with it instant by instant. The
database part drives the send activity: a Shanghai shop's New York customers wait at 10:00 Shanghai and go
at 20:00 (08:00 in New York). The workflow part runs Shanghai shops' days on the time-skipping server: each
delivery handed off inside its recipient's own window, the ledger exact, the preview equal to the run.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sluice.activities.send import SendActivities
from sluice.activities.window import WindowActivities, window_deferred_sql
from sluice.api.service import preview_campaign, start_campaign
from sluice.channels.registry import ChannelRegistry
from sluice.schemas import activities as A
from sluice.schemas.activities import SendSliceInput, WaitingInput
from sluice.schemas.rules import WINDOW_CLOSE, WINDOW_OPEN
from sluice.schemas.settings import Settings
from sluice.workers.worker import build_worker
from sluice.workflows.calendar import (
    WAKE_IN_WINDOW,
    WAKE_MISSED,
    WAKE_ZONED_ONLY,
    batch_window_end,
    day_window,
    first_open,
    in_window,
    known_zone,
    late_wake,
    local_day,
    next_window_open,
    open_at,
    window_closes,
    window_opens,
)
from sluice.workflows.campaign import CampaignWorkflow
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Replayer

from tests.factories import add_customers, make_campaign, make_shop
from tests.ledger_checks import assert_fatigue_matches_ledger, assert_ledger_exact
from tests.test_campaign_days import add_inquirers, phased
from tests.test_fatigue_policy import _refresh

SH, NY, LON, HNL, TYO = "Asia/Shanghai", "America/New_York", "Europe/London", "Pacific/Honolulu", "Asia/Tokyo"
PHX = "America/Phoenix"  # UTC-7 all year: 15 hours behind Shanghai, 08:00 there is 23:00 Shanghai
PLATFORM_TZ = SH
N = 20  # a slice over the whole snapshot: the refresh numbers its parts interleaved, with gaps at the end


def _at(day: date, hh: int, mm: int, tz: str) -> datetime:
    """hh:mm on `day` in `tz`, built with zoneinfo directly (not with the calendar under test)."""
    return datetime.combine(day, time(hh, mm), tzinfo=ZoneInfo(tz)).astimezone(UTC)


def _local(instant: datetime, tz: str) -> datetime:
    return instant.astimezone(ZoneInfo(tz))


# ---------------------------------------------------------------- the calendar


def test_the_window_is_08_00_inclusive_to_22_00_exclusive():
    assert [in_window(t) for t in (time(7, 59, 59, 999999), WINDOW_OPEN, time(21, 59, 59, 999999), WINDOW_CLOSE)] == [
        False, True, True, False]  # fmt: skip


@pytest.mark.parametrize(
    "day, ny_opens_sh",
    [
        (date(2030, 6, 10), time(20)),  # EDT: 08:00 New York is 20:00 Shanghai
        (date(2030, 1, 10), time(21)),  # EST: 21:00
    ],
)
def test_a_shanghai_shops_new_york_customer_opens_at_08_00_new_york(day, ny_opens_sh):
    win = day_window(day, time(11), SH)
    assert win.end_at == _at(day + timedelta(days=1), 0, 0, SH)
    assert not open_at(win.send_at, NY)  # 23:00 or 22:00 of the day before in New York
    assert open_at(win.send_at - timedelta(hours=1), NY) is (ny_opens_sh == time(21))  # 21:00 EST is open
    opens = next_window_open([NY], win.send_at, win.end_at)
    assert opens == _at(day, ny_opens_sh.hour, 0, SH) == _at(day, 8, 0, NY)
    assert first_open(NY, win.send_at, win.end_at) == opens
    # London (behind, BST or GMT) opens first; Tokyo (ahead) and Honolulu (far behind) are open at 11:00 already.
    assert next_window_open([NY, LON], win.send_at, win.end_at) == _at(day, 8, 0, LON)
    assert first_open(TYO, win.send_at, win.end_at) == win.send_at
    assert first_open(HNL, win.send_at, win.end_at) == win.send_at
    # Open now is not "opens": a zone already open at `after` opens again only on its next day.
    assert window_opens(TYO, win.send_at, win.end_at) is None
    assert next_window_open([TYO], win.send_at, win.end_at) is None
    assert next_window_open([TYO], win.send_at, win.end_at, open_now=True) == win.send_at


def test_zones_whose_window_never_opens_in_a_21_00_day():
    """A Shanghai day that starts at 21:00 and ends at 00:00: Tokyo is past its 22:00 (and opens at 07:00
    Shanghai the next day), Honolulu is at 03:00 (and opens at 02:00 Shanghai the next day)."""
    day = date(2030, 6, 10)
    win = day_window(day, time(21), SH)
    for tz in (TYO, HNL, "Pacific/Auckland"):
        assert first_open(tz, win.send_at, win.end_at) is None, tz
    assert next_window_open([TYO, HNL], win.send_at, win.end_at, open_now=True) is None
    assert first_open(NY, win.send_at, win.end_at) == win.send_at  # 09:00 New York


def test_dst_moves_the_opening_by_an_hour_in_utc_not_in_local_time():
    """New York springs forward on 2030-03-10 (02:00 -> 03:00): 08:00 is 13:00 UTC the day before and 12:00 UTC on it;
    Berlin's switch on 2030-03-31 likewise. Both seen from one instant to the next opening and the one after."""
    before_ny = _at(date(2030, 3, 9), 9, 0, NY)
    first = window_opens(NY, before_ny, before_ny + timedelta(days=3))
    assert first == datetime(2030, 3, 10, 12, 0, tzinfo=UTC)
    assert window_opens(NY, first, first + timedelta(days=2)) == datetime(2030, 3, 11, 12, 0, tzinfo=UTC)
    assert window_opens(NY, before_ny - timedelta(days=1), before_ny) == datetime(2030, 3, 9, 13, 0, tzinfo=UTC)
    berlin = window_opens("Europe/Berlin", datetime(2030, 3, 30, 12, tzinfo=UTC), datetime(2030, 4, 2, tzinfo=UTC))
    assert berlin == datetime(2030, 3, 31, 6, 0, tzinfo=UTC)  # 08:00 CEST
    # The shop's day across its own switch is 23 hours long, and its end is the next day's 00:00.
    ny_day = day_window(date(2030, 3, 10), time(8), NY)
    assert ny_day.end_at - ny_day.snapshot_at == timedelta(hours=23)


def test_names_that_are_not_zones_never_open():
    win = day_window(date(2030, 6, 10), time(10), SH)
    for bad in ("Mars/Olympus", "../etc/passwd", "", "UTC+8"):
        assert not known_zone(bad)
        assert first_open(bad, win.send_at, win.end_at) is None
    assert next_window_open(["Mars/Olympus", NY], win.send_at, win.end_at) == _at(date(2030, 6, 10), 8, 0, NY)


def test_a_wake_after_the_shops_22_00_sends_only_recipients_in_their_own_window_until_its_next_day():
    day = date(2030, 6, 10)
    win = day_window(day, time(11), SH)
    assert late_wake(_at(day, 9, 0, SH), win) == WAKE_IN_WINDOW  # before the send time: the timer waits
    assert late_wake(_at(day, 21, 59, SH), win) == WAKE_IN_WINDOW
    assert late_wake(win.close_at, win) == late_wake(_at(day, 23, 59, SH), win) == WAKE_ZONED_ONLY
    assert late_wake(win.end_at, win) == late_wake(win.end_at + timedelta(days=3), win) == WAKE_MISSED
    with pytest.raises(ValueError):
        late_wake(datetime(2030, 6, 10, 15, 0), win)  # naive: refused, not read in some zone
    # What a wake at 22:30 Shanghai still sends: New York (10:30 there) at once, Phoenix (07:30) at its 08:00,
    # Tokyo (23:30) not that day.
    wake = _at(day, 22, 30, SH)
    assert next_window_open([NY, PHX, TYO], wake, win.end_at, open_now=True) == wake
    assert next_window_open([PHX, TYO], wake, win.end_at, open_now=True) == _at(day, 8, 0, PHX) == _at(day, 23, 0, SH)
    assert next_window_open([TYO], wake, win.end_at, open_now=True) is None


ZONES = [NY, SH, HNL, LON, "Asia/Kathmandu", "Australia/Lord_Howe", "America/St_Johns", "Pacific/Kiritimati"]


def test_a_batch_may_leave_until_the_first_of_its_recipients_windows_closes():
    """R-WIN-1 on the outbox: a batch written at 20:30 Shanghai holding a Tokyo recipient (21:30 there) may leave
    until 22:00 Tokyo (21:00 Shanghai), not until the shop's 22:00; New York (08:30 there) closes long after the
    shop; without a zone, or with a name that is no zone, the slice's end stands. London's window across its DST
    switch closes at 22:00 local, 21:00 UTC in summer and 22:00 UTC in winter."""
    day = date(2030, 6, 10)
    at, shop_end = _at(day, 20, 30, SH), _at(day, 22, 0, SH)
    assert window_closes(TYO, at) == _at(day, 22, 0, TYO) == _at(day, 21, 0, SH)
    assert window_closes(NY, at) == _at(day, 22, 0, NY)  # 10:00 Shanghai the next morning
    assert batch_window_end(shop_end, set(), at) == shop_end
    assert batch_window_end(shop_end, {None, SH}, at) == shop_end
    assert batch_window_end(shop_end, {NY}, at) == shop_end
    assert batch_window_end(shop_end, {NY, TYO, None}, at) == _at(day, 21, 0, SH)
    assert batch_window_end(shop_end, {"Mars/Olympus"}, at) == shop_end
    for d, utc_hour in ((date(2030, 3, 30), 22), (date(2030, 3, 31), 21), (date(2030, 10, 27), 22)):
        noon = _at(d, 12, 0, LON)
        assert window_closes(LON, noon) == datetime.combine(d, time(utc_hour), tzinfo=UTC), d
        assert open_at(window_closes(LON, noon) - timedelta(microseconds=1), LON)
        assert not open_at(window_closes(LON, noon), LON)


async def test_the_send_paths_sql_is_the_calendars_window(pool):
    """`window_deferred_sql` against calendar.open_at, every 7 minutes over two days around New York's and
    Lord Howe's DST switches, in zones with 45- and 30-minute offsets and half-hour DST; a row without a zone is the
    shop's: never waiting in the day's first pass, always in a later one."""
    instants = []
    for start in (datetime(2030, 3, 9, tzinfo=UTC), datetime(2030, 10, 5, tzinfo=UTC), datetime(2030, 11, 2, tzinfo=UTC)):
        instants += [start + timedelta(minutes=7 * i) for i in range(2 * 24 * 60 // 7)]
    for later in (False, True):
        rows = await pool.fetch(
            f"SELECT s.timezone, u.t, {window_deferred_sql('u.t', later)} AS waits"
            " FROM unnest($1::text[]) AS s(timezone) CROSS JOIN unnest($2::timestamptz[]) AS u(t)",
            [*ZONES, None], instants,
        )  # fmt: skip
        assert len(rows) == (len(ZONES) + 1) * len(instants)
        for r in rows:
            expected = later if r["timezone"] is None else not open_at(r["t"], r["timezone"])
            assert r["waits"] is expected, dict(r)


# ---------------------------------------------------------------- the send activity


def _slice(cid: int, shop: str, day: date, at: datetime, n: int, **kw) -> SendSliceInput:
    return SendSliceInput(
        campaign_db_id=cid, shop_id=shop, phase_index=0, day=day, channel="chat", text="hello", template_cap=None,
        seq_lo=0, seq_hi=n, budget=100, decided_at=at, window_end=kw.pop("window_end", at + timedelta(hours=1)),
        chunk_size=2, timezone=SH, **kw,
    )  # fmt: skip


async def _ledger(pool, cid: int) -> dict[int, dict]:
    rows = await pool.fetch("SELECT * FROM deliveries WHERE campaign_id = $1", cid)
    return {r["consumer_id"]: dict(r) for r in rows}


async def test_new_york_customers_of_a_shanghai_shop_wait_from_10_00_until_20_00(clean_db):
    """Consumers 1, 2 (no zone: the shop's window), 3, 4 (New York, the shop's record), 5 (New York, the
    platform's record), 6 (Tokyo: 11:00 there). At 10:00 Shanghai 3-5 are at 22:00 of the day before: they
    wait, with no ledger row and no cap taken; the others are sent. The waiting zones say New York, 3 of
    them; at 19:59 they still wait; at 20:00 (08:00 New York) a later pass sends them, on their own day."""
    pool = clean_db
    shop, day = "sh-shop", date(2030, 6, 10)
    await make_shop(pool, shop, SH)
    await add_customers(pool, shop, [1, 2], ordered_at=datetime(2030, 6, 1, tzinfo=UTC))
    await add_customers(pool, shop, [3, 4], ordered_at=datetime(2030, 6, 1, tzinfo=UTC), timezone=NY)
    await add_customers(pool, shop, [5], ordered_at=datetime(2030, 6, 1, tzinfo=UTC))
    await add_customers(pool, shop, [6], ordered_at=datetime(2030, 6, 1, tzinfo=UTC), timezone=TYO)
    await pool.execute("UPDATE consumers SET timezone = $1 WHERE consumer_id = 5", NY)
    cid = await make_campaign(pool, shop, "win", state="sending")
    await _refresh(pool, cid, shop, day, SH)
    assert await pool.fetchval("SELECT count(*) FROM audience_snapshots WHERE campaign_id = $1", cid) == 6
    # A clock in the past: each chunk's hand-off instant is its slice's decision instant.
    send = SendActivities(pool, ChannelRegistry.outbox_for_all(pool), platform_timezone=PLATFORM_TZ,
                          clock=lambda: datetime(2000, 1, 1, tzinfo=UTC))  # fmt: skip
    window = WindowActivities(pool)
    waiting = WaitingInput(campaign_db_id=cid, phase_index=0, day=day, channel="chat")
    ten = _at(day, 10, 0, SH)
    first = await ActivityEnvironment().run(send.send_slice, _slice(cid, shop, day, ten, N))
    assert (first.sent, first.deferred, first.next_seq) == (3, 3, N)
    assert set(await _ledger(pool, cid)) == {1, 2, 6}
    assert await pool.fetchval("SELECT count(*) FROM fatigue_day WHERE consumer_id = ANY($1::bigint[])", [3, 4, 5]) == 0
    zones = (await ActivityEnvironment().run(window.waiting_zones, waiting)).zones
    assert zones == {NY: 3}
    win = day_window(day, time(10), SH)
    assert next_window_open(zones, ten, win.end_at) == _at(day, 20, 0, SH)

    # 19:59 Shanghai, 07:59 New York: still waiting (the rows decided before are found, not decided again).
    early = await ActivityEnvironment().run(
        send.send_slice, _slice(cid, shop, day, _at(day, 19, 59, SH), N, later_pass=True, window_end=win.end_at))
    assert (early.deferred, early.sent, len(await _ledger(pool, cid))) == (3, 3, 3)
    # 20:00: the later pass reads only the zoned rows (no daily cap) and sends New York.
    later = await ActivityEnvironment().run(
        send.send_slice, _slice(cid, shop, day, _at(day, 20, 0, SH), N, later_pass=True, zoned_only=True,
                                window_end=win.end_at))  # fmt: skip
    assert (later.deferred, later.sent) == (0, 4)  # 3 now, and Tokyo's delivery of 10:00 found in the ledger
    rows = await _ledger(pool, cid)
    assert {c: r["state"] for c, r in rows.items()} == dict.fromkeys(range(1, 7), "sent")
    zone_of = {1: SH, 2: SH, 3: NY, 4: NY, 5: NY, 6: TYO}
    for c, r in rows.items():
        assert in_window(_local(r["decided_at"], zone_of[c]).time()), r
        assert r["fatigue_day"] == _local(r["decided_at"], zone_of[c]).date(), r
    assert {rows[c]["decided_at"] for c in (3, 4, 5)} == {_at(day, 8, 0, NY)}
    assert (await ActivityEnvironment().run(window.waiting_zones, waiting)).zones == {}
    await assert_fatigue_matches_ledger(pool)


async def _shanghai_shop(pool, shop: str, zones: list[str | None]) -> SendActivities:
    """A Shanghai shop whose customers 1, 2, ... have the zones given (None: none of their own), and the send
    activities over the outbox with a clock in the past (each chunk's hand-off is its slice's decision instant)."""
    await make_shop(pool, shop, SH)
    for c, tz in enumerate(zones, start=1):
        await add_customers(pool, shop, [c], ordered_at=datetime(2030, 6, 1, tzinfo=UTC), timezone=tz)
    return SendActivities(pool, ChannelRegistry.outbox_for_all(pool), platform_timezone=PLATFORM_TZ,
                          clock=lambda: datetime(2000, 1, 1, tzinfo=UTC))  # fmt: skip


async def test_a_later_pass_sends_no_one_without_a_zone(clean_db):
    """A day whose first pass never read its rows (22:00 came first): at 23:00 Shanghai a later pass sends the
    New York customer (11:00 there) and leaves the one without a zone for the next day; reading only the zoned
    rows, it does not even read that one. `close_waiting` records nobody without a zone."""
    pool = clean_db
    shop, day = "sh-late", date(2030, 6, 10)
    send = await _shanghai_shop(pool, shop, [None, NY, TYO])
    late, end = _at(day, 23, 0, SH), day_window(day, time(10), SH).end_at
    for zoned_only, read in ((False, 2), (True, 1)):
        cid = await make_campaign(pool, shop, f"late-{zoned_only}", state="sending")
        await _refresh(pool, cid, shop, day, SH)
        res = await ActivityEnvironment().run(
            send.send_slice, _slice(cid, shop, day, late, N, later_pass=True, zoned_only=zoned_only, window_end=end))
        assert (res.sent, res.deferred) == (1, read), zoned_only  # Tokyo (00:00 there) and, when read, no zone
        assert {c: r["state"] for c, r in (await _ledger(pool, cid)).items()} == {2: "sent"}
        inp = WaitingInput(campaign_db_id=cid, phase_index=0, day=day, channel="chat", shop_id=shop, decided_at=late)
        assert (await ActivityEnvironment().run(WindowActivities(pool).waiting_zones, inp)).zones == {TYO: 1}
        assert await ActivityEnvironment().run(WindowActivities(pool).close_waiting, inp) == 1
        assert await ActivityEnvironment().run(WindowActivities(pool).close_waiting, inp) == 0  # idempotent
        rows = await _ledger(pool, cid)
        assert (rows[3]["state"], rows[3]["reason"]) == ("not_sent", A.NOT_SENT_RECIPIENT_WINDOW)
        # The customer without a zone stays undecided (no ledger row): the next day's audience has them.
        assert set(rows) == {2, 3}, rows
    assert A.REASON_RULES[A.NOT_SENT_RECIPIENT_WINDOW] == "R-WIN-1"


async def test_an_outbox_batch_ends_when_its_first_recipients_window_closes(clean_db):
    """A Shanghai shop's day at 20:30 Shanghai, one recipient per batch: the batch of the customer without a zone
    carries the slice's end (22:00 Shanghai), the Tokyo customer's (21:30 there) ends at 22:00 Tokyo, so a
    dispatcher held back by a failing provider hands nothing to them after their own 22:00 (R-WIN-1); the New
    York customer (08:30 there) keeps the slice's end."""
    pool = clean_db
    shop, day = "sh-batch-end", date(2030, 6, 10)
    send = await _shanghai_shop(pool, shop, [None, TYO, NY])
    cid = await make_campaign(pool, shop, "batch-end", state="sending")
    await _refresh(pool, cid, shop, day, SH)
    end = day_window(day, time(10), SH).end_at
    one_per_batch = _slice(cid, shop, day, _at(day, 20, 30, SH), N, window_end=end).model_copy(update={"chunk_size": 1})
    res = await ActivityEnvironment().run(send.send_slice, one_per_batch)
    assert res.sent == 3
    ends = dict(await pool.fetch(
        "SELECT o.consumer_ids[1], o.window_end FROM outbox o WHERE o.campaign_id = $1", cid))  # fmt: skip
    assert ends == {1: end, 2: _at(day, 22, 0, TYO), 3: end}, ends


# ---------------------------------------------------------------- the workflow


async def test_shanghai_days_reach_each_customer_in_their_own_window(clean_db, ts_env):
    """Two Shanghai shops' K-PHASED days on the time-skipping server.

    A at 11:00 (with a daily cap, so its later passes read every row): no zone (1-4), New York (5-8, the shop's
    record; 22:00 or 23:00 the day before there), London (9-10, the platform's record), Honolulu (11-12, 17:00 the
    day before there). B at 21:00: no zone (101-103), New York (104-105, 09:00 or 08:00 there), Tokyo (106-107,
    past 22:00 until 07:00 Shanghai the next day) and Honolulu (108, 03:00 until 02:00 Shanghai the next day):
    B's Tokyo and Honolulu customers are not sent, with the reason, and nobody is sent twice. Each
    delivery's hand-off is inside its recipient's own 08:00-22:00 (the shop's for no zone), at or after the
    send time and before the shop's next day; New York and London go when their 08:00 comes. The preview
    taken before says the same."""
    pool = clean_db
    now = await ts_env.get_current_time()
    day = local_day(now, SH) + timedelta(days=1)
    inquiry = _at(day, 0, 0, SH) - timedelta(days=3)
    await make_shop(pool, "sh-a", SH)
    await make_shop(pool, "sh-b", SH)
    await add_inquirers(pool, "sh-a", list(range(1, 13)), inquiry_at=inquiry)
    await add_inquirers(pool, "sh-b", list(range(101, 109)), inquiry_at=inquiry)
    zone_of = {c: SH for c in [*range(1, 5), *range(101, 104)]}  # no zone: the shop's window, the platform's day
    for shop, ids, tz in (("sh-a", range(5, 9), NY), ("sh-b", range(104, 106), NY), ("sh-b", range(106, 108), TYO),
                          ("sh-b", [108], HNL), ("sh-a", range(11, 13), HNL)):  # fmt: skip
        await pool.execute("UPDATE shop_customers SET timezone = $3 WHERE shop_id = $1 AND consumer_id = ANY($2::bigint[])",
                           shop, list(ids), tz)  # fmt: skip
        zone_of |= dict.fromkeys(ids, tz)
    await pool.execute("UPDATE consumers SET timezone = $1 WHERE consumer_id IN (9, 10)", LON)
    zone_of |= {9: LON, 10: LON}
    specs = [
        phased("sh-a", "a", [("promote", day, day, time(11, 0), 50)]),  # a daily cap: later passes read every row
        phased("sh-b", "b", [("promote", day, day, time(21, 0))]),
    ]
    previews = [(await preview_campaign(pool, s, platform_tz=PLATFORM_TZ, now=now)).phases[0] for s in specs]
    assert (previews[0].would_send, previews[0].removed) == (12, {})
    assert (previews[1].would_send, previews[1].removed) == (5, {A.NOT_SENT_RECIPIENT_WINDOW: 3})
    assert previews[1].rules == {A.NOT_SENT_RECIPIENT_WINDOW: "R-WIN-1"}

    queue = f"q-{uuid.uuid4().hex[:6]}"
    async with build_worker(ts_env.client, pool, Settings(SLUICE_PLATFORM_TZ=PLATFORM_TZ), task_queue=queue):
        started = [await start_campaign(pool, ts_env.client, s, task_queue=queue, now=now) for s in specs]
        results = [await h.result() for _, h in started]
    assert [r.state for r in results] == ["completed", "completed"]
    plans = [p for p, _ in started]

    counts = [await assert_ledger_exact(pool, p.campaign_db_id) for p in plans]
    assert counts == [{"sent": 12}, {"sent": 5, "not_sent": 3}]
    assert counts[0]["sent"] == previews[0].would_send and counts[1]["sent"] == previews[1].would_send
    send_at = [_at(day, 11, 0, SH), _at(day, 21, 0, SH)]
    end = _at(day + timedelta(days=1), 0, 0, SH)
    rows = await pool.fetch("SELECT * FROM deliveries ORDER BY consumer_id")
    for r in rows:
        cid = r["consumer_id"]
        if r["state"] == "not_sent":
            assert cid in (106, 107, 108) and r["reason"] == A.NOT_SENT_RECIPIENT_WINDOW
            continue
        local = _local(r["decided_at"], zone_of[cid])
        assert WINDOW_OPEN <= local.time() < WINDOW_CLOSE, (cid, local)
        assert send_at[cid > 100] <= r["decided_at"] < end, (cid, r["decided_at"])
        assert r["fatigue_day"] == local.date(), (cid, r["fatigue_day"])
    at = {r["consumer_id"]: r["decided_at"] for r in rows}
    for cid, tz in ((5, NY), (9, LON)):  # at their 08:00, to the minute (a timer, then the later pass)
        assert timedelta(0) <= at[cid] - _at(day, 8, 0, tz) < timedelta(minutes=1), (cid, _local(at[cid], tz))
    assert {at[c] for c in (1, 11)} == {at[1]} and at[1] - send_at[0] < timedelta(minutes=1)
    report = await pool.fetchval("SELECT counts FROM campaign_day_reports WHERE campaign_id = $1", plans[1].campaign_db_id)
    assert report[f"not_sent:{A.NOT_SENT_RECIPIENT_WINDOW}"] == 3
    await assert_fatigue_matches_ledger(pool)
    # The later passes replay: the waiting zones and the timers are all the history holds of them.
    replayer = Replayer(workflows=[CampaignWorkflow], data_converter=pydantic_data_converter)
    for _, handle in started:
        await replayer.replay_workflow(await handle.fetch_history())


async def test_a_worker_away_past_the_shops_22_00_still_sends_recipients_in_their_own_window(clean_db, ts_env):
    """A Shanghai shop's K-PHASED day at 11:00, accepted the day before, whose workflow first runs at 22:30 Shanghai
    (no worker until then). The test server holds its clock while a workflow task waits for a worker, so the
    worker's absence is the start of the workflow itself at 22:30: its first task sees that instant, as a
    workflow waking from its send-time timer after downtime would. Nobody without a zone (1, 2) is sent: the
    shop's window is missed (not_sent on the phase's last day). New York (3, 09:30 or 10:30 there) is sent at
    once, Phoenix (4, 07:30 there) at its 08:00 (23:00 Shanghai), Tokyo (5, 23:30 there) not before the shop's
    next day: not_sent with the reason. The history replays."""
    pool = clean_db
    now = await ts_env.get_current_time()
    day = local_day(now, SH) + timedelta(days=1)
    shop = "sh-away"
    await make_shop(pool, shop, SH)
    await add_inquirers(pool, shop, [1, 2, 3, 4, 5], inquiry_at=_at(day, 0, 0, SH) - timedelta(days=3))
    zone_of = {1: SH, 2: SH, 3: NY, 4: PHX, 5: TYO}
    for c in (3, 4, 5):
        await pool.execute("UPDATE shop_customers SET timezone = $2 WHERE shop_id = $1 AND consumer_id = $3",
                           shop, zone_of[c], c)  # fmt: skip
    spec = phased(shop, "away", [("promote", day, day, time(11, 0))])
    queue = f"q-{uuid.uuid4().hex[:6]}"
    back = _at(day, 22, 30, SH)
    await ts_env.sleep(back - await ts_env.get_current_time())
    async with build_worker(ts_env.client, pool, Settings(SLUICE_PLATFORM_TZ=PLATFORM_TZ), task_queue=queue):
        plan, handle = await start_campaign(pool, ts_env.client, spec, task_queue=queue, now=now)  # accepted at `now`
        result = await handle.result()
    assert result.state == "completed"
    assert await assert_ledger_exact(pool, plan.campaign_db_id) == {"sent": 2, "not_sent": 3}
    rows = await _ledger(pool, plan.campaign_db_id)
    assert {c: (r["state"], r["reason"]) for c, r in rows.items()} == {
        1: ("not_sent", "window_missed_phase_ended"), 2: ("not_sent", "window_missed_phase_ended"),
        3: ("sent", None), 4: ("sent", None), 5: ("not_sent", A.NOT_SENT_RECIPIENT_WINDOW),
    }  # fmt: skip
    for c in (3, 4):
        local = _local(rows[c]["decided_at"], zone_of[c])
        assert in_window(local.time()) and back <= rows[c]["decided_at"] < _at(day + timedelta(days=1), 0, 0, SH), (c, local)
        assert rows[c]["fatigue_day"] == local.date()
    assert rows[3]["decided_at"] - back < timedelta(minutes=1)  # open when the worker came back: at once
    assert timedelta(0) <= rows[4]["decided_at"] - _at(day, 8, 0, PHX) < timedelta(minutes=1)  # at its 08:00
    report = await pool.fetchval("SELECT counts FROM campaign_day_reports WHERE campaign_id = $1", plan.campaign_db_id)
    assert report[f"not_sent:{A.NOT_SENT_RECIPIENT_WINDOW}"] == 1 and result.last_report["stopped:window_missed"] == 1
    await assert_fatigue_matches_ledger(pool)
    replayer = Replayer(workflows=[CampaignWorkflow], data_converter=pydantic_data_converter)
    await replayer.replay_workflow(await handle.fetch_history())
