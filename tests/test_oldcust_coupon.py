"""K-OLDCUST's coupon is a claim (R-BEN-1, R-SC-2, R-OC-8, R-OC-9): one `claims` row per sent message.

Every message of a K-OLDCUST task with a coupon carries one unit of it: the
unit is taken under the coupon row's lock in the transaction that decides the
delivery and held as a claims row with no end of its own (expires_at NULL,
OfferPlan.shared). Slices of two campaigns racing for a small stock never
oversell it (claims == units taken, stock never negative); a delivery the
provider refuses, or never got, releases its claim and its unit; the expiry
sweep and the claim API leave a shared coupon's claims alone; a coupon no
longer valid at the hand-off stops the slice with nothing sent.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import pytest
from sluice.activities.offers import OfferActivities, claim
from sluice.activities.send import SendActivities
from sluice.channels.base import Outbound, Outcome
from sluice.channels.registry import ChannelRegistry
from sluice.kinds.base import Shop
from sluice.kinds.oldcust import OldCustomer, OldCustomerSpec
from sluice.schemas import activities as A
from sluice.schemas import rules
from sluice.schemas.activities import OffersInput, ReconcileInput, SendSliceInput
from sluice.schemas.campaign import OfferPlan, PhasePlan, TemplateCap
from temporalio.testing import ActivityEnvironment

from tests.factories import add_customers, make_campaign, make_shop
from tests.ledger_checks import assert_fatigue_matches_ledger

SHOP, TZ, COUPON = "oc-shop", "Asia/Shanghai", "gift"
CAP = TemplateCap(group=rules.OLDCUST_TEMPLATE_GROUP, count=rules.OLDCUST_CAP_PER_DAYS[0], days=rules.OLDCUST_CAP_PER_DAYS[1])
SHARED = OfferPlan(coupon_ids=[COUPON], shared=True)


async def _shop(pool, now: datetime, consumers: list[int], *, stock: int, valid_to: datetime | None = None) -> None:
    await make_shop(pool, SHOP, TZ)
    await add_customers(pool, SHOP, consumers, ordered_at=now - timedelta(days=20))
    await pool.execute(
        "INSERT INTO coupons (coupon_id, shop_id, name, valid_from, valid_to, stock) VALUES ($1, $2, 'gift', $3, $4, $5)",
        COUPON, SHOP, now - timedelta(days=1), valid_to or now + timedelta(days=10), stock,
    )  # fmt: skip


async def _campaign(pool, ref: str, day: date, consumers: list[int]) -> int:
    cid = await make_campaign(pool, SHOP, ref, state="sending")
    await pool.executemany(
        "INSERT INTO audience_snapshots (campaign_id, phase, day, seq, consumer_id) VALUES ($1, 0, $2, $3, $4)",
        [(cid, day, i, c) for i, c in enumerate(consumers)],
    )
    return cid


def _slice(cid: int, day: date, now: datetime, lo: int, hi: int, chunk: int = 3) -> SendSliceInput:
    return SendSliceInput(
        campaign_db_id=cid, shop_id=SHOP, phase_index=0, day=day, channel="chat", template_cap=CAP, text="gift for you",
        offer=SHARED, seq_lo=lo, seq_hi=hi, budget=hi - lo, decided_at=now, window_end=now + timedelta(hours=2),
        chunk_size=chunk,
    )  # fmt: skip


async def _stock(pool) -> int:
    return await pool.fetchval("SELECT stock FROM coupons WHERE coupon_id = $1", COUPON)


async def _claims(pool, cid: int) -> dict[str, int]:
    return dict(await pool.fetch("SELECT state, count(*)::int FROM claims WHERE campaign_id = $1 GROUP BY 1", cid))


def test_the_oldcust_coupon_is_a_shared_offer_and_old_inputs_read_as_one():
    now = datetime(2026, 5, 1, 2, tzinfo=UTC)
    spec = OldCustomerSpec(kind="K-OLDCUST", shop_id=SHOP, campaign_id="c", scene="x", card_text="hi",
                           send_date=date(2026, 5, 2), coupon_id=COUPON)
    shop = Shop(shop_id=SHOP, timezone=TZ, virtual_category=False)
    [phase] = OldCustomer().compile(spec, shop, now)
    assert phase.offer == SHARED and phase.offer.hours is None
    assert OldCustomer().compile(spec.model_copy(update={"coupon_id": None}), shop, now)[0].offer is None
    # Plans and slice inputs written before (histories, activities in flight) named the coupon `coupon_id`.
    old = phase.model_dump(mode="json", exclude={"offer"}) | {"coupon_id": COUPON}
    assert PhasePlan.model_validate(old).offer == SHARED
    assert PhasePlan.model_validate(old | {"coupon_id": None}).offer is None
    old_slice = _slice(1, date(2026, 5, 2), now, 0, 10).model_dump(mode="json", exclude={"offer"}) | {"coupon_id": COUPON}
    assert SendSliceInput.model_validate(old_slice).offer == SHARED
    # One kind of offer or the other: a shared coupon has one coupon and no countdown.
    for bad in ({"coupon_ids": [COUPON, "b"], "shared": True}, {"coupon_ids": [COUPON], "shared": True, "hours": 2},
                {"coupon_ids": [COUPON]}):
        with pytest.raises(ValueError):
            OfferPlan.model_validate(bad)


async def test_two_campaigns_racing_for_one_coupon_never_oversell_it(clean_db):
    pool, stock, per_campaign, slice_size = clean_db, 37, 120, 20
    now = datetime.now(UTC)
    day = now.date()
    await _shop(pool, now, list(range(1, 2 * per_campaign + 1)), stock=stock)
    cids = [await _campaign(pool, f"old{k}", day, list(range(k * per_campaign + 1, (k + 1) * per_campaign + 1)))
            for k in range(2)]  # fmt: skip
    send = SendActivities(pool, ChannelRegistry.outbox_for_all(pool), platform_timezone=TZ)
    # 12 slices of two campaigns at once, chunks of 3: hundreds of transactions for 37 units.
    slices = [_slice(cid, day, now, lo, lo + slice_size) for cid in cids for lo in range(0, per_campaign, slice_size)]
    results = await asyncio.gather(*(ActivityEnvironment().run(send.send_slice, s) for s in slices))

    sent = await pool.fetchval("SELECT count(*) FROM deliveries WHERE state = 'sent'")
    held = await pool.fetchval("SELECT count(*) FROM claims WHERE state = 'held'")
    # Every unit taken is one claim of one sent message, and demand used the stock up exactly.
    assert sent == held == stock and await _stock(pool) == 0
    assert await pool.fetchval("SELECT count(*) FROM claims") == held
    assert await pool.fetchval(
        """SELECT count(*) FROM claims k JOIN deliveries d ON d.campaign_id = k.campaign_id AND d.phase = k.phase
               AND d.day = k.day AND d.channel = k.channel AND d.consumer_id = k.consumer_id
           WHERE d.state = 'sent' AND k.coupon_id = $1 AND k.expires_at IS NULL AND k.product_id IS NULL""",
        COUPON) == stock  # fmt: skip
    # Who found the coupon used up was not sent, for that reason, and consumed no fatigue (R-OC-8).
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE state = 'suppressed' AND reason <> $1",
                               A.SUPPRESS_BENEFIT) == 0
    assert any(r.stopped_reason == A.SUPPRESS_BENEFIT for r in results)
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE state IN ('reserved', 'unknown')") == 0
    await assert_fatigue_matches_ledger(pool)

    # No countdown: the expiry sweep, however late, ends none of them and gives nothing back.
    offers = OfferActivities(pool)
    for cid in cids:
        inp = OffersInput(campaign_db_id=cid, phase_index=0, day=day, now=now + timedelta(days=1000))
        assert (await ActivityEnvironment().run(offers.day_offers, inp)).last_expiry is None
        await ActivityEnvironment().run(offers.expire_offers, inp)
    assert await pool.fetchval("SELECT count(*) FROM claims WHERE state = 'held'") == stock and await _stock(pool) == 0
    # Nor is a shared coupon's claim an offer to claim.
    some = await pool.fetchval("SELECT id FROM claims LIMIT 1")
    assert await claim(pool, some, SHOP, now) is None


class HalfRefusing:
    """A provider outside the database that refuses the even consumers' messages."""

    name = "chat"

    async def send(self, messages: list[Outbound]) -> list[Outcome]:
        return [Outcome(m.consumer_id, "sent", f"p:{m.consumer_id}") if m.consumer_id % 2
                else Outcome(m.consumer_id, "failed", None, "rejected") for m in messages]  # fmt: skip

    async def reconcile(self, messages: list[Outbound]) -> list[Outcome]:
        return []


