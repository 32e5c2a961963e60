"""API keys per shop: created once, shown once, kept only as a SHA-256 of the secret.

A key reads `sk_<prefix>_<secret>`: `prefix` is 12 hex digits, public (it is
how a key is named, listed and revoked) and finds the row; `secret` is 32
random bytes in base64url. Only sha256(secret) is stored (db/migrations/0002):
for a 256-bit random secret a plain hash cannot be brute-forced, so no salt or
slow hash is needed. The comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import asyncpg

KEY_RE = re.compile(r"sk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


class UnknownShop(Exception):
    pass


@dataclass(frozen=True)
class NewKey:
    prefix: str
    shop_id: str
    key: str  # the full key: shown once, never stored


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def parse(key: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed key, else None."""
    m = KEY_RE.fullmatch(key)
    return (m.group(1), m.group(2)) if m else None


async def create_key(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str) -> NewKey:
    """A new key for an existing shop; raises UnknownShop."""
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM shops WHERE shop_id = $1)", shop_id):
        raise UnknownShop(shop_id)
    while True:
        prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        inserted = await conn.fetchval(
            "INSERT INTO api_keys (prefix, shop_id, secret_sha256) VALUES ($1, $2, $3)"
            " ON CONFLICT (prefix) DO NOTHING RETURNING prefix",
            prefix,
            shop_id,
            _digest(secret),
        )
        if inserted:  # a prefix collision (1 in 2^48 per key) draws again
            return NewKey(prefix=prefix, shop_id=shop_id, key=f"sk_{prefix}_{secret}")


async def revoke_key(conn: asyncpg.Connection | asyncpg.Pool, prefix: str) -> bool:
    """Revoke a key by its prefix; False when no live key has that prefix."""
    status = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE prefix = $1 AND revoked_at IS NULL", prefix
    )
    return status.split()[-1] != "0"


async def list_keys(conn: asyncpg.Connection | asyncpg.Pool, shop_id: str | None = None) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT prefix, shop_id, created_at, revoked_at FROM api_keys"
        " WHERE $1::text IS NULL OR shop_id = $1 ORDER BY created_at, prefix",
        shop_id,
    )


async def shop_for_key(conn: asyncpg.Connection | asyncpg.Pool, key: str) -> str | None:
    """The shop a live key belongs to, or None (malformed, unknown, revoked or wrong secret)."""
    parsed = parse(key)
    if parsed is None:
        return None
    prefix, secret = parsed
    row = await conn.fetchrow(
        "SELECT shop_id, secret_sha256 FROM api_keys WHERE prefix = $1 AND revoked_at IS NULL", prefix
    )
    if row is None or not hmac.compare_digest(bytes(row["secret_sha256"]), _digest(secret)):
        return None
    return row["shop_id"]
