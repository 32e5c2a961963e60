"""Campaign days end to end: windows, the 22:00 cut-off, daily refresh, caps, phases, daily cap.

Every test runs the real campaign workflow on Temporal's time-skipping test
server against a real PostgreSQL and asserts with SQL on the ledger
(deliveries, outbox, fatigue_*, audience_refreshes, campaign_day_reports).
Rule ids are listed in docs/rules.md.

"now" is the test server's clock; send days are computed from it in the
shop's own zone, so the tests do not depend on the wall clock.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from datetime import date, datetime, time, timedelta

import asyncpg
import pytest
from pydantic import ValidationError
from sluice.api.service import start_campaign
from sluice.kinds.oldcust import OldCustomerSpec
from sluice.kinds.phased import PhasedSpec, PhaseSpec
from sluice.schemas import rules
from sluice.schemas.activities import (
    NOT_SENT_WINDOW,
    SUPPRESS_GLOBAL_DAY,
    SUPPRESS_GLOBAL_SHOPS,
    SUPPRESS_SHOP_DAY,
    SUPPRESS_TEMPLATE,
)
from sluice.schemas.campaign import Pacing
from sluice.schemas.settings import Settings
from sluice.workers.worker import build_worker
from sluice.workflows.calendar import local_day, local_instant, platform_day, zone
from temporalio.api.enums.v1 import EventType

from tests.factories import add_customers, make_shop

PLATFORM_TZ = "Asia/Shanghai"  # the natural day the caps are counted on (R-FAT-1..3)
SHANGHAI, NEW_YORK, BERLIN = "Asia/Shanghai", "America/New_York", "Europe/Berlin"
LIVE = ("reserved", "sent", "unknown")  # states that hold a cap (docs/design.md, "The ledger and the caps")


# ---------------------------------------------------------------- helpers


def _settings() -> Settings:
    return Settings(SLUICE_PLATFORM_TZ=PLATFORM_TZ)


async def _run(env, pool, specs, *, tuning: dict | None = None):
    """Start every spec at the test server's "now" and wait for all; handles from start_campaign skip time."""
    queue = f"q-{uuid.uuid4().hex[:6]}"
    async with build_worker(env.client, pool, _settings(), task_queue=queue):
        now = await env.get_current_time()
        started = [await start_campaign(pool, env.client, s, task_queue=queue, now=now, tuning=tuning) for s in specs]
        results = [await h.result() for _, h in started]
    return [p for p, _ in started], [h for _, h in started], results


def at(day: date, hh: int, mm: int, tz: str) -> datetime:
    """The instant of hh:mm shop-local on `day`."""
    return local_instant(day, time(hh, mm), tz)


def midnight(day: date, tz: str) -> datetime:
    """00:00 of `day`: the T+1 snapshot instant (R-OC-5)."""
    return at(day, 0, 0, tz)


