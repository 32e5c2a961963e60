"""Smoke test of the benchmark (bench/): it runs, prints and writes its figures, and the ledger is exact.

Never a timed assertion: the figures only have to be there and be sane. The
full-size run is `python -m bench` (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest
from sluice.db.embedded import dsn_with_database

from bench.caps import CapsConfig, run_caps
from bench.run import BenchConfig, run

pytestmark = pytest.mark.devserver

KEYS = [
    "recipients",
    "recipients_per_s",
    "naive_recipients_per_s",
    "postgres_bound_rows_per_s",
    "ratio_vs_naive",
    "ratio_vs_postgres_bound",
    "worker_peak_rss_mb",
    "history_events",
    "batch_size",
    "concurrency",
]


async def test_bench_small_run_prints_writes_and_keeps_the_ledger_exact(admin_dsn, tmp_path, capsys):
    customers = 20_000
    db_name = f"bench_smoke_{uuid.uuid4().hex[:8]}"
    cfg = BenchConfig(
        recipients=customers,
        naive_sample=200,
        naive_inflight=50,
        data_dir=tmp_path,
        admin_dsn=admin_dsn,
        results_path=tmp_path / "results.json",
        docs_path=tmp_path / "benchmarks.md",
        db_name=db_name,
        label="smoke",
        settle_s=0.5,
    )
    try:
        results = await run(cfg)
        out = capsys.readouterr().out

        written = json.loads((tmp_path / "results.json").read_text())
        for key in KEYS:
            assert key in written, key
            assert written[key] is not None, key
        assert written["recipients"] == results["recipients"]
        # Most customers are reachable on chat; the rest opted out or have no chat id.
        assert 0.8 * customers <= results["recipients"] <= customers
        assert results["recipients_per_s"] > 0
        assert results["naive_recipients_per_s"] > 0
        assert results["postgres_bound_rows_per_s"] > 0
        assert results["ratio_vs_naive"] == pytest.approx(
            results["recipients_per_s"] / results["naive_recipients_per_s"], rel=0.01
        )
        assert results["ratio_vs_postgres_bound"] == pytest.approx(
            results["recipients_per_s"] / results["postgres_bound_rows_per_s"], rel=0.01
        )
        assert 10 < results["worker_peak_rss_mb"] < 4096
        assert 0 < results["history_events"] < 10_240
        assert results["batch_size"]["chunk_size"] > 0 and results["batch_size"]["slice_size"] > 0
        assert results["concurrency"]["send_activities_per_campaign"] >= 1
        assert results["postgres_bound"]["rows"] == results["recipients"]
        for line in ("end to end", "naive", "postgres bound", "ratio vs naive", "worker peak RSS", "history events"):
            assert line in out, line
        docs = (tmp_path / "benchmarks.md").read_text()
        assert "| end to end" in docs and "Machine:" in docs

        # The ledger: exactly one delivery per recipient, all sent, one outbox row each.
        conn = await asyncpg.connect(dsn_with_database(admin_dsn, db_name))
        try:
            cid = results["phase_day"]["campaign_db_id"]
            row = await conn.fetchrow(
                """SELECT count(*) AS rows, count(DISTINCT consumer_id) AS consumers,
                          count(*) FILTER (WHERE state = 'sent') AS sent
                   FROM deliveries WHERE campaign_id = $1""",
                cid,
            )
            assert row["rows"] == row["consumers"] == row["sent"] == results["recipients"]
            assert (
                await conn.fetchval(
                    """SELECT count(*) FROM audience_snapshots s WHERE s.campaign_id = $1 AND (
                       SELECT count(*) FROM deliveries d WHERE d.campaign_id = s.campaign_id AND d.phase = s.phase
                       AND d.day = s.day AND d.consumer_id = s.consumer_id) <> 1""",
                    cid,
                )
                == 0
            )
            messages = await conn.fetchval("SELECT count(*) FROM outbox_messages WHERE campaign_id = $1", cid)
            assert messages == results["recipients"]
            assert await conn.fetchval("SELECT count(*) FROM deliveries WHERE campaign_id <> $1", cid) == 0
        finally:
            await conn.close()
    finally:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        finally:
            await conn.close()


async def test_bench_caps_small_run_is_exact(admin_dsn, tmp_path, capsys):
    cfg = CapsConfig(
        consumers=12_000,
        per_campaign=10_000,
        chunk_size=1_000,
        data_dir=tmp_path,
        admin_dsn=admin_dsn,
        results_path=tmp_path / "caps.json",
        drop_db=True,
        settle_s=0.5,
    )
    result = await run_caps(cfg)
    out = capsys.readouterr().out
    assert "reservations/s" in out
    assert result["exact"], result["violations"]
    assert result["decisions"] == 8 * 10_000
    assert result["reservations_per_s"] > 0
    # Every cap bit at least once, so exactness was tested where it matters.
    for reason in ("fatigue_shop_day", "fatigue_template", "fatigue_global_day", "fatigue_global_shops"):
        assert result["by_outcome"].get(reason, 0) > 0, reason
    assert json.loads((tmp_path / "caps.json").read_text())["exact"] is True
