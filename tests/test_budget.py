"""The campaign budget cap (R-COST-BUDGET) and what a failed delivery gives back (R-AQ-5, R-ED-4).

- Slices of one campaign racing on two "workers" (two pools) through a real SMS gateway that refuses
  some numbers for good never commit costs past the budget: the spend row equals the ledger's committed
  costs to the fen, the refused numbers' costs and credits went back, the rest is `not_sent` with the
  budget's reason, and the materialised report's costs per phase and campaign equal the ledger's.
- An email refused with SMTP 550 (sent by the send path, or by the outbox dispatcher) gives back its EDM
  quota unit, its price (the account and the day's counter) and its share of the budget.
- A K-EDM campaign on the time-skipping server stops where its budget ends, on the first day, and sends
  nothing on the second; its state, search attribute and report say so; the preview said so before, and
  for an SMS campaign too (each message priced from the shop's credits).
- A budget that is not an amount of money above 0 with at most 2 decimal places is refused (422) naming
  `budget` and R-COST-BUDGET.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pytest
from sluice.activities.send import SendActivities
from sluice.api.service import preview_campaign
from sluice.channels.base import OPTED_OUT_AT_PROVIDER, Backoff
from sluice.channels.dispatcher import Dispatcher
from sluice.channels.email import EmailChannel
from sluice.channels.outbox import OutboxChannel
from sluice.channels.registry import ChannelRegistry
from sluice.channels.sms import Balance, SmsGatewayChannel, plan_debit
from sluice.db.pool import create_pool
from sluice.kinds.edm import EdmSpec
from sluice.kinds.oldcust import OldCustomerSpec
from sluice.reports import queries
from sluice.reports.refresh import refresh as materialise
from sluice.schemas import activities as A
from sluice.schemas.activities import SendSliceInput
from sluice.schemas.budget import BUDGET_EXHAUSTED, BUDGET_RULE, within_budget
from sluice.schemas.campaign import Channel
from sluice.schemas.quota import EDM
from sluice.workflows import search_attributes as SA
from sluice.workflows.calendar import local_day
from temporalio.testing import ActivityEnvironment

from tests.api_helpers import client, running_app, shop_key
from tests.factories import add_customers, make_campaign, make_shop
from tests.gateway import Chaos, Gateway
from tests.ledger_checks import assert_fatigue_matches_ledger
from tests.smtp_server import SmtpFaults, SmtpServer
from tests.test_edm import edm_account, spec
from tests.test_oldcust_workflow import TZ, _run

SMS_PRICE = Decimal("0.042")  # a 1,000,000-message recharge: 4.2 fen a message (R-AQ-5); texts of one segment
EDM_EACH = Decimal("0.002")  # past the day's 200 free (R-ED-4)


# ------------------------------------------------------------------ pure decisions


def test_the_budget_pays_the_longest_prefix_that_fits():
    p = [Decimal("0.5")] * 4
    assert within_budget(p, Decimal("2")) == 4 and within_budget(p, Decimal("1.99")) == 3
    assert within_budget(p, Decimal(0)) == 0 and within_budget([], Decimal(1)) == 0
    # The first that does not fit ends it: no cheaper message after it goes out.
    assert within_budget([Decimal(0), Decimal(1), Decimal("0.1")], Decimal("0.5")) == 1


def test_an_sms_debit_within_a_budget_leaves_the_credits_of_whom_it_cannot_pay():
    balances = [Balance(1, 3, Decimal("4.8")), Balance(2, 100, Decimal("4.2"))]
    needs = [(c, 2) for c in range(1, 6)]
    # 2 + 1 segments from the first recharge and 1 from the second: 0.096, then 0.09 (4.8 + 4.2 fen) ...
    debit = plan_debit(balances, needs, Decimal("0.27"))
    assert debit.cost == {1: Decimal("0.096"), 2: Decimal("0.09"), 3: Decimal("0.084")}
    assert debit.over_budget == [4, 5] and debit.refused == []
    assert debit.taken() == {1: 3, 2: 3}  # nothing taken for 4 and 5
    assert plan_debit(balances, needs).over_budget == []  # no budget, no cap
    assert plan_debit(balances, needs, Decimal("0.09")).over_budget == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------ the API


@pytest.mark.parametrize("budget", [0, -5, "0.00", "abc", 1.234, "12.345", True, 1e12, "NaN", [5], {"yuan": 5}])
async def test_a_budget_that_is_not_money_above_0_is_refused_naming_field_and_rule(clean_db, ts_env, budget):
    pool = clean_db
    key = await shop_key(pool, "e1", TZ)
    await edm_account(pool, "e1", "10")
    async with running_app(pool, ts_env, worker=False) as app, client(app, key) as c:
        for path in ("/campaigns/preview", "/campaigns"):
            res = await c.post(path, json=spec(budget=budget))
            assert res.status_code == 422, res.text
            assert [(d["field"], d["rule"]) for d in res.json()["detail"]] == [("budget", BUDGET_RULE)], res.text
        for good in (500, "0.01", 12.5):  # the controls
            assert (await c.post("/campaigns/preview", json=spec(budget=good))).status_code == 200
    assert await pool.fetchval("SELECT count(*) FROM campaigns") == 0


# ------------------------------------------------------------------ racing slices


async def _snapshot(pool, cid: int, phase: int, day: date, consumers: list[int]) -> None:
    await pool.executemany(
        "INSERT INTO audience_snapshots (campaign_id, phase, day, seq, consumer_id) VALUES ($1, $2, $3, $4, $5)",
        [(cid, phase, day, i, c) for i, c in enumerate(consumers)],
    )


def _slice(cid, shop, phase, day, now, lo, hi, *, channel="sms", budget=None, chunk=10, **kw) -> SendSliceInput:
    return SendSliceInput(
        campaign_db_id=cid, shop_id=shop, phase_index=phase, day=day, channel=channel, template_cap=None,
        text="spring sale", seq_lo=lo, seq_hi=hi, budget=hi - lo, decided_at=now, window_end=now + timedelta(hours=2),
        chunk_size=chunk, campaign_budget=budget, **kw,
    )  # fmt: skip


async def _committed_cost(pool, cid: int, phase: int | None = None):
    return await pool.fetchval(
        "SELECT coalesce(sum(cost), 0) FROM deliveries WHERE campaign_id = $1 AND ($2::int IS NULL OR phase = $2)"
        " AND state IN ('reserved', 'unknown', 'sent')", cid, phase)  # fmt: skip


async def test_racing_slices_never_pass_the_budget_and_the_ledger_and_report_agree(clean_db, db_dsn):
    pool, shop, budget = clean_db, "bud-sms", Decimal("12.00")
    now = datetime.now(UTC)
    day = now.date()
    await make_shop(pool, shop, TZ)  # one recharge of 1,000,000 messages at 4.2 fen (R-AQ-5)
    credits_before = await pool.fetchval("SELECT sum(remaining) FROM sms_credits WHERE shop_id = $1", shop)
    first, second = list(range(1, 101)), list(range(1001, 1601))
    await add_customers(pool, shop, first + second, ordered_at=now - timedelta(days=20))
    cid = await make_campaign(pool, shop, "spring", state="sending")
    await _snapshot(pool, cid, 0, day, first)
    await _snapshot(pool, cid, 1, day, second)
    # Permanent refusals at the provider, in both phases: their costs and credits go back.
    refused = {c for c in first + second if c % 37 == 0}
    gw = Gateway(Chaos(opted_out={f"138{c:08d}" for c in refused})).start()
    other = await create_pool(db_dsn, size=6)  # a second worker: its own connections
    channels = [SmsGatewayChannel("sms", gw.url, timeout_s=5, batch_size=7, backoff=Backoff(attempts=3, base_s=0.01))
                for _ in range(2)]  # fmt: skip
    workers = [SendActivities(p, ChannelRegistry({"sms": ch}), platform_timezone=TZ)
               for p, ch in zip((pool, other), channels, strict=True)]
    try:
        # Phase 0 first (it fits), then phase 1's 600 in 12 slices of 50 at once on two workers, chunks of 10.
        await ActivityEnvironment().run(workers[0].send_slice, _slice(cid, shop, 0, day, now, 0, 100, budget=budget))
        slices = [_slice(cid, shop, 1, day, now, lo, lo + 50, budget=budget) for lo in range(0, 600, 50)]
        results = await asyncio.gather(*(ActivityEnvironment().run(workers[i % 2].send_slice, s)
                                         for i, s in enumerate(slices)))  # fmt: skip
    finally:
        gw.stop()
        for ch in channels:
            await ch.aclose()
        await other.close()

    spend = await pool.fetchrow("SELECT budget, spent, exhausted_at FROM campaign_spend WHERE campaign_id = $1", cid)
    committed = await _committed_cost(pool, cid)
    failed = await pool.fetch("SELECT consumer_id, reason, cost FROM deliveries WHERE campaign_id = $1 AND state = 'failed'",
                              cid)  # fmt: skip
    # The ledger exact: the spend row is the committed deliveries' costs, never past the budget; nothing left open.
    assert spend["budget"] == budget and spend["spent"] == committed <= budget
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE state IN ('reserved', 'unknown')") == 0
    sent = await pool.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND state = 'sent'", cid)
    assert committed == sent * SMS_PRICE
    # The budget ended the sending, tight: after the first message that did not fit only give-backs lowered it.
    assert spend["exhausted_at"] is not None and any(r.stopped_reason == A.NOT_SENT_BUDGET for r in results)
    assert budget - committed < SMS_PRICE * (1 + len(failed))
    over = await pool.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND state = 'not_sent'"
                               " AND reason = $2", cid, BUDGET_EXHAUSTED)  # fmt: skip
    decided = await pool.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1", cid)
    assert over > 0 and sent + len(failed) + over == decided
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND state = 'suppressed'", cid) == 0
    # The refused numbers failed at the provider and cost nothing; their credits went back.
    assert failed and {r["consumer_id"] for r in failed} <= refused
    assert all(r["reason"] == OPTED_OUT_AT_PROVIDER and r["cost"] is None for r in failed)
    assert sum(gw.deliveries.values()) == sent and set(gw.deliveries.values()) == {1}
    assert await pool.fetchval("SELECT sum(remaining) FROM sms_credits WHERE shop_id = $1", shop) == credits_before - sent
    # Who the budget left out took no cap (R-OC-8): the counters are the sent deliveries.
    await assert_fatigue_matches_ledger(pool)

    # The report: costs per phase and for the campaign are the ledger's, and the budget's block says it ended.
    async with pool.acquire() as conn:
        await materialise(conn, cid)
        report = await queries.read_report(conn, await queries.campaign(conn, shop, f"{shop}.spring"))
    assert [p.cost for p in report.phases] == [await _committed_cost(pool, cid, 0), await _committed_cost(pool, cid, 1)]
    assert report.phases[0].cost == (100 - sum(c in refused for c in first)) * SMS_PRICE  # phase 0 all went out
    assert report.totals.cost == spend["spent"] == sum(d.cost for d in report.trend)
    assert report.phases[1].states[f"not_sent:{BUDGET_EXHAUSTED}"] == over
    b = report.budget
    assert (b.budget, b.spent, b.left, b.exhausted) == (budget, spend["spent"], budget - spend["spent"], True)


async def test_a_campaign_without_a_budget_takes_no_spend_row(clean_db):
    pool, shop = clean_db, "bud-free"
    now = datetime.now(UTC)
    await make_shop(pool, shop, TZ)
    await add_customers(pool, shop, list(range(1, 31)), ordered_at=now - timedelta(days=20))
    cid = await make_campaign(pool, shop, "nobudget", state="sending")
    await _snapshot(pool, cid, 0, now.date(), list(range(1, 31)))
    send = SendActivities(pool, ChannelRegistry.outbox_for_all(pool), platform_timezone=TZ)
    res = await ActivityEnvironment().run(send.send_slice, _slice(cid, shop, 0, now.date(), now, 0, 30))
    assert res.sent == 30 and await _committed_cost(pool, cid) == 30 * SMS_PRICE
    assert await pool.fetchval("SELECT count(*) FROM campaign_spend") == 0


# ------------------------------------------------------------------ failures give back


def _email_channel(server: SmtpServer) -> EmailChannel:
    return EmailChannel(host="127.0.0.1", port=server.port, sender="shop@mail.example", connections=2, timeout_s=5,
                        backoff=Backoff(attempts=3, base_s=0.01, cap_s=0.05), unsubscribe_url="https://shop.example/u")


async def _edm_day(pool, shop: str, n: int, now: datetime) -> tuple[int, date]:
    """A shop with an EDM account of 10 yuan, `n` customers with emails, and a campaign's snapshot of them."""
    await make_shop(pool, shop, TZ)
    await edm_account(pool, shop, "10")
    await add_customers(pool, shop, list(range(1, n + 1)), ordered_at=now - timedelta(days=20))
    cid = await make_campaign(pool, shop, "edm", state="sending")
    day = local_day(now, TZ)
    await _snapshot(pool, cid, 0, day, list(range(1, n + 1)))
    return cid, day


