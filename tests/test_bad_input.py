"""Bad input, through the API and through the CLI (issue 4).

Every refusal names the field and the rule, and leaves nothing behind: no
campaigns row and no workflow. Covered: malformed JSON / YAML, wrong types,
unknown fields, out-of-range dates and times, huge payloads (with and without
Content-Length), invalid time zones (`sluice seed`), unknown shops, SQL-looking
ids, and every rule a K-OLDCUST or K-PHASED spec can break at submission:
R-OC-3, R-OC-10, R-OC-9 / R-BEN-1, R-WIN-1, R-PH-1, R-PH-2, R-PH-4, R-PH-6,
R-PH-7. (R-OC-4, fewer than 100 recipients, is decided on the day's T+1
snapshot by the workflow, not at submission; tests/test_oldcust_workflow.py.)
"""

from __future__ import annotations

import asyncio
import json
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from sluice.api.cli import app as cli_app
from sluice.workflows.calendar import day_window, local_day
from temporalio.service import RPCError, RPCStatusCode
from typer.testing import CliRunner

from tests.api_helpers import client, running_app, shop_key
from tests.factories import make_shop

TZ = "Asia/Shanghai"


# ---------------------------------------------------------------- specs


def oldcust(today: date, **over) -> dict:
    spec = {"kind": "K-OLDCUST", "shop_id": "s1", "campaign_id": "c1", "scene": "Spring",
            "card_text": "Hello again", "send_date": (today + timedelta(days=2)).isoformat(), "send_time": "10:00"}
    spec.update(over)
    return spec


def _phase(name: str, start: date, days: int = 2, **over) -> dict:
    p = {"name": name, "start_date": start.isoformat(), "end_date": (start + timedelta(days=days - 1)).isoformat(),
         "send_time": "10:00", "text": f"{name} text"}
    p.update(over)
    return p


def phased(today: date, phases: list[dict] | None = None, **over) -> dict:
    d = today + timedelta(days=1)
    spec = {"kind": "K-PHASED", "shop_id": "s1", "campaign_id": "p1",
            "phases": phases if phases is not None else [
                _phase("preheat", d), _phase("promote", d + timedelta(days=2)),
                _phase("recall", d + timedelta(days=4))]}
    spec.update(over)
    return spec


def _phases_with(today: date, index: int, **over) -> list[dict]:
    phases = phased(today)["phases"]
    phases[index] = {**phases[index], **over}
    return phases


def _send_at(today: date, days: int = 2) -> datetime:
    return day_window(today + timedelta(days=days), datetime.strptime("10:00", "%H:%M").time(), TZ).send_at


