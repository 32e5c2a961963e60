"""`python -m bench load`: bulk loading (`sluice load`) against a plain COPY of the same file, in one run.

On the bench shop (db/seed.py, `--customers N`, default 1,000,000: ~7 events each), the shop's
customers and its behaviour events are written out as CSV files (events numbered `e<n>` for their
`event_id`). Then, into two fresh shops of the same database, one after the other:

(a) plain COPY: `COPY shop_customers / behaviour_events FROM STDIN (FORMAT csv, HEADER)` of each
    file, the shop filled in by a column default: no validation, no idempotence, what a bare
    dump into the tables costs (their indexes included);
(b) `sluice load`'s path (ingest/files.py `load_file`, in process): every row validated, staged
    with COPY, checked (events: the customer is the shop's) and upserted on its key.

Each figure is rows of the file per second of wall time; the goal is (b) >= 50% of (a). Figures
go to bench/results.json under `load` (the other keys stay) and to their own block of
docs/benchmarks.md.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from bench.stack import ROOT, Postgres, machine, record_results, replace_docs_block, say

RESULTS_KEY = "load"
GOAL_RATIO = 0.5
SOURCE_SHOP, COPY_SHOP, LOAD_SHOP = "bench-load-src", "bench-load-copy", "bench-load-ingest"
# Every shop_customers field a customer record has, but tags (a COPY file writes arrays as {a,b}, sluice load
# reads a|b; the seed's customers have none, so both take the column's default).
CUSTOMER_COLUMNS = ["consumer_id", "nick", "phone", "email", "chat_id", "phone_valid", "email_valid", "locale", "timezone",
                    "is_member", "is_fan", "blacklisted", "deleted", "unsub_chat", "unsub_sms", "unsub_email",
                    "unsub_inbox", "created_at"]  # fmt: skip
EVENT_COLUMNS = ["event_id", "consumer_id", "kind", "product_id", "occurred_at"]
START = "<!-- bench:load:start (written by `python -m bench load`) -->"
END = "<!-- bench:load:end -->"


async def _export(conn, folder: Path) -> dict[str, Path]:
    files = {"customers": folder / "load-customers.csv", "events": folder / "load-events.csv"}
    queries = {
        "customers": f"SELECT {', '.join(CUSTOMER_COLUMNS)} FROM shop_customers WHERE shop_id = '{SOURCE_SHOP}'",
        "events": f"SELECT 'e' || row_number() OVER () AS event_id, consumer_id, kind, product_id, occurred_at"
                  f" FROM behaviour_events WHERE shop_id = '{SOURCE_SHOP}'",
    }  # fmt: skip
    await conn.execute("SET TimeZone = 'UTC'")
    for name, path in files.items():
        with path.open("wb") as f:
            await conn.copy_from_query(queries[name], output=f, format="csv", header=True)
    return files


async def _plain_copy(conn, table: str, columns: list[str], path: Path) -> float:
    t0 = time.perf_counter()
    async with conn.transaction():
        await conn.execute(f"ALTER TABLE {table} ALTER shop_id SET DEFAULT '{COPY_SHOP}'")
        with path.open("rb") as f:
            await conn.copy_to_table(table, source=f, columns=columns, format="csv", header=True)
        await conn.execute(f"ALTER TABLE {table} ALTER shop_id DROP DEFAULT")
    return time.perf_counter() - t0


async def run_load(customers: int, data_dir: Path, admin_dsn: str | None, results_path: Path | None,
                   docs_path: Path | None, reuse: bool, label: str = "") -> dict:
    from sluice.db.seed import seed_shop
    from sluice.ingest.files import load_file
    from sluice.ingest.kinds import KINDS

    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    host = machine()
    pg = Postgres(data_dir, admin_dsn)
    try:
        await pg.apply_tuning()
        version = await pg.version()
        dsn = await pg.database(f"bench_load_{customers}", fresh=not reuse)
        conn = await asyncpg.connect(dsn)
        try:
            if not await conn.fetchval("SELECT count(*) FROM shop_customers WHERE shop_id = $1", SOURCE_SHOP):
                say(f"seeding {customers:,} customers ...")
                await seed_shop(dsn, shop_id=SOURCE_SHOP, customers=customers)
            for shop in (COPY_SHOP, LOAD_SHOP):
                for table in ("behaviour_events", "shop_customers"):
                    await conn.execute(f"DELETE FROM {table} WHERE shop_id = $1", shop)
                await conn.execute("INSERT INTO shops (shop_id, name, timezone, industry) VALUES ($1, $1, 'Asia/Shanghai',"
                                   " 'beauty') ON CONFLICT DO NOTHING", shop)
            await conn.execute("VACUUM ANALYZE shop_customers, behaviour_events")
            files = await _export(conn, data_dir)
            rows = {k: sum(1 for _ in p.open()) - 1 for k, p in files.items()}
            say(f"files: {rows['customers']:,} customers, {rows['events']:,} events")
            copy_s = {
                "customers": await _plain_copy(conn, "shop_customers", CUSTOMER_COLUMNS, files["customers"]),
                "events": await _plain_copy(conn, "behaviour_events", EVENT_COLUMNS, files["events"]),
            }
            say(f"(a) plain COPY: {copy_s}")
            await conn.execute("VACUUM ANALYZE shop_customers, behaviour_events")
            loaded = {}
            for kind in ("customers", "events"):
                r = await load_file(conn, KINDS[kind], LOAD_SHOP, files[kind], progress=say)
                o = r.outcome
                loaded[kind] = {"seconds": round(r.seconds, 2), "inserted": o.inserted, "updated": o.updated,
                                "duplicate": o.duplicate, "refused": o.refused_rows}  # fmt: skip
            say(f"(b) sluice load: {loaded}")
        finally:
            await conn.close()
    finally:
        pg.close()

    total_rows = sum(rows.values())
    copy_total = sum(copy_s.values())
    load_total = sum(v["seconds"] for v in loaded.values())
    per_kind = {
        k: {"rows": rows[k], "copy_rows_per_s": round(rows[k] / copy_s[k]),
            "load_rows_per_s": round(rows[k] / loaded[k]["seconds"]), "ratio": round(copy_s[k] / loaded[k]["seconds"], 3),
            "load": loaded[k]}
        for k in rows
    }  # fmt: skip
    results = {
        "customers": rows["customers"],
        "events": rows["events"],
        "copy_rows_per_s": round(total_rows / copy_total),
        "load_rows_per_s": round(total_rows / load_total),
        "ratio": round(copy_total / load_total, 3),
        "per_kind": per_kind,
        "goal": f"load rows/s >= {GOAL_RATIO:.0%} of plain COPY",
        "goal_met": copy_total / load_total >= GOAL_RATIO,
        "label": label,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": host | {"postgres": version},
    }
    say(f"load {results['load_rows_per_s']:,} rows/s against plain COPY {results['copy_rows_per_s']:,} rows/s: "
        f"ratio {results['ratio']} [{'ok' if results['goal_met'] else 'MISSED'}: >= {GOAL_RATIO}]")
    if results_path:
        record_results(results_path, RESULTS_KEY, results)
        say(f"wrote {results_path} [{RESULTS_KEY!r}]")
    if docs_path:
        update_docs(docs_path, results)
    return results


def table(r: dict) -> str:
    m = r["machine"]
    lines = [
        START,
        f"Last run: {r['measured_at']} {('(' + r['label'] + ')') if r.get('label') else ''}".rstrip(),
        "",
        f"Machine: {m['cpus']} cores ({m['cpu_model']}), {m['ram_gb']} GB RAM; PostgreSQL {m['postgres']}; "
        f"load average before the run: {m['load_avg_before']}.",
        "",
        "| file | rows | plain COPY rows/s | sluice load rows/s | ratio | inserted / duplicate / refused |",
        "|---|---|---|---|---|---|",
    ]
    for kind, k in r["per_kind"].items():
        lo = k["load"]
        lines.append(f"| {kind} | {k['rows']:,} | {k['copy_rows_per_s']:,} | {k['load_rows_per_s']:,} | {k['ratio']} | "
                     f"{lo['inserted']:,} / {lo['duplicate']:,} / {lo['refused']:,} |")
    lines += [f"| both | {r['customers'] + r['events']:,} | {r['copy_rows_per_s']:,} | {r['load_rows_per_s']:,} | "
              f"{r['ratio']} (goal >= {GOAL_RATIO}: {'met' if r['goal_met'] else 'MISSED'}) | |", END]
    return "\n".join(lines)


def update_docs(path: Path, results: dict) -> None:
    replace_docs_block(path, START, END, table(results), "## Loading data (`python -m bench load`)")


def main(argv: list[str]) -> int:
    import argparse
    import asyncio

    p = argparse.ArgumentParser(prog="python -m bench load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--data-dir", type=Path, default=ROOT / ".sluice" / "bench")
    p.add_argument("--admin-dsn", default=None, help="use this PostgreSQL server instead of the embedded one")
    p.add_argument("--reuse", action="store_true", help="keep the seeded source shop of an earlier run")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results.json")
    p.add_argument("--no-results", dest="results", action="store_const", const=None)
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--no-docs", dest="docs", action="store_const", const=None)
    p.add_argument("--label", default="")
    a = p.parse_args(argv)
    r = asyncio.run(run_load(a.customers, a.data_dir, a.admin_dsn, a.results, a.docs, a.reuse, a.label))
    return 0 if r["goal_met"] else 1