class LostAnswers(HalfRefusing):
    """A provider whose answer never comes back, and which turns out never to have had the messages."""

    async def send(self, messages: list[Outbound]) -> list[Outcome]:
        raise ConnectionError("provider went away")


async def test_a_delivery_not_sent_after_its_reservation_releases_its_claim(clean_db):
    pool, stock = clean_db, 100
    now = datetime.now(UTC)
    day = now.date()
    await _shop(pool, now, list(range(1, 21)), stock=stock)
    refused = await _campaign(pool, "refused", day, list(range(1, 11)))
    lost = await _campaign(pool, "lost", day, list(range(11, 21)))

    # The provider refuses half: their claims are released and their units back, the others held.
    send = SendActivities(pool, ChannelRegistry({"chat": HalfRefusing()}), platform_timezone=TZ)
    res = await ActivityEnvironment().run(send.send_slice, _slice(refused, day, now, 0, 10, chunk=10))
    assert (res.sent, res.failed) == (5, 5)
    assert await _claims(pool, refused) == {"held": 5, "released": 5}
    assert await pool.fetchval(
        "SELECT count(*) FROM claims WHERE campaign_id = $1 AND state = 'released' AND consumer_id % 2 = 0", refused) == 5
    assert await _stock(pool) == stock - 5

    # The answer is lost after the reservation: the claims stay held until the reconcile learns the
    # provider never had the messages; then they are released and the units come back.
    send = SendActivities(pool, ChannelRegistry({"chat": LostAnswers()}), platform_timezone=TZ)
    with pytest.raises(ConnectionError):
        await ActivityEnvironment().run(send.send_slice, _slice(lost, day, now, 0, 10, chunk=10))
    assert await _claims(pool, lost) == {"held": 10}
    assert await _stock(pool) == stock - 15
    done = await ActivityEnvironment().run(
        send.reconcile_pending, ReconcileInput(campaign_db_id=lost, shop_id=SHOP, channel="chat", template_cap=CAP))
    assert done.released == 10
    assert await _claims(pool, lost) == {"released": 10}
    assert await _stock(pool) == stock - 5
    # Released claims gave their caps back too: the counters hold only the 5 sent (R-OC-8).
    await assert_fatigue_matches_ledger(pool)
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE state = 'sent'") == 5


async def test_a_coupon_no_longer_valid_at_the_hand_off_stops_the_slice_with_nothing_sent(clean_db):
    pool = clean_db
    now = datetime.now(UTC)
    day = now.date()
    await _shop(pool, now, list(range(1, 11)), stock=50, valid_to=now - timedelta(minutes=1))  # R-OC-9
    cid = await _campaign(pool, "late", day, list(range(1, 11)))
    send = SendActivities(pool, ChannelRegistry.outbox_for_all(pool), platform_timezone=TZ)
    res = await ActivityEnvironment().run(send.send_slice, _slice(cid, day, now, 0, 10))
    assert res.stopped_reason == A.SUPPRESS_BENEFIT and res.sent == 0
    assert await _claims(pool, cid) == {} and await _stock(pool) == 50
    assert await pool.fetchval("SELECT count(*) FROM fatigue_day WHERE sent > 0") == 0
