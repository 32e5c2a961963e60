"""Reading reports: the campaign list, a campaign's report, its per-buyer detail (a page or CSV), the dashboard.

Everything here reads Postgres only (the report tables materialised by
reports/refresh.py, the ledger, the outbox and attributions), never Temporal:
a report outlives the workflow's retention. Every read is scoped to the shop
of the caller (the API key's, or the operator's choice in the CLI).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
from sluice.reports.definitions import (
    DEFAULT_PAGE,
    FAILURE_STATES,
    change,
    decode_cursor,
    encode_cursor,
)
from sluice.reports.models import (
    BudgetReport,
    CampaignList,
    CampaignReport,
    CampaignSummary,
    Dashboard,
    Figures,
    Funnel,
    MonthPhase,
    PhaseReport,
    Recipient,
    RecipientPage,
    TrendDay,
)
from sluice.reports.refresh import SETTINGS

# ------------------------------------------------------------------ campaigns

# A shop's campaigns, newest first, after a cursor: a backward range of campaigns_shop_id (0012). The CLI's
# operator may list every shop's ($1 NULL: the primary key backwards).
LIST_CAMPAIGNS = """
SELECT id, shop_id, campaign_ref, workflow_id, kind, state, created_at, updated_at FROM campaigns
WHERE ($1::text IS NULL OR shop_id = $1) AND ($2::text IS NULL OR state = $2) AND ($3::text IS NULL OR kind = $3) AND id < $4
ORDER BY id DESC LIMIT $5
"""
# One campaign of the shop by its workflow id: the workflow_id unique index, then the shop checked (the
# CLI's operator passes no shop: $2 NULL).
CAMPAIGN = """
SELECT id, shop_id, campaign_ref, workflow_id, kind, state, created_at, updated_at FROM campaigns
WHERE workflow_id = $1 AND ($2::text IS NULL OR shop_id = $2)
"""
_NO_CURSOR = 2**63 - 1


def report_path(workflow_id: str) -> str:
    return f"/campaigns/{workflow_id}/report"


async def list_campaigns(
    conn: asyncpg.Connection | asyncpg.Pool, shop_id: str | None, *, state: str | None = None, kind: str | None = None,
    after: str | None = None, limit: int = DEFAULT_PAGE, base_url: str = "",
) -> CampaignList:  # fmt: skip
    (before,) = decode_cursor(after, (int,)) if after else (_NO_CURSOR,)
    rows = await conn.fetch(LIST_CAMPAIGNS, shop_id, state, kind, before, limit + 1)
    page = rows[:limit]
    return CampaignList(
        campaigns=[
            CampaignSummary(
                workflow_id=r["workflow_id"], campaign_id=r["campaign_ref"], shop_id=r["shop_id"], kind=r["kind"],
                state=r["state"],
                created_at=r["created_at"], updated_at=r["updated_at"],
                report_url=base_url + report_path(r["workflow_id"]),
            )  # fmt: skip
            for r in page
        ],
        next=encode_cursor((page[-1]["id"],)) if len(rows) > limit else None,
    )


async def campaign(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str | None, workflow_id: str):
    """The shop's campaign row with this workflow id, or None (another shop's campaign is None too).
    shop_id None: any shop's (the operator's CLI only; the API always passes the key's shop)."""
    return await conn.fetchrow(CAMPAIGN, workflow_id, shop_id)


# ------------------------------------------------------------------ the report

# The materialised report of one campaign: its totals row, its phases and its days (primary-key ranges).
REPORT_TOTALS = "SELECT * FROM report_campaigns WHERE campaign_id = $1"
REPORT_PHASES = "SELECT * FROM report_phases WHERE campaign_id = $1 ORDER BY phase"
REPORT_DAYS = "SELECT * FROM report_days WHERE campaign_id = $1 ORDER BY phase, day"
# The funnel's rows (R-ED-5; none for a kind without one): a range of report_funnels' primary key, the campaign's
# row (phase -1) first.
REPORT_FUNNEL = "SELECT * FROM report_funnels WHERE campaign_id = $1 ORDER BY phase"
# R-COST-BUDGET: the campaign's budget (its spend row's, else its spec's) and its spend, live. Primary keys.
REPORT_BUDGET = """
SELECT coalesce(s.budget, (c.spec ->> 'budget')::numeric) AS budget, coalesce(s.spent, 0) AS spent, s.exhausted_at
FROM campaigns c LEFT JOIN campaign_spend s ON s.campaign_id = c.id WHERE c.id = $1
"""


