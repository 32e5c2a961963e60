"""`sluice load KIND FILE`: a whole file of one kind, CSV (with a header) or JSON Lines, in one transaction.

Each row is validated as the API validates a record (ingest/records.py), then the file goes
through the same set-based checks and upsert as API batches (ingest/kinds.py), CHUNK rows at a
time, all in one transaction: nothing of the file is written unless all of its valid rows are.
While PostgreSQL COPYs and upserts one chunk, a thread reads and validates the next (the two
take about as long: doing them one after the other would take twice as long). Repeated keys:
within a chunk, as within a batch (identical: duplicate; different: refused); in a later chunk,
a different row updates the earlier one, as a later batch would. Refused rows go to
FILE.refused.jsonl, one JSON object per reason: {"line", "field", "rule", "message"}, with the
row as read when Python refused it.

CSV cells are text: a cell is decoded by its field's type as pydantic's lax mode decodes text
("12" an integer, "true"/"false" (or 1/0, yes/no) a boolean), a list (tags) is split on "|", and
an empty cell is a field left out (its default). JSON Lines are JSON, validated strictly like
the API's records.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from sluice.ingest.kinds import STAGE, Kind, Outcome, Refusal, apply, create_stage, stage, stage_tuple, validate
from sluice.workers.metrics import count_load_rows

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
LIST_SEPARATOR = "|"
CHUNK = 50_000  # rows per COPY + upsert; progress is printed per chunk


@dataclass
class FileOutcome:
    kind: str
    rows: int = 0  # data rows read
    outcome: Outcome = field(default_factory=Outcome)
    seconds: float = 0.0
    refused_path: Path | None = None

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def file_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path.name}: a load file is .csv (with a header) or .jsonl")
    return fmt


def refused_path_for(path: Path) -> Path:
    return path.with_name(path.name + ".refused.jsonl")


def read_rows(path: Path, kind: Kind) -> Iterator[tuple[int, object]]:
    """(line, raw record) per data row; a row that is not even a record comes as an error text."""
    if file_format(path) == "csv":
        lists = {c for c, t in kind.columns if t.endswith("[]")}
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return
            header = [h.strip() for h in header]
            width = len(header)
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                if len(row) != width:
                    yield line, f"the row has {len(row)} cells, the header {width}"
                    continue
                raw = {h: v for h, v in zip(header, row, strict=True) if v != ""}
                for name in lists & raw.keys():
                    raw[name] = raw[name].split(LIST_SEPARATOR)
                yield line, raw
    else:
        with path.open(encoding="utf-8") as f:
            for line, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    yield line, json.loads(text)
                except ValueError:
                    yield line, "the line is not valid JSON"


async def load_file(conn: asyncpg.Connection, kind: Kind, shop_id: str, path: Path, *,
                    progress: Callable[[str], None] | None = None, refused_path: Path | None = None,
                    chunk: int = CHUNK) -> FileOutcome:
    """Load the whole file into the shop in one transaction (module docstring). Refusals carry file lines."""
    result = FileOutcome(kind.name)
    refused_path = refused_path or refused_path_for(path)
    text = file_format(path) == "csv"
    t0 = time.perf_counter()
    total = Outcome()  # the database's answers; python_refused: what validation refused (read in a thread)
    python_refused: list[Refusal] = []
    loop = asyncio.get_running_loop()

    with refused_path.open("w", encoding="utf-8") as bad:

        def note(refusals: list[Refusal], raw) -> None:
            for r in refusals:
                entry = {"line": r.row, "field": r.field, "rule": r.rule, "message": r.message}
                if raw is not None:
                    entry["record"] = raw
                bad.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")

        def valid_rows():
            for line, raw in read_rows(path, kind):
                result.rows += 1
                if isinstance(raw, str):
                    record, why = None, [Refusal(line, "record", "schema:json_invalid", raw)]
                else:
                    record, why = validate(kind, line, raw, shop_id, text=text)
                if record is None:
                    python_refused.extend(why)
                    note(why, raw)
                else:
                    yield stage_tuple(kind, line, record, shop_id)

        rows = valid_rows()

        def take() -> list[tuple]:
            return list(itertools.islice(rows, chunk))

        async with conn.transaction():
            await create_stage(conn, kind)
            upcoming = loop.run_in_executor(None, take)
            while batch := await upcoming:
                upcoming = loop.run_in_executor(None, take)  # the next chunk is read while this one is written
                await conn.execute(f"TRUNCATE {STAGE}")
                await stage(conn, kind, batch)
                total.add(await apply(conn, kind, shop_id))
                if progress:
                    elapsed = time.perf_counter() - t0
                    refused = total.refused_rows + len({r.row for r in python_refused})
                    progress(f"{result.rows:,} rows read, {total.accepted:,} accepted, {total.duplicate:,} duplicate, "
                             f"{refused:,} refused ({result.rows / elapsed:,.0f} rows/s)")
        note(total.refused, None)
    total.refused = sorted(python_refused + total.refused, key=lambda r: r.row)
    count_load_rows(kind.name, accepted=total.accepted, duplicate=total.duplicate, refused=total.refused_rows)
    result.outcome = total
    result.seconds = time.perf_counter() - t0
    result.refused_path = refused_path
    return result