# (id, spec builder (today, send_at) -> dict, field, rule)
T = timedelta
RULE_CASES = [
    # R-OC-3: card text at most 50 characters; a custom image configured 24 h before sending.
    ("oc3-51-chars", lambda t, s: oldcust(t, card_text="x" * 51), "card_text", "R-OC-3"),
    ("oc3-51-emoji", lambda t, s: oldcust(t, card_text="🎁" * 51), "card_text", "R-OC-3"),
    ("oc3-image-23h", lambda t, s: oldcust(t, image={"url": "https://img.example/x.png",
                                                     "configured_at": (s - T(hours=23)).isoformat()}),
     "image.configured_at", "R-OC-3"),
    ("oc3-image-future", lambda t, s: oldcust(t, image={"url": "https://img.example/x.png",
                                                        "configured_at": (s + T(days=1)).isoformat()}),
     "image.configured_at", "R-OC-3"),
    # R-OC-10: control, format, private-use, unassigned characters, in every text field.
    ("oc10-bell", lambda t, s: oldcust(t, card_text="bad\u0007bell"), "card_text", "R-OC-10"),
    ("oc10-nul", lambda t, s: oldcust(t, card_text="nul\u0000"), "card_text", "R-OC-10"),
    ("oc10-zwsp-body", lambda t, s: oldcust(t, body="zero\u200bwidth"), "body", "R-OC-10"),
    ("oc10-bidi-scene", lambda t, s: oldcust(t, scene="evil\u202e"), "scene", "R-OC-10"),
    ("oc10-private-title", lambda t, s: oldcust(t, title="pua\ue000"), "title", "R-OC-10"),
    ("oc10-unassigned", lambda t, s: oldcust(t, card_text="x\u0378"), "card_text", "R-OC-10"),
    # R-OC-10: line / paragraph separators, blank look-alikes, replacement characters, blank texts.
    ("oc10-line-sep", lambda t, s: oldcust(t, card_text="one\u2028two"), "card_text", "R-OC-10"),
    ("oc10-para-sep-body", lambda t, s: oldcust(t, body="one\u2029two"), "body", "R-OC-10"),
    ("oc10-hangul-filler", lambda t, s: oldcust(t, card_text="\u3164"), "card_text", "R-OC-10"),
    ("oc10-choseong-filler-title", lambda t, s: oldcust(t, title="x\u115f"), "title", "R-OC-10"),
    ("oc10-jungseong-filler-scene", lambda t, s: oldcust(t, scene="\u1160Spring"), "scene", "R-OC-10"),
    ("oc10-halfwidth-filler", lambda t, s: oldcust(t, card_text="hi \uffa0"), "card_text", "R-OC-10"),
    ("oc10-braille-blank", lambda t, s: oldcust(t, card_text="\u2800\u2800"), "card_text", "R-OC-10"),
    ("oc10-object-replacement", lambda t, s: oldcust(t, card_text="img \ufffc"), "card_text", "R-OC-10"),
    ("oc10-replacement", lambda t, s: oldcust(t, body="caf\ufffd"), "body", "R-OC-10"),
    ("oc10-blank-card", lambda t, s: oldcust(t, card_text=" \n \n "), "card_text", "R-OC-10"),
    ("oc10-blank-ideographic", lambda t, s: oldcust(t, card_text="\u3000\u3000"), "card_text", "R-OC-10"),
    ("oc10-blank-scene", lambda t, s: oldcust(t, scene="   "), "scene", "R-OC-10"),
    ("oc10-blank-body", lambda t, s: oldcust(t, body="\n"), "body", "R-OC-10"),
    # R-OC-9 / R-BEN-1: the benefit exists for this shop, is in stock and valid when sent.
    ("ben1-missing", lambda t, s: oldcust(t, coupon_id="missing"), "coupon_id", "R-BEN-1"),
    ("ben1-other-shop", lambda t, s: oldcust(t, coupon_id="s2-coupon"), "coupon_id", "R-BEN-1"),
    ("ben1-sold-out", lambda t, s: oldcust(t, coupon_id="sold-out"), "coupon_id", "R-BEN-1"),
    ("oc9-expired", lambda t, s: oldcust(t, coupon_id="expired"), "coupon_id", "R-OC-9"),
    ("oc9-not-yet", lambda t, s: oldcust(t, coupon_id="later"), "coupon_id", "R-OC-9"),
    # R-WIN-1: 08:00-22:00 shop-local, and not a day whose window has closed.
    ("win1-early", lambda t, s: oldcust(t, send_time="07:59"), "send_time", "R-WIN-1"),
    ("win1-late", lambda t, s: oldcust(t, send_time="22:00"), "send_time", "R-WIN-1"),
    ("win1-late-seconds", lambda t, s: oldcust(t, send_time="22:00:00"), "send_time", "R-WIN-1"),
    ("win1-early-seconds", lambda t, s: oldcust(t, send_time="07:59:59"), "send_time", "R-WIN-1"),
    ("win1-offset", lambda t, s: oldcust(t, send_time="10:00+08:00"), "send_time", "R-WIN-1"),
    ("win1-past", lambda t, s: oldcust(t, send_date=(t - T(days=1)).isoformat()), "send_date", "R-WIN-1"),
    ("win1-past-range", lambda t, s: oldcust(t, send_date=(t - T(days=9)).isoformat(),
                                             end_date=(t - T(days=1)).isoformat()), "send_date", "R-WIN-1"),
    # R-PH-2 (date range of an old-customer task).
    ("oc-end-before", lambda t, s: oldcust(t, end_date=t.isoformat()), "body", "R-PH-2"),
    ("oc-too-long", lambda t, s: oldcust(t, end_date=(t + T(days=40)).isoformat()), "body", "R-PH-2"),
    # R-PH-1: promote required, order preheat -> promote -> recall, each once, no overlap.
    ("ph1-no-promote", lambda t, s: phased(t, [_phase("preheat", t + T(days=1)), _phase("recall", t + T(days=4))]),
     "body", "R-PH-1"),
    ("ph1-order", lambda t, s: phased(t, [_phase("promote", t + T(days=1)), _phase("preheat", t + T(days=4))]),
     "body", "R-PH-1"),
    ("ph1-twice", lambda t, s: phased(t, [_phase("promote", t + T(days=1)), _phase("promote", t + T(days=4))]),
     "body", "R-PH-1"),
    ("ph1-overlap", lambda t, s: phased(t, [_phase("preheat", t + T(days=1), days=3),
                                            _phase("promote", t + T(days=3))]), "body", "R-PH-1"),
    # R-PH-2: a send time between 08:00 and 21:00; a date range in order and bounded; not over.
    ("ph2-late", lambda t, s: phased(t, _phases_with(t, 1, send_time="21:01")), "phases.1.send_time", "R-PH-2"),
    ("ph2-late-second", lambda t, s: phased(t, _phases_with(t, 1, send_time="21:00:01")), "phases.1.send_time",
     "R-PH-2"),
    ("ph2-early", lambda t, s: phased(t, _phases_with(t, 0, send_time="07:30")), "phases.0.send_time", "R-PH-2"),
    ("ph2-offset", lambda t, s: phased(t, _phases_with(t, 0, send_time="10:00Z")), "phases.0.send_time", "R-PH-2"),
    ("ph2-reversed", lambda t, s: phased(t, _phases_with(t, 2, end_date=t.isoformat())), "phases.2", "R-PH-2"),
    ("ph2-too-long", lambda t, s: phased(t, _phases_with(t, 2, end_date=(t + T(days=90)).isoformat())),
     "phases.2", "R-PH-2"),
    ("ph2-over", lambda t, s: phased(t, [_phase("promote", t - T(days=5)), _phase("recall", t - T(days=2))]),
     "phases", "R-PH-2"),
    # R-PH-4: a named audience must exist.
    ("ph4-audience", lambda t, s: phased(t, _phases_with(t, 0, audience="everyone_ever")),
     "phases.0.audience", "R-PH-4"),
    # R-PH-6: content text, legal characters only.
    ("ph6-text", lambda t, s: phased(t, _phases_with(t, 1, text="promo\u0000")), "phases.1.text", "R-PH-6"),
    ("ph6-line-sep", lambda t, s: phased(t, _phases_with(t, 1, text="promo\u2028now")), "phases.1.text", "R-PH-6"),
    ("ph6-hangul-filler", lambda t, s: phased(t, _phases_with(t, 0, text="\u3164")), "phases.0.text", "R-PH-6"),
    ("ph6-braille-blank", lambda t, s: phased(t, _phases_with(t, 2, text="sale \u2800")), "phases.2.text", "R-PH-6"),
    ("ph6-blank", lambda t, s: phased(t, _phases_with(t, 1, text=" \n ")), "phases.1.text", "R-PH-6"),
    ("ph6-blank-spaces", lambda t, s: phased(t, _phases_with(t, 1, text="\u3000 \n")), "phases.1.text", "R-PH-6"),
    # R-PH-7: a daily cap is at least 1 (and bounded).
    ("ph7-zero", lambda t, s: phased(t, _phases_with(t, 1, daily_cap=0)),
     "phases.1.daily_cap", "schema:greater_than_equal"),
    ("ph7-huge", lambda t, s: phased(t, _phases_with(t, 1, daily_cap=10**15)),
     "phases.1.daily_cap", "schema:less_than_equal"),
]

