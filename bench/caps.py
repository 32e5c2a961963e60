"""Micro-benchmark: batched cap reservation under contention, checked exact with SQL.

Eight campaigns of five shops run at once over overlapping consumers (each
covers `per_campaign` consumers of `consumers`, shifted a little, so all eight
fight over the same fatigue rows at the same moment). Their template groups
and counters are chosen so that every cap bites (R-FAT-1..3):

* shop A runs three campaigns with three template groups: the third meets the
  shop-day cap (2 a day per shop, R-FAT-2);
* shop B runs two campaigns of the same group under a 1-per-7-days template
  cap (R-FAT-1), and some consumers already had that template 3 days ago;
* shops C, D, E one campaign each; a tenth of the consumers already had 8
  messages from 4 other shops today, another tenth 3 from 3 shops, so the
  10-a-day and 5-shops-a-day caps (R-FAT-3) bite too.

Mode `reserve` (default) calls the reservation transaction of
activities/send.py (SendActivities._reserve: read the slice, lock-check-count
in one upsert, name the caps of the stopped, insert the ledger rows) chunk by
chunk, `inflight` chunks per campaign, as send_slice does for the channel the
bench configures (the outbox: rows committed `sent` with their outbox batch in
the same transaction). `--provider-path` measures the variant for a provider
outside the database instead (rows committed `reserved` for the later call).
Mode `slice` runs the whole send_slice activity (reservation, outbox channel,
outcome) through temporalio.testing.ActivityEnvironment.

Exactness afterwards, in SQL: one ledger row per snapshot row; every counter
equals what was preloaded plus the ledger's live rows; no cap exceeded; and
every suppression justified (the consumer's counter really is at that cap).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from sluice.schemas.rules import template_key

from bench.stack import ROOT, CpuMeter, Postgres, machine, say, settle

SHOPS = ["cap-A", "cap-B", "cap-C", "cap-D", "cap-E"]
OTHER_SHOPS = ["cap-Z1", "cap-Z2", "cap-Z3", "cap-Z4"]  # today's earlier messages (preloaded)
# (shop, template group, count, days) per campaign
CAMPAIGNS = [
    ("cap-A", "g1", 1, 1),
    ("cap-A", "g2", 1, 1),
    ("cap-A", "g3", 1, 1),
    ("cap-B", "g1", 1, 7),
    ("cap-B", "g1", 1, 7),
    ("cap-C", "g1", 1, 1),
    ("cap-D", "g1", 1, 1),
    ("cap-E", "g1", 1, 1),
]
PLATFORM_TZ = "Asia/Shanghai"


@dataclass
class CapsConfig:
    consumers: int = 250_000
    per_campaign: int = 200_000
    chunk_size: int = 5_000
    inflight: int = 2  # chunks (or slices) in flight per campaign
    pool_size: int | None = None  # default campaigns x inflight
    mode: str = "reserve"  # reserve | slice
    handoff: bool = True  # reserve mode: the outbox hand-off in the reservation (False: the provider path)
    slice_size: int = 20_000
    data_dir: Path = field(default_factory=lambda: ROOT / ".sluice" / "bench")
    admin_dsn: str | None = None
    results_path: Path | None = field(default_factory=lambda: ROOT / "bench" / "caps-results.json")
    drop_db: bool = False
    pg_tune: bool = True
    pg_shared_buffers: str = "1GB"  # as the phase-day benchmark
    pg_stats: bool = False  # pg_stat_statements: the top statements of the contended run
    settle_s: float = 45.0  # after the setup's bulk writes, before the measured run (bench/stack.py settle)


async def _setup(dsn: str, cfg: CapsConfig, fday, now: datetime) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        t0 = time.perf_counter()
        for shop in SHOPS + OTHER_SHOPS:
            await conn.execute(
                "INSERT INTO shops (shop_id, name, timezone, industry) VALUES ($1, $1, 'Asia/Shanghai', 'beauty')",
                shop,
            )
        await conn.execute("INSERT INTO consumers (consumer_id) SELECT g FROM generate_series(1, $1::bigint) g", cfg.consumers)
        for shop in SHOPS:
            await conn.execute(
                "INSERT INTO shop_customers (shop_id, consumer_id, chat_id, phone, email)"
                " SELECT $1, g, 'tb_' || g, '138' || lpad(g::text, 8, '0'), 'user' || g || '@example.com'"
                " FROM generate_series(1, $2::bigint) g",
                shop,
                cfg.consumers,
            )
        ids = []
        step = (cfg.consumers - cfg.per_campaign) // max(1, len(CAMPAIGNS) - 1)
        for i, (shop, _group, _count, _days) in enumerate(CAMPAIGNS):
            cid = await conn.fetchval(
                "INSERT INTO campaigns (shop_id, campaign_ref, workflow_id, kind, spec, state)"
                " VALUES ($1, $2, $3, 'K-PHASED', '{}'::jsonb, 'sending') RETURNING id",
                shop,
                f"caps-{i}",
                f"{shop}.caps-{i}-{uuid.uuid4().hex[:6]}",
            )
            ids.append(cid)
            await conn.execute(
                "INSERT INTO audience_snapshots (campaign_id, phase, day, seq, consumer_id)"
                " SELECT $1, 0, $2, g, $3 + g + 1 FROM generate_series(0, $4 - 1) g",
                cid,
                fday,
                i * step,
                cfg.per_campaign,
            )
        # Today's earlier messages from other shops, and a template sent 3 days ago.
        await conn.execute(
            "INSERT INTO fatigue_day (consumer_id, day, sent, shops, per_shop)"
            " SELECT g, $2, CASE WHEN g % 10 = 0 THEN 8 ELSE 3 END, CASE WHEN g % 10 = 0 THEN 4 ELSE 3 END,"
            "        (SELECT jsonb_object_agg(z.shop, CASE WHEN g % 10 = 0 THEN 2 ELSE 1 END)"
            "         FROM unnest($3::text[]) WITH ORDINALITY AS z(shop, k) WHERE g % 10 = 0 OR z.k <= 3)"
            " FROM generate_series(1, $1::bigint) g WHERE g % 10 IN (0, 5)",
            cfg.consumers,
            fday,
            OTHER_SHOPS,
        )
        await conn.execute(
            "INSERT INTO fatigue_day (consumer_id, day, sent, shops, per_shop, per_template)"
            " SELECT g, $2::date - 3, 1, 1, fatigue_increment('{}', $3), fatigue_increment('{}', $4)"
            " FROM generate_series(1, $1::bigint) g WHERE g % 7 = 0",
            cfg.consumers,
            fday,
            "cap-B",
            template_key("cap-B", "g1"),
        )
        for t in ("day", "shop_day", "template"):
            await conn.execute(f"CREATE TABLE caps_preload_{t} AS SELECT * FROM fatigue_{t}")
        await conn.execute("ANALYZE")
        await conn.execute("CHECKPOINT")
        say(f"  setup in {time.perf_counter() - t0:.1f}s: {cfg.consumers:,} consumers x {len(SHOPS)} shops,"
            f" {len(CAMPAIGNS)} campaigns x {cfg.per_campaign:,} recipients")  # fmt: skip
        return ids
    finally:
        await conn.close()


def _input(cid: int, i: int, fday, now: datetime, lo: int, hi: int, chunk_size: int):
    from sluice.schemas.activities import SendSliceInput
    from sluice.schemas.campaign import TemplateCap

    shop, group, count, days = CAMPAIGNS[i]
    return SendSliceInput(
        campaign_db_id=cid,
        shop_id=shop,
        phase_index=0,
        day=fday,
        channel="chat",
        template_cap=TemplateCap(group=group, count=count, days=days),
        text="caps micro-benchmark",
        seq_lo=lo,
        seq_hi=hi,
        budget=2**31 - 1,
        decided_at=now,
        window_end=now + timedelta(days=1),
        chunk_size=chunk_size,
    )


async def _run_reserve(send, ids, cfg: CapsConfig, fday, now) -> None:
    """Each campaign: `inflight` tasks pulling chunks [lo, lo + chunk_size) off its range."""
    params = list(inspect.signature(send._reserve).parameters)
    if params[:5] != ["inp", "lo", "hi", "budget", "handoff"]:
        raise SystemExit(f"SendActivities._reserve{tuple(params)} changed: run `python -m bench caps --mode slice`")

    async def campaign(i: int, cid: int) -> None:
        cursor = iter(range(0, cfg.per_campaign, cfg.chunk_size))

        async def lane() -> None:
            for lo in cursor:
                hi = min(lo + cfg.chunk_size, cfg.per_campaign)
                inp = _input(cid, i, fday, now, lo, hi, cfg.chunk_size)
                await send._reserve(inp, lo, hi, inp.budget, cfg.handoff, probe=False)  # a first attempt

        await asyncio.gather(*(lane() for _ in range(cfg.inflight)))

    await asyncio.gather(*(campaign(i, cid) for i, cid in enumerate(ids)))


async def _run_slices(send, ids, cfg: CapsConfig, fday, now) -> None:
    """Each campaign: `inflight` send_slice activities at a time, through ActivityEnvironment."""
    from temporalio.testing import ActivityEnvironment

    async def campaign(i: int, cid: int) -> None:
        cursor = iter(range(0, cfg.per_campaign, cfg.slice_size))

        async def lane() -> None:
            env = ActivityEnvironment()
            for lo in cursor:
                hi = min(lo + cfg.slice_size, cfg.per_campaign)
                await env.run(send.send_slice, _input(cid, i, fday, now, lo, hi, cfg.chunk_size))

        await asyncio.gather(*(lane() for _ in range(cfg.inflight)))

    await asyncio.gather(*(campaign(i, cid) for i, cid in enumerate(ids)))


_LIVE = "('reserved', 'sent', 'unknown')"


async def verify(conn: asyncpg.Connection, ids: list[int], per_campaign: int) -> dict[str, int]:
    """Violations per check; all zero when the reservation was exact."""
    caps = [{"shop": s, "grp": g, "n": n, "days": d} for s, g, n, d in CAMPAIGNS]  # jsonb codec: db/pool.py
    checks = {
        # one ledger row per snapshot row, none outside the snapshot
        "snapshot_rows_without_exactly_one_delivery": """
            SELECT count(*) FROM audience_snapshots s WHERE s.campaign_id = ANY($1::bigint[]) AND (
                SELECT count(*) FROM deliveries d WHERE d.campaign_id = s.campaign_id AND d.phase = s.phase
                AND d.day = s.day AND d.consumer_id = s.consumer_id) <> 1""",
        "deliveries_outside_snapshot": """
            SELECT count(*) FROM deliveries d WHERE d.campaign_id = ANY($1::bigint[]) AND NOT EXISTS (
                SELECT 1 FROM audience_snapshots s WHERE s.campaign_id = d.campaign_id AND s.phase = d.phase
                AND s.day = d.day AND s.consumer_id = d.consumer_id)""",
        # counters = preload + ledger
        "fatigue_day_counter_mismatch": f"""
            WITH led AS (SELECT consumer_id, fatigue_day AS day, count(*) AS sent, count(DISTINCT shop_id) AS shops
                         FROM deliveries WHERE state IN {_LIVE} GROUP BY 1, 2)
            SELECT count(*) FROM fatigue_day f
            FULL JOIN led l USING (consumer_id, day) FULL JOIN caps_preload_day p USING (consumer_id, day)
            WHERE coalesce(f.sent, 0) <> coalesce(l.sent, 0) + coalesce(p.sent, 0)
               OR coalesce(f.shops, 0) <> coalesce(l.shops, 0) + coalesce(p.shops, 0)""",
        "fatigue_shop_day_counter_mismatch": f"""
            WITH led AS (SELECT consumer_id, shop_id, fatigue_day AS day, count(*) AS sent
                         FROM deliveries WHERE state IN {_LIVE} GROUP BY 1, 2, 3)
            SELECT count(*) FROM fatigue_shop_day f
            FULL JOIN led l USING (consumer_id, shop_id, day) FULL JOIN caps_preload_shop_day p
                 USING (consumer_id, shop_id, day)
            WHERE coalesce(f.sent, 0) <> coalesce(l.sent, 0) + coalesce(p.sent, 0)""",
        "fatigue_template_counter_mismatch": f"""
            WITH led AS (SELECT consumer_id, shop_id, template_group, fatigue_day AS day, count(*) AS sent
                         FROM deliveries WHERE state IN {_LIVE} GROUP BY 1, 2, 3, 4)
            SELECT count(*) FROM fatigue_template f
            FULL JOIN led l USING (consumer_id, shop_id, template_group, day)
            FULL JOIN caps_preload_template p USING (consumer_id, shop_id, template_group, day)
            WHERE coalesce(f.sent, 0) <> coalesce(l.sent, 0) + coalesce(p.sent, 0)""",
        # no cap exceeded
        "over_global_day_or_shops_cap": "SELECT count(*) FROM fatigue_day WHERE sent > 10 OR shops > 5",
        "over_shop_day_cap": "SELECT count(*) FROM fatigue_shop_day WHERE sent > 2",
        "over_template_cap": """
            WITH caps AS (SELECT DISTINCT * FROM jsonb_to_recordset($2::jsonb)
                          AS x(shop text, grp text, n int, days int)),
                 today AS (SELECT max(day) AS day FROM fatigue_day)
            SELECT count(*) FROM (
                SELECT f.consumer_id FROM fatigue_template f JOIN caps c ON c.shop = f.shop_id AND c.grp = f.template_group
                CROSS JOIN today t WHERE f.day > t.day - c.days AND f.day <= t.day
                GROUP BY f.consumer_id, f.shop_id, f.template_group, c.n HAVING sum(f.sent) > c.n) x""",
        # every suppression justified by the final counters (they only grow here)
        "unjustified_global_day": """
            SELECT count(*) FROM deliveries d JOIN fatigue_day f ON f.consumer_id = d.consumer_id AND f.day = d.fatigue_day
            WHERE d.campaign_id = ANY($1::bigint[]) AND d.reason = 'fatigue_global_day' AND f.sent < 10""",
        "unjustified_global_shops": """
            SELECT count(*) FROM deliveries d JOIN fatigue_day f ON f.consumer_id = d.consumer_id AND f.day = d.fatigue_day
            WHERE d.campaign_id = ANY($1::bigint[]) AND d.reason = 'fatigue_global_shops' AND f.shops < 5""",
        "unjustified_shop_day": """
            SELECT count(*) FROM deliveries d WHERE d.campaign_id = ANY($1::bigint[]) AND d.reason = 'fatigue_shop_day'
              AND coalesce((SELECT f.sent FROM fatigue_shop_day f WHERE f.consumer_id = d.consumer_id
                            AND f.shop_id = d.shop_id AND f.day = d.fatigue_day), 0) < 2""",
        "unjustified_template": """
            WITH caps AS (SELECT DISTINCT * FROM jsonb_to_recordset($2::jsonb)
                          AS x(shop text, grp text, n int, days int))
            SELECT count(*) FROM deliveries d JOIN caps c ON c.shop = d.shop_id AND c.grp = d.template_group
            WHERE d.campaign_id = ANY($1::bigint[]) AND d.reason = 'fatigue_template'
              AND coalesce((SELECT sum(f.sent) FROM fatigue_template f WHERE f.consumer_id = d.consumer_id
                            AND f.shop_id = d.shop_id AND f.template_group = d.template_group
                            AND f.day > d.fatigue_day - c.days AND f.day <= d.fatigue_day), 0) < c.n""",
    }
    out = {}
    for name, sql in checks.items():
        # $1: the campaigns' ids, $2: the template caps (only where the query uses them)
        args = [a for ph, a in (("$1", ids), ("$2", caps)) if ph in sql]
        if "$2" in sql and "$1" not in sql:
            sql = sql.replace("$2", "$1")
        out[name] = await conn.fetchval(sql, *args)
    return out


async def run_caps(cfg: CapsConfig) -> dict:
    from sluice.activities.send import SendActivities
    from sluice.channels.registry import ChannelRegistry
    from sluice.db.pool import create_pool
    from sluice.workflows.calendar import platform_day

    cfg.data_dir = Path(cfg.data_dir).resolve()
    now = datetime.now(UTC)
    fday = platform_day(now, PLATFORM_TZ)
    pg = Postgres(cfg.data_dir, cfg.admin_dsn, tune=cfg.pg_tune)
    name = f"bench_caps_{uuid.uuid4().hex[:6]}"
    try:
        await pg.apply_tuning()
        if pg.server is not None:
            await pg.configure({
                "shared_buffers": cfg.pg_shared_buffers,
                "shared_preload_libraries": "pg_stat_statements" if cfg.pg_stats else "",
            })  # fmt: skip
        path = "outbox hand-off" if cfg.handoff or cfg.mode == "slice" else "provider path (rows left reserved)"
        say(f"caps: {len(CAMPAIGNS)} concurrent campaigns over overlapping consumers, mode {cfg.mode} ({path}),"
            f" chunk_size {cfg.chunk_size:,}, {cfg.inflight} in flight per campaign")  # fmt: skip
        dsn = await pg.database(name, fresh=True)
        ids = await _setup(dsn, cfg, fday, now)
        settled = await settle(cfg.settle_s)
        pool_size = cfg.pool_size or len(CAMPAIGNS) * cfg.inflight
        pool = await create_pool(dsn, size=pool_size)
        try:
            send = SendActivities(pool, ChannelRegistry.outbox_for_all(pool), platform_timezone=PLATFORM_TZ)
            if cfg.pg_stats:
                await pool.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                await pool.execute("SELECT pg_stat_statements_reset()")
            meter = CpuMeter(os.getpid(), pg.postmaster_pid)
            meter.start()
            t0 = time.perf_counter()
            if cfg.mode == "reserve":
                await _run_reserve(send, ids, cfg, fday, now)
            elif cfg.mode == "slice":
                await _run_slices(send, ids, cfg, fday, now)
            else:
                raise SystemExit(f"unknown mode {cfg.mode!r}")
            elapsed = time.perf_counter() - t0
            cpu = meter.stop()
            cpu = {"this process (SendActivities)": cpu["worker"], "postgres": cpu["postgres"]}
            if cfg.pg_stats:
                from bench.run import _top_statements

                await _top_statements(pool)
            async with pool.acquire() as conn:
                rows = dict(
                    await conn.fetch(
                        "SELECT coalesce(reason, state), count(*)::int FROM deliveries"
                        " WHERE campaign_id = ANY($1::bigint[]) GROUP BY 1 ORDER BY 1",
                        ids,
                    )
                )
                violations = await verify(conn, ids, cfg.per_campaign)
        finally:
            await pool.close()
        decisions = sum(rows.values())
        reserved = sum(n for k, n in rows.items() if k in ("reserved", "sent"))
        exact = all(v == 0 for v in violations.values()) and decisions == len(ids) * cfg.per_campaign
        result = {
            "mode": cfg.mode,
            "handoff": cfg.handoff if cfg.mode == "reserve" else True,
            "campaigns": len(CAMPAIGNS),
            "consumers": cfg.consumers,
            "per_campaign": cfg.per_campaign,
            "chunk_size": cfg.chunk_size,
            "slice_size": cfg.slice_size if cfg.mode == "slice" else None,
            "inflight_per_campaign": cfg.inflight,
            "pool_size": pool_size,
            "decisions": decisions,
            "reserved": reserved,
            "by_outcome": rows,
            "seconds": round(elapsed, 3),
            "reservations_per_s": round(decisions / elapsed, 1),
            "reserved_per_s": round(reserved / elapsed, 1),
            "exact": exact,
            "cpu_seconds": cpu,
            "violations": violations,
            "settle": settled,
            "goal_reservations_per_s": 100_000,
            "machine": machine() | {"postgres": await pg.version()},
            "measured_at": now.isoformat(timespec="seconds"),
        }
    finally:
        if cfg.drop_db:
            await pg.drop(name)
        pg.close()
    say(f"  {decisions:,} cap decisions ({reserved:,} reserved) in {elapsed:.2f}s"
        f" = {decisions / elapsed:,.0f} reservations/s [{'ok' if decisions / elapsed >= 100_000 else 'MISSED'}:"
        f" >= 100,000]")  # fmt: skip
    say(f"  outcomes: {rows}")
    say(f"  cpu seconds: {cpu} (2 cores x {elapsed:.1f}s = {2 * elapsed:.0f} available)")
    say(f"  exact: {'yes' if exact else 'NO'} (violations: {sum(violations.values())}: "
        f"{ {k: v for k, v in violations.items() if v} or 'none'})")  # fmt: skip
    if cfg.results_path:
        Path(cfg.results_path).write_text(json.dumps(result, indent=2, default=str) + "\n")
        say(f"wrote {cfg.results_path}")
    with (cfg.data_dir / "caps-runs.jsonl").open("a") as log:
        log.write(json.dumps(result, default=str) + "\n")
    return result