async def add_inquirers(
    pool: asyncpg.Pool,
    shop_id: str,
    consumer_ids: list[int],
    *,
    inquiry_at: datetime,
    ordered_at: datetime | None = None,
) -> None:
    """Chat-inquiry customers for K-PHASED audiences (R-PH-4); an order only when `ordered_at` is given.

    A local helper because factories.add_customers always places an order, which would
    change who is recalled.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(
            "INSERT INTO consumers (consumer_id) VALUES ($1) ON CONFLICT DO NOTHING",
            [(c,) for c in consumer_ids],
        )
        await conn.executemany(
            "INSERT INTO shop_customers (shop_id, consumer_id, chat_id, phone, email)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            [(shop_id, c, f"tb_{c}", f"138{c:08d}", f"user{c}@example.com") for c in consumer_ids],
        )
        await conn.executemany(
            "INSERT INTO behaviour_events (shop_id, consumer_id, kind, occurred_at) VALUES ($1, $2, 'inquiry', $3)",
            [(shop_id, c, inquiry_at) for c in consumer_ids],
        )
        if ordered_at is not None:
            base = await conn.fetchval("SELECT coalesce(max(order_id), 0) FROM orders")
            await conn.executemany(
                "INSERT INTO orders (order_id, shop_id, consumer_id, created_at, paid_at, amount, status)"
                " VALUES ($1, $2, $3, $4, $4, 99, 'paid')",
                [(base + i + 1, shop_id, c, ordered_at) for i, c in enumerate(consumer_ids)],
            )


def oldcust(shop_id: str, campaign_id: str, send_date: date, **kw) -> OldCustomerSpec:
    return OldCustomerSpec(
        kind="K-OLDCUST",
        shop_id=shop_id,
        campaign_id=campaign_id,
        scene="Spring",
        card_text="Hi",
        send_date=send_date,
        **kw,
    )


def phased(shop_id: str, campaign_id: str, phases: list[tuple], **kw) -> PhasedSpec:
    """phases: (name, start, end, send_time[, daily_cap])."""
    return PhasedSpec(
        kind="K-PHASED",
        shop_id=shop_id,
        campaign_id=campaign_id,
        phases=[
            PhaseSpec(
                name=p[0],
                start_date=p[1],
                end_date=p[2],
                send_time=p[3],
                text=f"{p[0]} text",
                daily_cap=p[4] if len(p) > 4 else None,
            )
            for p in phases
        ],
        **kw,
    )


async def ledger(pool: asyncpg.Pool, campaign_db_id: int | None = None) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT campaign_id, phase, consumer_id, day, shop_id, template_group, fatigue_day, state, reason,"
        " decided_at FROM deliveries WHERE $1::bigint IS NULL OR campaign_id = $1"
        " ORDER BY campaign_id, phase, day, consumer_id",
        campaign_db_id,
    )


async def assert_caps_and_counters(pool: asyncpg.Pool) -> None:
    """The ledger never exceeds a cap, and the counters are exactly the ledger's live rows.

    R-FAT-2 (2 per consumer per shop per platform day), R-FAT-3 (10 a day, 5 shops a day),
    R-FAT-1 / R-OC-2 (template groups), R-FAT-4 (counters agree with the ledger, so no
    concurrent campaign pushed anyone over), R-OC-8 (suppressed / not_sent rows hold no cap:
    the counters equal the live rows alone).
    """
    over_global = await pool.fetch(
        "SELECT consumer_id, fatigue_day, count(*) AS n, count(DISTINCT shop_id) AS shops FROM deliveries"
        " WHERE state = ANY($1::text[]) GROUP BY 1, 2 HAVING count(*) > $2 OR count(DISTINCT shop_id) > $3",
        list(LIVE),
        rules.GLOBAL_DAY_MAX,
        rules.GLOBAL_SHOPS_MAX,
    )
    assert over_global == [], f"R-FAT-3 broken: {over_global[:5]}"
    over_shop = await pool.fetch(
        "SELECT consumer_id, shop_id, fatigue_day, count(*) FROM deliveries WHERE state = ANY($1::text[])"
        " GROUP BY 1, 2, 3 HAVING count(*) > $2",
        list(LIVE),
        rules.SHOP_DAY_MAX,
    )
    assert over_shop == [], f"R-FAT-2 broken: {over_shop[:5]}"
    # R-OC-2: one old-customer scene message per consumer and shop per 7 natural days.
    over_scene = await pool.fetch(
        "SELECT a.consumer_id, a.shop_id, a.fatigue_day, b.fatigue_day FROM deliveries a JOIN deliveries b"
        " ON a.consumer_id = b.consumer_id AND a.shop_id = b.shop_id AND a.template_group = b.template_group"
        " AND (a.campaign_id, a.phase, a.day) <> (b.campaign_id, b.phase, b.day)"
        " AND b.fatigue_day <= a.fatigue_day AND b.fatigue_day > a.fatigue_day - 7"
        " WHERE a.template_group = $2 AND a.state = ANY($1::text[]) AND b.state = ANY($1::text[])",
        list(LIVE),
        rules.OLDCUST_TEMPLATE_GROUP,
    )
    assert over_scene == [], f"R-OC-2 broken: {over_scene[:5]}"
    # Counters == ledger (full outer joins: a counter without live rows must be 0, and vice versa).
    bad_day = await pool.fetch(
        """WITH l AS (SELECT consumer_id, fatigue_day AS day, count(*)::int AS n,
                             count(DISTINCT shop_id)::int AS shops
                      FROM deliveries WHERE state = ANY($1::text[]) GROUP BY 1, 2)
           SELECT * FROM fatigue_day f FULL JOIN l USING (consumer_id, day)
           WHERE coalesce(f.sent, 0) <> coalesce(l.n, 0) OR coalesce(f.shops, 0) <> coalesce(l.shops, 0)""",
        list(LIVE),
    )
    assert bad_day == [], f"fatigue_day disagrees with the ledger: {bad_day[:5]}"
    bad_shop = await pool.fetch(
        """WITH l AS (SELECT consumer_id, shop_id, fatigue_day AS day, count(*)::int AS n
                      FROM deliveries WHERE state = ANY($1::text[]) GROUP BY 1, 2, 3)
           SELECT * FROM fatigue_shop_day f FULL JOIN l USING (consumer_id, shop_id, day)
           WHERE coalesce(f.sent, 0) <> coalesce(l.n, 0)""",
        list(LIVE),
    )
    assert bad_shop == [], f"fatigue_shop_day disagrees with the ledger: {bad_shop[:5]}"
    bad_tpl = await pool.fetch(
        """WITH l AS (SELECT consumer_id, shop_id, template_group, fatigue_day AS day, count(*)::int AS n
                      FROM deliveries WHERE state = ANY($1::text[]) GROUP BY 1, 2, 3, 4)
           SELECT * FROM fatigue_template f FULL JOIN l USING (consumer_id, shop_id, template_group, day)
           WHERE coalesce(f.sent, 0) <> coalesce(l.n, 0)""",
        list(LIVE),
    )
    assert bad_tpl == [], f"fatigue_template disagrees with the ledger: {bad_tpl[:5]}"
    # Every live row is on the platform day of its decision, and nothing is left reserved.
    for r in await pool.fetch("SELECT decided_at, fatigue_day FROM deliveries WHERE state = ANY($1::text[])", list(LIVE)):
        assert r["fatigue_day"] == platform_day(r["decided_at"], PLATFORM_TZ)
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE state IN ('reserved', 'unknown')") == 0
    # The outbox holds exactly the sent deliveries.
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM deliveries d"
            " FULL JOIN outbox_messages o USING (campaign_id, phase, consumer_id, day, channel)"
            " WHERE (d.state = 'sent') IS DISTINCT FROM (o.batch_id IS NOT NULL)"
        )
        == 0
    )


def local(dt: datetime, tz: str) -> datetime:
    return dt.astimezone(zone(tz))


def next_dst_change(tz: str, after: date) -> date:
    """The first day after `after` on which the zone's UTC offset changes (a DST switch)."""
    z = zone(tz)
    d = after
    for _ in range(400):
        nxt = d + timedelta(days=1)
        if (
            datetime.combine(nxt, time(12)).replace(tzinfo=z).utcoffset()
            != datetime.combine(d, time(12)).replace(tzinfo=z).utcoffset()
        ):
            return nxt
        d = nxt
    raise AssertionError(f"{tz} has no DST change within 400 days")


# ---------------------------------------------------------------- 1. send windows