async def read_report(conn: asyncpg.Connection | asyncpg.Pool, row) -> CampaignReport | None:
    """The campaign's materialised report (`row`: its campaigns row), or None when never materialised."""
    totals = await conn.fetchrow(REPORT_TOTALS, row["id"])
    if totals is None:
        return None
    phases = await conn.fetch(REPORT_PHASES, row["id"])
    days = await conn.fetch(REPORT_DAYS, row["id"])
    funnel = await conn.fetch(REPORT_FUNNEL, row["id"])
    spend = await conn.fetchrow(REPORT_BUDGET, row["id"])
    return CampaignReport(
        workflow_id=row["workflow_id"], campaign_id=row["campaign_ref"], shop_id=row["shop_id"], kind=row["kind"],
        state=row["state"], refreshed_at=totals["refreshed_at"], attributed=totals["attributed"],
        totals=Figures.of(totals),
        phases=[
            PhaseReport(**Figures.of(p).model_dump(), phase=p["phase"], name=p["name"], first_day=p["first_day"],
                        last_day=p["last_day"], states=p["states"])
            for p in phases
        ],
        trend=[TrendDay(**Figures.of(d).model_dump(), phase=d["phase"], day=d["day"]) for d in days],
        funnel=Funnel.of(funnel, {p["phase"]: p["name"] for p in phases}),
        budget=BudgetReport(budget=spend["budget"], spent=spend["spent"], left=max(spend["budget"] - spend["spent"], 0),
                            exhausted=spend["exhausted_at"] is not None, exhausted_at=spend["exhausted_at"])
        if spend is not None and spend["budget"] is not None else None,
    )  # fmt: skip


# ------------------------------------------------------------------ per-buyer detail

# Filters shared by the page and the CSV: phase ($2), states ($3), reason ($4). The page rides the ledger's
# primary key (campaign_id, phase, consumer_id, day, channel) from the cursor ($5..$8) and stops after
# $9 rows; a state filter is checked on the rows of that range (a page of failures among 1M sent reads
# the campaign's range once: about 0.3 s at the bench shop, docs/benchmarks.md).
_FILTERS = """
    d.campaign_id = $1 AND ($2::smallint IS NULL OR d.phase = $2)
    AND ($3::text[] IS NULL OR d.state = ANY($3::text[])) AND ($4::text IS NULL OR d.reason = $4)
"""
# The delivered text: the outbox batch the delivery's provider_ref names ('outbox:<id>', channels/outbox.py)
# and the recipient's own body in it (bodies, parallel to consumer_ids) or the batch's one body.
RECIPIENTS_PAGE = f"""
WITH page AS MATERIALIZED (
    SELECT d.phase, d.consumer_id, d.day, d.channel, d.state, d.reason, d.decided_at, d.cost, d.provider_ref
    FROM deliveries d
    WHERE {_FILTERS} AND (d.phase, d.consumer_id, d.day, d.channel) > ($5::smallint, $6::bigint, $7::date, $8::text)
    ORDER BY d.phase, d.consumer_id, d.day, d.channel
    LIMIT $9
), att AS (
    SELECT a.phase, a.consumer_id, count(*)::int AS orders, sum(a.revenue) AS revenue
    FROM attributions a
    WHERE a.campaign_id = $1 AND a.consumer_id IN (SELECT consumer_id FROM page)
    GROUP BY a.phase, a.consumer_id
)
SELECT p.phase, p.consumer_id, p.day, p.channel, p.state, p.reason, p.decided_at, p.cost,
       (SELECT coalesce(u.body, o.body)
        FROM outbox o CROSS JOIN LATERAL unnest(o.consumer_ids, o.bodies) AS u(consumer_id, body)
        WHERE p.provider_ref LIKE 'outbox:%' AND o.id = substr(p.provider_ref, 8)::bigint AND u.consumer_id = p.consumer_id
        LIMIT 1) AS content,
       coalesce(att.orders, 0) AS orders, coalesce(att.revenue, 0) AS revenue
FROM page p LEFT JOIN att ON att.phase = p.phase AND att.consumer_id = p.consumer_id
ORDER BY p.phase, p.consumer_id, p.day, p.channel
"""
# The same rows, all of them, for the CSV: the outbox batches of the campaign unnested once each and
# hash-joined (a batch holds thousands of recipients), the attributions aggregated once.
RECIPIENTS_ALL = f"""
WITH msg AS (
    SELECT o.id, u.consumer_id, coalesce(u.body, o.body) AS content
    FROM outbox o CROSS JOIN LATERAL unnest(o.consumer_ids, o.bodies) AS u(consumer_id, body)
    WHERE o.campaign_id = $1
), att AS (
    SELECT phase, consumer_id, count(*)::int AS orders, sum(revenue) AS revenue
    FROM attributions WHERE campaign_id = $1 GROUP BY phase, consumer_id
)
SELECT d.phase, d.consumer_id, d.day, d.channel, d.state, d.reason, d.decided_at, d.cost, msg.content,
       coalesce(att.orders, 0) AS orders, coalesce(att.revenue, 0) AS revenue
FROM deliveries d
LEFT JOIN msg ON d.provider_ref LIKE 'outbox:%' AND msg.id = substr(d.provider_ref, 8)::bigint
             AND msg.consumer_id = d.consumer_id
LEFT JOIN att ON att.phase = d.phase AND att.consumer_id = d.consumer_id
WHERE {_FILTERS}
ORDER BY d.phase, d.consumer_id, d.day, d.channel
"""
_CURSOR_SHAPE = (int, int, date, str)
_FIRST = (-1, -1, date.min, "")
CSV_COLUMNS = ("phase", "consumer_id", "day", "channel", "state", "reason", "decided_at", "content", "cost", "ordered",
               "orders", "revenue")  # fmt: skip


