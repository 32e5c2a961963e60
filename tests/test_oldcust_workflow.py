"""K-OLDCUST end to end on the time-skipping server and a real Postgres."""

from __future__ import annotations

import uuid
from datetime import time, timedelta

from sluice.api.service import start_campaign
from sluice.kinds.oldcust import OldCustomerSpec
from sluice.schemas.settings import Settings
from sluice.workers.worker import build_worker
from sluice.workflows.calendar import local_day, zone

from tests.factories import add_customers, make_shop


def _settings() -> Settings:
    return Settings(SLUICE_PLATFORM_TZ="Asia/Shanghai")


async def _run(env, pool, specs, **kw):
    queue = f"q-{uuid.uuid4().hex[:6]}"
    async with build_worker(env.client, pool, _settings(), task_queue=queue):
        now = await env.get_current_time()
        started = [await start_campaign(pool, env.client, s, task_queue=queue, now=now, **kw) for s in specs]
        plans = [p for p, _ in started]
        results = [await h.result() for _, h in started]
    return plans, results


TZ = "Asia/Shanghai"


async def _shop_with_old_customers(pool, now) -> dict:
    """Shop s1 with old customers 1..150 (R-OC-1); returns their order and visit times for more."""
    await make_shop(pool, "s1", TZ)
    recent = dict(ordered_at=now - timedelta(days=30), visited_at=now - timedelta(days=3))
    await add_customers(pool, "s1", list(range(1, 151)), **recent)
    return recent


async def test_oldcust_sends_once_in_window_and_excludes(clean_db, ts_env):
    pool = clean_db
    now = await ts_env.get_current_time()
    tz = TZ
    recent = await _shop_with_old_customers(pool, now)
    await add_customers(pool, "s1", [151, 152], blacklisted=True, **recent)
    await add_customers(pool, "s1", [153], unsub_chat=True, **recent)
    await add_customers(pool, "s1", [154], ordered_at=now - timedelta(days=400))  # R-OC-1: too old
    send_day = local_day(now, tz) + timedelta(days=1)
    spec = OldCustomerSpec(
        kind="K-OLDCUST", shop_id="s1", campaign_id="c1", scene="Spring", card_text="Hi",
        send_date=send_day, send_time=time(9, 30),
    )
    plans, results = await _run(ts_env, pool, [spec])
    rows = await pool.fetch("SELECT consumer_id, state, reason, decided_at FROM deliveries ORDER BY consumer_id")
    sent = [r for r in rows if r["state"] == "sent"]
    assert [r["consumer_id"] for r in sent] == list(range(1, 151))
    for r in sent:
        local = r["decided_at"].astimezone(zone(tz))
        assert local.date() == send_day
        assert time(9, 30) <= local.time() < time(22, 0)
    assert await pool.fetchval("SELECT count(*) FROM outbox_messages") == 150
    refresh = await pool.fetchrow("SELECT matched, eligible, excluded FROM audience_refreshes")
    assert refresh["eligible"] == 150
    assert refresh["excluded"] == {"blacklisted": 2, "unsubscribed": 1}
    assert results[0].state == "completed"


async def test_a_later_task_of_the_shop_sends_only_to_whom_the_earlier_did_not_cover(clean_db, ts_env):
    """R-OC-6: overlapping K-OLDCUST tasks of a shop; the later one leaves out the earlier one's snapshot."""
    pool = clean_db
    now = await ts_env.get_current_time()
    tz = TZ
    recent = await _shop_with_old_customers(pool, now)
    # Opted out of chat only: outside the chat task's snapshot, reachable by SMS.
    await add_customers(pool, "s1", list(range(151, 271)), unsub_chat=True, **recent)
    send_day = local_day(now, tz) + timedelta(days=1)
    chat = OldCustomerSpec(kind="K-OLDCUST", shop_id="s1", campaign_id="chat", scene="Spring", card_text="Hi",
                           send_date=send_day, send_time=time(9, 0))
    sms = OldCustomerSpec(kind="K-OLDCUST", shop_id="s1", campaign_id="sms", scene="Spring", card_text="Hi",
                          channel="sms", send_date=send_day, send_time=time(10, 0))
    plans, results = await _run(ts_env, pool, [chat, sms])
    assert [r.state for r in results] == ["completed", "completed"]
    by_campaign = {
        p.campaign_id: [r["consumer_id"] for r in await pool.fetch(
            "SELECT consumer_id FROM deliveries WHERE campaign_id = $1 AND state = 'sent' ORDER BY 1", p.campaign_db_id)]
        for p in plans
    }  # fmt: skip
    assert by_campaign == {"chat": list(range(1, 151)), "sms": list(range(151, 271))}
    later = await pool.fetchrow("SELECT eligible, excluded FROM audience_refreshes WHERE campaign_id = $1",
                                plans[1].campaign_db_id)
    assert later["eligible"] == 120 and later["excluded"] == {"overlap": 150}