def _image(url: str) -> dict:
    return {"url": url, "configured_at": "2020-01-01T00:00:00Z"}


# R-OC-3: the custom image's URL is handed to consumers: http(s), a public ASCII host, nothing hidden.
BAD_IMAGE_URLS = [
    ("url-javascript", "javascript:alert(1)"),
    ("url-data", "data:image/png;base64,AAAA"),
    ("url-ftp", "ftp://img.example.com/x.png"),
    ("url-relative", "//img.example.com/x.png"),
    ("url-no-slashes", "http:img.example.com/x.png"),
    ("url-nul", "https://i.example/\u0000"),
    ("url-rlo", "http://example.com/\u202egnp.exe"),
    ("url-rlo-encoded", "http://example.com/%E2%80%AEgnp.exe"),
    ("url-zwsp-host", "http://exa\u200bmple.com/x.png"),
    ("url-space", "http://example.com/a b.png"),
    ("url-backslash", "http://evil.com\\@example.com/x.png"),
    ("url-hangul-filler", "http://example.com/\u3164.png"),
    ("url-cyrillic-a", "http://\u0430pple.com/x.png"),
    ("url-fullwidth", "http://\uff45xample.com/x.png"),
    ("url-punycode", "http://xn--pple-43d.com/"),
    ("url-userinfo", "http://user@host.com/x.png"),
    ("url-userinfo-password", "https://img.example.com:pw@evil.com/x.png"),
    ("url-metadata", "http://169.254.169.254/latest/meta-data/"),
    ("url-loopback", "http://127.0.0.1/x.png"),
    ("url-loopback-v6", "http://[::1]/x.png"),
    ("url-mapped-v6", "http://[::ffff:127.0.0.1]/x.png"),
    ("url-private", "http://10.0.0.1/x.png"),
    ("url-private-192", "http://192.168.1.1:8080/x.png"),
    ("url-unspecified", "http://0.0.0.0/x.png"),
    ("url-decimal", "http://2130706433/x.png"),
    ("url-hex", "http://0x7f.1/x.png"),
    ("url-short", "http://127.1/x.png"),
    ("url-octal", "http://0177.0.0.1/x.png"),
    ("url-localhost", "http://localhost/x.png"),
    ("url-sub-localhost", "http://img.localhost/x.png"),
    ("url-local", "http://printer.local/x.png"),
    ("url-internal", "http://metadata.google.internal/x.png"),
    ("url-home-arpa", "http://nas.home.arpa/x.png"),
    ("url-no-dot", "http://intranet/x.png"),
    ("url-numeric-tld", "http://example.123a/x.png"),
    ("url-bad-port", "http://example.com:99999/x.png"),
]


def _with_image(url: str):
    return lambda t, s: oldcust(t, image=_image(url))


RULE_CASES += [(name, _with_image(url), "image.url", "R-OC-3") for name, url in BAD_IMAGE_URLS]

