"""Tenant isolation and the API's exposure (issue 4).

* Another shop's key against every route of the app (taken from app.routes, so
  a route added later is covered or fails this test): no read, no control, and
  the very answer a campaign that does not exist gets (no existence leak).
  Routes that act on the key's own shop only (lists, the dashboard, loading,
  outcome events) answer the attacker about the attacker's shop: nothing of
  the victim's appears in the answer and nothing of the victim's changes.
* The API binds to loopback unless told otherwise, and does not name its server.
"""

from __future__ import annotations

import typing
from datetime import timedelta

import pytest
from fastapi.routing import APIRoute
from sluice.api.http import PUBLIC_PATHS
from sluice.schemas.settings import Settings
from sluice.workflows.calendar import local_day
from starlette.routing import Route
from temporalio.api.enums.v1 import EventType

from tests.api_helpers import client, running_app, shop_key
from tests.factories import add_customers

VICTIM, ATTACKER = "s1", "s2"
GHOST_OFFER = 987654321
# Strings of the victim's campaigns that no answer to the attacker may contain.
SECRETS = ("K-OLDCUST", "Spring secret", "progress", "paused", "totals", "not running", "cancelled", "completed")


def _spec(now, campaign_id: str, shop_id: str = VICTIM) -> dict:
    return {
        "kind": "K-OLDCUST", "shop_id": shop_id, "campaign_id": campaign_id, "scene": "Spring secret",
        "card_text": "Hello again", "send_date": (local_day(now, "Asia/Shanghai") + timedelta(days=2)).isoformat(),
        "send_time": "10:00",
    }


# Routes that act on the key's own shop, whatever the request names: checked for leaks and writes.
OWN_SHOP_ROUTES = {("GET", "/campaigns"), ("GET", "/dashboard"), ("POST", "/load/{kind}"), ("POST", "/events")}
# The victim's rows that no request of the attacker may change.
VICTIM_TABLES = ("campaigns", "shop_customers", "products", "coupons", "orders", "behaviour_events", "claims", "agents")
VICTIM_AGENT, GHOST_AGENT = "victim-agent", "ghost-agent"


def _routes(routes):
    """The app's routes, with included routers expanded (FastAPI keeps an included router as one entry)."""
    for route in routes:
        original = getattr(route, "original_router", None)
        if original is None:
            yield route
            continue
        assert not getattr(route.include_context, "prefix", ""), "a router included with a prefix: teach _routes"
        yield from _routes(original.routes)


async def _victim_rows(pool) -> dict:
    rows = {t: [dict(r) for r in await pool.fetch(f"SELECT * FROM {t} WHERE shop_id = $1 ORDER BY 1, 2", VICTIM)]
            for t in VICTIM_TABLES}
    rows["outcome_events"] = await pool.fetchval("SELECT count(*) FROM outcome_events WHERE shop_id = $1", VICTIM)
    return rows


def _path_values(route: APIRoute, victim_id: str, victim_offer: int) -> list[dict[str, str]]:
    """Every way to fill the route's path parameters aiming at the victim's campaign (or offer)."""
    combos: list[dict[str, str]] = [{}]
    for param in route.dependant.path_params:
        if param.name == "workflow_id":
            values = [victim_id]
        elif param.name == "offer_id":
            values = [str(victim_offer)]
        elif param.name == "agent_id":
            values = [VICTIM_AGENT]
        elif typing.get_origin(param.field_info.annotation) is typing.Literal:
            values = list(typing.get_args(param.field_info.annotation))
        else:
            pytest.fail(f"{route.path}: this test does not know how to fill path parameter {param.name!r}; "
                        "teach it, so that the route is checked against another shop's key")
        combos = [{**c, param.name: v} for c in combos for v in values]
    return combos


def _body_for(route: APIRoute, method: str, now, shop_id: str) -> dict | None:
    if route.body_field is None:
        return None
    if route.path in ("/campaigns", "/campaigns/preview") and method == "POST":
        return _spec(now, "c9", shop_id=shop_id)
    if route.path == "/offers/{offer_id}/claim":
        return None  # the body is optional
    if route.path == "/agents/{agent_id}/presence":
        return {"online": True}
    if route.path == "/load/{kind}":
        return {"records": [{"shop_id": shop_id, "consumer_id": 1, "nick": "taken over"}]}
    if route.path == "/events":
        return {"events": [{"event_id": "e1", "kind": "unsubscribed", "consumer_id": 1, "channel": "chat",
                            "occurred_at": now.isoformat(), "campaign_id": "c1"}]}
    pytest.fail(f"{method} {route.path} takes a body this test does not know; teach it")


