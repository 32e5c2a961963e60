"""The failed-authentication throttle: token buckets per client address and per key prefix.

Pure logic (no I/O, the clock is injected) used by the gate (api/gate.py):

* Before a key is looked up, `admit(client, prefix)` says whether the
  client address or the key's prefix is over its budget; if so the request is
  answered 429 with Retry-After and the database is not asked.
* After the lookup, `settle(admission, failed=...)`: a lookup that found no
  live key with that secret spends one token of each bucket.

Each bucket holds FAILURE_BURST tokens and gets FAILURE_REFILL_PER_S back per
second, so a client (or a prefix, across all clients) may fail FAILURE_BURST
times in a row and then about once a second. Only failures count: a valid
key spends nothing, and a client or prefix that never failed is never
slowed. Only well-formed keys (`sk_<12 hex>_<secret>`, api/keys.py) count;
a malformed credential is refused by a regular expression before any
database work, so it costs less than a /healthz probe and guesses nothing.

The per-prefix bucket stops anyone guessing the secret of one known prefix
from many addresses; the price is that, while it is empty, the prefix's own
key is refused too (429) until the bucket refills. A guess of a 256-bit
secret cannot succeed anyway: the throttle protects the database's time and
the other shops' requests.

Client address: the ASGI scope's "client", i.e. the peer of the TCP
connection. Behind a reverse proxy that is the proxy's address, the same for
every client, unless uvicorn is told to trust the proxy's X-Forwarded-For
(`--proxy-headers --forwarded-allow-ips=<proxy address>`, or
`FORWARDED_ALLOW_IPS`): run it that way behind a proxy, or one client's
failures throttle everyone. IPv6 addresses are counted per /64, the block a
single host usually holds.

Memory is bounded: each table keeps at most MAX_TRACKED entries and forgets
the least recently failed one first; a forgotten entry starts again with a
full bucket.

A check and the failure it may lead to are separated by the key lookup. A
client or prefix that has failed lately (it has a bucket) holds one of its
tokens for each lookup under way, so many wrong keys in flight at once cannot
all pass on the last token; one that never failed reserves nothing (its valid
keys are never refused, however many run at once), so its first flood may
overshoot the burst by at most the number of its requests in flight.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

FAILURE_BURST = 20  # failed authentications allowed back to back (per client address, per key prefix)
FAILURE_REFILL_PER_S = 1.0  # failures allowed per second once the burst is spent
MAX_TRACKED = 10_000  # entries per table (client addresses, prefixes); least recently failed forgotten first
IPV6_PREFIX_LEN = 64


@dataclass
class _Bucket:
    tokens: float
    at: float  # the clock reading when `tokens` was right
    pending: int = 0  # lookups under way let through on this bucket's tokens (reserve / release)


class TokenBuckets:
    """One token bucket per key, created full on first failure, at most `max_tracked` of them (LRU)."""

    def __init__(
        self, *, burst: float = FAILURE_BURST, refill_per_s: float = FAILURE_REFILL_PER_S, max_tracked: int = MAX_TRACKED
    ):
        if burst < 1 or refill_per_s <= 0 or max_tracked < 1:
            raise ValueError("burst >= 1, refill_per_s > 0 and max_tracked >= 1 are required")
        self.burst = float(burst)
        self.refill_per_s = float(refill_per_s)
        self.max_tracked = max_tracked
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, bucket: _Bucket, now: float) -> float:
        return min(self.burst, bucket.tokens + max(0.0, now - bucket.at) * self.refill_per_s)

    def retry_after(self, key: str, now: float) -> float:
        """0 when `key` may fail once more (beside its lookups under way), else the seconds until it may."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = self._tokens(bucket, now)
        available = tokens - bucket.pending
        if available >= 1.0:
            if tokens >= self.burst and not bucket.pending:  # refilled: nothing to remember
                del self._buckets[key]
            return 0.0
        return (1.0 - available) / self.refill_per_s

    def reserve(self, key: str) -> bool:
        """Hold a token of `key` for a lookup under way; only a key with a bucket (a recent failure) holds one."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return False
        bucket.pending += 1
        return True

    def release(self, key: str) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None and bucket.pending:
            bucket.pending -= 1

    def spend(self, key: str, now: float) -> bool:
        """Record one failure of `key`; True when this failure emptied its bucket."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(tokens=self.burst, at=now)
            while len(self._buckets) > self.max_tracked:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        before = self._tokens(bucket, now)
        bucket.tokens, bucket.at = max(0.0, before - 1.0), now
        return before >= 1.0 > bucket.tokens


def client_key(client: tuple[str, int] | list | None) -> str:
    """The throttle's name for an ASGI scope's "client": the host, an IPv6 host by its /64."""
    if not client:
        return "unknown"
    host = str(client[0])
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # not an IP (a unix socket, a test transport): the name as given
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX_LEN), strict=False))
    return str(address)


class AuthThrottle:
    """Failed authentications per client address and per key prefix (module docstring)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        burst: float = FAILURE_BURST,
        refill_per_s: float = FAILURE_REFILL_PER_S,
        max_tracked: int = MAX_TRACKED,
    ):
        self.clock = clock
        self.clients = TokenBuckets(burst=burst, refill_per_s=refill_per_s, max_tracked=max_tracked)
        self.prefixes = TokenBuckets(burst=burst, refill_per_s=refill_per_s, max_tracked=max_tracked)

    def retry_after(self, client: str, prefix: str | None) -> int:
        """0 when a lookup may go ahead, else whole seconds for a Retry-After header (>= 1). Reserves nothing."""
        now = self.clock()
        wait = self.clients.retry_after(client, now)
        if prefix is not None:
            wait = max(wait, self.prefixes.retry_after(prefix, now))
        return max(1, math.ceil(wait)) if wait > 0 else 0

    def admit(self, client: str, prefix: str | None) -> Admission:
        """Before a lookup: its Admission; when retry_after is 0 it goes ahead, and settle() must follow."""
        wait = self.retry_after(client, prefix)
        if wait:
            return Admission(client, prefix, retry_after=wait)
        return Admission(
            client,
            prefix,
            retry_after=0,
            client_held=self.clients.reserve(client),
            prefix_held=prefix is not None and self.prefixes.reserve(prefix),
        )

    def settle(self, admission: Admission, *, failed: bool) -> list[str]:
        """After the lookup: release what it held and, if it failed, spend a token of each bucket.

        The names ("client", "prefix") whose budget this failure used up."""
        if admission.client_held:
            self.clients.release(admission.client)
        if admission.prefix_held and admission.prefix is not None:
            self.prefixes.release(admission.prefix)
        if not failed:
            return []
        return self.failed(admission.client, admission.prefix)

    def failed(self, client: str, prefix: str | None) -> list[str]:
        """Record a failed lookup; the names ("client", "prefix") whose budget this failure used up."""
        now = self.clock()
        emptied = ["client"] if self.clients.spend(client, now) else []
        if prefix is not None and self.prefixes.spend(prefix, now):
            emptied.append("prefix")
        return emptied


@dataclass(frozen=True)
class Admission:
    client: str
    prefix: str | None
    retry_after: int  # 0: the lookup may go ahead; else whole seconds to wait, nothing held
    client_held: bool = False
    prefix_held: bool = False
