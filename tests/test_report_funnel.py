"""K-EDM's funnel (R-ED-5) against a campaign computed by hand, through the refresh, the API and the CLI.

The campaign sends an in-site message (phase 0) and an email (phase 1), as
K-EDM compiles them, with the windows a start stores (30 days after the
reach). Its buyers: one reached on both channels (counted once by the
campaign), one who joined the email audience on the second day, deliveries
that reached nobody (failed, not sent, suppressed), replies before, inside and
after the window and from another shop, opens and clicks (not a handshake),
orders inside and outside the window, of a buyer never reached, and second
orders: inside the window (a repurchase), outside it (not), one whose first
order counts for the message and the second for the email, and one whose
email went out 20 days after the message (the day's quota) with a second
order inside the email's window only. The real
attribution step attributes the orders (the last channel that reached the
buyer before the order). Every expected count is written out by hand below.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sluice.api.cli import app as cli_app
from sluice.channels.base import REJECTED_BY_PROVIDER
from sluice.kinds import KINDS
from sluice.kinds.edm import ATTRIBUTION_DAYS, Edm
from sluice.outcomes.attribution import Window, save_windows
from sluice.reports import queries
from sluice.reports.definitions import FUNNEL_STAGES, funnel_stages
from sluice.reports.refresh import has_funnel, refresh
from sluice.schemas.activities import SUPPRESS_TEMPLATE
from sluice.schemas.campaign import AttributionMode
from sluice.schemas.quota import QUOTA_EXHAUSTED
from typer.testing import CliRunner

from tests.api_helpers import client, running_app, shop_key
from tests.factories import make_campaign, make_shop

TZ = "Asia/Shanghai"
SHOP, OTHER = "fn1", "fn2"
REF = "autumn"
WF = f"{SHOP}.{REF}"

# ------------------------------------------------------------------ pure parts


def test_each_stage_converts_from_the_one_before():
    counts = {"potential": 10, "reached": 4, "handshake": 0, "ordered": 1, "repurchased": 1}
    assert funnel_stages(counts) == [("potential", 10, None), ("reached", 4, 0.4), ("handshake", 0, 0.0),
                                     ("ordered", 1, None), ("repurchased", 1, 1.0)]  # fmt: skip
    assert [s for s, _, _ in funnel_stages(counts)] == list(FUNNEL_STAGES)


def test_the_kind_registry_says_which_reports_have_a_funnel():
    assert {name for name in KINDS if has_funnel(name)} == {Edm.name}
    assert not has_funnel(None) and not has_funnel("K-NOPE")


# ------------------------------------------------------------------ the hand-computed campaign


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), ZoneInfo(TZ))


async def edm_campaign(pool, shop: str = SHOP, ref: str = REF, other_shop: str = OTHER) -> dict:
    """The campaign, reaching on day D (50 shop days ago), D + 1 and D + 20; its id and D."""
    d = datetime.now(UTC).astimezone(ZoneInfo(TZ)).date() - timedelta(days=50)
    cid = await make_campaign(pool, shop, ref, state="completed")
    await pool.execute("UPDATE campaigns SET kind = $2, phase_names = '{inbox,email}' WHERE id = $1", cid, Edm.name)
    # The plan's windows, as a start stores them (R-ATT-1, R-ED-5: 30 days after the reach).
    await save_windows(pool, cid, {p: Window(AttributionMode.after_reach, days=ATTRIBUTION_DAYS) for p in (0, 1)})
    # The audience before exclusions: 13 on day D; the email's grows to 14 on D + 1 (buyer 4 joined).
    await pool.executemany(
        "INSERT INTO audience_refreshes (campaign_id, phase, day, matched, eligible, excluded) VALUES ($1, $2, $3, $4, $5, $6)",
        [(cid, 0, d, 13, 10, {"deleted": 3}), (cid, 1, d, 13, 8, {"no_contact": 5}),
         (cid, 1, d + timedelta(days=1), 14, 2, {"no_contact": 5, "already_reached": 7})],
    )  # fmt: skip

    def delivery(phase, consumer, day, hour, state, reason=None):
        channel, group = (("inbox", "inbox"), ("email", "edm"))[phase]
        return (cid, phase, consumer, day, channel, shop, group, day, state, reason, at(day, hour))

    d1 = d + timedelta(days=1)
    await pool.executemany(
        "INSERT INTO deliveries (campaign_id, phase, consumer_id, day, channel, shop_id, template_group, fatigue_day,"
        " state, reason, decided_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        [
            delivery(0, 1, d, 10, "sent"), delivery(1, 1, d, 11, "sent"),  # both channels: one buyer
            delivery(0, 2, d, 10, "sent"),
            delivery(0, 3, d, 10, "sent"),
            delivery(1, 4, d1, 10, "sent"),  # joined: the email on D + 1 only
            delivery(0, 5, d, 10, "sent"), delivery(1, 5, d, 11, "failed", REJECTED_BY_PROVIDER),
            delivery(0, 6, d, 10, "sent"), delivery(1, 6, d, 11, "not_sent", QUOTA_EXHAUSTED),
            delivery(0, 7, d, 10, "suppressed", SUPPRESS_TEMPLATE), delivery(1, 7, d, 11, "suppressed", SUPPRESS_TEMPLATE),
            delivery(0, 8, d, 10, "sent"), delivery(1, 8, d1, 10, "sent"),
            delivery(0, 9, d, 10, "sent"),
            delivery(0, 10, d, 10, "sent"), delivery(1, 10, d + timedelta(days=20), 10, "sent"),  # quota: 20 days on
        ],
    )  # fmt: skip
    await pool.executemany(
        "INSERT INTO outcome_events (shop_id, event_id, kind, consumer_id, occurred_at) VALUES ($1, $2, $3, $4, $5)",
        [
            (shop, f"{ref}-r1", "replied", 1, at(d + timedelta(days=2), 9)),  # inside both channels' windows
            (shop, f"{ref}-r2", "replied", 2, at(d - timedelta(days=1), 9)),  # before the reach
            (shop, f"{ref}-r3", "replied", 3, at(d + timedelta(days=31), 9)),  # 31 days after the reach: outside
            (shop, f"{ref}-r4", "replied", 4, at(d1, 15)),  # after the email reached them
            (other_shop, f"{ref}-r9", "replied", 9, at(d1, 9)),  # another shop's
            (shop, f"{ref}-o5", "opened", 5, at(d, 12)),  # reading and clicking are not a handshake
            (shop, f"{ref}-c5", "clicked", 5, at(d, 12, 5)),
        ],
    )  # fmt: skip
    orders = [  # consumer, created (days after D, hour)
        (1, 3, 9), (1, 10, 9),  # both after the email: the email's, the second a repurchase
        (2, 5, 9),  # the message's
        (3, 31, 9),  # outside the 30 days: not the campaign's
        (4, 2, 9), (4, 20, 9), (4, 40, 9),  # the email's, a repurchase, and one outside the window
        (6, 1, 9), (6, 35, 9),  # the message's; the second outside the window: no repurchase
        (7, 1, 9),  # never reached
        (8, 0, 12), (8, 3, 9),  # the message's (before the email reached them), then the email's
        (9, -3, 9),  # before the reach
        (10, 1, 9), (10, 45, 9),  # the message's; the email's, past the message's window: no channel's repurchase
    ]
    await pool.executemany(
        "INSERT INTO orders (order_id, shop_id, consumer_id, created_at, paid_at, amount, status)"
        " VALUES ($1, $2, $3, $4, $4, 30, 'paid')",
        [(cid * 100 + i, shop, c, at(d + timedelta(days=n), h)) for i, (c, n, h) in enumerate(orders)],
    )
    return {"id": cid, "d": d}


# By hand (potential, reached, handshake, ordered, repurchased):
# message: audience 13; reached 1, 2, 3, 5, 6, 8, 9, 10; replied in the window: 1; orders attributed: 2, 6, 8, 10;
#          bought again in the window after that: 8 (its second order is the email's, still inside the window),
#          not 10 (its second order is 45 days after the message).
# email:   audience 13 then 14; reached 1, 4, 8, 10; replied: 1, 4; ordered: 1, 4, 8, 10; again: 1 and 4.
# campaign: the largest audience; 9 buyers (1, 8 and 10 once); replied 1, 4; ordered 1, 2, 4, 6, 8, 10;
#           two orders of the campaign: 1, 4, 8, 10.
MESSAGE = (13, 8, 1, 4, 1)
EMAIL = (14, 4, 2, 4, 2)
CAMPAIGN = (14, 9, 2, 6, 4)


def stages(counts: tuple) -> list[dict]:
    before = None
    out = []
    for stage, n in zip(FUNNEL_STAGES, counts, strict=True):
        out.append({"stage": stage, "count": n, "conversion": None if not before else n / before})
        before = n
    return out


EXPECTED = {
    "stages": stages(CAMPAIGN),
    "channels": [{"phase": 0, "name": "inbox", "channel": "inbox", "stages": stages(MESSAGE)},
                 {"phase": 1, "name": "email", "channel": "email", "stages": stages(EMAIL)}],
}  # fmt: skip


def test_the_expected_conversions_are_the_hand_ones():
    assert [s["conversion"] for s in EXPECTED["stages"]] == [None, 9 / 14, 2 / 9, 3.0, 4 / 6]


async def test_the_materialised_funnel_equals_the_hand_computation(clean_db):
    pool = clean_db
    await make_shop(pool, SHOP, TZ)
    await make_shop(pool, OTHER, TZ)
    camp = await edm_campaign(pool)
    async with pool.acquire() as conn:
        done = await refresh(conn, camp["id"])  # the real attribution step, then the report and its funnel
        assert done.attributed
        rep = await queries.read_report(conn, await queries.campaign(conn, SHOP, WF))
    assert json.loads(rep.model_dump_json())["funnel"] == EXPECTED
    # The funnel's reached and ordered are the report's reached and converted, per phase and for the campaign.
    assert (rep.totals.reached, rep.totals.converted) == (CAMPAIGN[1], CAMPAIGN[3])
    assert [(p.reached, p.converted) for p in rep.phases] == [(MESSAGE[1], MESSAGE[3]), (EMAIL[1], EMAIL[3])]

    # A kind without a funnel: no rows, `funnel` null; back to K-EDM, the same funnel again.
    await pool.execute("UPDATE campaigns SET kind = 'K-PHASED' WHERE id = $1", camp["id"])
    async with pool.acquire() as conn:
        await refresh(conn, camp["id"])
        rep = await queries.read_report(conn, await queries.campaign(conn, SHOP, WF))
    assert rep.funnel is None and json.loads(rep.model_dump_json())["funnel"] is None
    assert await pool.fetchval("SELECT count(*) FROM report_funnels WHERE campaign_id = $1", camp["id"]) == 0
    await pool.execute("UPDATE campaigns SET kind = $2 WHERE id = $1", camp["id"], Edm.name)

    # A later reply inside the window and a third order of buyer 2 inside it: refreshed, both count.
    await pool.execute("INSERT INTO outcome_events (shop_id, event_id, kind, consumer_id, occurred_at)"
                       " VALUES ($1, 'late-r2', 'replied', 2, $2)", SHOP, at(camp["d"] + timedelta(days=6), 9))  # fmt: skip
    await pool.execute("INSERT INTO orders (order_id, shop_id, consumer_id, created_at, amount, status)"
                       " VALUES ($1, $2, 2, $3, 10, 'pending')", camp["id"] * 100 + 99, SHOP,
                       at(camp["d"] + timedelta(days=7), 9))  # fmt: skip
    async with pool.acquire() as conn:
        await refresh(conn, camp["id"])
        rep = await queries.read_report(conn, await queries.campaign(conn, SHOP, WF))
    assert [s.count for s in rep.funnel.stages] == [14, 9, 3, 6, 5]
    assert [s.count for s in rep.funnel.channels[0].stages] == [13, 8, 2, 4, 2]
    assert [s.count for s in rep.funnel.channels[1].stages] == list(EMAIL)


async def test_the_api_and_the_cli_show_the_funnel(clean_db, ts_env, db_dsn):
    pool = clean_db
    key = await shop_key(pool, SHOP, TZ)
    await make_shop(pool, OTHER, TZ)
    await edm_campaign(pool)
    phased = await make_campaign(pool, SHOP, "plain", state="completed")  # a kind without a funnel
    async with running_app(pool, ts_env, worker=False) as app, client(app, key) as http:
        r = await http.get(f"/campaigns/{WF}/report")  # materialised on first read
        assert r.status_code == 200, r.text
        rep = r.json()
        assert rep["funnel"] == EXPECTED
        r = await http.get(f"/campaigns/{SHOP}.plain/report")
        assert r.status_code == 200 and r.json()["funnel"] is None, r.text
        schema = (await http.get("/openapi.json")).json()["components"]["schemas"]
        assert "funnel" in schema["CampaignReport"]["properties"] and "Funnel" in schema
    assert phased

    env = {"DATABASE_URL": db_dsn, "COLUMNS": "200"}

    async def cli(*args: str):
        return await asyncio.to_thread(CliRunner().invoke, cli_app, list(args), env=env)

    result = await cli("report", WF, "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == rep
    result = await cli("report", WF)
    assert result.exit_code == 0, result.output
    assert "funnel (R-ED-5" in result.output
    rows = {}
    for line in result.output.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│")]
        if len(cells) > 2 and cells[1] in FUNNEL_STAGES:
            rows[cells[1]] = cells[2:-1]
    pct = lambda x: "-" if x is None else f"{x:.1%}"  # noqa: E731
    assert rows == {
        s: [f"{n:,}" if k % 2 == 0 else pct(n) for k, n in enumerate(
            x for part in (EXPECTED["stages"], *(c["stages"] for c in EXPECTED["channels"]))
            for x in (part[i]["count"], part[i]["conversion"]))]
        for i, s in enumerate(FUNNEL_STAGES)
    }  # fmt: skip
    result = await cli("report", f"{SHOP}.plain")
    assert result.exit_code == 0 and "funnel" not in result.output, result.output
