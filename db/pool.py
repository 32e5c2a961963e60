"""asyncpg pools configured once for the whole process."""

from __future__ import annotations

import asyncpg


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=_json_dumps, decoder=_json_loads, schema="pg_catalog")


def _json_dumps(value) -> str:
    import json

    return json.dumps(value, separators=(",", ":"), default=str)


def _json_loads(value: str):
    import json

    return json.loads(value)


async def create_pool(dsn: str, *, size: int = 10) -> asyncpg.Pool:
    # plan_cache_mode: the hot statements are driven by unnest()ed arrays whose
    # length differs per call; a generic plan would ignore it (docs/design.md, "Generic plans").
    return await asyncpg.create_pool(
        dsn,
        min_size=min(2, size),
        max_size=size,
        init=_init_connection,
        server_settings={"plan_cache_mode": "force_custom_plan", "application_name": "sluice"},
    )
