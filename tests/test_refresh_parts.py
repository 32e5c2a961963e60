"""The audience refresh in parts (activities/audience.py): the same recipients and exclusions
as one statement, numbered seq = k * parts + part in consumer order, ending before seq_end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sluice.activities.audience import AudienceActivities
from sluice.schemas.activities import RefreshAudienceInput
from temporalio.testing import ActivityEnvironment

from tests.factories import add_customers, make_campaign, make_shop

# Ids in one residue class mod 3: a split by id instead of by hash would leave two parts empty.
IDS = list(range(3, 3 * 700 + 1, 3))


async def _refresh(pool, cid: int, shop: str, parts: int, now: datetime):
    inp = RefreshAudienceInput(
        campaign_db_id=cid, shop_id=shop, kind="K-PHASED", phase_index=0, audience="shop_all", channel="chat",
        day=now.date(), snapshot_at=now, campaign_started_at=now - timedelta(days=1),
    )  # fmt: skip
    result = await ActivityEnvironment().run(AudienceActivities(pool, parts=parts).refresh_audience, inp)
    rows = await pool.fetch(
        "SELECT seq, consumer_id FROM audience_snapshots WHERE campaign_id = $1 ORDER BY seq", cid
    )
    return result, [(r["seq"], r["consumer_id"]) for r in rows]


@pytest.mark.parametrize("parts", [1, 2, 3, 5])
async def test_refresh_in_parts_numbers_every_recipient_once(clean_db, parts):
    pool = clean_db
    now = datetime.now(UTC)
    shop = "parts-shop"
    await make_shop(pool, shop, "Asia/Shanghai")
    await add_customers(pool, shop, IDS[:600], ordered_at=now - timedelta(days=3))
    await add_customers(pool, shop, IDS[600:650], ordered_at=now - timedelta(days=3), unsub_chat=True)
    await add_customers(pool, shop, IDS[650:], ordered_at=now - timedelta(days=3), blacklisted=True)
    cid = await make_campaign(pool, shop, "p")

    result, snapshot = await _refresh(pool, cid, shop, parts, now)

    assert (result.matched, result.eligible) == (700, 600)
    assert result.excluded == {"unsubscribed": 50, "blacklisted": 50}
    assert sorted(c for _, c in snapshot) == IDS[:600]
    seqs = [s for s, _ in snapshot]
    assert len(set(seqs)) == 600 and min(seqs) >= 0 and max(seqs) < result.seq_end
    # Empty positions only at the end: at most (parts - 1) per part short of the largest one.
    assert result.seq_end - result.eligible <= parts * 40, (result.seq_end, result.eligible)
    for part in range(parts):
        members = [(s, c) for s, c in snapshot if s % parts == part]
        assert members, f"part {part} got nobody"
        assert [s for s, _ in members] == [k * parts + part for k in range(len(members))]
        assert [c for _, c in members] == sorted(c for _, c in members)  # consumer order within a part
    # A retried refresh rebuilds the same snapshot.
    again, snapshot_again = await _refresh(pool, cid, shop, parts, now)
    assert (again, snapshot_again) == (result, snapshot)