SCHEMA_CASES = [
    # wrong types
    ("type-card", lambda t, s: oldcust(t, card_text=5), "card_text", "schema:string_type"),
    ("type-shop", lambda t, s: oldcust(t, shop_id=7), "shop_id", "schema:string_type"),
    ("type-time", lambda t, s: oldcust(t, send_time=True), "send_time", "schema:time_type"),
    ("type-pacing", lambda t, s: oldcust(t, pacing="fast"), "pacing", "schema:model_*"),
    ("type-per-hour", lambda t, s: oldcust(t, pacing={"per_hour": "lots"}), "pacing.per_hour", "schema:int_type"),
    # strict numbers and dates: no string, boolean or float passes as an integer, no number as a date or time
    ("per-hour-str", lambda t, s: oldcust(t, pacing={"per_hour": "5"}), "pacing.per_hour", "schema:int_type"),
    ("per-hour-bool", lambda t, s: oldcust(t, pacing={"per_hour": True}), "pacing.per_hour", "schema:int_type"),
    ("per-hour-float", lambda t, s: oldcust(t, pacing={"per_hour": 2.0}), "pacing.per_hour", "schema:int_type"),
    ("daily-cap-str", lambda t, s: phased(t, _phases_with(t, 1, daily_cap="5")), "phases.1.daily_cap",
     "schema:int_type"),
    ("daily-cap-bool", lambda t, s: phased(t, _phases_with(t, 1, daily_cap=True)), "phases.1.daily_cap",
     "schema:int_type"),
    ("daily-cap-float", lambda t, s: phased(t, _phases_with(t, 1, daily_cap=2.0)), "phases.1.daily_cap",
     "schema:int_type"),
    ("send-date-number", lambda t, s: oldcust(t, send_date=20301231), "send_date", "schema:date_type"),
    ("send-date-timestamp", lambda t, s: oldcust(t, send_date=1924905600), "send_date", "schema:date_type"),
    ("send-date-bool", lambda t, s: oldcust(t, send_date=True), "send_date", "schema:date_type"),
    ("send-date-datetime", lambda t, s: oldcust(t, send_date=(t + T(days=2)).isoformat() + "T00:00:00"),
     "send_date", "schema:date_parsing"),
    ("end-date-number", lambda t, s: oldcust(t, end_date=20301231), "end_date", "schema:date_type"),
    ("start-date-number", lambda t, s: phased(t, _phases_with(t, 0, start_date=1924905600)), "phases.0.start_date",
     "schema:date_type"),
    ("send-time-seconds", lambda t, s: oldcust(t, send_time=36000), "send_time", "schema:time_type"),
    ("send-time-yaml-600", lambda t, s: oldcust(t, send_time=600), "send_time", "schema:time_type"),
    ("phase-send-time-number", lambda t, s: phased(t, _phases_with(t, 1, send_time=36000)), "phases.1.send_time",
     "schema:time_type"),
    ("configured-at-number", lambda t, s: oldcust(t, image={"url": "https://i.example/x.png", "configured_at": 1e9}),
     "image.configured_at", "schema:datetime_type"),
    ("type-phases", lambda t, s: phased(t, phases="all of them"), "phases", "schema:list_type"),
    ("enum-channel", lambda t, s: oldcust(t, channel="pigeon"), "channel", "schema:enum"),
    ("enum-phase", lambda t, s: phased(t, _phases_with(t, 0, name="teaser")), "phases.0.name", "schema:enum"),
    ("kind-unknown", lambda t, s: oldcust(t, kind="K-NOPE"), "body", "schema:union_tag_invalid"),
    ("kind-missing", lambda t, s: {k: v for k, v in oldcust(t).items() if k != "kind"},
     "body", "schema:union_tag_not_found"),
    ("missing-card", lambda t, s: {k: v for k, v in oldcust(t).items() if k != "card_text"},
     "card_text", "schema:missing"),
    ("empty-card", lambda t, s: oldcust(t, card_text=""), "card_text", "schema:string_too_short"),
    ("no-phases", lambda t, s: phased(t, []), "phases", "schema:too_short"),
    ("four-phases", lambda t, s: phased(t, phased(t)["phases"] + [_phase("recall", t + T(days=9))]),
     "phases", "schema:too_long"),
    # unknown fields, at every level
    ("extra-top", lambda t, s: oldcust(t, surprise=1), "surprise", "schema:extra_forbidden"),
    ("extra-pacing", lambda t, s: oldcust(t, pacing={"per_hour": 5, "burst": 9}), "pacing.burst",
     "schema:extra_forbidden"),
    ("extra-image", lambda t, s: oldcust(t, image={"url": "https://i.example/x.png",
                                                   "configured_at": "2020-01-01T00:00:00Z", "alt": "x"}),
     "image.alt", "schema:extra_forbidden"),
    ("extra-phase", lambda t, s: phased(t, _phases_with(t, 0, colour="red")), "phases.0.colour",
     "schema:extra_forbidden"),
    # out-of-range dates and times
    ("time-25h", lambda t, s: oldcust(t, send_time="25:00"), "send_time", "schema:time_parsing"),
    ("date-feb-30", lambda t, s: oldcust(t, send_date="2026-02-30"), "send_date", "schema:date_from_datetime_parsing"),
    ("date-9999", lambda t, s: oldcust(t, send_date="9999-12-31"), "send_date", "schema:less_than_equal"),
    ("date-0001", lambda t, s: oldcust(t, send_date="0001-01-01"), "send_date", "schema:greater_than_equal"),
    ("phase-9999", lambda t, s: phased(t, _phases_with(t, 2, end_date="9999-12-31")), "phases.2.end_date",
     "schema:less_than_equal"),
    ("image-naive", lambda t, s: oldcust(t, image={"url": "https://i.example/x.png",
                                                   "configured_at": "2020-01-01T00:00:00"}),
     "image.configured_at", "schema:timezone_aware"),
    ("image-9999", lambda t, s: oldcust(t, image={"url": "https://i.example/x.png",
                                                  "configured_at": "9999-12-31T23:59:59+00:00"}),
     "image.configured_at", "schema:less_than_equal"),
    ("image-url-long", lambda t, s: oldcust(t, image=_image("https://i.example/" + "x" * 2048)),
     "image.url", "schema:string_too_long"),
    ("per-hour-0", lambda t, s: oldcust(t, pacing={"per_hour": 0}), "pacing.per_hour", "schema:greater_than_equal"),
    # SQL-looking and oversized ids never pass the id pattern
    ("sql-campaign", lambda t, s: oldcust(t, campaign_id="x'; DROP TABLE campaigns;--"), "campaign_id",
     "schema:string_pattern_mismatch"),
    ("sql-coupon", lambda t, s: oldcust(t, coupon_id="' OR '1'='1"), "coupon_id", "schema:string_pattern_mismatch"),
    ("sql-audience", lambda t, s: phased(t, _phases_with(t, 0, audience="inquired_30d; DELETE FROM shops")),
     "phases.0.audience", "schema:string_pattern_mismatch"),
    ("id-dot", lambda t, s: oldcust(t, campaign_id="a.b"), "campaign_id", "schema:string_pattern_mismatch"),
    ("id-65", lambda t, s: oldcust(t, campaign_id="x" * 65), "campaign_id", "schema:string_pattern_mismatch"),
]


