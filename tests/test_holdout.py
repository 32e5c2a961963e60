"""The control group (R-HO-1): reproducible selection, the send path holding it out without any cap, and the
lift against it, checked against a hand computation."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from sluice.activities.send import SendActivities
from sluice.channels.registry import ChannelRegistry
from sluice.kinds import Shop, compile_plan
from sluice.kinds.phased import PhasedSpec, PhaseSpec
from sluice.outcomes.attribution import Window, attribute, save_windows
from sluice.outcomes.holdout import GroupOutcome, campaign_lift, held_out, held_out_sql, lift, threshold
from sluice.schemas import activities as A
from sluice.schemas.campaign import AttributionMode, CampaignPlan
from temporalio.testing import ActivityEnvironment

from tests.factories import add_customers, make_campaign
from tests.ledger_checks import assert_fatigue_matches_ledger

TZ = "Asia/Shanghai"


# ------------------------------------------------------------------ selection


def test_the_control_group_is_reproducible_and_about_the_share_asked():
    ids = range(1, 100_001)
    chosen = {c for c in ids if held_out(7, c, 5)}
    assert chosen == {c for c in ids if held_out(7, c, 5)}
    assert 4_500 < len(chosen) < 5_500
    assert chosen != {c for c in ids if held_out(8, c, 5)}  # another campaign, another group
    assert {c for c in ids if held_out(7, c, 2.5)} < chosen  # a smaller share is a subset of a larger one
    assert not any(held_out(7, c, 0) for c in ids)
    assert 49_000 < sum(held_out(7, c, 50) for c in ids) < 51_000


def test_a_keyed_control_group_is_reproducible_and_about_the_share_asked():
    ids = range(1, 100_001)
    chosen = {c for c in ids if held_out(1, c, 5, key="shop.spring")}
    assert chosen == {c for c in ids if held_out(2, c, 5, key="shop.spring")}  # the key decides, not the database id
    assert 4_500 < len(chosen) < 5_500
    assert chosen != {c for c in ids if held_out(1, c, 5, key="shop.autumn")}
    assert chosen != {c for c in ids if held_out(1, c, 5)}  # a campaign planned before the key keeps its own group
    assert {c for c in ids if held_out(1, c, 2.5, key="shop.spring")} < chosen
    assert not any(held_out(1, c, 0, key="shop.spring") for c in ids)


@pytest.mark.parametrize("key", ["shop.spring", "店铺-1.春季 促销", "x'; DROP TABLE deliveries; --"])
async def test_postgresql_holds_out_exactly_whom_python_does(pool, key):
    """held_out_sql (the preview's test, R-PRE-1) against held_out (the send path's) for 200,000 consumers, the
    key bound as a parameter (request text never reaches the SQL), consumer ids up to 2^62."""
    ids = [*range(1, 100_001), *(2**62 - i for i in range(100_000))]
    for percent in (0, 0.01, 5, 33.3, 50):
        rows = await pool.fetch(
            f"SELECT u.id FROM unnest($1::bigint[]) AS u(id) WHERE {held_out_sql('$2::text', 'u.id', '$3::int')}",
            ids, key, threshold(percent),
        )  # fmt: skip
        expected = {c for c in ids if held_out(0, c, percent, key=key)}
        assert {r[0] for r in rows} == expected, percent
        assert percent == 0 or expected


def test_the_spec_carries_the_share_to_the_plan():
    spec = PhasedSpec(kind="K-PHASED", shop_id="s", campaign_id="c", phases=[PhaseSpec(name="promote", text="x")],
                      holdout_percent=5)  # fmt: skip
    plan = compile_plan(spec, campaign_db_id=1, shop=Shop("s", TZ, False), now=datetime(2026, 3, 1, tzinfo=UTC))
    assert plan.holdout_percent == 5
    assert plan.holdout_key == plan.workflow_id == "s.c"  # R-HO-1: keyed on what a preview knows too
    # A plan made before the key (a running campaign's workflow input) keeps its group keyed on its database id.
    assert CampaignPlan.model_validate(plan.model_dump(exclude={"holdout_key"})).holdout_key is None
    for bad in (-1, 50.5):
        with pytest.raises(ValidationError) as err:
            PhasedSpec.model_validate({**spec.model_dump(mode="json"), "holdout_percent": bad})
        assert err.value.errors()[0]["loc"] == ("holdout_percent",)


# ------------------------------------------------------------------ the lift, by hand


def test_lift_against_a_hand_computation():
    # Treated: 4 customers with revenue 100, 0, 50, 0 (2 converted); control: 3 with 0, 30, 0 (1 converted).
    treated = GroupOutcome(customers=4, converted=2, revenue=150.0, revenue_sq=100**2 + 50**2)
    control = GroupOutcome(customers=3, converted=1, revenue=30.0, revenue_sq=30**2)
    res = lift(treated, control)
    # Conversion 0.5 vs 1/3: +1/6; se = sqrt(0.5*0.5/4 + (1/3)(2/3)/3) = sqrt(0.0625 + 0.0740741) = 0.3695598.
    assert res.conversion_lift == pytest.approx(1 / 6)
    assert res.relative_conversion_lift == pytest.approx(0.5)
    assert res.conversion_ci.low == pytest.approx(1 / 6 - 1.959964 * 0.3695598, abs=1e-5)
    assert res.conversion_ci.high == pytest.approx(1 / 6 + 1.959964 * 0.3695598, abs=1e-5)
    # Revenue per customer 37.5 vs 10: +27.5. Variances (n - 1): (12500 - 150^2/4)/3 = 2291.667 and
    # (900 - 30^2/3)/2 = 300; se = sqrt(2291.667/4 + 300/3) = sqrt(672.9167) = 25.94064.
    assert res.revenue_lift == pytest.approx(27.5)
    assert res.revenue_ci.low == pytest.approx(27.5 - 1.959964 * 25.94064, abs=1e-4)
    assert res.revenue_ci.high == pytest.approx(27.5 + 1.959964 * 25.94064, abs=1e-4)
    assert res.incremental_revenue == pytest.approx(110.0)
    assert res.incremental_revenue_ci.low == pytest.approx(4 * res.revenue_ci.low)
    # A 90% interval is narrower, around the same difference.
    narrow = lift(treated, control, confidence=0.9).conversion_ci
    assert res.conversion_ci.low < narrow.low < narrow.high < res.conversion_ci.high


def test_lift_without_a_control_group_or_with_one_customer():
    treated = GroupOutcome(10, 3, 30.0, 300.0)
    empty = lift(treated, GroupOutcome(0, 0, 0.0, 0.0))
    assert empty.conversion_lift is None and empty.revenue_ci is None
    one = lift(treated, GroupOutcome(1, 0, 0.0, 0.0))
    assert one.conversion_lift == pytest.approx(0.3) and one.conversion_ci is None
    assert lift(treated, GroupOutcome(5, 0, 0.0, 0.0)).relative_conversion_lift is None  # control converted nobody


# ------------------------------------------------------------------ the send path


async def test_the_send_path_holds_out_the_control_group_without_any_cap(clean_db):
    pool = clean_db
    now = datetime.now(UTC)
    await pool.execute("INSERT INTO shops (shop_id, name, timezone, industry) VALUES ('ho', 'ho', $1, 'beauty')", TZ)
    ids = list(range(1, 201))
    await add_customers(pool, "ho", ids, ordered_at=now - timedelta(days=200))
    cid = await make_campaign(pool, "ho", "holdout", state="sending")
    await pool.execute(
        "INSERT INTO audience_snapshots (campaign_id, phase, day, seq, consumer_id)"
        " SELECT $1, 0, $2, i - 1, c FROM unnest($3::bigint[]) WITH ORDINALITY AS u(c, i)",
        cid, now.date(), ids,
    )  # fmt: skip
    await pool.execute("UPDATE shop_customers SET unsub_chat = true WHERE shop_id = 'ho' AND consumer_id = ANY($1)", [1, 2, 3])
    control = {c for c in ids if held_out(cid, c, 20) and c > 3}
    assert 20 < len(control) < 60
    send = SendActivities(pool, ChannelRegistry.outbox_for_all(pool), platform_timezone=TZ)
    inp = A.SendSliceInput(
        campaign_db_id=cid, shop_id="ho", phase_index=0, day=now.date(), channel="chat", text="hi", template_cap=None,
        seq_lo=0, seq_hi=len(ids), budget=len(ids) - len(control) - 3, decided_at=now, window_end=now + timedelta(hours=1),
        chunk_size=40, holdout_percent=20,
    )  # fmt: skip
    result = await ActivityEnvironment().run(send.send_slice, inp)

    ledger = {r["consumer_id"]: (r["state"], r["reason"])
              for r in await pool.fetch("SELECT consumer_id, state, reason FROM deliveries WHERE campaign_id = $1", cid)}
    assert {c for c, s in ledger.items() if s == (A.HELD_OUT, None)} == control
    # Excluded customers are excluded, never part of the control group.
    assert all(ledger[c] == ("suppressed", A.SUPPRESS_UNSUBSCRIBED) for c in (1, 2, 3))
    assert {c for c, s in ledger.items() if s == ("sent", None)} == set(ids) - control - {1, 2, 3}
    assert result.sent == inp.budget  # held out consumers take nothing of the daily budget (R-PH-7) either
    # No cap taken, no message: the fatigue counters and the outbox hold the sent deliveries only.
    await assert_fatigue_matches_ledger(pool)
    assert not await pool.fetchval("SELECT count(*) FROM fatigue_day WHERE consumer_id = ANY($1)", sorted(control))
    assert not await pool.fetchval("SELECT count(*) FROM outbox_messages WHERE consumer_id = ANY($1)", sorted(control))

    # A re-run of the range decides nothing anew.
    again = await ActivityEnvironment().run(send.send_slice, inp)
    assert again.sent == result.sent
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1", cid) == len(ids)

    # Outcomes: two treated and one control customer order within a day of the decision.
    treated_buyers = sorted(set(ids) - control - {1, 2, 3})[:2]
    control_buyer = min(control)
    for n, (consumer, amount) in enumerate([(treated_buyers[0], 100), (treated_buyers[1], 50), (control_buyer, 30)]):
        await pool.execute(
            "INSERT INTO orders (order_id, shop_id, consumer_id, created_at, paid_at, amount, status)"
            " VALUES ($1, 'ho', $2, $3, $3, $4, 'paid')", 10_000 + n, consumer, now + timedelta(hours=2), amount,
        )  # fmt: skip
    await save_windows(pool, cid, {0: Window(AttributionMode.after_reach, days=1)})
    async with pool.acquire() as conn:
        await attribute(conn, cid)
        res = await campaign_lift(conn, cid)
    n_treated, n_control = len(ids) - len(control) - 3, len(control)
    assert res.treated == GroupOutcome(n_treated, 2, 150.0, 100.0**2 + 50.0**2)
    assert res.control == GroupOutcome(n_control, 1, 30.0, 900.0)
    assert res.conversion_lift == pytest.approx(2 / n_treated - 1 / n_control)
    assert res.revenue_lift == pytest.approx(150 / n_treated - 30 / n_control)
    assert math.isfinite(res.revenue_ci.low) and res.revenue_ci.low < res.revenue_lift < res.revenue_ci.high
