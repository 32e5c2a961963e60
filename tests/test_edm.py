"""K-EDM (R-ED-1..4): the system audiences on a hand-built shop, the spec's refusals through the API, the
quota's pure decisions, and a campaign over email and in-site message on the time-skipping server whose
2,300 recipients go out 2,000 on the first day and the rest (with who joined) on the second, priced 200
free then 2 yuan per 1,000, while a shop whose account falls into arrears sends nothing more, with the
reason. The preview says beforehand what the run does."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
from sluice.api.service import preview_campaign
from sluice.audiences import AUDIENCES
from sluice.audiences import edm as E
from sluice.kinds import Shop, compile_plan
from sluice.kinds.edm import EMAIL_CAP, INBOX_CAP, EdmSpec
from sluice.schemas import activities as A
from sluice.schemas.campaign import Channel
from sluice.schemas.quota import (
    ACCOUNT_IN_ARREARS,
    ACCOUNT_MISSING,
    EDM,
    EDM_FREE_PER_DAY,
    EDM_INITIAL_DAILY_LIMIT,
    QUOTA_EXHAUSTED,
    Account,
    costs,
    remaining,
)
from sluice.workflows.calendar import local_day, local_instant

from tests.api_helpers import client, running_app, shop_key
from tests.factories import add_customers, make_shop
from tests.test_oldcust_workflow import TZ, _run

EACH = Decimal("0.002")  # 2 yuan per 1,000


def spec(**over) -> dict:
    body = {
        "kind": "K-EDM", "shop_id": "e1", "campaign_id": "c1", "name": "Autumn", "audience": E.ACTIVE_30D,
        "channels": ["email", "inbox"],
        "template": {"email": {"subject": "New catalogue", "body": "Reply for samples"},
                     "inbox": {"title": "Catalogue", "body": "Ask us for samples"}},
        "time": {"days": 2, "send_time": "10:00"},
    }  # fmt: skip
    return {**body, **over}


async def edm_account(pool, shop_id: str, balance: str, daily_limit: int = EDM_INITIAL_DAILY_LIMIT) -> None:
    await pool.execute("INSERT INTO edm_accounts (shop_id, balance, daily_limit) VALUES ($1, $2, $3)"
                       " ON CONFLICT (shop_id) DO UPDATE SET balance = $2, daily_limit = $3",
                       shop_id, Decimal(balance), daily_limit)  # fmt: skip


# ------------------------------------------------------------------ pure decisions


def test_the_quota_prices_the_days_first_200_free_then_2_yuan_per_1000():
    assert costs(EDM, 0, 3) == [0, 0, 0]
    day = costs(EDM, 0, 2000)
    assert day.count(0) == EDM_FREE_PER_DAY and sum(day) == Decimal("3.6")
    assert costs(EDM, 150, 100) == [0] * 50 + [EACH] * 50  # the free ones are the shop's day's, not the chunk's
    assert costs(EDM, 1999, 1) == [EACH]


def test_the_quota_left_and_why_none():
    assert remaining(Account(Decimal(5), 2000), 0) == (2000, None)
    assert remaining(Account(Decimal(5), 2000), 1990) == (10, None)
    assert remaining(Account(Decimal(5), 2000), 2000) == (0, QUOTA_EXHAUSTED)
    assert remaining(Account(Decimal(0), 2000), 0) == (2000, None)  # postpaid: zero is not arrears
    assert remaining(Account(Decimal("-0.002"), 2000), 0) == (0, ACCOUNT_IN_ARREARS)  # the free 200 too
    assert remaining(None, 0) == (0, ACCOUNT_MISSING)


def test_compile_gives_one_phase_per_channel_from_the_same_first_day():
    now = datetime(2025, 3, 3, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
    shop = Shop("e1", TZ, False)
    plan = compile_plan(EdmSpec.model_validate(spec(time={"days": 3, "send_time": "11:00"})), campaign_db_id=1,
                        shop=shop, now=now)  # fmt: skip
    inbox, email = plan.phases
    day = local_day(now, TZ)
    assert (inbox.name, inbox.channel, inbox.start_date, inbox.end_date) == ("inbox", Channel.inbox, day, day)
    assert (email.name, email.channel, email.start_date, email.end_date) == ("email", Channel.email, day,
                                                                             day + timedelta(days=2))
    assert email.quota == EDM and inbox.quota is None and email.daily_cap is None  # the quota is the account's limit
    assert (email.template_cap, inbox.template_cap) == (EMAIL_CAP, INBOX_CAP)
    assert EMAIL_CAP.group == "edm" and (EMAIL_CAP.count, EMAIL_CAP.days) == (1, 7)  # R-ED-3
    assert (email.title, email.text, inbox.title, inbox.text) == ("New catalogue", "Reply for samples", "Catalogue",
                                                                  "Ask us for samples")
    assert inbox.audience == email.audience == E.ACTIVE_30D and inbox.send_time == time(11, 0)
    [only] = compile_plan(EdmSpec.model_validate(spec(channels=["inbox"], template={"inbox": {"title": "t", "body": "b"}},
                                                      time={"days": 3, "send_time": "11:00"})),
                          campaign_db_id=1, shop=shop, now=now).phases  # fmt: skip
    assert (only.channel, only.start_date, only.end_date) == (Channel.inbox, day, day + timedelta(days=2))


# ------------------------------------------------------------------ R-ED-1: the audiences


async def _customer(pool, shop: str, cid: int, events: list[tuple[str, datetime]], order: str | None = None, at=None):
    await pool.execute("INSERT INTO consumers (consumer_id) VALUES ($1) ON CONFLICT DO NOTHING", cid)
    await pool.execute("INSERT INTO shop_customers (shop_id, consumer_id, email) VALUES ($1, $2, $3)",
                       shop, cid, f"u{cid}@example.com")
    await pool.executemany("INSERT INTO behaviour_events (shop_id, consumer_id, kind, occurred_at) VALUES ($1, $2, $3, $4)",
                           [(shop, cid, k, t) for k, t in events])  # fmt: skip
    if order:
        await pool.execute("INSERT INTO orders (order_id, shop_id, consumer_id, created_at, amount, status)"
                           " VALUES ($1, $2, $3, $4, 10, $5)", 1000 + cid, shop, cid, at, order)  # fmt: skip


async def _email(pool, shop: str, cid: int, at: datetime, state: str = "sent", channel: str = "email"):
    await pool.execute(
        "INSERT INTO deliveries (campaign_id, phase, consumer_id, day, channel, shop_id, template_group, fatigue_day,"
        " state, decided_at) VALUES (99, 0, $1, $2, $3, $4, 'edm', $2, $5, $6)",
        cid, at.date(), channel, shop, state, at)  # fmt: skip


async def test_each_system_audience_yields_whom_its_definition_says(clean_db):
    pool, shop, snap = clean_db, "a1", datetime(2025, 6, 1, 16, 0, tzinfo=UTC)
    await make_shop(pool, shop, TZ)
    await make_shop(pool, "other", TZ)
    d = lambda n: snap - timedelta(days=n)  # noqa: E731
    await _customer(pool, shop, 1, [("login", d(3))])
    await _customer(pool, shop, 2, [("visit", d(20))])
    await _customer(pool, shop, 3, [("cart", d(60))], order="paid", at=d(300))
    await _customer(pool, shop, 4, [("login", d(100))])
    await _customer(pool, shop, 5, [("message_read", d(2))])  # reading a message is not activity on the site
    await _customer(pool, shop, 6, [("visit", snap + timedelta(hours=1))])  # after the snapshot (T+1)
    await _customer(pool, shop, 7, [("favourite", d(10))])  # L1+: intent, never bought
    await _customer(pool, shop, 8, [("cart", d(10))], order="paid", at=d(200))  # bought once: not potential
    await _customer(pool, shop, 9, [("inquiry", d(10))], order="pending", at=d(5))  # an unpaid order is no purchase
    await _customer(pool, shop, 10, [("visit", d(5))])  # a visit is no purchase intent
    await _customer(pool, shop, 11, [("cart", d(40))])  # intent, but not within 30 days
    await pool.execute("INSERT INTO orders (order_id, shop_id, consumer_id, created_at, amount, status)"
                       " VALUES (5000, 'other', 7, $1, 10, 'paid')", d(50))  # another shop's order: still potential
    # Read but not replied, within 60 days, after an email of the shop.
    await _customer(pool, shop, 12, [("message_read", d(9))])
    await _email(pool, shop, 12, d(10))
    await _customer(pool, shop, 13, [("message_read", d(9)), ("message_reply", d(8))])  # replied
    await _email(pool, shop, 13, d(10))
    await _customer(pool, shop, 14, [("message_read", d(9))])
    await _email(pool, shop, 14, d(10), channel="chat")  # a chat message is no EDM
    await _customer(pool, shop, 15, [("message_read", d(59))])
    await _email(pool, shop, 15, d(65))  # the email is older than 60 days
    await _customer(pool, shop, 16, [("message_read", d(11))])
    await _email(pool, shop, 16, d(10))  # read before the email came
    await _customer(pool, shop, 17, [("message_read", d(9))])
    await _email(pool, shop, 17, d(10), state="failed")  # never reached
    await _customer(pool, shop, 18, [("message_read", d(9))])
    await _email(pool, "other", 18, d(10))  # another shop's email

    async def members(name: str) -> list[int]:
        sql = f"SELECT consumer_id FROM ({AUDIENCES[name].sql}) a ORDER BY 1"
        return [r[0] for r in await pool.fetch(sql, shop, snap, snap)]

    assert await members(E.ACTIVE_7D) == [1, 10]
    assert await members(E.ACTIVE_30D) == [1, 2, 7, 8, 9, 10]
    assert await members(E.ACTIVE_90D) == [1, 2, 3, 7, 8, 9, 10, 11]
    assert await members(E.L1_POTENTIAL) == [7, 9]
    assert await members(E.READ_NO_REPLY) == [12]


# ------------------------------------------------------------------ refusals through the API

REFUSALS = [
    *[(f"ed3-no-{f}", lambda f=f: {k: v for k, v in spec().items() if k != f}, f, "R-ED-3") for f in
      ("name", "audience", "channels", "template", "time")],
    ("ed3-no-send-time", lambda: spec(time={"days": 2}), "time.send_time", "R-ED-3"),
    ("ed3-no-days", lambda: spec(time={"send_time": "10:00"}), "time.days", "R-ED-3"),
    ("ed3-no-channel", lambda: spec(channels=[]), "channels", "R-ED-3"),
    ("ed1-unknown-audience", lambda: spec(audience="vip_buyers"), "audience", "R-ED-1"),
    ("ed2-sms", lambda: spec(channels=["email", "sms"]), "channels", "R-ED-2"),
    ("ed2-twice", lambda: spec(channels=["email", "email"]), "channels", "R-ED-2"),
    ("ed2-no-inbox-content", lambda: spec(template={"email": {"subject": "s", "body": "b"}}), "template", "R-ED-2"),
    ("ed2-content-unchosen", lambda: spec(channels=["inbox"]), "template", "R-ED-2"),
]


@pytest.mark.parametrize(("build", "field", "rule"), [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
async def test_the_api_refuses_each_rule_naming_field_and_rule(clean_db, ts_env, build, field, rule):
    pool = clean_db
    key = await shop_key(pool, "e1", TZ)
    await edm_account(pool, "e1", "10")
    async with running_app(pool, ts_env, worker=False) as app, client(app, key) as c:
        for path in ("/campaigns/preview", "/campaigns"):  # R-ED-3: not even the count without every field
            res = await c.post(path, json=build())
            assert res.status_code == 422, res.text
            assert [(d["field"], d["rule"]) for d in res.json()["detail"]] == [(field, rule)], res.text
        assert (await c.post("/campaigns/preview", json=spec())).status_code == 200  # the control
    assert await pool.fetchval("SELECT count(*) FROM campaigns") == 0


@pytest.mark.parametrize("balance", [None, "-0.5"], ids=["no-account", "in-arrears"])
async def test_email_needs_an_edm_account_not_in_arrears(clean_db, ts_env, balance):
    pool = clean_db
    key = await shop_key(pool, "e1", TZ)
    if balance is not None:
        await edm_account(pool, "e1", balance)
    async with running_app(pool, ts_env, worker=False) as app, client(app, key) as c:
        for path in ("/campaigns/preview", "/campaigns"):
            res = await c.post(path, json=spec())
            assert res.status_code == 422, res.text
            assert [(d["field"], d["rule"]) for d in res.json()["detail"]] == [("channels", "R-ED-4")]
        inbox_only = spec(channels=["inbox"], template={"inbox": {"title": "t", "body": "b"}})
        assert (await c.post("/campaigns/preview", json=inbox_only)).status_code == 200  # no account needed
    assert await pool.fetchval("SELECT count(*) FROM campaigns") == 0


# ------------------------------------------------------------------ end to end


async def test_2300_recipients_go_2000_on_day_1_and_the_rest_with_joiners_on_day_2(clean_db, ts_env):
    pool = clean_db
    now = await ts_env.get_current_time()
    first = local_day(now, TZ) + timedelta(days=1)
    seen = dict(ordered_at=now - timedelta(days=40), visited_at=now - timedelta(days=3))
    # Shop e1: 2,300 reachable; R-ED-3's exclusions; four marketed by email 3 days before; one who joins.
    await make_shop(pool, "e1", TZ)
    await edm_account(pool, "e1", "10")
    await add_customers(pool, "e1", list(range(1, 2301)), **seen)
    await add_customers(pool, "e1", [2301, 2302, 2303], **seen)
    await pool.execute("UPDATE shop_customers SET email = NULL WHERE shop_id = 'e1' AND consumer_id IN (2301, 2302, 2303)")
    await add_customers(pool, "e1", [2304, 2305], email_valid=False, **seen)
    await add_customers(pool, "e1", [2306, 2307, 2308], unsub_email=True, **seen)
    await add_customers(pool, "e1", [2309, 2310], deleted=True, **seen)
    await add_customers(pool, "e1", [2311, 2312, 2313, 2314], **seen)
    await pool.executemany(
        "INSERT INTO fatigue_day (consumer_id, day, channel, sent, shops, per_shop, per_template)"
        " VALUES ($1, $2, 'email', 1, 1, $3, $4)",  # an email of the shop 3 days ago: counted on the email row
        [(c, first - timedelta(days=3), {"e1": 1}, {"e1/edm": 1}) for c in (2311, 2312, 2313, 2314)])
    # Joins the audience during the campaign: first seen on day 1, so in day 2's snapshot (T+1) only.
    await add_customers(pool, "e1", [2315], ordered_at=now - timedelta(days=40),
                        visited_at=local_instant(first, time(12, 0), TZ))
    # Shop e2: 2,300 reachable; its balance pays for less than day 1's 1,800 priced emails.
    await make_shop(pool, "e2", TZ)
    await edm_account(pool, "e2", "1")
    await add_customers(pool, "e2", list(range(10_001, 12_301)), **seen)

    timing = {"start_date": first.isoformat(), "days": 2, "send_time": "10:00"}
    s1 = EdmSpec.model_validate(spec(time=timing))
    s2 = EdmSpec.model_validate(spec(shop_id="e2", channels=["email"], template={"email": {"subject": "s", "body": "b"}},
                                     time=timing))  # fmt: skip

    # The preview (R-PRE-1, R-ED-3): each exclusion, then the day's quota.
    inbox, email = (await preview_campaign(pool, s1, platform_tz=TZ, now=now)).phases
    assert (inbox.day, email.day) == (first.isoformat(), first.isoformat())
    assert inbox.matched == email.matched == 2314
    assert inbox.removed == {"deleted": 2} and inbox.would_send == 2312
    assert email.removed == {"no_contact": 5, "unsubscribed": 3, "deleted": 2, "fatigue_template": 4,
                             QUOTA_EXHAUSTED: 300}, email.removed  # fmt: skip
    assert email.would_send == EDM_INITIAL_DAILY_LIMIT
    assert email.rules[QUOTA_EXHAUSTED] == "R-ED-4" and email.rules["no_contact"] == "R-EXC-1"
    assert await pool.fetchval("SELECT count(*) FROM quota_day") == 0  # the preview holds nothing

    plans, results = await _run(ts_env, pool, [s1, s2])
    assert [r.state for r in results] == ["completed", "completed"]
    c1, c2 = (p.campaign_db_id for p in plans)

    async def ledger(cid: int, phase: int) -> dict[int, dict[str, int]]:
        """{campaign day (1, 2): {state or reason: deliveries}}"""
        out: dict[int, dict[str, int]] = {1: {}, 2: {}}
        for r in await pool.fetch("SELECT day, coalesce(reason, state) AS what, count(*)::int AS n FROM deliveries"
                                  " WHERE campaign_id = $1 AND phase = $2 GROUP BY 1, 2", cid, phase):
            out[(r["day"] - first).days + 1][r["what"]] = r["n"]
        return out

    # In-site message: everyone on the first day, free.
    assert (await ledger(c1, 0))[1] == {"sent": 2312}
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id = $1 AND phase = 0 AND cost IS NOT NULL",
                               c1) == 0  # fmt: skip
    # Email: the day's quota on day 1 (what the preview said), the rest and the joiner on day 2.
    email_days = await ledger(c1, 1)
    assert email_days[1] == {"sent": EDM_INITIAL_DAILY_LIMIT}
    assert email_days[2] == {"sent": 301, "fatigue_template": 4}
    refresh = await pool.fetch("SELECT day, eligible, excluded FROM audience_refreshes WHERE campaign_id = $1 AND phase = 1"
                               " ORDER BY day", c1)  # fmt: skip
    assert refresh[0]["excluded"] == {k: v for k, v in email.removed.items() if k in ("no_contact", "unsubscribed", "deleted")}
    assert refresh[1]["eligible"] == 305 and refresh[1]["excluded"]["already_reached"] == 2000
    joined = await pool.fetchrow("SELECT day, state FROM deliveries WHERE campaign_id = $1 AND consumer_id = 2315", c1)
    assert (joined["day"], joined["state"]) == (first + timedelta(days=1), "sent")
    # Costs: each day's first 200 free, then 2 yuan per 1,000, on the deliveries, the day's counter and the account.
    by_day = {r["day"]: (r["used"], r["cost"]) for r in await pool.fetch("SELECT day, used, cost FROM quota_day"
                                                                             " WHERE shop_id = 'e1'")}
    assert by_day == {first: (2000, Decimal("3.6")), first + timedelta(days=1): (301, Decimal("0.202"))}
    priced = await pool.fetch("SELECT day, count(*) FILTER (WHERE cost = 0) AS free, sum(cost) AS cost FROM deliveries"
                              " WHERE campaign_id = $1 AND phase = 1 AND state = 'sent' GROUP BY day ORDER BY day", c1)
    assert [(r["free"], r["cost"]) for r in priced] == [(200, Decimal("3.6")), (200, Decimal("0.202"))]
    assert await pool.fetchval("SELECT balance FROM edm_accounts WHERE shop_id = 'e1'") == Decimal("10") - Decimal("3.802")
    assert await pool.fetchval("SELECT count(*) FROM outbox_messages WHERE campaign_id = $1 AND channel = 'email'",
                               c1) == 2301  # fmt: skip

    # Shop e2: day 1's 2,000 take the balance below zero; day 2 sends nothing, the rest recorded with the reason.
    assert await pool.fetchval("SELECT balance FROM edm_accounts WHERE shop_id = 'e2'") == Decimal("1") - Decimal("3.6")
    e2 = await ledger(c2, 0)
    assert e2[1] == {"sent": 2000}
    assert e2[2] == {A.NOT_SENT_ARREARS: 300}, e2
    assert A.REASON_RULES[A.NOT_SENT_ARREARS] == "R-ED-4"
    assert await pool.fetchval("SELECT count(*) FROM outbox_messages WHERE campaign_id = $1", c2) == 2000

    # The funnel (R-ED-5) of what ran: the largest audience before exclusions (day 2's, with the joiner), the
    # buyers each channel reached, and the campaign's, each buyer once (the message's 2,312 and the email's 2,301
    # share all but the email's joiner); nobody replied or ordered.
    from sluice.reports import queries
    from sluice.reports.refresh import refresh as materialise

    async with pool.acquire() as conn:
        await materialise(conn, c1)
        funnel = (await queries.read_report(conn, await queries.campaign(conn, "e1", plans[0].workflow_id))).funnel
    assert [(c.name, c.channel, [s.count for s in c.stages]) for c in funnel.channels] == [
        ("inbox", "inbox", [2314, 2312, 0, 0, 0]), ("email", "email", [2315, 2301, 0, 0, 0])]
    assert [s.count for s in funnel.stages] == [2315, 2313, 0, 0, 0]