async def _setup(pool, ts_env) -> tuple[str, date, datetime]:
    now = await ts_env.get_current_time()
    key = await shop_key(pool, "s1", TZ)
    await make_shop(pool, "s2", TZ)
    day = timedelta(days=1)
    for coupon, shop, valid_from, valid_to, stock in [
        ("good", "s1", now - day, now + 30 * day, 10),
        ("s2-coupon", "s2", now - day, now + 30 * day, 10),
        ("sold-out", "s1", now - day, now + 30 * day, 0),
        ("expired", "s1", now - 30 * day, now, 10),
        ("later", "s1", now + 10 * day, now + 30 * day, 10),
    ]:
        await pool.execute(
            "INSERT INTO coupons (coupon_id, shop_id, name, valid_from, valid_to, stock) VALUES ($1, $2, $1, $3, $4, $5)",
            coupon, shop, valid_from, valid_to, stock,
        )
    return key, local_day(now, TZ), now


async def _nothing_written(pool, ts_env, *workflow_ids: str) -> None:
    assert await pool.fetchval("SELECT count(*) FROM campaigns") == 0
    for wf_id in workflow_ids:
        with pytest.raises(RPCError) as exc:
            await ts_env.client.get_workflow_handle(wf_id).describe()
        assert exc.value.status == RPCStatusCode.NOT_FOUND, wf_id


def _named(detail: list[dict], field: str, rule: str) -> bool:
    """`rule` may end with '*': pydantic names a wrong type for a model differently for JSON and Python input."""
    return any(d["field"] == field and (d["rule"] == rule or rule.endswith("*") and d["rule"].startswith(rule[:-1]))
               for d in detail)


# ---------------------------------------------------------------- API


@pytest.fixture
async def api_env(clean_db, ts_env):
    key, today, now = await _setup(clean_db, ts_env)
    async with running_app(clean_db, ts_env, worker=False) as app, client(app, key) as http:
        yield http, today


@pytest.mark.parametrize(("build", "field", "rule"), [c[1:] for c in RULE_CASES + SCHEMA_CASES],
                         ids=[c[0] for c in RULE_CASES + SCHEMA_CASES])
async def test_api_refuses_naming_field_and_rule(api_env, clean_db, ts_env, build, field, rule):
    http, today = api_env
    spec = build(today, _send_at(today))
    res = await http.post("/campaigns", json=spec)
    assert res.status_code == 422, res.text
    detail = res.json()["detail"]
    assert _named(detail, field, rule), detail
    assert all(d["message"] for d in detail)
    await _nothing_written(clean_db, ts_env, "s1.c1", "s1.p1")


def _valid_specs(today: date) -> list[dict]:
    configured = (_send_at(today) - T(hours=24)).isoformat()
    return [
        oldcust(today), oldcust(today, campaign_id="c2", coupon_id="good"), phased(today),
        oldcust(today, campaign_id="c3", card_text="🎁" * 50, send_time="21:59"),
        oldcust(today, campaign_id="c4", image={"url": "https://img.example/x.png", "configured_at": configured}),
        # R-WIN-1: the window closes at 22:00, so 21:59:59 is still inside it.
        oldcust(today, campaign_id="c5", send_time="21:59:59"),
        # R-OC-10: emoji with joiners and variation selectors, CJK with the ideographic space inside.
        oldcust(today, campaign_id="c6", card_text="老朋友\u3000欢迎回来 👨\u200d👩\u200d👧 ❤\ufe0f",
                body="第一行\n第二行 🧑🏻\u200d💻", scene="春季\u3000回归", title="🎁 限时"),
        # R-PH-2: 21:00 itself is the latest phased send time; strict integers are still integers.
        phased(today, _phases_with(today, 1, send_time="21:00", daily_cap=5, text="促销\u3000开始 🎉"),
               campaign_id="p2", pacing={"per_hour": 1000}),
        # Public hosts and addresses, ports, queries, a non-ASCII path.
        oldcust(today, campaign_id="c7", image={"url": "https://cdn.img-host.example.com:8443/图片/a%20b.png?v=1#x",
                                                "configured_at": configured}),
        oldcust(today, campaign_id="c8", image={"url": "http://8.8.8.8/x.png", "configured_at": configured}),
        oldcust(today, campaign_id="c9", image={"url": "HTTPS://IMG.EXAMPLE.COM/x.png", "configured_at": configured}),
    ]


async def test_the_valid_specs_of_these_tests_are_accepted(api_env, clean_db):
    """The control: the specs the cases above break are themselves accepted."""
    http, today = api_env
    specs = _valid_specs(today)
    for spec in specs:
        res = await http.post("/campaigns", json=spec)
        assert res.status_code == 201, (spec, res.text)
    assert await clean_db.fetchval("SELECT count(*) FROM campaigns") == len(specs)


@pytest.mark.parametrize(
    ("build", "field", "expect"),
    [
        (lambda t: oldcust(t, pacing={"per_hour": "5"}), "pacing.per_hour", "Input should be a valid integer (got '5')"),
        (lambda t: oldcust(t, send_time=36000), "send_time", '"HH:MM" time string (quoted, in YAML) (got 36000)'),
        (lambda t: oldcust(t, send_date=20301231), "send_date", '"YYYY-MM-DD" date string (got 20301231)'),
        (lambda t: oldcust(t, shop_id=7), "shop_id", "Input should be a valid string (got 7)"),
        (lambda t: oldcust(t, send_time="22:00:30"), "send_time",
         "send time 22:00:30 is outside 08:00-22:00 shop-local: it must be at or after 08:00 and before 22:00"),
        (lambda t: phased(t, _phases_with(t, 1, send_time="21:00:01")), "phases.1.send_time",
         "send time 21:00:01 is outside 08:00-21:00 shop-local: it must be at or after 08:00 and at or before 21:00"),
        (lambda t: oldcust(t, card_text="a\u2028b\u3164"), "card_text", "text contains illegal characters U+2028, U+3164"),
        (lambda t: oldcust(t, card_text="\u3000 \n"), "card_text", "text is blank"),
        (lambda t: oldcust(t, image=_image("http://\u0430pple.com/")), "image.url",
         "non-ASCII characters: refused as a look-alike risk"),
        (lambda t: oldcust(t, image=_image("http://xn--pple-43d.com/")), "image.url", "punycode (xn--) label"),
    ],
    ids=["got-str", "got-seconds", "got-date-number", "got-int", "win1-bound", "ph2-bound", "code-points", "blank",
         "cyrillic", "punycode"],
)
async def test_api_messages_say_what_was_sent_and_the_bound(api_env, build, field, expect):
    http, today = api_env
    res = await http.post("/campaigns", json=build(today))
    assert res.status_code == 422, res.text
    messages = [d["message"] for d in res.json()["detail"] if d["field"] == field]
    assert any(expect in m for m in messages), res.text