def _states(states: list[str] | None, failures: bool) -> list[str] | None:
    if failures:
        return sorted(set(FAILURE_STATES) & set(states)) if states else list(FAILURE_STATES)
    return list(states) if states else None


def _recipient(r) -> Recipient:
    return Recipient(
        phase=r["phase"], consumer_id=r["consumer_id"], day=r["day"], channel=r["channel"], state=r["state"],
        reason=r["reason"], decided_at=r["decided_at"], content=r["content"], cost=r["cost"],
        ordered=r["orders"] > 0, orders=r["orders"], revenue=r["revenue"],
    )  # fmt: skip


async def recipients(
    conn: asyncpg.Connection | asyncpg.Pool, campaign_db_id: int, *, phase: int | None = None,
    states: list[str] | None = None, failures: bool = False, reason: str | None = None, after: str | None = None,
    limit: int = DEFAULT_PAGE,
) -> RecipientPage:  # fmt: skip
    """A page of the campaign's ledger decisions in (phase, buyer, day, channel) order, filtered."""
    key = decode_cursor(after, _CURSOR_SHAPE) if after else _FIRST
    rows = await conn.fetch(
        RECIPIENTS_PAGE, campaign_db_id, phase, _states(states, failures), reason, *key, limit + 1
    )
    page = rows[:limit]
    last = page[-1] if page else None
    more = len(rows) > limit
    return RecipientPage(
        recipients=[_recipient(r) for r in page],
        next=encode_cursor((last["phase"], last["consumer_id"], last["day"], last["channel"])) if more else None,
    )


