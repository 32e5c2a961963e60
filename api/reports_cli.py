"""`sluice report CAMPAIGN` and `sluice campaigns`: reports and the campaign list from Postgres (R-REP-1).

The operator's view: straight from DATABASE_URL (or a running `sluice dev`),
any shop's campaigns, no Temporal needed. `-o json` prints the very JSON the
API answers (GET /campaigns/{id}/report, GET /campaigns).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Annotated

import typer
from rich.table import Table
from sluice.reports.definitions import DEFAULT_PAGE, MAX_PAGE

Output = Annotated[str, typer.Option("-o", "--output", help="table or json")]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _money(v: Decimal) -> str:
    return f"{v:,.2f}"


def _db(fn):
    """Run fn(conn) against the settings' database; exits with a message when none is configured."""
    from sluice.api.cli import _fail, _settings
    from sluice.db.pool import create_pool

    settings = _settings()
    if not settings.database_url:
        _fail("DATABASE_URL is not set and no `sluice dev` is running")

    async def run():
        pool = await create_pool(settings.database_url, size=1)  # the pool's codecs (jsonb) and settings
        try:
            async with pool.acquire() as conn:
                return await fn(conn, settings)
        finally:
            await pool.close()

    return asyncio.run(run())


def report(
    workflow_id: Annotated[str, typer.Argument(help="the campaign's workflow id, {shop_id}.{campaign_id}")],
    refresh: Annotated[bool, typer.Option("--refresh", help="attribute and materialise the report first")] = False,
    output: Output = "table",
) -> None:
    """A campaign's report: per phase sent, reached, inquiry and conversion rates, revenue, cost, ROI; the trend;
    the funnel (R-ED-5) for a kind with one."""
    from sluice.api.cli import _fail, console
    from sluice.reports import queries
    from sluice.reports.refresh import refresh as materialise

    async def fetch(conn, _settings):
        row = await queries.campaign(conn, None, workflow_id)
        if row is None:
            return None
        found = None if refresh else await queries.read_report(conn, row)
        if found is None:
            await materialise(conn, row["id"])
            found = await queries.read_report(conn, row)
        return found

    rep = _db(fetch)
    if rep is None:
        _fail(f"campaign {workflow_id} not found")
    if output == "json":
        typer.echo(rep.model_dump_json(indent=2))
        return
    t = Table(title=f"{rep.workflow_id} ({rep.kind}, {rep.state}); refreshed {rep.refreshed_at:%Y-%m-%d %H:%M:%S} UTC")
    for col in ("phase", "days", "sent", "failed", "reached", "replied", "inquiry", "converted", "conversion", "orders",
                "revenue", "cost", "ROI"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("phase", "days") else "right")
    for p in [*rep.phases, None]:
        f = p or rep.totals
        days = f"{p.first_day} .. {p.last_day}" if p and p.first_day else ""
        t.add_row(p.name if p else "[bold]campaign[/]", days, f"{f.sent:,}", f"{f.failed:,}", f"{f.reached:,}",
                  f"{f.replied:,}", _pct(f.inquiry_rate), f"{f.converted:,}", _pct(f.conversion_rate), f"{f.orders:,}",
                  _money(f.revenue), _money(f.cost), _pct(f.roi))  # fmt: skip
    console.print(t)
    if rep.budget:  # R-COST-BUDGET
        b = rep.budget
        console.print(f"budget {_money(b.budget)}: spent {_money(b.spent)}, left {_money(b.left)}"
                      + (f"; exhausted at {b.exhausted_at:%Y-%m-%d %H:%M:%S} UTC" if b.exhausted else ""))
    trend = Table(title="daily trend (reached: first reached that day)")
    for col in ("phase", "day", "sent", "failed", "reached", "replied", "converted", "orders", "revenue", "cost"):
        trend.add_column(col, justify="left" if col in ("phase", "day") else "right")
    names = {p.phase: p.name for p in rep.phases}
    for d in rep.trend:
        trend.add_row(names.get(d.phase, str(d.phase)), str(d.day), f"{d.sent:,}", f"{d.failed:,}", f"{d.reached:,}",
                      f"{d.replied:,}", f"{d.converted:,}", f"{d.orders:,}", _money(d.revenue), _money(d.cost))  # fmt: skip
    console.print(trend)
    if rep.funnel:
        ft = Table(title="funnel (R-ED-5; conversion: over the stage before)")
        ft.add_column("stage")
        for col in ("campaign", *(f"{c.name} ({c.channel or '-'})" for c in rep.funnel.channels)):
            ft.add_column(col, justify="right")
            ft.add_column("conversion", justify="right")
        for i, s in enumerate(rep.funnel.stages):
            cells = [(s.count, s.conversion), *((c.stages[i].count, c.stages[i].conversion) for c in rep.funnel.channels)]
            ft.add_row(s.stage, *(x for n, conv in cells for x in (f"{n:,}", _pct(conv))))
        console.print(ft)
    failures = [(p.name, k, n) for p in rep.phases for k, n in p.states.items() if ":" in k]
    if failures:
        ft = Table(title="decisions with a reason (GET /campaigns/{id}/recipients?failures=true)")
        for col in ("phase", "state:reason", "count"):
            ft.add_column(col, justify="right" if col == "count" else "left")
        for name, k, n in failures:
            ft.add_row(name, k, f"{n:,}")
        console.print(ft)


def campaigns(
    shop: Annotated[str | None, typer.Option(help="only this shop's campaigns")] = None,
    state: Annotated[str | None, typer.Option(help="only campaigns in this state")] = None,
    kind: Annotated[str | None, typer.Option(help="only campaigns of this kind (K-PHASED, ...)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_PAGE)] = DEFAULT_PAGE,
    after: Annotated[str | None, typer.Option(help="the `next` cursor of the previous page")] = None,
    output: Output = "table",
) -> None:
    """The campaigns, newest first (GET /campaigns for one shop)."""
    from sluice.api.cli import _fail, console
    from sluice.reports import queries
    from sluice.schemas.rules import RuleViolation

    async def fetch(conn, settings):
        return await queries.list_campaigns(conn, shop, state=state, kind=kind, after=after, limit=limit,
                                            base_url=settings.api_base_url)  # fmt: skip

    try:
        page = _db(fetch)
    except RuleViolation as exc:
        _fail(f"invalid --{exc.field}: {exc.message}", 2)
    if output == "json":
        typer.echo(page.model_dump_json(indent=2))
        return
    t = Table(title="campaigns")
    for col in ("workflow id", "kind", "state", "created", "updated"):
        t.add_column(col)
    for c in page.campaigns:
        t.add_row(c.workflow_id, c.kind, c.state, f"{c.created_at:%Y-%m-%d %H:%M}", f"{c.updated_at:%Y-%m-%d %H:%M}")
    console.print(t)
    if page.next:
        console.print(f"more: --after {page.next}")


def register(app: typer.Typer) -> None:
    app.command(name="report")(report)
    app.command(name="campaigns")(campaigns)
