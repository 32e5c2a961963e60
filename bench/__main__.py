"""`python -m bench` (the phase-day benchmark), `python -m bench caps`, `python -m bench load`, `python -m bench profile FILE`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bench.stack import ROOT


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT / ".sluice" / "bench",
        help="bench data folder (embedded PostgreSQL, logs, runs.jsonl); default .sluice/bench",
    )
    p.add_argument(
        "--admin-dsn",
        default=None,
        help="use this PostgreSQL server (a database per run is created in it) instead of the embedded one",
    )
    p.add_argument(
        "--no-pg-tune",
        dest="pg_tune",
        action="store_false",
        help="leave the embedded server's max_wal_size / checkpoint_timeout at their defaults",
    )
    p.add_argument("--drop-db", action="store_true", help="drop the bench database at the end")  # fmt: skip


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="A phase day to every reachable customer of a seeded shop, end to end on the local stack, "
        "against the naive design and the Postgres bound. Subcommands: `caps` (cap reservation "
        "micro-benchmark), `profile FILE` (summarize a py-spy profile). The defaults are the best tuning "
        "found on a 2-core machine (docs/benchmarks.md); 0 for --slice-size/--chunk-size/--concurrency means "
        "the campaign's own Tuning defaults.",
    )
    p.add_argument("--recipients", type=int, default=1_000_000, help="customers seeded in the shop (default 1,000,000)")
    p.add_argument("--slice-size", type=int, default=20_000, help="recipients per send activity (Tuning.slice_size)")
    p.add_argument("--chunk-size", type=int, default=2_000, help="recipients per ledger transaction (Tuning.chunk_size)")
    p.add_argument("--concurrency", type=int, default=8, help="send activities in flight per campaign")
    p.add_argument("--pool", type=int, default=16, help="worker connection pool size (SLUICE_DB_POOL)")
    p.add_argument("--max-activities", type=int, default=16, help="worker SLUICE_MAX_ACTIVITIES")
    p.add_argument("--naive-sample", type=int, default=2_000, help="recipients of the naive run (0: skip)")
    p.add_argument("--naive-inflight", type=int, default=100, help="naive activities in flight")
    p.add_argument("--channel", default="chat", choices=["chat", "sms", "email", "inbox"])
    p.add_argument(
        "--all-reachable",
        action="store_true",
        help="seed every customer with every contact and no opt-out (recipients == customers)",
    )
    p.add_argument(
        "--reuse", action="store_true", help="reuse the database seeded by an earlier run of the same size (ledger emptied first)"
    )
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="FILE",
        help="record the worker with py-spy (raw collapsed stacks) during the phase day",
    )
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results.json", help="results file")
    p.add_argument("--no-results", dest="results", action="store_const", const=None)
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md", help="docs file to update")
    p.add_argument("--no-docs", dest="docs", action="store_const", const=None)
    p.add_argument("--skip-bound", action="store_true")
    p.add_argument("--log-level", default="INFO", help="worker log level (SLUICE_LOG_LEVEL)")
    p.add_argument(
        "--pg-shared-buffers",
        default="1GB",
        help="shared_buffers of the embedded server (restarts it when changed; initdb's default is 128MB)",
    )
    p.add_argument(
        "--pg-stats",
        action="store_true",
        help="load pg_stat_statements and print the phase day's top statements (restarts the server)",
    )
    p.add_argument("--settle-s", type=float, default=45.0,
                   help="seconds to let the machine settle after seeding, before anything is measured")  # fmt: skip
    p.add_argument("--label", default="", help="a note stored with the run (tuning experiments)")
    p.add_argument("--kind", default="K-PHASED", choices=["K-PHASED", "K-REPURCHASE"],
                   help="K-PHASED: the phase day above (default); K-REPURCHASE: the repurchase-cycle refresh, the "
                        "whole-shop preview and a whole-shop day with per-recipient text and offers, on a shop "
                        "seeded with its repurchase catalogue (bench/repurchase.py)")  # fmt: skip
    p.add_argument("--pairs", type=int, default=3,
                   help="K-REPURCHASE: run the plain day (p) and the whole-shop day (c) this many times, alternating; "
                        "(c)/(p) is the median of the pairs' ratios (the machine's speed drifts between runs)")  # fmt: skip
    p.add_argument("--workers", type=int, default=1, help="worker processes on the one task queue (scaling)")
    p.add_argument(
        "--worker-module",
        default="sluice.workers.worker",
        help="module the worker process runs (a variant of workers.worker, for comparison)",
    )
    p.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the worker process (repeatable)")  # fmt: skip
    _common(p)
    return p


def caps_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench caps", description=(__import__("bench.caps").caps.__doc__))
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--consumers", type=int, default=250_000)
    p.add_argument("--per-campaign", type=int, default=200_000)
    p.add_argument("--chunk-size", type=int, default=5_000)
    p.add_argument("--inflight", type=int, default=2, help="chunks (slices) in flight per campaign")
    p.add_argument("--pool", type=int, default=None, help="connection pool size (default campaigns x inflight)")
    p.add_argument("--mode", choices=["reserve", "slice"], default="reserve")
    p.add_argument("--provider-path", dest="handoff", action="store_false",
                   help="reserve mode: rows committed `reserved` for a provider outside the database")  # fmt: skip
    p.add_argument("--slice-size", type=int, default=20_000, help="recipients per send_slice (mode slice)")
    p.add_argument("--pg-stats", action="store_true", help="print the top statements (pg_stat_statements)")
    p.add_argument("--settle-s", type=float, default=45.0, help="seconds to settle after the setup")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "caps-results.json")
    p.add_argument("--no-results", dest="results", action="store_const", const=None)
    _common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["caps"]:
        from bench.caps import CapsConfig, run_caps

        a = caps_parser().parse_args(argv[1:])
        cfg = CapsConfig(
            consumers=a.consumers, per_campaign=a.per_campaign, chunk_size=a.chunk_size, inflight=a.inflight,
            pool_size=a.pool, mode=a.mode, handoff=a.handoff, slice_size=a.slice_size, data_dir=a.data_dir,
            admin_dsn=a.admin_dsn,
            results_path=a.results, drop_db=a.drop_db, pg_tune=a.pg_tune, pg_stats=a.pg_stats,
            settle_s=a.settle_s,
        )  # fmt: skip
        result = asyncio.run(run_caps(cfg))
        return 0 if result["exact"] else 1
    if argv[:1] == ["load"]:
        from bench.load import main as load_main

        return load_main(argv[1:])
    if argv[:1] == ["profile"]:
        from bench.profile import summarize

        if len(argv) < 2:
            print("usage: python -m bench profile FILE", file=sys.stderr)
            return 2
        print(summarize(Path(argv[1])))
        return 0
    if argv[:1] == ["run"]:
        argv = argv[1:]
    from bench.run import BenchConfig, run

    a = run_parser().parse_args(argv)
    cfg = BenchConfig(
        recipients=a.recipients, slice_size=a.slice_size, chunk_size=a.chunk_size, concurrency=a.concurrency,
        pool_size=a.pool, max_activities=a.max_activities, naive_sample=a.naive_sample,
        naive_inflight=a.naive_inflight, channel=a.channel, all_reachable=a.all_reachable, data_dir=a.data_dir,
        admin_dsn=a.admin_dsn, reuse=a.reuse, results_path=a.results, docs_path=a.docs, profile=a.profile,
        skip_naive=a.naive_sample <= 0, skip_bound=a.skip_bound, log_level=a.log_level, pg_tune=a.pg_tune,
        pg_shared_buffers=a.pg_shared_buffers, pg_stats=a.pg_stats, label=a.label, worker_module=a.worker_module,
        workers=a.workers, worker_env=dict(kv.split("=", 1) for kv in a.worker_env), drop_db=a.drop_db,
        settle_s=a.settle_s, kind=a.kind, pairs=a.pairs,
    )  # fmt: skip
    if cfg.kind == "K-REPURCHASE":
        from bench.repurchase import run_repurchase

        asyncio.run(run_repurchase(cfg))
    else:
        asyncio.run(run(cfg))
    if cfg.profile and cfg.profile.exists():
        from bench.profile import summarize

        print("\nworker profile (py-spy):\n" + summarize(cfg.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