async def recipients_csv(
    conn: asyncpg.Connection, campaign_db_id: int, *, phase: int | None = None, states: list[str] | None = None,
    failures: bool = False, reason: str | None = None, batch: int = 5_000,
) -> AsyncIterator[str]:  # fmt: skip
    """The filtered ledger decisions as CSV text, a header then batches of rows, read through a cursor
    (the connection must stay with the caller until the iterator ends; it opens its own transaction)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    yield _take(out)
    async with conn.transaction(readonly=True):
        await conn.execute(SETTINGS)  # as the refresh: whole-campaign joins, no JIT
        cur = conn.cursor(RECIPIENTS_ALL, campaign_db_id, phase, _states(states, failures), reason, prefetch=batch)
        n = 0
        async for r in cur:
            rec = _recipient(r)
            writer.writerow((
                rec.phase, rec.consumer_id, rec.day.isoformat(), rec.channel, rec.state, rec.reason or "",
                rec.decided_at.isoformat(), rec.content or "", "" if rec.cost is None else rec.cost,
                "yes" if rec.ordered else "no", rec.orders, rec.revenue,
            ))  # fmt: skip
            n += 1
            if n % batch == 0:
                yield _take(out)
    if out.tell():
        yield _take(out)


def _take(buf: io.StringIO) -> str:
    text = buf.getvalue()
    buf.seek(0)
    buf.truncate()
    return text


# ------------------------------------------------------------------ the dashboard

SHOP_ZONE = "SELECT timezone FROM shops WHERE shop_id = $1"
# R-REP-2 totals: the shop's materialised campaign rows (report_campaigns_shop).
DASHBOARD_TOTALS = """
SELECT count(*)::int AS campaigns, coalesce(sum(sent), 0)::int AS sent, coalesce(sum(failed), 0)::int AS failed,
       coalesce(sum(reached), 0)::int AS reached, coalesce(sum(replied), 0)::int AS replied,
       coalesce(sum(converted), 0)::int AS converted, coalesce(sum(orders), 0)::int AS orders,
       coalesce(sum(revenue), 0) AS revenue, coalesce(sum(cost), 0) AS cost
FROM report_campaigns WHERE shop_id = $1
"""
_DAY_SUMS = """coalesce(sum(d.sent), 0)::int AS sent, coalesce(sum(d.failed), 0)::int AS failed,
       coalesce(sum(d.reached), 0)::int AS reached, coalesce(sum(d.replied), 0)::int AS replied,
       coalesce(sum(d.converted), 0)::int AS converted, coalesce(sum(d.orders), 0)::int AS orders,
       coalesce(sum(d.revenue), 0) AS revenue, coalesce(sum(d.cost), 0) AS cost"""
# Today and yesterday (the shop's days $2, $3): two days of report_days_shop_day.
DASHBOARD_DAYS = f"""
SELECT x.day, {_DAY_SUMS}
FROM unnest($2::date[]) AS x(day) LEFT JOIN report_days d ON d.shop_id = $1 AND d.day = x.day
GROUP BY x.day
"""
# The monthly split by phase name from month $2 on: the shop's range of report_days_shop_day, each day's
# phase name by the phase row's primary key.
DASHBOARD_MONTHS = f"""
SELECT date_trunc('month', d.day)::date AS month, p.name AS phase_name, {_DAY_SUMS}
FROM report_days d JOIN report_phases p ON p.campaign_id = d.campaign_id AND p.phase = d.phase
WHERE d.shop_id = $1 AND d.day >= $2
GROUP BY 1, 2 ORDER BY 1, 2
"""


async def dashboard(
    conn: asyncpg.Connection | asyncpg.Pool, shop_id: str, *, now: datetime, months: int = 12
) -> Dashboard:
    """R-REP-2 for the shop: totals over its materialised campaign reports, today against yesterday on the
    shop's calendar, and the last `months` months split by phase name."""
    zone = await conn.fetchval(SHOP_ZONE, shop_id)
    today = now.astimezone(ZoneInfo(zone)).date() if zone else now.date()
    yesterday = today - timedelta(days=1)
    totals = await conn.fetchrow(DASHBOARD_TOTALS, shop_id)
    days = {r["day"]: r for r in await conn.fetch(DASHBOARD_DAYS, shop_id, [today, yesterday])}
    first_month = _month_start(today, months - 1)
    month_rows = await conn.fetch(DASHBOARD_MONTHS, shop_id, first_month)
    return Dashboard(
        shop_id=shop_id, today=today, campaigns=totals["campaigns"], totals=Figures.of(totals),
        today_figures=Figures.of(days[today]), yesterday_figures=Figures.of(days[yesterday]),
        change=change(days[today], days[yesterday]),
        months=[MonthPhase(**Figures.of(m).model_dump(), month=m["month"], phase_name=m["phase_name"]) for m in month_rows],
    )  # fmt: skip


def _month_start(day: date, back: int) -> date:
    """The first day of the month `back` months before `day`'s."""
    index = day.year * 12 + day.month - 1 - back
    return date(index // 12, index % 12 + 1, 1)