async def test_api_echoes_at_most_60_characters_of_an_input(api_env):
    http, today = api_env
    res = await http.post("/campaigns", json=oldcust(today, body="x" * 5000, pacing={"per_hour": "9" * 500}))
    assert res.status_code == 422, res.text
    detail = res.json()["detail"]
    assert {d["field"] for d in detail} == {"body", "pacing.per_hour"}, detail
    for d in detail:
        echoed = d["message"].split(" (got ", 1)[1]
        assert len(echoed) <= 61, d  # 60 and the closing parenthesis


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        (b"{not json", "body", "schema:json_invalid"),
        (b"", "body", "schema:missing"),
        (b'{"kind": "K-OLDCUST",', "body", "schema:json_invalid"),
        (b'{"kind": "K-OLDCUST", "card_text": "\xff"}', "body", "schema:json_invalid"),  # not UTF-8
        (b"[" * 30_000 + b"]" * 30_000, "body", "schema:json_invalid"),  # deeper than the parser goes
        (b"null", "body", "schema:model_attributes_type"),
        (b"[]", "body", "schema:model_attributes_type"),
        (b'"K-OLDCUST"', "body", "schema:model_attributes_type"),
        (b"12", "body", "schema:model_attributes_type"),
    ],
    ids=["garbage", "empty", "truncated", "not-utf8", "deep", "null", "array", "string", "number"],
)
async def test_api_refuses_malformed_json(api_env, clean_db, ts_env, body, field, rule):
    http, _ = api_env
    res = await http.post("/campaigns", content=body, headers={"content-type": "application/json"})
    assert res.status_code == 422, res.text
    assert _named(res.json()["detail"], field, rule), res.text
    await _nothing_written(clean_db, ts_env)


async def test_api_refuses_huge_payloads(api_env, clean_db, ts_env):
    http, today = api_env
    big = json.dumps(oldcust(today, body="x" * 70_000)).encode()
    # Declared size over the limit.
    res = await http.post("/campaigns", content=big, headers={"content-type": "application/json"})
    assert res.status_code == 413 and _named(res.json()["detail"], "body", "R-API-SIZE"), res.text

    # No Content-Length (chunked): the bytes are counted as they come, and reading stops at the limit.
    read = 0

    async def chunks():
        nonlocal read
        for i in range(0, len(big), 4096):
            read += 4096
            yield big[i:i + 4096]

    res = await http.post("/campaigns", content=chunks(), headers={"content-type": "application/json"})
    assert res.status_code == 413 and _named(res.json()["detail"], "body", "R-API-SIZE"), res.text
    assert read <= 64 * 1024 + 4096

    # A lying Content-Length.
    res = await http.post("/campaigns", content=b"{}", headers={"content-type": "application/json",
                                                                "content-length": "-1"})
    assert res.status_code == 413

    # Just under the limit, but a field far over its own: a 422 naming it, not a 5xx.
    res = await http.post("/campaigns", json=oldcust(today, card_text="x" * 60_000))
    assert res.status_code == 422 and _named(res.json()["detail"], "card_text", "R-OC-3"), res.text[:300]
    res = await http.post("/campaigns", json=oldcust(today, body="x" * 60_000))
    assert res.status_code == 422 and _named(res.json()["detail"], "body", "schema:string_too_long")
    await _nothing_written(clean_db, ts_env, "s1.c1")


@pytest.mark.parametrize("shop_id", ["nope", "s2", "s1'--", "s1\" OR \"1\"=\"1"])
async def test_api_refuses_unknown_foreign_and_sql_looking_shops(api_env, clean_db, ts_env, shop_id):
    http, today = api_env
    res = await http.post("/campaigns", json=oldcust(today, shop_id=shop_id))
    if shop_id.isalnum():
        # A well-formed id that is not the key's shop: the same 403 whether it exists or not.
        assert res.status_code == 403 and _named(res.json()["detail"], "shop_id", "R-API-KEY"), res.text
    else:
        assert res.status_code == 422 and _named(res.json()["detail"], "shop_id", "schema:string_pattern_mismatch")
    await _nothing_written(clean_db, ts_env, "s1.c1")


@pytest.mark.parametrize("path", ["/campaigns/x'; DROP TABLE campaigns;--", "/campaigns/s1.c1' OR '1'='1",
                                  "/campaigns/s1.c1%00", "/campaigns/" + "a" * 200 + ".b"])
async def test_api_refuses_sql_looking_workflow_ids(api_env, clean_db, path):
    http, today = api_env
    assert (await http.post("/campaigns", json=oldcust(today))).status_code == 201
    for method, suffix in (("GET", ""), ("POST", "/pause"), ("POST", "/cancel")):
        res = await http.request(method, path + suffix)
        assert res.status_code == 422, (method, path, res.text)
        assert _named(res.json()["detail"], "path.workflow_id", "schema:string_pattern_mismatch") or \
            _named(res.json()["detail"], "path.workflow_id", "schema:string_too_long"), res.text
    assert await clean_db.fetchval("SELECT workflow_id FROM campaigns") == "s1.c1"  # the table is intact


