"""The HTTP API against a real Temporal (time-skipping server) and a real Postgres."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sluice.api.keys import revoke_key
from sluice.workflows.calendar import local_day
from sluice.workflows.campaign import CampaignWorkflow

from tests.api_helpers import bearer, client, running_app, shop_key
from tests.factories import add_customers, make_shop


@pytest.fixture
async def s1_key(clean_db):
    """An API key of shop s1 (the shop is created here; _shop adds its customers)."""
    return await shop_key(clean_db, "s1")


@pytest.fixture
async def app(clean_db, ts_env):
    async with running_app(clean_db, ts_env) as app:
        yield app


@pytest.fixture
async def api(app, s1_key):
    """A client that sends shop s1's key with every request."""
    async with client(app, s1_key) as http:
        yield http


async def _shop(pool, env, tz="Asia/Shanghai"):
    now = await env.get_current_time()
    await make_shop(pool, "s1", tz)
    await add_customers(pool, "s1", list(range(1, 121)), ordered_at=now - timedelta(days=20),
                        visited_at=now - timedelta(days=2))
    return now


def _spec(now, tz="Asia/Shanghai", **over):
    spec = {
        "kind": "K-OLDCUST", "shop_id": "s1", "campaign_id": "c1", "scene": "Spring",
        "card_text": "Hello again", "send_date": (local_day(now, tz) + timedelta(days=2)).isoformat(),
        "send_time": "10:00",
    }
    spec.update(over)
    return spec


async def test_start_twice_is_409_and_starts_nothing_more(api, clean_db, ts_env):
    now = await _shop(clean_db, ts_env)
    first = await api.post("/campaigns", json=_spec(now))
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["workflow_id"] == "s1.c1"
    assert body["temporal_ui_url"].endswith("/namespaces/default/workflows/s1.c1")
    second = await api.post("/campaigns", json=_spec(now, card_text="other"))
    assert second.status_code == 409
    assert await clean_db.fetchval("SELECT count(*) FROM campaigns") == 1
    status = await api.get("/campaigns/s1.c1")
    assert status.status_code == 200
    assert status.json()["kind"] == "K-OLDCUST"


