"""Attribution (R-ATT-1): the rule for one order (pure), and the set-based statement against a hand-computed
campaign: orders inside and outside the window, before the reach, refunds, unpaid orders, two phases
reaching one buyer (the last one wins), another shop's order, a control group, and the kinds' windows."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError
from sluice.kinds import KINDS, Shop, compile_plan
from sluice.kinds.oldcust import OldCustomerSpec
from sluice.kinds.phased import PhasedSpec, PhaseSpec
from sluice.outcomes.attribution import DEFAULT_WINDOW, Reach, Window, attribute, resolve, save_windows, winning_phase
from sluice.outcomes.ingest import ingest
from sluice.schemas.campaign import AttributionMode, AttributionWindow

from tests.factories import add_customers, make_campaign

TZ = "Asia/Shanghai"
D1 = date(2026, 3, 2)


def local(day: date, hour: int, minute: int = 0) -> datetime:
    """An instant given shop-local (UTC+8, no DST)."""
    return datetime.combine(day, time(hour, minute), UTC) - timedelta(hours=8)


def d(n: int) -> date:
    return D1 + timedelta(days=n - 1)


# Campaign A: K-PHASED-like, each phase's window its own days: phase 0 on D1, phase 1 on D2..D3.
PERIODS = {0: resolve(AttributionWindow.phase_period(), d(1), d(1), TZ),
           1: resolve(AttributionWindow.phase_period(), d(2), d(3), TZ)}
WEEK = {0: Window(AttributionMode.after_reach, days=7)}


# ------------------------------------------------------------------ the rule, pure


def test_a_phase_period_is_its_shop_local_days():
    w = PERIODS[1]
    assert (w.from_at, w.to_at) == (datetime(2026, 3, 2, 16, 0, tzinfo=UTC), datetime(2026, 3, 4, 16, 0, tzinfo=UTC))


@pytest.mark.parametrize(
    ("ordered_at", "expected"),
    [
        (local(d(1), 9), None),  # before any reach
        (local(d(1), 10), 0),  # at the reach itself
        (local(d(1), 23, 59), 0),  # phase 0's last minute
        (local(d(2), 9), None),  # after phase 0's days, before phase 1 reached them
        (local(d(2), 10), 1),  # phase 1 reached them: the last phase wins from then on
        (local(d(3), 23), 1),
        (local(d(4), 0), None),  # phase 1's days are over
    ],
)
def test_the_last_phase_that_reached_the_buyer_takes_the_order_inside_its_period(ordered_at, expected):
    reaches = [Reach(0, local(d(1), 10)), Reach(1, local(d(2), 10))]
    assert winning_phase(reaches, ordered_at, PERIODS) == expected


def test_days_after_the_reach_and_the_default_window():
    reaches = [Reach(0, local(d(1), 10))]
    assert winning_phase(reaches, local(d(8), 9, 59), WEEK) == 0
    assert winning_phase(reaches, local(d(8), 10), WEEK) is None  # exactly 7 days after: outside
    assert winning_phase(reaches, local(d(8), 9), {}) == 0  # no window stored: DEFAULT_WINDOW, a week
    assert DEFAULT_WINDOW.days == 7
    # Two reaches at one instant: the later phase takes it.
    assert winning_phase([Reach(1, local(d(1), 10)), Reach(0, local(d(1), 10))], local(d(1), 11), WEEK | {1: WEEK[0]}) == 1
    # The later reach's window decides alone, even where an earlier one's would still be open.
    later = [Reach(0, local(d(1), 10)), Reach(1, local(d(1), 12))]
    assert winning_phase(later, local(d(1), 13), {0: WEEK[0], 1: Window(AttributionMode.after_reach, days=1)}) == 1
    assert winning_phase(later, local(d(3), 13), {0: WEEK[0], 1: Window(AttributionMode.after_reach, days=1)}) is None


def test_each_kind_puts_its_window_on_its_phases():
    shop = Shop(shop_id="s", timezone=TZ, virtual_category=False)
    now = datetime(2026, 3, 1, tzinfo=UTC)
    phased = PhasedSpec(kind="K-PHASED", shop_id="s", campaign_id="c", phases=[PhaseSpec(name="promote", text="x")])
    plan = compile_plan(phased, campaign_db_id=1, shop=shop, now=now)
    assert [p.attribution for p in plan.phases] == [AttributionWindow.phase_period()]
    oldcust = OldCustomerSpec(kind="K-OLDCUST", shop_id="s", campaign_id="c", scene="x", card_text="hi")
    assert compile_plan(oldcust, campaign_db_id=1, shop=shop, now=now).phases[0].attribution == AttributionWindow.after(7)
    # Configurable: the spec's days replace the kind's window.
    own = phased.model_copy(update={"attribution_days": 30})
    assert compile_plan(own, campaign_db_id=1, shop=shop, now=now).phases[0].attribution == AttributionWindow.after(30)
    for kind in KINDS.values():
        assert kind.attribution(kind.spec.model_construct(attribution_days=3)) == AttributionWindow.after(3)
    # K-EDM counts an order within 30 days of the reach (R-ED-5's funnel window).
    edm = KINDS["K-EDM"]
    assert edm.attribution(edm.spec.model_construct(attribution_days=None)) == AttributionWindow.after(30)
    with pytest.raises(ValidationError):
        PhasedSpec.model_validate({**phased.model_dump(mode="json"), "attribution_days": 0})


# ------------------------------------------------------------------ the statement, hand-computed


async def _reach(pool, cid: int, phase: int, consumer: int, at: datetime, state: str = "sent", shop: str = "att") -> None:
    await pool.execute(
        "INSERT INTO deliveries (campaign_id, phase, consumer_id, day, channel, shop_id, template_group, fatigue_day,"
        " state, decided_at) VALUES ($1, $2, $3, $4, 'chat', $5, '', $4, $6, $7)",
        cid, phase, consumer, at.date(), shop, state, at,
    )  # fmt: skip


async def _order(pool, order_id: int, consumer: int, at: datetime, amount: int, *, paid: bool = True,
                 refunded: int = 0, shop: str = "att") -> None:  # fmt: skip
    await pool.execute(
        "INSERT INTO orders (order_id, shop_id, consumer_id, created_at, paid_at, amount, status, refunded_amount)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        order_id, shop, consumer, at, at + timedelta(minutes=5) if paid else None, amount, "paid" if paid else "pending",
        refunded,
    )  # fmt: skip


async def _rows(pool, table: str, cid: int) -> dict[int, tuple]:
    rows = await pool.fetch(f"SELECT order_id, phase, consumer_id, revenue FROM {table} WHERE campaign_id = $1", cid)
    return {r["order_id"]: (r["phase"], r["consumer_id"], r["revenue"]) for r in rows}


async def test_attribution_of_a_hand_computed_campaign(clean_db):
    pool = clean_db
    await pool.execute("INSERT INTO shops (shop_id, name, timezone, industry) VALUES ('att', 'a', $1, 'beauty'),"
                       " ('att-other', 'o', $1, 'beauty')", TZ)  # fmt: skip
    old = local(d(1), 0) - timedelta(days=100)
    await add_customers(pool, "att", [1, 2, 3, 4, 5, 6], ordered_at=old)  # orders 1..6, long before: never attributed
    a = await make_campaign(pool, "att", "a")
    b = await make_campaign(pool, "att", "b")
    await save_windows(pool, a, PERIODS)
    await save_windows(pool, b, WEEK)

    # Buyer 1: reached by A's phase 0 (D1 10:00) and phase 1 (D2 10:00), and by B (D1 11:00).
    await _reach(pool, a, 0, 1, local(d(1), 10))
    await _reach(pool, a, 1, 1, local(d(2), 10))
    await _reach(pool, b, 0, 1, local(d(1), 11))
    await _order(pool, 101, 1, local(d(1), 15), 100)  # A phase 0; B
    await _order(pool, 102, 1, local(d(2), 12), 200, refunded=50)  # A phase 1 (the last phase), 150; B
    await _order(pool, 103, 1, local(d(4), 9), 40)  # after A's periods; B (3 days after its reach)
    await _order(pool, 104, 1, local(d(1), 9), 70)  # before every reach
    await _order(pool, 105, 1, local(d(9), 12), 10)  # more than 7 days after B's reach
    # Buyer 2: reached by phase 0 only; an unpaid order counts (a conversion) with no revenue; the next day's is out.
    await _reach(pool, a, 0, 2, local(d(1), 10))
    await _order(pool, 201, 2, local(d(1), 20), 60, paid=False)
    await _order(pool, 202, 2, local(d(2), 11), 80)
    # Buyer 3: suppressed, never reached.
    await _reach(pool, a, 0, 3, local(d(1), 10), state="suppressed")
    await _order(pool, 301, 3, local(d(1), 12), 90)
    # Buyer 4: in the control group: held out, its order attributed to the control group only.
    await _reach(pool, a, 0, 4, local(d(1), 10), state="held_out")
    await _order(pool, 401, 4, local(d(1), 13), 80)
    # Buyer 5: reached by phase 1; its order in another shop does not count; refunded in full: revenue 0.
    await _reach(pool, a, 1, 5, local(d(2), 10))
    await _order(pool, 501, 5, local(d(2), 11), 30, shop="att-other")
    await _order(pool, 502, 5, local(d(3), 11), 30, refunded=30)

    async with pool.acquire() as conn:
        done = await attribute(conn, a)
    expected_a = {101: (0, 1, Decimal("100.00")), 102: (1, 1, Decimal("150.00")), 201: (0, 2, Decimal("0.00")),
                  502: (1, 5, Decimal("0.00"))}  # fmt: skip
    assert await _rows(pool, "attributions", a) == expected_a
    assert await _rows(pool, "holdout_attributions", a) == {401: (0, 4, Decimal("80.00"))}
    assert (done.orders, done.revenue, done.control_orders) == (4, Decimal("250.00"), 1)
    async with pool.acquire() as conn:
        await attribute(conn, b)
    assert await _rows(pool, "attributions", b) == {
        101: (0, 1, Decimal("100.00")), 102: (0, 1, Decimal("150.00")), 103: (0, 1, Decimal("40.00"))}

    # A refund reported later: the next attribution rebuilds the campaign's rows with it, nothing doubles.
    answer = await ingest(pool, "att", [{"event_id": "r1", "kind": "order_refunded", "consumer_id": 1, "order_id": 101,
                                         "amount": 25, "occurred_at": local(d(5), 10).isoformat()}])  # fmt: skip
    assert answer.accepted == 1
    async with pool.acquire() as conn:
        await attribute(conn, a)
        await attribute(conn, a)
    assert await _rows(pool, "attributions", a) == expected_a | {101: (0, 1, Decimal("75.00"))}
    assert await pool.fetchval("SELECT count(*) FROM attributions WHERE campaign_id = $1", b) == 3  # b untouched


async def test_the_statement_agrees_with_the_rule_on_random_campaigns(clean_db):
    """Random reaches (ties between phases at one instant included) and orders around them, each phase with
    another kind of window (its days, its days, 2 days after the reach, none stored: the default week): every
    order's phase in `attributions` is `winning_phase`'s, and a second attribution after changes to the
    orders (one refunded in full, one moved out of every window, new ones) agrees again, revenue included."""
    import random

    pool = clean_db
    rng = random.Random(20261130)
    await pool.execute("INSERT INTO shops (shop_id, name, timezone, industry) VALUES ('rnd', 'r', $1, 'beauty')", TZ)
    await add_customers(pool, "rnd", list(range(1, 41)), ordered_at=local(d(1), 0) - timedelta(days=100))
    cid = await make_campaign(pool, "rnd", "r")
    windows = PERIODS | {2: Window(AttributionMode.after_reach, days=2)}  # phase 3: no row, the default
    await save_windows(pool, cid, windows)
    instants = [local(d(day), hour) for day in range(1, 6) for hour in (9, 10, 14, 22)]
    reaches: dict[int, list[Reach]] = {}
    for consumer in range(1, 41):
        for phase in rng.sample(range(4), rng.randint(0, 3)):
            at = rng.choice(instants)
            reaches.setdefault(consumer, []).append(Reach(phase, at))
            await _reach(pool, cid, phase, consumer, at, shop="rnd")
    orders: dict[int, tuple[int, datetime]] = {}
    revenue: dict[int, Decimal] = {}

    async def order(consumer: int) -> None:
        order_id = 10_000 + len(orders)
        at = rng.choice(instants) + timedelta(minutes=rng.choice((0, 30)))
        orders[order_id], revenue[order_id] = (consumer, at), Decimal("10.00")
        await _order(pool, order_id, consumer, at, 10, shop="rnd")

    for _ in range(120):
        await order(rng.randint(1, 40))

    async def check() -> None:
        expected = {}
        for order_id, (consumer, at) in orders.items():
            phase = winning_phase(reaches.get(consumer, []), at, windows)
            if phase is not None:
                expected[order_id] = (phase, revenue[order_id])
        async with pool.acquire() as conn:
            done = await attribute(conn, cid)
        rows = await pool.fetch("SELECT order_id, phase, revenue FROM attributions WHERE campaign_id = $1", cid)
        assert {r["order_id"]: (r["phase"], r["revenue"]) for r in rows} == expected
        assert done.orders == len(expected) > 10
        return expected

    first, second = sorted(await check())[:2]
    await pool.execute("UPDATE orders SET created_at = created_at - interval '300 days' WHERE order_id = $1", first)
    orders[first] = (orders[first][0], orders[first][1] - timedelta(days=300))
    await pool.execute("UPDATE orders SET refunded_amount = amount, status = 'refunded' WHERE order_id = $1", second)
    revenue[second] = Decimal("0.00")
    for _ in range(20):
        await order(rng.randint(1, 40))
    await check()