# ---------------------------------------------------------------- CLI


@pytest.fixture
async def cli_env(clean_db, ts_env, db_dsn, tmp_path):
    _, today, _ = await _setup(clean_db, ts_env)
    env = {
        "DATABASE_URL": db_dsn,
        "TEMPORAL_ADDRESS": ts_env.client.service_client.config.target_host,
        "SLUICE_DATA_DIR": str(tmp_path / "data"),
        "SLUICE_TASK_QUEUE": "cli-bad-input",
        "COLUMNS": "300",
    }

    async def run(*args: str):
        # The CLI runs its own event loop (asyncio.run): give it a thread.
        result = await asyncio.to_thread(CliRunner().invoke, cli_app, list(args), env=env)
        return result.exit_code, " ".join(result.output.split())

    return run, today, tmp_path


def _write(folder: Path, name: str, content) -> Path:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif name.endswith((".yaml", ".yml")):
        path.write_text(yaml.safe_dump(content, allow_unicode=True))
    else:
        path.write_text(json.dumps(content))
    return path


CLI_DB_CASES = [  # rules only the database can decide, through the same service path as the API
    ("unknown-shop", lambda t, s: oldcust(t, shop_id="nope"), "shop_id", "R-API-SHOP"),
    ("ben1-missing", lambda t, s: oldcust(t, coupon_id="missing"), "coupon_id", "R-BEN-1"),
    ("ben1-other-shop", lambda t, s: oldcust(t, coupon_id="s2-coupon"), "coupon_id", "R-BEN-1"),
    ("oc9-expired", lambda t, s: oldcust(t, coupon_id="expired"), "coupon_id", "R-OC-9"),
    ("win1-past", lambda t, s: oldcust(t, send_date=(t - T(days=1)).isoformat()), "send_date", "R-WIN-1"),
    ("oc3-image", lambda t, s: oldcust(t, image={"url": "https://img.example/x.png",
                                                 "configured_at": (s - T(hours=1)).isoformat()}),
     "image.configured_at", "R-OC-3"),
    ("ph2-over", lambda t, s: phased(t, [_phase("promote", t - T(days=5))]), "phases", "R-PH-2"),
    ("ph4-audience", lambda t, s: phased(t, _phases_with(t, 0, audience="everyone_ever")),
     "phases.0.audience", "R-PH-4"),
]
CLI_SCHEMA_CASES = [c for c in RULE_CASES + SCHEMA_CASES
                    if c[0] in {"oc3-51-chars", "oc10-bell", "win1-early", "win1-offset", "ph1-order", "ph2-late",
                                "ph6-text", "type-card", "extra-top", "extra-phase", "time-25h", "date-9999",
                                "kind-unknown", "sql-campaign", "image-naive",
                                # the hardened rules: the CLI refuses them exactly like the API
                                "oc10-line-sep", "oc10-para-sep-body", "oc10-hangul-filler", "oc10-braille-blank",
                                "oc10-object-replacement", "oc10-blank-card", "oc10-blank-ideographic",
                                "ph6-line-sep", "ph6-blank", "win1-late-seconds", "ph2-late-second",
                                "url-javascript", "url-rlo", "url-zwsp-host", "url-cyrillic-a", "url-punycode",
                                "url-userinfo", "url-metadata", "url-loopback-v6", "url-private", "url-decimal",
                                "url-hex", "url-short", "url-localhost",
                                "per-hour-str", "per-hour-bool", "per-hour-float", "daily-cap-str", "daily-cap-float",
                                "send-date-number", "end-date-number", "start-date-number", "send-time-seconds",
                                "send-time-yaml-600", "configured-at-number"}]


@pytest.mark.parametrize(("build", "field", "rule"), [c[1:] for c in CLI_SCHEMA_CASES + CLI_DB_CASES],
                         ids=[c[0] for c in CLI_SCHEMA_CASES + CLI_DB_CASES])
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
async def test_cli_start_refuses_naming_field_and_rule(cli_env, clean_db, ts_env, build, field, rule, suffix):
    run, today, folder = cli_env
    path = _write(folder, "spec" + suffix, build(today, _send_at(today)))
    code, out = await run("start", str(path))
    assert code == 2, out
    assert f"invalid {field}: {rule}:" in out, out
    await _nothing_written(clean_db, ts_env, "s1.c1", "s1.p1", "nope.c1")


@pytest.mark.parametrize(
    ("name", "content", "expect"),
    [
        ("bad.json", b"{not json", "cannot read"),
        ("bad.yaml", b"kind: [unclosed", "cannot read"),
        ("markup.yaml", b"kind: [/bold] [red", "cannot read"),  # the error text is not rich markup
        ("latin1.json", b'{"card_text": "caf\xe9"}', "cannot read"),
        ("huge.json", b'{"body": "' + b"x" * 70_000 + b'"}', "R-API-SIZE"),
        ("list.json", b"[1, 2]", "invalid body: schema:model_attributes_type"),
        ("null.yaml", b"", "invalid body: schema:model_attributes_type"),
        ("missing.json", None, "cannot read"),
    ],
)
async def test_cli_start_refuses_malformed_files(cli_env, clean_db, ts_env, name, content, expect):
    run, _, folder = cli_env
    path = folder / name
    if content is not None:
        path.write_bytes(content)
    code, out = await run("start", str(path))
    assert code == 2, out
    assert expect in out, out
    assert "Traceback" not in out
    await _nothing_written(clean_db, ts_env)