async def test_another_shops_key_gets_nothing_on_every_route(clean_db, ts_env):
    pool = clean_db
    now = await ts_env.get_current_time()
    victim_key = await shop_key(pool, VICTIM)
    attacker_key = await shop_key(pool, ATTACKER)
    await add_customers(pool, VICTIM, list(range(1, 121)), ordered_at=now - timedelta(days=20),
                        visited_at=now - timedelta(days=2))
    async with running_app(pool, ts_env) as app, client(app, victim_key) as owner, \
            client(app, attacker_key) as attacker:
        # The victim's campaigns: one running (scheduled two days ahead), one finished.
        assert (await owner.post("/campaigns", json=_spec(now, "c1"))).status_code == 201
        assert (await owner.post("/campaigns", json=_spec(now, "done"))).status_code == 201
        assert (await owner.post("/campaigns/s1.done/cancel")).status_code == 202
        await ts_env.client.get_workflow_handle("s1.done").result()
        # An offer of the victim's (a sent K-REPURCHASE delivery's claim), still open.
        await pool.execute("INSERT INTO coupons (coupon_id, shop_id, name, valid_from, valid_to, stock)"
                           " VALUES ('v-c', $1, 'v', now() - interval '1 day', now() + interval '1 day', 5)", VICTIM)
        # A chat agent of the victim's, offline (R-PH-5: presence is the shop's to set).
        await pool.execute("INSERT INTO agents (shop_id, agent_id, name) VALUES ($1, $2, 'v')", VICTIM, VICTIM_AGENT)
        victim_offer = await pool.fetchval(
            "INSERT INTO claims (campaign_id, phase, consumer_id, day, channel, shop_id, coupon_id, expires_at)"
            " VALUES (1, 0, 1, current_date, 'chat', $1, 'v-c', now() + interval '1 hour') RETURNING id", VICTIM)
        before = [dict(r) for r in await pool.fetch("SELECT * FROM campaigns ORDER BY id")]
        victim_before = await _victim_rows(pool)
        history_before = await _signals(ts_env, "s1.c1")

        checked: list[str] = []
        for route in _routes(app.routes):
            if route.path in PUBLIC_PATHS:
                continue
            own_shop = [m for m in sorted(getattr(route, "methods", ())) if (m, route.path) in OWN_SHOP_ROUTES]
            for method in own_shop:
                for params in _path_values(route, "s1.c1", victim_offer):
                    path = route.path_format.format(**params)
                    res = await attacker.request(method, path, json=_body_for(route, method, now, VICTIM))
                    what = f"{method} {path}"
                    assert res.status_code in (200, 403, 422), (what, res.status_code, res.text)
                    for secret in ("Spring secret", "K-OLDCUST", "s1.c1", "s1.done", f'"shop_id":"{VICTIM}"'):
                        assert secret not in res.text, (what, secret, res.text)
                    checked.append(what)
            if own_shop:
                continue
            if not isinstance(route, APIRoute):
                kind = type(route).__name__
                assert isinstance(route, Route), f"{route.path}: a {kind} is not covered by this test"
                pytest.fail(f"{route.path}: a non-API route outside PUBLIC_PATHS; check it here")
            for method in sorted(route.methods):
                for victim_id in ("s1.c1", "s1.done"):
                    for params in _path_values(route, victim_id, victim_offer):
                        path = route.path_format.format(**params)
                        body = _body_for(route, method, now, VICTIM)
                        res = await attacker.request(method, path, json=body)
                        # The same request for something that does not exist at all.
                        ghost_params = {k: ("s1.ghost" if k == "workflow_id" else str(GHOST_OFFER) if k == "offer_id"
                                            else GHOST_AGENT if k == "agent_id" else v)
                                        for k, v in params.items()}
                        ghost_body = _body_for(route, method, now, "ghost-shop")
                        ghost = await attacker.request(method, route.path_format.format(**ghost_params),
                                                       json=ghost_body)
                        what = f"{method} {path}"
                        assert res.status_code in (403, 404), (what, res.status_code, res.text)
                        assert res.status_code == ghost.status_code, (what, res.text, ghost.text)
                        assert res.text.replace(victim_id, "ID").replace(str(victim_offer), "ID").replace(VICTIM_AGENT, "ID") == \
                            ghost.text.replace("s1.ghost", "ID").replace(str(GHOST_OFFER), "ID").replace(GHOST_AGENT, "ID"), what
                        assert _headers(res) == _headers(ghost), what
                        for secret in SECRETS:
                            assert secret not in res.text, (what, secret, res.text)
                        checked.append(what)
        assert any(c.startswith("GET /campaigns/") for c in checked)
        assert {"pause", "resume", "cancel"} <= {c.rsplit("/", 1)[-1] for c in checked}
        assert "POST /campaigns" in checked
        assert "POST /campaigns/preview" in checked and f"POST /offers/{victim_offer}/claim" in checked
        assert await pool.fetchval("SELECT state FROM claims WHERE id = $1", victim_offer) == "held"
        assert f"PUT /agents/{VICTIM_AGENT}/presence" in checked

        assert {"GET /campaigns", "GET /dashboard", "POST /events", "POST /load/customers"} <= set(checked)

        # No control: nothing written, no signal reached the victim's workflow, still running.
        assert [dict(r) for r in await pool.fetch("SELECT * FROM campaigns ORDER BY id")] == before
        assert await _victim_rows(pool) == victim_before
        assert await _signals(ts_env, "s1.c1") == history_before == []
        desc = await ts_env.client.get_workflow_handle("s1.c1").describe()
        assert desc.status is not None and desc.status.name == "RUNNING"
        status = await owner.get("/campaigns/s1.c1")
        assert status.status_code == 200 and status.json()["progress"]["paused"] is False
        # The owner is answered on the same paths: the attacker's 404s were not wrong URLs.
        assert (await owner.post("/campaigns/s1.c1/pause")).status_code == 202
        assert await _signals(ts_env, "s1.c1") == ["pause"]
        assert "not running" in (await owner.post("/campaigns/s1.done/pause")).text


