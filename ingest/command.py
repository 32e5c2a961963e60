"""`sluice load KIND FILE --shop SHOP`: bulk load (registered in api/cli.py with one line)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from sluice.ingest.kinds import KINDS

# Exit codes: 0 all rows accepted or duplicate; 1 some rows refused (the rest is written); 2 bad arguments.
EXIT_REFUSED = 1


def load_command(
    kind: Annotated[str, typer.Argument(help=f"one of: {', '.join(KINDS)}")],
    file: Annotated[Path, typer.Argument(help="a .csv (with a header) or .jsonl file", exists=True, dir_okay=False)],
    shop: Annotated[str, typer.Option(help="the shop the records belong to")],
) -> None:
    """Load a file of one kind into a shop (COPY, then the API's idempotent upsert; docs/data.md)."""
    from sluice.api.cli import _fail, _settings, console
    from sluice.ingest.files import file_format, load_file
    from sluice.schemas.campaign import ID_PATTERN

    if kind not in KINDS:
        _fail(f"unknown kind {kind!r}: one of {', '.join(KINDS)}", 2)
    if not re.fullmatch(ID_PATTERN, shop):
        _fail(f"invalid --shop {shop!r}: letters, digits, '_' and '-', 1 to 64", 2)
    try:
        file_format(file)
    except ValueError as exc:
        _fail(str(exc), 2)
    settings = _settings()
    if not settings.database_url:
        _fail("DATABASE_URL is not set and no `sluice dev` is running")

    async def run():
        import asyncpg

        conn = await asyncpg.connect(settings.database_url)
        try:
            if kind != "shops" and not await conn.fetchval("SELECT true FROM shops WHERE shop_id = $1", shop):
                return None
            return await load_file(conn, KINDS[kind], shop, file, progress=lambda m: console.print(escape(m)))
        finally:
            await conn.close()

    result = asyncio.run(run())
    if result is None:
        _fail(f"unknown shop {shop!r}: load its `shops` record first (R-API-SHOP)", 2)
    out = result.outcome
    console.print(
        f"{kind} -> {shop}: {result.rows:,} rows in {result.seconds:.1f} s ({result.rows_per_s:,.0f} rows/s): "
        f"accepted {out.accepted:,} (inserted {out.inserted:,}, updated {out.updated:,}), "
        f"duplicate {out.duplicate:,}, refused {out.refused_rows:,}"
    )
    if out.refused:
        console.print(f"refused rows and their reasons: {escape(str(result.refused_path))}")
        raise typer.Exit(EXIT_REFUSED)
    result.refused_path.unlink(missing_ok=True)
