"""The reachable-count preview (R-PRE-1) equals what the run then decides on the same data.

A shop where every exclusion, filter and cap bites for a known handful of
customers; the preview through the API's path, then the campaign itself on the
time-skipping server: the preview's `would_send` is the ledger's `sent`, its
fatigue reasons the ledger's suppressions, its exclusions and filters the
refresh's. Nothing the preview does is left in the database.
"""

from __future__ import annotations

import json
from datetime import time, timedelta

import pytest
from sluice.api.service import preview_campaign
from sluice.kinds.oldcust import OldCustomerSpec
from sluice.outcomes.holdout import held_out
from sluice.workflows.calendar import local_day

from tests.api_helpers import client, running_app, shop_key
from tests.factories import add_customers, make_shop
from tests.test_oldcust_workflow import TZ, _run

SHOP = "s1"


async def _shop(pool, now, send_day):
    await make_shop(pool, SHOP, TZ)
    recent = dict(ordered_at=now - timedelta(days=30), visited_at=now - timedelta(days=3))
    await add_customers(pool, SHOP, list(range(1, 301)), **recent)
    await add_customers(pool, SHOP, list(range(301, 306)), blacklisted=True, **recent)
    await add_customers(pool, SHOP, list(range(306, 309)), unsub_chat=True, **recent)
    await add_customers(pool, SHOP, list(range(309, 312)), chat_id=None, **recent)
    # R-OC-7: valid old customers (a visit within 90 days) but nothing within 30.
    await add_customers(pool, SHOP, list(range(312, 331)), ordered_at=now - timedelta(days=30),
                        visited_at=now - timedelta(days=60))
    # R-OC-6: an earlier old-customer task of the shop has 1..20 in the same day's snapshot.
    earlier = await pool.fetchval(
        "INSERT INTO campaigns (shop_id, campaign_ref, workflow_id, kind, spec, state)"
        " VALUES ($1, 'earlier', $1 || '.earlier', 'K-OLDCUST', '{}'::jsonb, 'sending') RETURNING id", SHOP)
    await pool.executemany(
        "INSERT INTO audience_snapshots (campaign_id, phase, day, seq, consumer_id) VALUES ($1, 0, $2, $3, $4)",
        [(earlier, send_day, c, c) for c in range(1, 21)])
    # Caps already spent on the send day (platform day = the shop's day here: both Asia/Shanghai).
    rows = [(c, send_day, 10, 3, {"x": 10}, {}) for c in range(21, 26)]  # R-FAT-3: 10 a day
    rows += [(c, send_day, 5, 5, {"a": 1, "b": 1, "c": 1, "d": 1, "e": 1}, {}) for c in range(26, 31)]  # 5 shops
    rows += [(c, send_day, 2, 1, {SHOP: 2}, {}) for c in range(31, 36)]  # R-FAT-2: 2 from this shop
    rows += [(c, send_day - timedelta(days=3), 1, 1, {SHOP: 1}, {f"{SHOP}/oldcust-scene": 1})
             for c in range(36, 41)]  # R-OC-2 / R-FAT-1: a custom scene 3 days before
    await pool.executemany(
        "INSERT INTO fatigue_day (consumer_id, day, sent, shops, per_shop, per_template) VALUES ($1, $2, $3, $4, $5, $6)",
        rows)


EXPECTED_REMOVED = {
    "blacklisted": 5, "unsubscribed": 3, "no_contact": 3, "low_activity": 19, "overlap": 20,
    "fatigue_global_day": 5, "fatigue_global_shops": 5, "fatigue_shop_day": 5, "fatigue_template": 5,
}
REFRESH_REASONS = {"blacklisted", "unsubscribed", "no_contact", "low_activity", "overlap"}


