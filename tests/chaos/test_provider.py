"""A misbehaving HTTP provider: ambiguous outcomes are reconciled by reference, never blindly resent.

The gateway throttles (429), fails before and after accepting (503/500) and
accepts-then-hangs past the client's timeout. At the end the provider's own
count per recipient must equal the ledger's, and every delivery is terminal.
"""

from __future__ import annotations

import uuid
from datetime import time, timedelta

from sluice.api.service import start_campaign
from sluice.channels.outbox import OutboxChannel
from sluice.channels.registry import ChannelRegistry
from sluice.channels.sms import SmsGatewayChannel
from sluice.kinds.oldcust import OldCustomerSpec
from sluice.schemas.campaign import Channel
from sluice.schemas.settings import Settings
from sluice.workers.worker import build_worker
from sluice.workflows.calendar import local_day

from tests.factories import add_customers, make_shop
from tests.gateway import Chaos, Gateway


async def test_provider_chaos_exactly_once_per_recipient(clean_db, ts_env):
    pool = clean_db
    now = await ts_env.get_current_time()
    tz = "Asia/Shanghai"
    await make_shop(pool, "s1", tz)
    ids = list(range(1, 1201))
    await add_customers(pool, "s1", ids, ordered_at=now - timedelta(days=10), visited_at=now - timedelta(days=1))
    rejected = {f"138{c:08d}" for c in (7, 70, 700)}
    gw = Gateway(Chaos(throttle=0.08, fail_before=0.08, fail_after=0.1, hang_after=0.08, hang_s=1.0,
                       reject_numbers=rejected, seed=11)).start()
    sms = SmsGatewayChannel("sms", gw.url, timeout_s=0.4, batch_size=50)
    channels = ChannelRegistry({"sms": sms, "chat": OutboxChannel(pool, "chat")})
    settings = Settings(SLUICE_TASK_QUEUE=f"chaos-{uuid.uuid4().hex[:6]}")
    spec = OldCustomerSpec(kind="K-OLDCUST", shop_id="s1", campaign_id="sms1", scene="x", card_text="hi",
                           channel=Channel.sms, send_date=local_day(now, tz) + timedelta(days=1), send_time=time(9))
    try:
        async with build_worker(ts_env.client, pool, settings, channels=channels):
            _, handle = await start_campaign(pool, ts_env.client, spec, task_queue=settings.task_queue, now=now,
                                             tuning={"slice_size": 300, "chunk_size": 100, "concurrency": 3})
            result = await handle.result()
    finally:
        gw.stop()
        await sms.aclose()
    assert result.state == "completed"
    print("gateway requests:", dict(gw.requests))
    # The chaos really happened.
    assert gw.requests["429"] and gw.requests["503"] and gw.requests["500-after-accept"]
    assert gw.requests["hang-after-accept"]

    rows = await pool.fetch("SELECT consumer_id, state, reason FROM deliveries WHERE campaign_id = 1")
    by_state = {}
    for r in rows:
        by_state.setdefault(r["state"], []).append(r["consumer_id"])
    assert len(rows) == len(ids) == len({r["consumer_id"] for r in rows})  # one decision per recipient
    assert sorted(by_state["failed"]) == [7, 70, 700]
    assert set(by_state) == {"sent", "failed"}  # terminal: nothing reserved or unknown is left
    # The provider's own count per recipient agrees with the ledger: one each, none twice.
    sent_phones = {f"138{c:08d}" for c in by_state["sent"]}
    assert {p: n for p, n in gw.deliveries.items() if n != 1} == {}
    assert set(gw.deliveries) == sent_phones
    # Failed deliveries gave their caps back (R-OC-8): counters equal the ledger's sent rows.
    mismatched = await pool.fetchval(
        """SELECT count(*) FROM fatigue_day f FULL JOIN (
               SELECT consumer_id, fatigue_day, count(*) AS n FROM deliveries
               WHERE state IN ('sent', 'reserved', 'unknown') GROUP BY 1, 2) d
           ON d.consumer_id = f.consumer_id AND d.fatigue_day = f.day
           WHERE coalesce(f.sent, 0) <> coalesce(d.n, 0)"""
    )
    assert mismatched == 0
