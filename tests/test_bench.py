"""Smoke test of the benchmark (bench/): it runs, prints and writes its figures, and the ledger is exact.

Never a timed assertion: the figures only have to be there and be sane. The
full-size run is `python -m bench` (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

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


async def test_bench_repurchase_small_run_measures_the_three_figures(admin_dsn, tmp_path, capsys):
    from bench.repurchase import run_repurchase
    from bench.run import REPURCHASE_RESULTS_KEY

    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps({"recipients_per_s": 1.0}))  # the K-PHASED figures stay
    cfg = BenchConfig(
        recipients=3_000,
        kind="K-REPURCHASE",
        data_dir=tmp_path,
        admin_dsn=admin_dsn,
        results_path=results_path,
        docs_path=tmp_path / "benchmarks.md",
        db_name=f"bench_rp_smoke_{uuid.uuid4().hex[:8]}",
        drop_db=True,
        settle_s=0.5,
        pairs=2,
    )
    r = await run_repurchase(cfg)
    out = capsys.readouterr().out
    written = json.loads(results_path.read_text())
    assert written["recipients_per_s"] == 1.0
    assert written[REPURCHASE_RESULTS_KEY]["recipients"] == r["recipients"]
    for line in ("(a) repurchase-cycle refresh", "(b) preview of the whole shop", "(c) whole-shop day"):
        assert line in out, line
    assert "| (c) whole-shop day end to end" in (tmp_path / "benchmarks.md").read_text()

    cycle, day, preview = r["repurchase_cycle_day"], r["whole_shop_day"], r["preview"]
    # The seed makes the repurchase-cycle audience real: some are due, each sent one offer of a coupon's product.
    assert 0 < cycle["recipients"] < r["customers"] * 0.2
    assert cycle["refresh_s"] > 0 and cycle["sent"] == cycle["offers_held"] == cycle["recipients"]
    # The whole shop: everyone reachable gets their own text and an offer; the preview said as much.
    assert 0.8 * r["customers"] < day["recipients"] == preview["would_send"] == day["sent"] == day["offers_held"]
    assert day["outbox_messages"] == day["recipients"] and day["outbox_batches_without_bodies"] == 0
    assert day["ledger_check"]["exact"]
    assert r["preview_s"] > 0 and r["recipients_per_s"] > 0
    # The control: the plain K-PHASED day on the same shop reaches the same consumers with one text and no offer.
    plain = r["plain_day"]
    assert plain["recipients"] == plain["sent"] == day["recipients"] and plain["offers_held"] == 0
    assert plain["outbox_batches_without_bodies"] > 0 and r["share_of_plain_day"] > 0
    assert "(c) / (p) =" in out and len(r["pairs"]) == 2
    assert r["share_of_plain_day"] in [p["share"] for p in r["pairs"]]


def test_each_benchmark_records_its_own_key_and_its_own_docs_block(tmp_path):
    from bench.stack import record_results, replace_docs_block

    results = tmp_path / "results.json"
    record_results(results, "a", {"x": 1})
    record_results(results, "b", {"when": datetime(2026, 11, 30, tzinfo=UTC), "text": "满100减15"})
    record_results(results, "a", {"x": 2})
    data = json.loads(results.read_text())
    assert data == {"a": {"x": 2}, "b": {"when": "2026-11-30 00:00:00+00:00", "text": "满100减15"}}

    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nprose before\n")
    replace_docs_block(docs, "<!-- s -->", "<!-- e -->", "<!-- s -->\n| 1 |\n<!-- e -->", "## Mine")
    replace_docs_block(docs, "<!-- s -->", "<!-- e -->", "<!-- s -->\n| 2 |\n<!-- e -->", "## Mine")
    assert docs.read_text() == "# Benchmarks\n\nprose before\n\n## Mine\n\n<!-- s -->\n| 2 |\n<!-- e -->\n"
