"""The API's edge against hostile clients (api/gate.py, api/throttle.py, api/docs.py).

* One Authorization header or none: two are refused (400) before any key lookup.
* Failed authentications are throttled per client address and per key prefix:
  past the burst, 429 with Retry-After and no database lookup, while other
  clients' and other shops' keys go on; the budget refills with time.
* Every answer carries the security headers, a 500 too; /docs runs under a
  script-src 'self' policy on assets served by this app, none from another origin.
* A trailing slash is a 404, never a redirect built from the Host header.

All through the real app over httpx's ASGI transport, with a real Postgres and
Temporal; the throttle's clock is a fake one the tests move.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from datetime import timedelta

import httpx
import pytest
from sluice.api import keys
from sluice.api.gate import API_CSP, SECURITY_HEADERS
from sluice.api.http import MAX_BODY_BYTES
from sluice.api.throttle import FAILURE_BURST, FAILURE_REFILL_PER_S, AuthThrottle, TokenBuckets, client_key
from sluice.workflows.calendar import local_day

from tests.api_helpers import bearer, running_app, shop_key
from tests.factories import add_customers

ATTACKER, OTHER = ("10.0.0.66", 4444), ("10.0.0.7", 5555)


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _wrong_key(prefix: str | None = None) -> str:
    return f"sk_{prefix or secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


def _prefix(key: str) -> str:
    return key.split("_")[1]


def http_client(app, address=("127.0.0.1", 123), key: str | None = None, **transport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=address, **transport),
                             base_url="http://sluice", headers=bearer(key) if key else None)


@pytest.fixture
def lookups(monkeypatch) -> list[str]:
    """The keys the gate looked up in the database, in order."""
    seen: list[str] = []
    real = keys.shop_for_key

    async def counting(conn, key):
        seen.append(key)
        return await real(conn, key)

    monkeypatch.setattr(keys, "shop_for_key", counting)
    return seen


def _spec(now, shop_id: str = "s1", campaign_id: str = "c1") -> dict:
    return {"kind": "K-OLDCUST", "shop_id": shop_id, "campaign_id": campaign_id, "scene": "Spring",
            "card_text": "Hello again", "send_date": (local_day(now, "Asia/Shanghai") + timedelta(days=2)).isoformat(),
            "send_time": "10:00"}


async def _with_campaign(pool, ts_env, app, shop_id: str = "s1") -> str:
    """A key of `shop_id` and a running campaign {shop_id}.c1 it can read (GET answers 200)."""
    now = await ts_env.get_current_time()
    key = await shop_key(pool, shop_id)
    await add_customers(pool, shop_id, list(range(1, 21)), ordered_at=now - timedelta(days=20),
                        visited_at=now - timedelta(days=2))
    async with http_client(app, ("192.0.2.1", 1), key) as owner:
        res = await owner.post("/campaigns", json=_spec(now, shop_id))
        assert res.status_code == 201, res.text
    return key


# --- the throttle's logic, on its own ---------------------------------------------------------------


def test_a_bucket_allows_the_burst_then_one_failure_per_refill():
    buckets = TokenBuckets(burst=3, refill_per_s=0.5)
    assert buckets.retry_after("a", 0.0) == 0
    assert [buckets.spend("a", 0.0) for _ in range(3)] == [False, False, True]  # True: this one emptied it
    assert buckets.retry_after("a", 0.0) == pytest.approx(2.0)
    assert buckets.retry_after("a", 1.0) == pytest.approx(1.0)
    assert buckets.retry_after("b", 0.0) == 0  # another key is untouched
    assert buckets.retry_after("a", 2.0) == 0  # one token back after 1 / refill_per_s
    buckets.spend("a", 2.0)
    assert buckets.retry_after("a", 2.0) == pytest.approx(2.0)
    assert buckets.retry_after("a", 8.0) == 0 and len(buckets) == 0  # full again: forgotten


def test_memory_is_bounded_least_recently_failed_forgotten_first():
    buckets = TokenBuckets(burst=1, refill_per_s=0.001, max_tracked=3)
    for key in ("a", "b", "c"):
        buckets.spend(key, 0.0)
    buckets.spend("a", 0.0)  # "a" failed again: now "b" is the oldest
    buckets.spend("d", 0.0)
    assert len(buckets) == 3
    assert buckets.retry_after("b", 0.0) == 0
    assert all(buckets.retry_after(k, 0.0) > 0 for k in ("a", "c", "d"))
    for i in range(10_000):
        buckets.spend(f"flood-{i}", 0.0)
    assert len(buckets) == 3


def test_client_addresses_are_counted_by_host_and_ipv6_by_64():
    assert client_key(("203.0.113.5", 1)) == client_key(("203.0.113.5", 2)) == "203.0.113.5"
    assert client_key(("2001:db8:1:2::1", 1)) == client_key(("2001:db8:1:2:ffff::9", 1)) == "2001:db8:1:2::/64"
    assert client_key(("2001:db8:1:3::1", 1)) != client_key(("2001:db8:1:2::1", 1))
    assert client_key(("::ffff:203.0.113.5", 1)) == "203.0.113.5"
    assert client_key(None) == "unknown"


def test_auth_throttle_counts_clients_and_prefixes_apart():
    clock = FakeClock()
    throttle = AuthThrottle(clock=clock, burst=2, refill_per_s=1.0)
    throttle.failed("1.1.1.1", "aaaaaaaaaaaa")
    assert throttle.failed("2.2.2.2", "aaaaaaaaaaaa") == ["prefix"]
    assert throttle.retry_after("3.3.3.3", "aaaaaaaaaaaa") == 1  # the prefix, from any address
    assert throttle.retry_after("1.1.1.1", "bbbbbbbbbbbb") == 0  # each address failed once of two
    assert throttle.failed("1.1.1.1", None) == ["client"]
    assert throttle.retry_after("1.1.1.1", None) == 1
    clock.now += 1 / 1.0
    assert throttle.retry_after("1.1.1.1", "aaaaaaaaaaaa") == 0


def test_lookups_under_way_hold_tokens_of_a_client_that_failed_but_not_of_one_that_never_did():
    clock = FakeClock()
    throttle = AuthThrottle(clock=clock, burst=2, refill_per_s=1.0)
    # Never failed: any number of lookups at once go ahead and hold nothing.
    fresh = [throttle.admit("1.1.1.1", "aaaaaaaaaaaa") for _ in range(100)]
    assert all(a.retry_after == 0 and not a.client_held for a in fresh)
    for a in fresh:
        throttle.settle(a, failed=False)
    # Failed once (one token left): of five lookups at once only one goes ahead.
    throttle.failed("2.2.2.2", None)
    admissions = [throttle.admit("2.2.2.2", None) for _ in range(5)]
    assert [a.retry_after for a in admissions] == [0, 1, 1, 1, 1]
    assert throttle.settle(admissions[0], failed=True) == ["client"]
    assert throttle.retry_after("2.2.2.2", None) == 1
    # A lookup that succeeds gives its token back.
    clock.now += 1
    ok = throttle.admit("2.2.2.2", None)
    assert ok.retry_after == 0 and throttle.admit("2.2.2.2", None).retry_after == 1
    throttle.settle(ok, failed=False)
    assert throttle.admit("2.2.2.2", None).retry_after == 0


# --- through the app ----------------------------------------------------------------------------------


async def test_two_authorization_headers_are_400_before_any_lookup(clean_db, ts_env, lookups):
    key = await shop_key(clean_db, "s1")
    async with running_app(clean_db, ts_env, worker=False) as app, http_client(app) as anon:
        for pair in ([key, _wrong_key()], [_wrong_key(), key], [key, key]):
            headers = [("Authorization", f"Bearer {k}") for k in pair]
            res = await anon.get("/campaigns/s1.c1", headers=headers)
            assert res.status_code == 400, res.text
            assert res.json() == {"detail": [{"field": "Authorization", "rule": "R-API-KEY",
                                              "message": "more than one Authorization header"}]}
        assert lookups == []
        # One header: the key is looked up (no such campaign: 404, past the gate).
        assert (await anon.get("/campaigns/s1.c1", headers=bearer(key))).status_code == 404
        assert lookups == [key]


async def test_a_flood_of_wrong_keys_is_throttled_and_other_clients_are_not(clean_db, ts_env, lookups):
    async with running_app(clean_db, ts_env) as app:
        key = await _with_campaign(clean_db, ts_env, app)
        app.state.auth_throttle.clock = clock = FakeClock()
        lookups.clear()
        async with http_client(app, ATTACKER) as attacker, http_client(app, OTHER, key) as other:
            for _ in range(FAILURE_BURST):
                assert (await attacker.get("/campaigns/s1.c1", headers=bearer(_wrong_key()))).status_code == 401
            assert len(lookups) == FAILURE_BURST
            for _ in range(200):
                throttled = await attacker.get("/campaigns/s1.c1", headers=bearer(_wrong_key()))
                assert throttled.status_code == 429, throttled.text
            assert len(lookups) == FAILURE_BURST  # refused before the database was asked
            assert throttled.headers["retry-after"] == "1"
            assert throttled.json()["detail"][0] == {"field": "Authorization", "rule": "R-API-KEY",
                                               "message": "too many failed authentications; retry in 1 s"}
            # The address is throttled whatever it sends, a valid key included, and costs no lookup.
            assert (await attacker.get("/campaigns/s1.c1", headers=bearer(key))).status_code == 429
            assert (await attacker.get("/campaigns/s1.c1")).status_code == 429
            assert len(lookups) == FAILURE_BURST
            # Another client: the valid key reads, a wrong key is a plain 401 (its own budget).
            res = await other.get("/campaigns/s1.c1")
            assert res.status_code == 200 and res.json()["workflow_id"] == "s1.c1", res.text
            assert (await other.get("/campaigns/s1.c1", headers=bearer(_wrong_key()))).status_code == 401
            # Public paths are not behind the gate at all.
            assert (await attacker.get("/openapi.json")).status_code == 200
            # Time heals: after Retry-After one more failure is allowed, even to 50 wrong keys sent at once.
            clock.now += int(throttled.headers["retry-after"])
            lookups.clear()
            burst = await asyncio.gather(*(attacker.get("/campaigns/s1.c1", headers=bearer(_wrong_key()))
                                           for _ in range(50)))
            assert sorted(r.status_code for r in burst) == [401] + [429] * 49
            assert len(lookups) == 1
            # And after the whole refill time the valid key from that address reads again.
            clock.now += FAILURE_BURST / FAILURE_REFILL_PER_S
            assert (await attacker.get("/campaigns/s1.c1", headers=bearer(key))).status_code == 200


async def test_guessing_one_prefix_is_throttled_across_clients(clean_db, ts_env, lookups):
    async with running_app(clean_db, ts_env) as app:
        victim = await _with_campaign(clean_db, ts_env, app, "s1")
        other_shop = await _with_campaign(clean_db, ts_env, app, "s2")
        app.state.auth_throttle.clock = clock = FakeClock()
        lookups.clear()
        prefix = _prefix(victim)
        answers = []
        for i in range(FAILURE_BURST + 10):  # a new address for every guess
            async with http_client(app, (f"198.51.100.{i + 1}", 1000)) as guesser:
                res = await guesser.get("/campaigns/s1.c1", headers=bearer(_wrong_key(prefix)))
                answers.append(res.status_code)
        assert answers == [401] * FAILURE_BURST + [429] * 10
        assert len(lookups) == FAILURE_BURST
        async with http_client(app, ("203.0.113.9", 1)) as fresh:
            # Another shop's key, from an address never seen: unaffected.
            res = await fresh.get("/campaigns/s2.c1", headers=bearer(other_shop))
            assert res.status_code == 200 and res.json()["workflow_id"] == "s2.c1", res.text
            # The price of the prefix budget: while it is spent, the prefix's own key waits too.
            res = await fresh.get("/campaigns/s1.c1", headers=bearer(victim))
            assert res.status_code == 429 and int(res.headers["retry-after"]) >= 1
            clock.now += FAILURE_BURST / FAILURE_REFILL_PER_S
            res = await fresh.get("/campaigns/s1.c1", headers=bearer(victim))
            assert res.status_code == 200, res.text


def _assert_security_headers(res: httpx.Response, what: str, csp: str = API_CSP, cache: str | None = "no-store"):
    for name, value in SECURITY_HEADERS.items():
        assert res.headers.get(name) == value, (what, name, dict(res.headers))
    assert res.headers.get("content-security-policy") == csp, what
    if cache:
        assert res.headers.get("cache-control") == cache, (what, res.headers.get("cache-control"))
    assert "server" not in res.headers, what


async def test_every_answer_carries_the_security_headers(clean_db, ts_env):
    async with running_app(clean_db, ts_env) as app:
        key = await _with_campaign(clean_db, ts_env, app)

        async def boom():
            raise RuntimeError("an unexpected failure")

        app.add_api_route("/boom-for-test", boom)
        app.state.auth_throttle.clock = FakeClock()
        now = await ts_env.get_current_time()
        async with http_client(app, OTHER, key, raise_app_exceptions=False) as owner, \
                http_client(app, ATTACKER) as anon:
            answers = {
                200: await owner.get("/campaigns/s1.c1"),
                201: await owner.post("/campaigns", json=_spec(now, campaign_id="c2")),
                202: await owner.post("/campaigns/s1.c1/pause"),
                400: await anon.get("/campaigns/s1.c1", headers=[("Authorization", "a"), ("Authorization", "b")]),
                401: await anon.get("/campaigns/s1.c1"),
                404: await owner.get("/nowhere"),
                409: await owner.post("/campaigns", json=_spec(now)),
                413: await owner.post("/campaigns", content=b"x" * (MAX_BODY_BYTES + 1),
                                      headers={"content-type": "application/json"}),
                422: await owner.post("/campaigns", json={"kind": "K-OLDCUST"}),
                500: await owner.get("/boom-for-test"),
            }
            for _ in range(FAILURE_BURST):
                await anon.get("/campaigns/s1.c1", headers=bearer(_wrong_key()))
            answers[429] = await anon.get("/campaigns/s1.c1", headers=bearer(_wrong_key()))
            for status, res in answers.items():
                assert res.status_code == status, (status, res.text)
                _assert_security_headers(res, str(status))
            assert answers[500].json() == {"detail": "internal server error"}
            assert "unexpected" not in answers[500].text
            _assert_security_headers(await anon.get("/openapi.json"), "/openapi.json")
            docs = await anon.get("/docs")
            csp = docs.headers["content-security-policy"]
            _assert_security_headers(docs, "/docs", csp=csp)
            assert "script-src 'self'" in csp and "style-src 'self'" in csp and "img-src 'self' data:" in csp
            assert "unsafe" not in csp and "http" not in csp and "frame-ancestors 'none'" in csp
            assert re.search(r"default-src 'none'", csp)
            asset = await anon.get("/docs/assets/swagger-ui.css")
            _assert_security_headers(asset, "asset", cache=None)


async def test_docs_are_served_from_this_app_only(clean_db, ts_env):
    async with running_app(clean_db, ts_env, worker=False) as app, http_client(app) as anon:
        page = await anon.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        html = page.text
        assert "http://" not in html and "https://" not in html and "//" not in html  # not even protocol-relative
        # No inline script: every <script> has a src and nothing inside (the CSP would block it).
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.S)
        assert scripts and all('src="' in attrs and not body.strip() for attrs, body in scripts)
        assert "style=" not in html and "<style" not in html and not re.search(r"\son\w+=", html)
        urls = re.findall(r'(?:src|href|data-openapi-url)="([^"]+)"', html)
        expected = {
            "/docs/assets/swagger-ui-bundle.js": "text/javascript",
            "/docs/assets/init.js": "text/javascript",
            "/docs/assets/swagger-ui.css": "text/css",
            "/docs/assets/favicon.png": "image/png",
            "/openapi.json": "application/json",
        }
        assert set(urls) == set(expected), urls
        for url, content_type in expected.items():
            res = await anon.get(url)
            assert res.status_code == 200, url
            assert res.headers["content-type"].split(";")[0] == content_type, (url, res.headers["content-type"])
            assert len(res.content) > 0
        assert b"SwaggerUIBundle" in (await anon.get("/docs/assets/swagger-ui-bundle.js")).content
        init = (await anon.get("/docs/assets/init.js")).text
        assert "SwaggerUIBundle(" in init and "http" not in init and "validatorUrl: null" in init
        # Only the assets the page uses are public; the rest of the package's folder is not served.
        for path in ("/docs/assets/redoc.standalone.js", "/docs/assets/", "/docs/assets/../../etc/passwd", "/docs/"):
            assert (await anon.get(path)).status_code == 401, path
        # None of the docs routes is part of the API's schema.
        assert not any(p.startswith("/docs") for p in app.openapi()["paths"])


async def test_a_trailing_slash_is_404_and_never_a_redirect(clean_db, ts_env):
    async with running_app(clean_db, ts_env, worker=False) as app:
        key = await shop_key(clean_db, "s1")
        hostile = {"Host": "evil.example"}
        async with http_client(app, key=key) as owner, http_client(app) as anon:
            for method, path in [("GET", "/campaigns/s1.c1/"), ("POST", "/campaigns/"), ("POST", "/campaigns/s1.c1/pause/"),
                                 ("GET", "/healthz/"), ("GET", "/openapi.json/")]:
                for who, expected in ((owner, 404), (anon, 401)):
                    res = await who.request(method, path, headers=hostile, json={})
                    assert res.status_code == expected, (method, path, res.status_code, res.text)
                    assert "location" not in res.headers and "evil" not in res.text, (method, path)
                    assert not res.is_redirect