async def _assert_quota_and_costs_given_back(pool, shop: str, cid: int, day: date, refused: set[int], budget: Decimal):
    rows = {r["consumer_id"]: r for r in await pool.fetch(
        "SELECT consumer_id, state, reason, cost FROM deliveries WHERE campaign_id = $1", cid)}  # fmt: skip
    assert {c for c, r in rows.items() if r["state"] == "failed"} == refused
    assert all(rows[c]["cost"] is None and rows[c]["reason"].startswith("smtp") for c in refused), [rows[c] for c in refused]
    sent = [r for r in rows.values() if r["state"] == "sent"]
    assert len(sent) == len(rows) - len(refused)
    spent = sum(r["cost"] for r in sent)
    # The day's counter holds the sent emails only, the account paid for them only, the budget the same.
    q = await pool.fetchrow("SELECT used, cost FROM quota_day WHERE shop_id = $1 AND quota = $2 AND day = $3",
                            shop, EDM.name, day)  # fmt: skip
    assert (q["used"], q["cost"]) == (len(sent), spent)
    assert await pool.fetchval("SELECT balance FROM edm_accounts WHERE shop_id = $1", shop) == Decimal(10) - spent
    assert await pool.fetchval("SELECT spent FROM campaign_spend WHERE campaign_id = $1", cid) == spent <= budget
    # Each free among the day's first 200 units taken (a refused one's unit goes back to the day, so a later email
    # may take it), or priced at 2 yuan per 1,000.
    free = sum(r["cost"] == 0 for r in sent)
    assert {r["cost"] for r in sent} == {0, EDM_EACH} and 200 - len(refused) <= free <= 200
    assert spent == (len(sent) - free) * EDM_EACH
    await assert_fatigue_matches_ledger(pool)