async def test_cli_start_accepts_the_valid_spec(cli_env, clean_db, ts_env):
    """The control for the refusals above: the same path starts a valid campaign."""
    run, today, folder = cli_env
    code, out = await run("start", str(_write(folder, "ok.yaml", oldcust(today, coupon_id="good"))))
    assert code == 0, out
    assert "started s1.c1" in out
    assert await clean_db.fetchval("SELECT count(*) FROM campaigns") == 1
    assert (await ts_env.client.get_workflow_handle("s1.c1").describe()).status.name == "RUNNING"
    await ts_env.client.get_workflow_handle("s1.c1").terminate("test over")


def _raw_yaml(today: date, send_time: str, send_date: str | None = None) -> bytes:
    day = send_date or (today + timedelta(days=2)).isoformat()
    return (f"kind: K-OLDCUST\nshop_id: s1\ncampaign_id: c1\nscene: Spring\ncard_text: Hello again\n"
            f"send_date: {day}\nsend_time: {send_time}\n").encode()


@pytest.mark.parametrize(
    ("send_time", "expect"),
    [
        ("10:00", 'invalid send_time: schema:time_type: Input should be a "HH:MM" time string (quoted, in YAML) (got 600)'),
        ("36000", "invalid send_time: schema:time_type"),
        ('"22:00"', "invalid send_time: R-WIN-1: send time 22:00 is outside 08:00-22:00"),
    ],
    ids=["unquoted-sexagesimal", "seconds", "quoted-late"],
)
async def test_cli_yaml_times_are_strings_like_in_the_api(cli_env, clean_db, ts_env, send_time, expect):
    """YAML reads an unquoted 10:00 as the number 600: refused with what was sent, as the API refuses 600."""
    run, today, folder = cli_env
    path = folder / "spec.yaml"
    path.write_bytes(_raw_yaml(today, send_time))
    code, out = await run("start", str(path))
    assert code == 2, out
    assert expect in out, out
    await _nothing_written(clean_db, ts_env, "s1.c1")


async def test_cli_yaml_unquoted_date_and_late_seconds_are_accepted(cli_env, clean_db, ts_env):
    """An unquoted YAML date is the date it reads as (its ISO string, as the API gets it); 21:59:59 is in the window."""
    run, today, folder = cli_env
    path = folder / "spec.yaml"
    path.write_bytes(_raw_yaml(today, '"21:59:59"'))
    code, out = await run("start", str(path))
    assert code == 0, out
    assert "started s1.c1" in out
    assert await clean_db.fetchval("SELECT count(*) FROM campaigns") == 1
    await ts_env.client.get_workflow_handle("s1.c1").terminate("test over")


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--tz", "Mars/Olympus"], "invalid --tz 'Mars/Olympus': not an IANA time zone name"),
        (["--tz", ""], "invalid --tz '': not an IANA time zone name"),
        (["--tz", "../../etc/passwd"], "not an IANA time zone name"),
        (["--tz", "localtime"], "not an IANA time zone name"),
        (["--tz", "asia/shanghai"], "not an IANA time zone name"),
        (["--tz", "UTC+8"], "not an IANA time zone name"),
        (["--shop", "x'; DROP TABLE shops;--"], "invalid --shop"),
        (["--shop", "a.b"], "invalid --shop"),
    ],
)
async def test_cli_seed_refuses_invalid_zones_and_shop_ids(cli_env, clean_db, args, expect):
    run, _, _ = cli_env
    before = await clean_db.fetchval("SELECT count(*) FROM shops")
    code, out = await run("seed", "--customers", "0", *(["--shop", "fresh"] if "--shop" not in args else []), *args)
    assert code == 2, out
    assert expect in out, out
    assert "Traceback" not in out
    assert await clean_db.fetchval("SELECT count(*) FROM shops") == before


async def test_cli_seed_accepts_a_valid_zone(cli_env, clean_db):
    run, _, _ = cli_env
    code, out = await run("seed", "--shop", "fresh", "--customers", "0", "--tz", "America/New_York")
    assert code == 0, out
    assert await clean_db.fetchval("SELECT timezone FROM shops WHERE shop_id = 'fresh'") == "America/New_York"


async def test_status_without_a_worker_is_503_not_500(api_env, monkeypatch):
    """A progress query no worker answers (workers down) is a clear 503, not an unhandled error."""
    from sluice.api import service

    monkeypatch.setattr(service, "QUERY_TIMEOUT", timedelta(seconds=1))
    http, today = api_env
    assert (await http.post("/campaigns", json=oldcust(today))).status_code == 201
    res = await http.get("/campaigns/s1.c1")
    assert res.status_code == 503, res.text
    assert res.headers["retry-after"] == "5"


async def test_a_shop_with_an_invalid_zone_is_refused_not_crashed(clean_db, ts_env):
    """A shop row written around `sluice seed`'s check (plain SQL) gets a 422, not a 500."""
    now = await ts_env.get_current_time()
    await clean_db.execute("INSERT INTO shops (shop_id, name, timezone, industry) VALUES ('mars', 'm', 'Mars/Olympus', 'x')")
    key = await shop_key(clean_db, "mars")
    async with running_app(clean_db, ts_env, worker=False) as app, client(app, key) as http:
        res = await http.post("/campaigns", json=oldcust(local_day(now, TZ), shop_id="mars"))
    assert res.status_code == 422 and _named(res.json()["detail"], "shop_id", "R-WIN-1"), res.text
    await _nothing_written(clean_db, ts_env, "mars.c1")