async def test_send_windows_to_the_minute_in_three_zones(clean_db, ts_env):
    """R-WIN-1, R-PH-2: every send is decided on the phase day, at or after the configured send
    time and before 22:00, in the shop's own zone: Asia/Shanghai (K-OLDCUST at 08:17),
    America/New_York (K-PHASED preheat at 08:17, promote at 21:00, the latest allowed, recall at
    12:30) and Europe/Berlin across its next DST switch (K-PHASED promote at 08:17 on the day
    before, of and after the switch). Each live row's fatigue day is the platform's (Shanghai)
    natural day of the decision (R-FAT-2/3)."""
    pool = clean_db
    now = await ts_env.get_current_time()

    # Shanghai, K-OLDCUST, 08:17 tomorrow.
    sh_day = local_day(now, SHANGHAI) + timedelta(days=1)
    await make_shop(pool, "sh", SHANGHAI)
    await add_customers(
        pool,
        "sh",
        list(range(1, 121)),
        ordered_at=now - timedelta(days=30),
        visited_at=now - timedelta(days=3),
    )

    # New York, K-PHASED preheat D 08:17, promote D+1 21:00 (the latest allowed), recall D+2 12:30.
    ny_day = local_day(now, NEW_YORK) + timedelta(days=1)
    await make_shop(pool, "ny", NEW_YORK)
    await add_inquirers(pool, "ny", list(range(1001, 1061)), inquiry_at=midnight(ny_day, NEW_YORK) - timedelta(days=3))

    # Berlin, K-PHASED promote over the DST switch day T (T-1, T, T+1), 08:17.
    t = next_dst_change(BERLIN, local_day(now, BERLIN) + timedelta(days=1))
    await make_shop(pool, "be", BERLIN)
    await add_inquirers(pool, "be", list(range(2001, 2031)), inquiry_at=midnight(t, BERLIN) - timedelta(days=6))
    await add_inquirers(pool, "be", list(range(2031, 2061)), inquiry_at=at(t - timedelta(days=1), 12, 0, BERLIN))
    await add_inquirers(pool, "be", list(range(2061, 2091)), inquiry_at=at(t, 12, 0, BERLIN))

    specs = [
        oldcust("sh", "c-sh", sh_day, send_time=time(8, 17)),
        phased(
            "ny",
            "c-ny",
            [
                ("preheat", ny_day, ny_day, time(8, 17)),
                ("promote", ny_day + timedelta(days=1), ny_day + timedelta(days=1), time(21, 0)),
                ("recall", ny_day + timedelta(days=2), ny_day + timedelta(days=2), time(12, 30)),
            ],
        ),
        phased("be", "c-be", [("promote", t - timedelta(days=1), t + timedelta(days=1), time(8, 17))]),
    ]
    plans, _, results = await _run(ts_env, pool, specs)
    assert [r.state for r in results] == ["completed"] * 3

    # (campaign, phase) -> (zone, send time, expected local day -> expected recipients)
    expect = {
        (plans[0].campaign_db_id, 0): (SHANGHAI, time(8, 17), {sh_day: set(range(1, 121))}),
        (plans[1].campaign_db_id, 0): (NEW_YORK, time(8, 17), {ny_day: set(range(1001, 1061))}),
        (plans[1].campaign_db_id, 1): (
            NEW_YORK,
            time(21, 0),
            {ny_day + timedelta(days=1): set(range(1001, 1061))},
        ),
        (plans[1].campaign_db_id, 2): (
            NEW_YORK,
            time(12, 30),
            {ny_day + timedelta(days=2): set(range(1001, 1061))},
        ),
        (plans[2].campaign_db_id, 0): (
            BERLIN,
            time(8, 17),
            {
                t - timedelta(days=1): set(range(2001, 2031)),
                t: set(range(2031, 2061)),  # R-PH-3: the inquiry of T-1 12:00 joins T's snapshot
                t + timedelta(days=1): set(range(2061, 2091)),
            },
        ),
    }
    rows = await ledger(pool)
    assert {r["state"] for r in rows} == {"sent"}
    by_key: dict[tuple, dict[date, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_key[(r["campaign_id"], r["phase"])][r["day"]].append(r)
    assert set(by_key) == set(expect)
    for key, (tz, send_time, days) in expect.items():
        assert set(by_key[key]) == set(days), key
        for day, who in days.items():
            day_rows = by_key[key][day]
            assert {r["consumer_id"] for r in day_rows} == who
            assert len(day_rows) == len(who)
            for r in day_rows:
                lt = local(r["decided_at"], tz)
                assert lt.date() == day, (key, r)
                assert send_time <= lt.time() < rules.WINDOW_CLOSE, (key, lt)
            # To the minute: the first decision falls inside the configured send minute.
            first = min(local(r["decided_at"], tz) for r in day_rows)
            assert first.replace(second=0, microsecond=0).time() == send_time, (key, first)
            # The fatigue day is the platform's natural day of the decision (R-FAT-2/3).
            assert {r["fatigue_day"] for r in day_rows} == {platform_day(r["decided_at"], PLATFORM_TZ) for r in day_rows}
    # Berlin's 08:17 moves by an hour in UTC across the switch; the local minute does not.
    be_first = {
        day: min(r["decided_at"] for r in by_key[(plans[2].campaign_db_id, 0)][day])
        for day in expect[(plans[2].campaign_db_id, 0)][2]
    }
    offsets = {day: local(dt, BERLIN).utcoffset() for day, dt in be_first.items()}
    assert offsets[t - timedelta(days=1)] != offsets[t + timedelta(days=1)]
    # New York's 21:00 promote and 12:30 recall are already the next platform day in Shanghai
    # (and 12:30 New York is still the same day in UTC).
    ny_promote = by_key[(plans[1].campaign_db_id, 1)][ny_day + timedelta(days=1)]
    assert {r["fatigue_day"] for r in ny_promote} == {ny_day + timedelta(days=2)}
    ny_recall = by_key[(plans[1].campaign_db_id, 2)][ny_day + timedelta(days=2)]
    assert {r["fatigue_day"] for r in ny_recall} == {ny_day + timedelta(days=3)}
    assert await pool.fetchval("SELECT count(*) FROM outbox_messages") == len(rows)
    await assert_caps_and_counters(pool)


@pytest.mark.parametrize("bad", [time(7, 59), time(0, 0), time(22, 0), time(23, 30)])
def test_oldcust_send_time_outside_window_rejected(bad):
    """R-WIN-1: a K-OLDCUST send time before 08:00 (or at/after 22:00) is refused at validation."""
    with pytest.raises(ValidationError) as err:
        oldcust("s", "c", date(2030, 1, 1), send_time=bad)
    assert "R-WIN-1" in str(err.value)
    assert err.value.errors()[0]["loc"] == ("send_time",)
    oldcust("s", "c", date(2030, 1, 1), send_time=time(8, 0))  # 08:00 itself is fine


@pytest.mark.parametrize("bad", [time(7, 59), time(6, 0), time(21, 1), time(21, 59)])
def test_phase_send_time_outside_0800_2100_rejected(bad):
    """R-PH-2: a phase's daily send time is chosen between 08:00 and 21:00 shop-local."""
    with pytest.raises(ValidationError) as err:
        PhaseSpec(name="promote", start_date=date(2030, 1, 1), end_date=date(2030, 1, 2), send_time=bad, text="x")
    assert "R-PH-2" in str(err.value)
    for ok in (time(8, 0), time(21, 0)):
        PhaseSpec(name="promote", start_date=date(2030, 1, 1), end_date=date(2030, 1, 2), send_time=ok, text="x")


# ---------------------------------------------------------------- 2. 22:00 cut-off


async def test_paced_day_stops_at_2200_leftover_next_day_rest_not_sent(clean_db, ts_env):
    """R-PH-2 / R-WIN-1: with pacing (120 an hour, slices every five minutes) and a 20:00 send
    time only about 240 fit before 22:00. Day 1 stops at 22:00 local; the leftover is day 2's
    snapshot and goes out from 20:00 of day 2; what is unsent at 22:00 of the last day is recorded
    `not_sent` / `window_closed_phase_ended`, holding no cap (R-OC-8). K-OLDCUST over two days."""
    pool = clean_db
    now = await ts_env.get_current_time()
    tz = SHANGHAI
    d1 = local_day(now, tz) + timedelta(days=1)
    d2 = d1 + timedelta(days=1)
    await make_shop(pool, "s22", tz)
    everyone = set(range(1, 601))
    await add_customers(pool, "s22", sorted(everyone), ordered_at=now - timedelta(days=30), visited_at=now - timedelta(days=3))
    spec = oldcust("s22", "late", d1, end_date=d2, send_time=time(20, 0), pacing=Pacing(per_hour=120))
    plans, _, results = await _run(ts_env, pool, [spec])
    cid = plans[0].campaign_db_id
    assert results[0].state == "completed"

    rows = await ledger(pool, cid)
    sent = {d: [r for r in rows if r["state"] == "sent" and r["day"] == d] for d in (d1, d2)}
    for d in (d1, d2):
        times = sorted(local(r["decided_at"], tz) for r in sent[d])
        assert all(x.date() == d and time(20, 0) <= x.time() < time(22, 0) for x in times)
        # Paced: 10 every five minutes from 20:00, until the window closes at 22:00.
        assert time(20, 0) <= times[0].time() < time(20, 1)
        assert times[-1].time() >= time(21, 50), times[-1]
        assert 200 <= len(sent[d]) <= 240, len(sent[d])
        per_slot = Counter(x.replace(second=0, microsecond=0) for x in times)
        assert max(per_slot.values()) <= 10  # never faster than the pace
    # Day 1 left people over and recorded nothing for them (the phase goes on).
    assert {r["state"] for r in rows if r["day"] == d1} == {"sent"}
    day1_who = {r["consumer_id"] for r in sent[d1]}
    refresh2 = await pool.fetchrow(
        "SELECT matched, eligible, excluded FROM audience_refreshes WHERE campaign_id = $1 AND day = $2",
        cid,
        d2,
    )
    # Day 2's snapshot is exactly day 1's leftover (R-PH-3 refresh, already reached are dropped).
    assert refresh2["eligible"] == 600 - len(day1_who)
    assert refresh2["excluded"] == {"already_reached": len(day1_who)}
    snap2 = {
        r["consumer_id"]
        for r in await pool.fetch("SELECT consumer_id FROM audience_snapshots WHERE campaign_id = $1 AND day = $2", cid, d2)
    }
    assert snap2 == everyone - day1_who
    # The last day's rest is not_sent with the window reason; every customer has exactly one row.
    not_sent = [r for r in rows if r["state"] == "not_sent"]
    assert not_sent and all(r["day"] == d2 and r["reason"] == NOT_SENT_WINDOW for r in not_sent)
    assert all(local(r["decided_at"], tz) >= at(d2, 22, 0, tz) for r in not_sent)
    assert len(rows) == 600 and {r["consumer_id"] for r in rows} == everyone
    assert len(sent[d1]) + len(sent[d2]) + len(not_sent) == 600
    assert {r["state"] for r in rows} == {"sent", "not_sent"}
    report = await pool.fetchval("SELECT counts FROM campaign_day_reports WHERE campaign_id = $1 AND day = $2", cid, d2)
    assert report["sent"] == len(sent[d2]) and report[f"not_sent:{NOT_SENT_WINDOW}"] == len(not_sent)
    assert results[0].totals["reach"]["sent"] == len(sent[d1]) + len(sent[d2])
    assert results[0].totals["reach"]["not_sent"] == len(not_sent)
    assert results[0].last_report.get("stopped:window_closed") == 1
    await assert_caps_and_counters(pool)


async def test_oldcust_leftover_below_100_still_goes_out_next_day(clean_db, ts_env):
    """R-OC-4 applies to the task's audience, not to the remainder of a day: a 300-customer
    K-OLDCUST task whose day 1 closes at 22:00 (R-PH-2) sends its ~60 leftover on day 2 (the
    `end_date` is the "last day to send leftovers"); only a task audience under 100 is refused."""
    pool = clean_db
    now = await ts_env.get_current_time()
    tz = SHANGHAI
    d1 = local_day(now, tz) + timedelta(days=1)
    d2 = d1 + timedelta(days=1)
    await make_shop(pool, "s300", tz)
    await add_customers(
        pool,
        "s300",
        list(range(1, 301)),
        ordered_at=now - timedelta(days=30),
        visited_at=now - timedelta(days=3),
    )
    # A second shop with exactly 100 valid old customers: refused every day (R-OC-4: 100 or fewer cannot be sent).
    await make_shop(pool, "s100", tz)
    await add_customers(
        pool,
        "s100",
        list(range(1, 101)),
        ordered_at=now - timedelta(days=30),
        visited_at=now - timedelta(days=3),
    )
    specs = [
        oldcust("s300", "late", d1, end_date=d2, send_time=time(20, 0), pacing=Pacing(per_hour=120)),
        oldcust("s100", "small", d1, end_date=d2, send_time=time(20, 0)),
    ]
    plans, _, results = await _run(ts_env, pool, specs)
    rows = await ledger(pool, plans[0].campaign_db_id)
    day1 = [r for r in rows if r["day"] == d1 and r["state"] == "sent"]
    day2 = [r for r in rows if r["day"] == d2 and r["state"] == "sent"]
    assert 200 <= len(day1) <= 240
    assert len(day1) + len(day2) == 300, (
        len(day1),
        len(day2),
        Counter((r["state"], r["reason"]) for r in rows),
    )
    assert {r["consumer_id"] for r in day1 + day2} == set(range(1, 301))
    small = await ledger(pool, plans[1].campaign_db_id)
    assert small and {(r["state"], r["reason"]) for r in small} == {("not_sent", "audience_below_minimum")}
    assert {r["day"] for r in small} == {d2}
    assert results[1].totals["reach"].get("sent", 0) == 0
    await assert_caps_and_counters(pool)


# ---------------------------------------------------------------- 3. daily refresh


async def test_daily_refresh_picks_up_customers_new_on_day_one(clean_db, ts_env):
    """R-PH-3, R-OC-5 (T+1 snapshot at 00:00 shop-local): customers whose first qualifying order,
    visit or inquiry is timestamped during day 1 (from 00:00 local) are not in day 1's snapshot,
    are in day 2's, and get exactly one delivery; one at 23:59 of the day before is in day 1's.
    Nobody gets two in the phase. K-OLDCUST (Shanghai) and K-PHASED (New York) side by side."""
    pool = clean_db
    now = await ts_env.get_current_time()

    # K-OLDCUST in Shanghai: valid old customer = order within 365 days + visit within 90 (R-OC-1).
    tz = SHANGHAI
    d1 = local_day(now, tz) + timedelta(days=1)
    d2 = d1 + timedelta(days=1)
    await make_shop(pool, "oc", tz)
    old = list(range(1, 151))
    await add_customers(pool, "oc", old, ordered_at=now - timedelta(days=30), visited_at=now - timedelta(days=3))
    edge = list(range(151, 156))  # first order at 23:59 the day before: day 1's snapshot
    await add_customers(
        pool,
        "oc",
        edge,
        ordered_at=at(d1, 0, 0, tz) - timedelta(minutes=1),
        visited_at=now - timedelta(days=3),
    )
    new_order = list(range(201, 261))  # first order exactly 00:00 of day 1
    await add_customers(pool, "oc", new_order, ordered_at=at(d1, 0, 0, tz), visited_at=now - timedelta(days=3))
    new_visit = list(range(301, 361))  # an old order, but the first visit at 13:00 of day 1 (during sends)
    await add_customers(pool, "oc", new_visit, ordered_at=now - timedelta(days=60), visited_at=at(d1, 13, 0, tz))

    # K-PHASED in New York: promote over two days, audience = inquiry within 30 days (R-PH-4).
    ntz = NEW_YORK
    n1 = local_day(now, ntz) + timedelta(days=1)
    n2 = n1 + timedelta(days=1)
    await make_shop(pool, "ph", ntz)
    await add_inquirers(pool, "ph", list(range(1001, 1041)), inquiry_at=midnight(n1, ntz) - timedelta(days=3))
    await add_inquirers(pool, "ph", list(range(1041, 1046)), inquiry_at=midnight(n1, ntz) - timedelta(minutes=1))
    await add_inquirers(pool, "ph", list(range(1101, 1131)), inquiry_at=midnight(n1, ntz))
    await add_inquirers(pool, "ph", list(range(1131, 1161)), inquiry_at=at(n1, 21, 59, ntz))

    specs = [
        oldcust("oc", "daily", d1, end_date=d2, send_time=time(10, 0)),
        phased("ph", "daily", [("promote", n1, n2, time(9, 0))]),
    ]
    plans, _, results = await _run(ts_env, pool, specs)
    assert [r.state for r in results] == ["completed", "completed"]

    cases = [
        (plans[0].campaign_db_id, d1, d2, set(old + edge), set(new_order + new_visit)),
        (plans[1].campaign_db_id, n1, n2, set(range(1001, 1046)), set(range(1101, 1161))),
    ]
    for cid, day1, day2, first, later in cases:
        snap = defaultdict(set)
        for r in await pool.fetch("SELECT day, consumer_id FROM audience_snapshots WHERE campaign_id = $1", cid):
            snap[r["day"]].add(r["consumer_id"])
        assert snap[day1] == first
        assert snap[day2] == later  # day 1's recipients are already reached, new ones join
        rows = await ledger(pool, cid)
        assert {r["state"] for r in rows} == {"sent"}
        per_consumer = Counter(r["consumer_id"] for r in rows)
        assert set(per_consumer) == first | later and set(per_consumer.values()) == {1}
        assert {r["consumer_id"] for r in rows if r["day"] == day2} == later
        refresh = await pool.fetchrow(
            "SELECT eligible, excluded FROM audience_refreshes WHERE campaign_id = $1 AND day = $2", cid, day2
        )
        assert refresh["eligible"] == len(later) and refresh["excluded"] == {"already_reached": len(first)}
    await assert_caps_and_counters(pool)


# ---------------------------------------------------------------- 4. caps


async def test_shop_day_cap_across_concurrent_campaigns_of_two_shops(clean_db, ts_env):
    """R-FAT-2, R-FAT-4, R-OC-8: two shops share 120 consumers (consumer_id is platform-wide). Each
    shop runs three campaigns at the same minute of day D (K-OLDCUST, a K-PHASED preheat, another
    K-PHASED's promote; three template groups), in small concurrent slices. Every consumer gets
    exactly 2 messages per shop on D, the third is suppressed `fatigue_shop_day`; on D+1 the
    preheat campaign's promote reaches everyone again (a new platform day). The counters equal
    the ledger's live rows: the suppressed rows held no cap."""
    pool = clean_db
    now = await ts_env.get_current_time()
    tz = SHANGHAI
    d = local_day(now, tz) + timedelta(days=1)
    people = list(range(1, 121))
    specs = []
    for shop in ("sa", "sb"):
        await make_shop(pool, shop, tz)
        await add_customers(
            pool,
            shop,
            people,
            ordered_at=now - timedelta(days=30),
            visited_at=now - timedelta(days=3),
            inquiry_at=now - timedelta(days=2),
        )
        specs += [
            oldcust(shop, "oc", d, send_time=time(10, 0)),
            phased(
                shop,
                "x",
                [
                    ("preheat", d, d, time(10, 0)),
                    ("promote", d + timedelta(days=1), d + timedelta(days=1), time(10, 0)),
                ],
            ),
            phased(shop, "y", [("promote", d, d, time(10, 0))]),
        ]
    plans, _, results = await _run(ts_env, pool, specs, tuning={"slice_size": 16, "chunk_size": 5, "concurrency": 4})
    assert all(r.state == "completed" for r in results)

    rows = await ledger(pool)
    on_d = [r for r in rows if r["fatigue_day"] == d]
    outcome = defaultdict(Counter)
    for r in on_d:
        outcome[(r["consumer_id"], r["shop_id"])][(r["state"], r["reason"])] += 1
    assert len(outcome) == 240
    for key, c in outcome.items():
        assert c == Counter({("sent", None): 2, ("suppressed", SUPPRESS_SHOP_DAY): 1}), (key, c)
    on_d1 = [r for r in rows if r["fatigue_day"] == d + timedelta(days=1)]
    assert len(on_d1) == 240 and {r["state"] for r in on_d1} == {"sent"}
    # Counter rows, read directly: 2 per shop and 4 / 2 shops per consumer on D.
    assert {tuple(r) for r in await pool.fetch("SELECT sent, shops FROM fatigue_day WHERE day = $1", d)} == {(4, 2)}
    assert {r["sent"] for r in await pool.fetch("SELECT sent FROM fatigue_shop_day WHERE day = $1", d)} == {2}
    await assert_caps_and_counters(pool)


async def test_global_caps_ten_a_day_five_shops_over_two_days(clean_db, ts_env):
    """R-FAT-3, R-FAT-4, R-OC-8: six shops send to the same 100 consumers on day D, two messages
    each (K-PHASED x: preheat D / promote D+1; K-PHASED y: promote D), all at the same minute.
    Every consumer gets exactly 10 on D, from exactly 5 shops; the sixth shop's two are suppressed
    (`fatigue_global_shops` or `fatigue_global_day`). On D+1 the six promotes reach each consumer
    from 5 shops; the sixth is `fatigue_global_shops`. No cap is ever exceeded in the ledger."""
    pool = clean_db
    now = await ts_env.get_current_time()
    tz = SHANGHAI
    d = local_day(now, tz) + timedelta(days=1)
    people = list(range(1, 101))
    shops = [f"g{i}" for i in range(1, 7)]
    specs = []
    for shop in shops:
        await make_shop(pool, shop, tz)
        await add_inquirers(pool, shop, people, inquiry_at=midnight(d, tz) - timedelta(days=2))
        specs += [
            phased(
                shop,
                "x",
                [
                    ("preheat", d, d, time(9, 0)),
                    ("promote", d + timedelta(days=1), d + timedelta(days=1), time(9, 0)),
                ],
            ),
            phased(shop, "y", [("promote", d, d, time(9, 0))]),
        ]
    plans, _, results = await _run(ts_env, pool, specs, tuning={"slice_size": 20, "chunk_size": 7, "concurrency": 3})
    assert all(r.state == "completed" for r in results)

    rows = await ledger(pool)
    for day, sent_each, suppressed_each in ((d, 10, 2), (d + timedelta(days=1), 5, 1)):
        by_consumer = defaultdict(list)
        for r in rows:
            if r["fatigue_day"] == day:
                by_consumer[r["consumer_id"]].append(r)
        assert set(by_consumer) == set(people)
        for cid, rs in by_consumer.items():
            sent = [r for r in rs if r["state"] == "sent"]
            supp = [r for r in rs if r["state"] == "suppressed"]
            assert len(sent) == sent_each and len(supp) == suppressed_each, (day, cid, rs)
            assert len({r["shop_id"] for r in sent}) == rules.GLOBAL_SHOPS_MAX
            assert {r["reason"] for r in supp} <= {SUPPRESS_GLOBAL_SHOPS, SUPPRESS_GLOBAL_DAY}
            # The suppressed messages are all from the one shop that did not get in.
            assert len({r["shop_id"] for r in supp}) == 1
            assert not {r["shop_id"] for r in supp} & {r["shop_id"] for r in sent}
            if day != d:
                assert {r["reason"] for r in supp} == {SUPPRESS_GLOBAL_SHOPS}
        counters = await pool.fetch("SELECT sent, shops FROM fatigue_day WHERE day = $1", day)
        assert {tuple(r) for r in counters} == {(sent_each, 5)}
    await assert_caps_and_counters(pool)


async def test_oldcust_one_scene_message_per_seven_days(clean_db, ts_env):
    """R-OC-2 / R-FAT-1 (one old-customer scene message per consumer and shop per 7 natural days,
    shared by all scenes) and R-OC-8 (what was not sent consumes nothing; the task can be recreated):
    shop A's K-OLDCUST tasks on D (sent), D+2 and D+6 (suppressed `fatigue_template`), D+8 (sent);
    shop B's tasks on D and D+7 (the first day outside D's seven natural days) both send.

    Shop B has its own consumers on purpose: seed 003 does not say whether the 7-day scene cap is
    per shop (R-FAT-1's reading) or per consumer across shops, so this test does not pin it."""
    pool = clean_db
    now = await ts_env.get_current_time()
    tz = SHANGHAI
    d = local_day(now, tz) + timedelta(days=1)
    people = {"oa": list(range(1, 121)), "ob": list(range(1001, 1121))}
    for shop, who in people.items():
        await make_shop(pool, shop, tz)
        await add_customers(pool, shop, who, ordered_at=now - timedelta(days=30), visited_at=now - timedelta(days=1))
    offsets_a = [0, 2, 6, 8]
    offsets_b = [0, 7]
    specs = [oldcust("oa", f"a{o}", d + timedelta(days=o), send_time=time(10, 0)) for o in offsets_a]
    specs += [oldcust("ob", f"b{o}", d + timedelta(days=o), send_time=time(11, 0)) for o in offsets_b]
    plans, _, results = await _run(ts_env, pool, specs)
    assert all(r.state == "completed" for r in results)

    expected = {
        "a0": "sent",
        "a2": SUPPRESS_TEMPLATE,
        "a6": SUPPRESS_TEMPLATE,
        "a8": "sent",
        "b0": "sent",
        "b7": "sent",
    }
    for plan in plans:
        rows = await ledger(pool, plan.campaign_db_id)
        assert {r["consumer_id"] for r in rows} == set(people[plan.shop_id]), plan.campaign_id
        want = expected[plan.campaign_id]
        if want == "sent":
            assert {(r["state"], r["reason"]) for r in rows} == {("sent", None)}, plan.campaign_id
        else:
            assert {(r["state"], r["reason"]) for r in rows} == {("suppressed", want)}, plan.campaign_id
    # R-OC-8: the suppressed days hold no counter anywhere.
    for o in (2, 6):
        day = d + timedelta(days=o)
        assert await pool.fetchval("SELECT count(*) FROM fatigue_template WHERE day = $1 AND sent > 0", day) == 0
        assert await pool.fetchval("SELECT count(*) FROM fatigue_shop_day WHERE day = $1 AND sent > 0", day) == 0
        assert await pool.fetchval("SELECT coalesce(max(sent), 0) FROM fatigue_day WHERE day = $1", day) == 0
    sums = await pool.fetch(
        "SELECT shop_id, day, sum(sent)::int AS n FROM fatigue_template GROUP BY 1, 2 HAVING sum(sent) > 0 ORDER BY 1, 2"
    )
    assert [(r["shop_id"], (r["day"] - d).days, r["n"]) for r in sums] == [
        ("oa", 0, 120),
        ("oa", 8, 120),
        ("ob", 0, 120),
        ("ob", 7, 120),
    ]
    await assert_caps_and_counters(pool)


# ---------------------------------------------------------------- 5. phases


async def test_phased_preheat_promote_recall_audiences_and_run_chain(clean_db, ts_env):
    """R-PH-1 (preheat -> promote -> recall, continue-as-new at each boundary), R-PH-3 (new
    inquirers join at the next daily refresh), R-PH-4 (preheat/promote = inquiry within 30 days
    before the day's 00:00 snapshot; recall also drops who ordered after the campaign started),
    R-REP-1 (per-phase totals add up to the ledger)."""
    pool = clean_db
    now = await ts_env.get_current_time()
    tz = SHANGHAI
    d = local_day(now, tz) + timedelta(days=2)
    day = lambda n: d + timedelta(days=n)  # noqa: E731
    snap_d = midnight(d, tz)
    await make_shop(pool, "ph", tz)
    groups = {
        "A": (range(1, 41), dict(inquiry_at=snap_d - timedelta(days=5))),
        # exactly 30 days before preheat's snapshot: in preheat only (promote's snapshot is a day later)
        "B": (range(41, 51), dict(inquiry_at=snap_d - timedelta(days=30))),
        "B2": (range(51, 56), dict(inquiry_at=snap_d - timedelta(days=30, minutes=1))),  # never
        "C": (range(56, 81), dict(inquiry_at=at(d, 12, 0, tz))),  # during preheat's day: promote D+1
        "Dd": (range(81, 101), dict(inquiry_at=snap_d - timedelta(days=5), ordered_at=at(day(1), 15, 0, tz))),
        "E": (
            range(101, 116),
            dict(inquiry_at=snap_d - timedelta(days=5), ordered_at=now - timedelta(days=2)),
        ),
        "F": (
            range(116, 126),
            dict(inquiry_at=snap_d - timedelta(days=5), ordered_at=now + timedelta(hours=1)),
        ),
        "G": (range(126, 131), dict(inquiry_at=at(day(3), 12, 0, tz))),  # during recall's first day
        "H": (range(131, 141), dict(inquiry_at=at(day(1), 12, 0, tz))),  # during promote's first day
    }
    for ids, kw in groups.values():
        await add_inquirers(pool, "ph", list(ids), **kw)
    spec = phased(
        "ph",
        "three",
        [
            ("preheat", day(0), day(0), time(10, 0)),
            ("promote", day(1), day(2), time(10, 0)),
            ("recall", day(3), day(4), time(10, 0)),
        ],
    )
    plans, handles, results = await _run(ts_env, pool, [spec])
    result = results[0]
    cid = plans[0].campaign_db_id
    assert result.state == "completed"

    def g(*names):
        return {c for n in names for c in groups[n][0]}

    expect = {
        (0, day(0)): g("A", "B", "Dd", "E", "F"),
        (1, day(1)): g("A", "C", "Dd", "E", "F"),
        (1, day(2)): g("H"),
        (2, day(3)): g("A", "C", "E", "H"),  # Dd ordered on D+1, F an hour after the start
        (2, day(4)): g("G"),
    }
    rows = await ledger(pool, cid)
    assert {r["state"] for r in rows} == {"sent"}
    got = defaultdict(set)
    for r in rows:
        got[(r["phase"], r["day"])].add(r["consumer_id"])
    assert dict(got) == expect
    # Each consumer at most once per phase (R-PH-3 refresh drops who this phase reached).
    assert max(Counter((r["phase"], r["consumer_id"]) for r in rows).values()) == 1
    # Recall's refresh counted the excluded orderers as not matched at all.
    recall = await pool.fetchrow(
        "SELECT matched, eligible FROM audience_refreshes WHERE campaign_id = $1 AND phase = 2 AND day = $2",
        cid,
        day(3),
    )
    assert recall["eligible"] == len(expect[(2, day(3))])
    assert recall["matched"] == len(g("A", "C", "E", "H"))

    # Continue-as-new at each phase boundary: three runs, the first two continued as new.
    assert result.runs == 3
    chain, run_id = [], handles[0].result_run_id
    while run_id:
        h = ts_env.client.get_workflow_handle(plans[0].workflow_id, run_id=run_id)
        events = [e async for e in h.fetch_history_events()]
        last = events[-1]
        chain.append(last.event_type)
        run_id = (
            last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
            if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
            else None
        )
    assert chain == [
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
    ]
    # Totals per phase add up to the ledger and to the daily reports.
    names = ["preheat", "promote", "recall"]
    assert set(result.totals) == set(names)
    for i, name in enumerate(names):
        sent = sum(len(v) for (p, _), v in expect.items() if p == i)
        assert result.totals[name]["sent"] == sent
        assert result.totals[name]["days"] == len(plans[0].phases[i].days())
        reports = await pool.fetch("SELECT counts FROM campaign_day_reports WHERE campaign_id = $1 AND phase = $2", cid, i)
        assert sum(r["counts"].get("sent", 0) for r in reports) == sent
    assert (
        sum(t["sent"] for t in result.totals.values())
        == len(rows)
        == await pool.fetchval("SELECT count(*) FROM outbox_messages WHERE campaign_id = $1", cid)
    )
    await assert_caps_and_counters(pool)


# ---------------------------------------------------------------- 6. daily cap


async def test_phase_daily_cap_spreads_sends_over_the_phase(clean_db, ts_env):
    """R-PH-7: with daily_cap=40 a 130-customer promote phase of three days sends 40 a day; what
    the cap leaves goes out on later days; on the last day the rest is recorded not_sent
    (`daily_cap_phase_ended`). Ten consumers already at the platform's 10-a-day (R-FAT-3) on day 1
    are suppressed there without eating the cap (R-OC-8), and are reached on day 2. Small
    concurrent slices exercise the cap's allotment across slices."""
    pool = clean_db
    now = await ts_env.get_current_time()
    tz = SHANGHAI
    d1 = local_day(now, tz) + timedelta(days=1)
    days = [d1 + timedelta(days=i) for i in range(3)]
    await make_shop(pool, "cap", tz)
    people = list(range(1, 131))
    await add_inquirers(pool, "cap", people, inquiry_at=midnight(d1, tz) - timedelta(days=3))
    # Ten consumers already had ten messages today on other shops (the counter another campaign left).
    await pool.executemany(
        "INSERT INTO fatigue_day (consumer_id, day, sent, shops) VALUES ($1, $2, 10, 5)",
        [(c, d1) for c in range(1, 11)],
    )
    spec = phased("cap", "spread", [("promote", days[0], days[-1], time(9, 30), 40)])
    plans, _, results = await _run(ts_env, pool, [spec], tuning={"slice_size": 7, "chunk_size": 3, "concurrency": 4})
    cid = plans[0].campaign_db_id
    assert results[0].state == "completed"

    rows = await ledger(pool, cid)
    sent_per_day = Counter(r["day"] for r in rows if r["state"] == "sent")
    assert [sent_per_day[x] for x in days] == [40, 40, 40]
    supp = [r for r in rows if r["state"] == "suppressed"]
    assert {r["consumer_id"] for r in supp} == set(range(1, 11))
    assert {(r["day"], r["reason"]) for r in supp} == {(d1, SUPPRESS_GLOBAL_DAY)}
    assert {r["consumer_id"] for r in rows if r["state"] == "sent" and r["day"] == days[1]} >= set(range(1, 11))
    not_sent = [r for r in rows if r["state"] == "not_sent"]
    assert len(not_sent) == 10 and {(r["day"], r["reason"]) for r in not_sent} == {(days[2], "daily_cap_phase_ended")}
    sent_once = Counter(r["consumer_id"] for r in rows if r["state"] == "sent")
    assert set(sent_once.values()) == {1} and len(sent_once) == 120
    assert set(sent_once) | {r["consumer_id"] for r in not_sent} == set(people)
    # The day-1 counters of the ten are untouched by the suppressed attempts.
    assert {
        tuple(r) for r in await pool.fetch("SELECT sent, shops FROM fatigue_day WHERE day = $1 AND consumer_id <= 10", d1)
    } == {(10, 5)}
    assert results[0].totals["promote"]["sent"] == 120
    assert results[0].totals["promote"]["days"] == 3
    for x in days:
        counts = await pool.fetchval("SELECT counts FROM campaign_day_reports WHERE campaign_id = $1 AND day = $2", cid, x)
        assert counts["sent"] == 40