async def _signals(ts_env, workflow_id: str) -> list[str]:
    history = await ts_env.client.get_workflow_handle(workflow_id).fetch_history()
    return [
        e.workflow_execution_signaled_event_attributes.signal_name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]


def _headers(res) -> dict:
    return {k: v for k, v in res.headers.items() if k not in ("content-length", "date")}


async def test_a_key_cannot_start_for_another_shop_even_with_its_own_campaign_id(clean_db, ts_env):
    """The 403 comes before any lookup: the victim's coupon or shop is never consulted."""
    pool = clean_db
    now = await ts_env.get_current_time()
    await shop_key(pool, VICTIM)
    attacker_key = await shop_key(pool, ATTACKER)
    await pool.execute(
        "INSERT INTO coupons (coupon_id, shop_id, name, valid_from, valid_to, stock) VALUES ($1, $2, $1, $3, $4, 5)",
        "victim-coupon", VICTIM, now - timedelta(days=1), now + timedelta(days=30),
    )
    async with running_app(pool, ts_env, worker=False) as app, client(app, attacker_key) as attacker:
        answers = set()
        for shop, coupon in [(VICTIM, "victim-coupon"), (VICTIM, "no-such"), ("ghost", "victim-coupon")]:
            res = await attacker.post("/campaigns", json={**_spec(now, "c1", shop_id=shop), "coupon_id": coupon})
            answers.add((res.status_code, res.text))
        assert len(answers) == 1 and next(iter(answers))[0] == 403
        # Its own shop, the victim's coupon: the coupon is "not found for this shop".
        res = await attacker.post("/campaigns",
                                  json={**_spec(now, "c1", shop_id=ATTACKER), "coupon_id": "victim-coupon"})
        assert res.status_code == 422 and res.json()["detail"][0]["rule"] == "R-BEN-1"
    assert await pool.fetchval("SELECT count(*) FROM campaigns") == 0


def test_the_api_binds_to_loopback_by_default(monkeypatch):
    monkeypatch.delenv("SLUICE_API_HOST", raising=False)
    assert Settings().api_host == "127.0.0.1"
    assert Settings.model_fields["api_host"].default == "127.0.0.1"
    # serve() passes it to uvicorn unchanged.
    import sluice.api.http as http

    seen = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: seen.update(kw))
    monkeypatch.setattr(http, "create_app", lambda settings, **_: None)
    http.serve(Settings())
    assert seen["host"] == "127.0.0.1"
    assert seen["server_header"] is False  # no `server: uvicorn` on any answer
    monkeypatch.setenv("SLUICE_API_HOST", "0.0.0.0")
    assert Settings().api_host == "0.0.0.0"  # an explicit choice (the compose file makes it)