@pytest.mark.parametrize("holdout", [0, 20])
async def test_the_preview_equals_what_the_run_decides(clean_db, ts_env, holdout):
    """With a control group (R-HO-1, 20%) the preview counts exactly whom the run holds out: eligible consumers the
    hash of the workflow id picks, before any cap (a capped consumer it picks is held out, not suppressed)."""
    pool = clean_db
    now = await ts_env.get_current_time()
    send_day = local_day(now, TZ) + timedelta(days=1)
    await _shop(pool, now, send_day)
    spec = OldCustomerSpec(kind="K-OLDCUST", shop_id=SHOP, campaign_id="c1", scene="Spring", card_text="Hi",
                           send_date=send_day, send_time=time(9, 30), holdout_percent=holdout)
    # Independently: the eligible are 21..300 (1..20 overlap, 301.. excluded or inactive); 21..40 are capped.
    held = {c for c in range(21, 301) if held_out(0, c, holdout, key=f"{SHOP}.c1")}
    assert (len(held) > 30 and held & set(range(21, 41))) if holdout else not held
    expected = dict(EXPECTED_REMOVED)
    for first, reason in ((21, "fatigue_global_day"), (26, "fatigue_global_shops"), (31, "fatigue_shop_day"),
                          (36, "fatigue_template")):  # fmt: skip
        expected[reason] -= len(held & set(range(first, first + 5)))
    if held:
        expected["held_out"] = len(held)
    before = await pool.fetchval("SELECT count(*) FROM campaigns")
    result = await preview_campaign(pool, spec, platform_tz=TZ, now=now)
    [phase] = result.phases
    assert phase.matched == 330 and phase.day == send_day.isoformat()
    assert phase.removed == {k: v for k, v in expected.items() if v}, phase.removed
    assert phase.would_send == 330 - sum(expected.values()) == 260 - len(held - set(range(21, 41)))
    assert phase.rules["fatigue_template"] == "R-FAT-1" and phase.rules["overlap"] == "R-OC-6"
    if held:
        assert phase.rules["held_out"] == "R-HO-1"
    # Nothing of the preview stays: no campaign, no snapshot, no counter moved.
    assert await pool.fetchval("SELECT count(*) FROM campaigns") == before
    assert await pool.fetchval("SELECT count(*) FROM audience_snapshots") == 20
    assert await pool.fetchval("SELECT sum(sent) FROM fatigue_day") == 5 * 10 + 5 * 5 + 5 * 2 + 5

    plans, results = await _run(ts_env, pool, [spec])
    cid = plans[0].campaign_db_id
    ledger = dict(await pool.fetch(
        "SELECT coalesce(reason, state), count(*)::int FROM deliveries WHERE campaign_id = $1 GROUP BY 1", cid))
    refresh = await pool.fetchrow("SELECT matched, excluded FROM audience_refreshes WHERE campaign_id = $1", cid)
    assert ledger.pop("sent") == phase.would_send
    assert ledger == {k: v for k, v in phase.removed.items() if k.startswith("fatigue_") or k == "held_out"}
    assert {r[0] for r in await pool.fetch(
        "SELECT consumer_id FROM deliveries WHERE campaign_id = $1 AND state = 'held_out'", cid)} == held
    assert refresh["matched"] == phase.matched
    assert refresh["excluded"] == {k: v for k, v in phase.removed.items() if k in REFRESH_REASONS}


async def test_a_preview_of_100_or_fewer_sends_nothing_and_neither_does_the_run(clean_db, ts_env):
    pool = clean_db
    now = await ts_env.get_current_time()
    send_day = local_day(now, TZ) + timedelta(days=1)
    await make_shop(pool, SHOP, TZ)
    await add_customers(pool, SHOP, list(range(1, 101)), ordered_at=now - timedelta(days=30),
                        visited_at=now - timedelta(days=3))
    spec = OldCustomerSpec(kind="K-OLDCUST", shop_id=SHOP, campaign_id="small", scene="S", card_text="Hi",
                           send_date=send_day, send_time=time(9, 30))
    [phase] = (await preview_campaign(pool, spec, platform_tz=TZ, now=now)).phases
    assert phase.would_send == 0 and phase.removed == {"audience_below_minimum": 100}
    assert phase.rules == {"audience_below_minimum": "R-OC-4"}
    plans, _ = await _run(ts_env, pool, [spec])
    assert await pool.fetchval(
        "SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND state = 'sent'", plans[0].campaign_db_id) == 0


async def test_preview_through_the_api_and_the_cli_shape(clean_db, ts_env):
    pool = clean_db
    now = await ts_env.get_current_time()
    key = await shop_key(pool, SHOP, TZ)
    await add_customers(pool, SHOP, list(range(1, 151)), ordered_at=now - timedelta(days=30),
                        visited_at=now - timedelta(days=3))
    body = {"kind": "K-OLDCUST", "shop_id": SHOP, "campaign_id": "p", "scene": "S", "card_text": "Hi"}
    async with running_app(pool, ts_env, worker=False) as app, client(app, key) as c:
        res = await c.post("/campaigns/preview", json=body)
        assert res.status_code == 200, res.text
        assert res.json()["phases"][0]["would_send"] == 150
        assert (await c.post("/campaigns/preview", json={**body, "shop_id": "other"})).status_code == 403
        bad = await c.post("/campaigns/preview", json={**body, "card_text": "x" * 51})
        assert bad.status_code == 422 and bad.json()["detail"][0]["rule"] == "R-OC-3"
    assert await pool.fetchval("SELECT count(*) FROM campaigns") == 0
    assert json.loads(res.text)["workflow_id"] == f"{SHOP}.p"


def test_each_zones_fatigue_day_is_the_day_its_window_first_opens_before_the_shops_next_day():
    """zone_fatigue_days (R-FAT-DAY, R-WIN-1): 13:00 UTC is 21:00 in Shanghai (open: that day), 22:00 in Tokyo (closed
    until 08:00 the next local day, after the shop's day ends at 16:00 UTC: not sent), 08:00 in New York (open)."""
    from datetime import UTC, date, datetime

    from sluice.audiences.preview import zone_fatigue_days

    at, end = datetime(2026, 6, 1, 13, tzinfo=UTC), datetime(2026, 6, 1, 16, tzinfo=UTC)
    days = zone_fatigue_days(at, end, "Asia/Shanghai")
    assert days["Asia/Shanghai"] == date(2026, 6, 1)
    assert days["Asia/Tokyo"] is None
    assert days["America/New_York"] == date(2026, 6, 1)
    # Los Angeles: 06:00 at `at`, its window opens at 08:00 = 15:00 UTC, before the end: that local day.
    assert days["America/Los_Angeles"] == date(2026, 6, 1)
    assert days["Pacific/Kiritimati"] is None  # 03:00 the next day there, opening only at 18:00 UTC