async def test_an_email_refused_with_550_gives_back_its_quota_unit_and_its_cost(clean_db):
    pool, shop, budget = clean_db, "bud-smtp", Decimal("5")
    now = datetime.now(UTC)
    cid, day = await _edm_day(pool, shop, 300, now)
    refused = {7, 150, 201, 260, 299}  # free ones and priced ones
    server = SmtpServer(SmtpFaults(refuse={f"user{c}@example.com" for c in refused})).start()
    email = _email_channel(server)
    send = SendActivities(pool, ChannelRegistry({"email": email}), platform_timezone=TZ)
    try:
        res = await ActivityEnvironment().run(
            send.send_slice, _slice(cid, shop, 0, day, now, 0, 300, channel="email", budget=budget, chunk=60, quota=EDM))
    finally:
        await email.aclose()
        server.stop()
    assert (res.sent, res.failed) == (295, 5)
    assert sum(server.inbox.received.values()) == 295 and set(server.inbox.received.values()) == {1}
    await _assert_quota_and_costs_given_back(pool, shop, cid, day, refused, budget)


async def test_an_email_the_dispatcher_hands_over_and_550_refuses_gives_back_the_same(clean_db):
    pool, shop, budget = clean_db, "bud-disp", Decimal("5")
    now = datetime.now(UTC)
    cid, day = await _edm_day(pool, shop, 300, now)
    refused = {3, 199, 200, 222}
    send = SendActivities(pool, ChannelRegistry({"email": OutboxChannel(pool, "email")}), platform_timezone=TZ)
    res = await ActivityEnvironment().run(
        send.send_slice, _slice(cid, shop, 0, day, now, 0, 300, channel="email", budget=budget, chunk=60, quota=EDM))
    assert res.sent == 300  # handed to the outbox with the decision
    server = SmtpServer(SmtpFaults(refuse={f"user{c}@example.com" for c in refused})).start()
    email = _email_channel(server)
    try:
        stats = await Dispatcher(pool, {"email": email}, part_size=50).run_once()
    finally:
        await email.aclose()
        server.stop()
    assert stats.failed == len(refused)
    await _assert_quota_and_costs_given_back(pool, shop, cid, day, refused, budget)