@pytest.mark.parametrize(
    ("override", "field", "rule"),
    [
        ({"card_text": "x" * 51}, "card_text", "R-OC-3"),
        ({"card_text": "bad\u0007bell"}, "card_text", "R-OC-10"),
        ({"send_time": "07:59"}, "send_time", "R-WIN-1"),
        ({"send_time": "22:30"}, "send_time", "R-WIN-1"),
        ({"surprise": 1}, "surprise", "schema:extra_forbidden"),
        ({"send_date": "not-a-date"}, "send_date", "schema:date_from_datetime_parsing"),
        ({"kind": "K-NOPE"}, "body", "schema:union_tag_invalid"),
        ({"image": {"url": "https://img.example.com/x.png", "configured_at": "2099-01-01T00:00:00Z"}},
         "image.configured_at", "R-OC-3"),
        ({"coupon_id": "missing"}, "coupon_id", "R-BEN-1"),
    ],
)
async def test_invalid_specs_are_422_naming_field_and_rule(api, clean_db, ts_env, override, field, rule):
    now = await _shop(clean_db, ts_env)
    res = await api.post("/campaigns", json=_spec(now, **override))
    assert res.status_code == 422, res.text
    detail = res.json()["detail"]
    assert {"field": field, "rule": rule} in [{"field": d["field"], "rule": d["rule"]} for d in detail], detail
    assert await clean_db.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_emoji_are_allowed_and_malformed_json_is_422(api, clean_db, ts_env):
    now = await _shop(clean_db, ts_env)
    ok = await api.post("/campaigns", json=_spec(now, card_text="Welcome back 🎁🙂"))
    assert ok.status_code == 201, ok.text  # R-OC-10: emoji are not illegal
    bad = await api.post("/campaigns", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 422
    huge = await api.post("/campaigns", content=b"x" * (65 * 1024), headers={"content-type": "application/json"})
    assert huge.status_code == 413


async def test_pause_resume_cancel_through_http(api, clean_db, ts_env):
    now = await _shop(clean_db, ts_env)
    assert (await api.post("/campaigns", json=_spec(now))).status_code == 201
    assert (await api.post("/campaigns/s1.c1/pause")).status_code == 202
    assert (await api.get("/campaigns/s1.c1")).json()["progress"]["paused"] is True
    assert (await api.post("/campaigns/s1.c1/resume")).status_code == 202
    assert (await api.get("/campaigns/s1.c1")).json()["progress"]["paused"] is False
    assert (await api.post("/campaigns/s1.c1/cancel")).status_code == 202
    result = await ts_env.client.get_workflow_handle_for(CampaignWorkflow.run, "s1.c1").result()
    assert result.state == "cancelled"
    assert await clean_db.fetchval("SELECT state FROM campaigns WHERE workflow_id = 's1.c1'") == "cancelled"
    assert await clean_db.fetchval("SELECT count(*) FROM deliveries WHERE state = 'sent'") == 0
    # A finished campaign takes no more control, and unknown ones are 404.
    assert (await api.post("/campaigns/s1.c1/pause")).status_code == 404
    assert (await api.post("/campaigns/nope.x/pause")).status_code == 404
    assert (await api.get("/campaigns/nope.x")).status_code == 404
    assert (await api.post("/campaigns/s1.c1/explode")).status_code == 422


async def test_openapi_is_served(api):
    res = await api.get("/openapi.json")
    assert res.status_code == 200
    paths = res.json()["paths"]
    assert {"/campaigns", "/campaigns/{workflow_id}", "/campaigns/{workflow_id}/{action}"} <= set(paths)


@pytest.mark.parametrize("shop_id", ["nope", "s2"])
async def test_spec_for_another_or_unknown_shop_is_403_and_writes_nothing(api, clean_db, ts_env, shop_id):
    # "s2" exists, "nope" does not: the answers must not tell them apart.
    now = await _shop(clean_db, ts_env)
    await make_shop(clean_db, "s2", "Asia/Shanghai")
    res = await api.post("/campaigns", json=_spec(now, shop_id=shop_id))
    assert res.status_code == 403, res.text
    assert res.json() == {"detail": [{"field": "shop_id", "rule": "R-API-KEY",
                                      "message": "this API key may not start campaigns for that shop_id"}]}
    assert await clean_db.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_requests_without_a_valid_key_are_401(app, api, s1_key, clean_db, ts_env):
    now = await _shop(clean_db, ts_env)
    assert (await api.post("/campaigns", json=_spec(now))).status_code == 201
    prefix = s1_key.split("_")[1]
    tampered = s1_key[:-1] + ("A" if s1_key[-1] != "A" else "B")
    headers = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {s1_key}"},
        {"Authorization": "Bearer sk_000000000000_" + "x" * 43},  # well-formed, unknown
        bearer(tampered),  # right prefix, wrong secret
        bearer(s1_key + "x"),
        bearer("' OR 1=1 --"),
    ]
    async with client(app) as anon:
        for h in headers:
            for method, path in [("POST", "/campaigns"), ("GET", "/campaigns/s1.c1"),
                                 ("POST", "/campaigns/s1.c1/pause"), ("GET", "/nowhere")]:
                res = await anon.request(method, path, headers=h, json=_spec(now, campaign_id="c2"))
                assert res.status_code == 401, (h, method, path, res.text)
                assert res.headers["www-authenticate"] == "Bearer"
                assert res.json()["detail"][0]["rule"] == "R-API-KEY"
        # Public: health, the schema and its docs page.
        for path in ("/healthz", "/openapi.json", "/docs"):
            assert (await anon.get(path)).status_code == 200, path
        # A revoked key is refused from the next request on.
        assert (await anon.get("/campaigns/s1.c1", headers=bearer(s1_key))).status_code == 200
        assert await revoke_key(clean_db, prefix)
        assert (await anon.get("/campaigns/s1.c1", headers=bearer(s1_key))).status_code == 401
    assert await clean_db.fetchval("SELECT count(*) FROM campaigns") == 1


async def test_keys_are_stored_hashed(clean_db, s1_key):
    row = await clean_db.fetchrow("SELECT * FROM api_keys")
    prefix, secret = s1_key.split("_")[1], s1_key.split("_", 2)[2]
    assert row["prefix"] == prefix and row["shop_id"] == "s1" and row["revoked_at"] is None
    stored = " ".join(str(v) for v in row.values())
    assert secret not in stored and s1_key not in stored
    import hashlib

    assert bytes(row["secret_sha256"]) == hashlib.sha256(secret.encode()).digest()
