"""`sluice events FILE --shop SHOP`: a file of outcome events through the same path as POST /events."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from sluice.outcomes.events import MAX_BATCH, EventsAnswer
from sluice.schemas.campaign import ID_PATTERN

console = Console()
err = Console(stderr=True)
BATCH = 1_000


def read_events(path: Path) -> list[Any]:
    """A JSON array (or {"events": [...]}), or JSON lines: one event per line (always so for .jsonl)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # more than one document: JSON lines
        if data is not None:
            return data["events"] if isinstance(data, dict) and "events" in data else data
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def total(answers: list[EventsAnswer], offsets: list[int]) -> EventsAnswer:
    out = EventsAnswer()
    for answer, offset in zip(answers, offsets, strict=True):
        out.received += answer.received
        out.accepted += answer.accepted
        out.duplicate += answer.duplicate
        out.unknown_customer += answer.unknown_customer
        out.refused += answer.refused
        out.refusals += [r.model_copy(update={"index": r.index + offset}) for r in answer.refusals]
    return out


def events(
    file: Annotated[Path, typer.Argument(help="events as JSON lines (.jsonl) or a JSON array", exists=True, dir_okay=False)],
    shop: Annotated[str, typer.Option(help="the shop whose events these are")],
    output: Annotated[str, typer.Option("-o", "--output", help="table | json")] = "table",
) -> None:
    """Load outcome events (idempotent on event_id): counts accepted / duplicate / unknown_customer / refused."""
    from sluice.api.cli import _settings
    from sluice.db.pool import create_pool
    from sluice.outcomes.ingest import ingest

    if not re.fullmatch(ID_PATTERN, shop):
        err.print(f"[red]error:[/red] invalid --shop {escape(shop)!r}")
        raise typer.Exit(2)
    try:
        items = read_events(file)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError) as exc:
        err.print(f"[red]error:[/red] {escape(str(file))}: not JSON lines or a JSON array of events: {escape(str(exc))}")
        raise typer.Exit(2) from None
    if not isinstance(items, list):
        err.print("[red]error:[/red] expected a list of events")
        raise typer.Exit(2)
    settings = _settings()
    if not settings.database_url:
        err.print("[red]error:[/red] DATABASE_URL is not set and no `sluice dev` is running")
        raise typer.Exit(1)

    async def run() -> EventsAnswer:
        pool = await create_pool(settings.database_url, size=2)
        try:
            if not await pool.fetchval("SELECT EXISTS (SELECT 1 FROM shops WHERE shop_id = $1)", shop):
                err.print(f"[red]error:[/red] unknown shop {escape(shop)!r}")
                raise typer.Exit(2)
            size = min(BATCH, MAX_BATCH)
            offsets = list(range(0, len(items), size))
            return total([await ingest(pool, shop, items[o:o + size]) for o in offsets], offsets)
        finally:
            await pool.close()

    answer = asyncio.run(run())
    if output == "json":
        print(answer.model_dump_json(indent=2))
    else:
        console.print(f"received {answer.received:,}: accepted {answer.accepted:,}, duplicate {answer.duplicate:,}, "
                      f"unknown customer {answer.unknown_customer:,}, refused {answer.refused:,}")  # fmt: skip
        for r in answer.refusals[:20]:
            console.print(f"  #{r.index} {escape(r.event_id or '-')}: {escape(r.field)}: {r.rule}: {escape(r.message)}")
        if answer.refused > 20:
            console.print(f"  ... and {answer.refused - 20:,} more (-o json lists all)")
    if answer.refused:
        raise typer.Exit(2)