async def test_a_spent_budget_stays_spent_even_for_the_next_days_free_emails(clean_db):
    pool, shop, budget = clean_db, "bud-next", Decimal("0.05")
    now = datetime.now(UTC)
    cid, day = await _edm_day(pool, shop, 300, now)
    send = SendActivities(pool, ChannelRegistry({"email": OutboxChannel(pool, "email")}), platform_timezone=TZ)
    first = await ActivityEnvironment().run(
        send.send_slice, _slice(cid, shop, 0, day, now, 0, 300, channel="email", budget=budget, chunk=60, quota=EDM))
    # The day's 200 free and 25 at 0.002 (0.05); the 226th does not fit, and the slice stops there.
    assert (first.sent, first.stopped_reason) == (225, A.NOT_SENT_BUDGET)
    assert await pool.fetchval("SELECT spent FROM campaign_spend WHERE campaign_id = $1", cid) == budget
    # The next day's first 200 would be free: the campaign still sends nothing.
    later = day + timedelta(days=1)
    await add_customers(pool, shop, list(range(301, 331)), ordered_at=now - timedelta(days=20))
    await _snapshot(pool, cid, 0, later, list(range(301, 331)))
    second = await ActivityEnvironment().run(
        send.send_slice, _slice(cid, shop, 0, later, now, 0, 30, channel="email", budget=budget, chunk=60, quota=EDM))
    assert (second.sent, second.stopped_reason) == (0, A.NOT_SENT_BUDGET)
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND day = $2 AND state = 'not_sent'"
                               " AND reason = $3", cid, later, BUDGET_EXHAUSTED) == 30  # fmt: skip
    assert await pool.fetchval("SELECT count(*) FROM quota_day WHERE shop_id = $1 AND day = $2 AND used > 0", shop, later) == 0


# ------------------------------------------------------------------ end to end


async def test_a_k_edm_campaign_stops_where_its_budget_ends_and_sends_nothing_later(clean_db, ts_env):
    pool, shop = clean_db, "bud-edm"  # a shop of its own: the quota's day counters outlive a test
    now = await ts_env.get_current_time()
    first = local_day(now, TZ) + timedelta(days=1)
    await make_shop(pool, shop, TZ)
    await edm_account(pool, shop, "10")
    await add_customers(pool, shop, list(range(1, 1001)), ordered_at=now - timedelta(days=40),
                        visited_at=now - timedelta(days=3))
    # 1.00 yuan: the day's 200 free and 500 more at 2 yuan per 1,000 (R-ED-4); the next one does not fit.
    s = EdmSpec.model_validate(spec(shop_id=shop, channels=["email"], template={"email": {"subject": "s", "body": "b"}},
                                    budget="1.00", time={"start_date": first.isoformat(), "days": 2, "send_time": "10:00"}))
    [email] = (await preview_campaign(pool, s, platform_tz=TZ, now=now)).phases
    assert (email.would_send, email.removed) == (700, {BUDGET_EXHAUSTED: 300})
    assert email.rules == {BUDGET_EXHAUSTED: BUDGET_RULE}

    plans, [result] = await _run(ts_env, pool, [s], tuning={"slice_size": 100, "chunk_size": 25, "concurrency": 8})
    cid = plans[0].campaign_db_id
    assert result.state == BUDGET_EXHAUSTED and result.end_reason.startswith(BUDGET_EXHAUSTED)
    assert BUDGET_RULE in result.end_reason
    by = dict(await pool.fetch("SELECT coalesce(reason, state), count(*)::int FROM deliveries WHERE campaign_id = $1"
                               " GROUP BY 1", cid))  # fmt: skip
    assert by == {"sent": 700, BUDGET_EXHAUSTED: 300}  # what the preview said
    # Nothing on the second day: no refresh, no delivery.
    assert await pool.fetchval("SELECT max(day) FROM audience_refreshes WHERE campaign_id = $1", cid) == first
    assert await pool.fetchval("SELECT max(day) FROM deliveries WHERE campaign_id = $1", cid) == first
    assert await _committed_cost(pool, cid) == Decimal("1.00")
    assert await pool.fetchval("SELECT state FROM campaigns WHERE id = $1", cid) == BUDGET_EXHAUSTED
    desc = await ts_env.client.get_workflow_handle(plans[0].workflow_id).describe()
    assert desc.typed_search_attributes.get(SA.CAMPAIGN_STATE) == BUDGET_EXHAUSTED
    async with pool.acquire() as conn:
        report = await queries.read_report(conn, await queries.campaign(conn, shop, plans[0].workflow_id))
    assert report.state == BUDGET_EXHAUSTED and report.totals.cost == Decimal("1.00")
    assert (report.budget.budget, report.budget.spent, report.budget.left, report.budget.exhausted) == (
        Decimal("1.00"), Decimal("1.00"), Decimal(0), True)


async def test_an_sms_campaigns_preview_prices_its_messages_as_the_run_does(clean_db, ts_env):
    pool, shop = clean_db, "s1"
    now = await ts_env.get_current_time()
    await make_shop(pool, shop, TZ)  # 4.2 fen a message (R-AQ-5)
    await add_customers(pool, shop, list(range(1, 151)), ordered_at=now - timedelta(days=30),
                        visited_at=now - timedelta(days=3))
    # 2.00 yuan pays for 47 one-segment messages (1.974); the 48th would make 2.016.
    s = OldCustomerSpec(kind="K-OLDCUST", shop_id=shop, campaign_id="c1", scene="x", card_text="Hi", channel=Channel.sms,
                        send_date=local_day(now, TZ) + timedelta(days=1), send_time=time(9), budget="2.00")
    [phase] = (await preview_campaign(pool, s, platform_tz=TZ, now=now)).phases
    assert (phase.would_send, phase.removed) == (47, {BUDGET_EXHAUSTED: 103})
    plans, [result] = await _run(ts_env, pool, [s], tuning={"slice_size": 20, "chunk_size": 5, "concurrency": 8})
    cid = plans[0].campaign_db_id
    assert result.state == BUDGET_EXHAUSTED
    by = dict(await pool.fetch("SELECT coalesce(reason, state), count(*)::int FROM deliveries WHERE campaign_id = $1"
                               " GROUP BY 1", cid))  # fmt: skip
    assert by == {"sent": 47, BUDGET_EXHAUSTED: 103}
    assert await _committed_cost(pool, cid) == 47 * SMS_PRICE
    assert await pool.fetchval("SELECT spent FROM campaign_spend WHERE campaign_id = $1", cid) == 47 * SMS_PRICE
