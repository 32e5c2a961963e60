"""The input rules of a campaign spec, as pure functions (no database, no Temporal).

schemas/text.py (R-OC-10 / R-PH-6: illegal characters, blank look-alikes, blank texts),
schemas/urls.py (R-OC-3: the image URL handed to consumers), the strict types of
schemas/campaign.py (numbers, dates and times are what they say, the same through
validate_python - FastAPI's path - and validate_json), send-time bounds (R-WIN-1,
R-PH-2), the "(got ...)" echo of schemas/rules.error_details, and the CLI's
spec loading (api/cli.py load_spec) deciding like the API.
"""

from __future__ import annotations

import ipaddress
import json
import unicodedata
from datetime import time
from pathlib import Path

import hypothesis.strategies as st
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from pydantic import TypeAdapter, ValidationError
from sluice.api.cli import load_spec
from sluice.kinds import KINDS, CampaignSpec
from sluice.kinds.phased import PhaseSpec
from sluice.schemas import rules
from sluice.schemas.rules import error_details
from sluice.schemas.text import ALLOWED_FORMAT, BLANK_LOOKALIKES, check_text, is_blank, refused_characters, text_problem
from sluice.schemas.urls import url_problem

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPEC = TypeAdapter(CampaignSpec)
ROOT = Path(__file__).resolve().parents[1]
EMOJI = ["🎁", "🙂", "👍🏽", "👨\u200d👩\u200d👧", "❤\ufe0f", "🇨🇳", "☺\ufe0e", "🧑🏻\u200d💻"]


def _oldcust(**over) -> dict:
    spec = {"kind": "K-OLDCUST", "shop_id": "s1", "campaign_id": "c1", "scene": "Spring",
            "card_text": "Hello", "send_date": "2030-05-01"}
    spec.update(over)
    return spec


def _phase(**over) -> dict:
    phase = {"name": "promote", "start_date": "2030-05-01", "end_date": "2030-05-02", "text": "sale"}
    phase.update(over)
    return phase


def _refusal(data: dict, *, json_mode: bool = False) -> list[dict]:
    with pytest.raises(ValidationError) as exc:
        SPEC.validate_json(json.dumps(data)) if json_mode else SPEC.validate_python(data)
    return error_details(exc.value.errors())


# ---------------------------------------------------------------- text (R-OC-10, R-PH-6)

REFUSED_ONE = ["\u2028", "\u2029", "\u3164", "\u115f", "\u1160", "\uffa0", "\u2800", "\ufffc", "\ufffd",
               "\u200b", "\u202e", "\u2066", "\u00ad", "\u0007", "\ue000", "\u0378", "\t", "\r"]


@pytest.mark.parametrize("ch", REFUSED_ONE, ids=[f"U+{ord(c):04X}" for c in REFUSED_ONE])
def test_each_refused_character_is_named_by_its_code_point(ch):
    for text in (f"hello{ch}world", ch, f"{ch} 🎁"):
        problem = text_problem(text)
        assert problem is not None and f"U+{ord(ch):04X}" in problem, (text, problem)


def test_the_blank_lookalike_set_is_one_definition_each_refused_and_blank():
    # The set the brief names is in it; each member is refused alone and inside text, and counts as blank.
    assert {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800", "\ufffc", "\ufffd"} <= BLANK_LOOKALIKES
    for ch in BLANK_LOOKALIKES:
        assert refused_characters(f"a{ch}b") == [f"U+{ord(ch):04X}"]
        assert is_blank(ch * 3)
        # None of them is whitespace: without the set, the text rule would let them through.
        assert not ch.isspace() and unicodedata.category(ch) not in {"Zs", "Zl", "Zp"}


@pytest.mark.parametrize("text", ["", " ", "\n", " \n \n ", "\u3000", "\u3000 \u00a0\u2003", "\u200d\ufe0f"])
def test_blank_texts_are_refused_as_blank(text):
    assert is_blank(text)
    assert text_problem(text) == "text is blank: it has only whitespace or invisible characters"


def test_an_empty_optional_text_is_none_not_blank_but_a_blank_one_is_refused():
    assert text_problem("", allow_empty=True) is None
    assert text_problem(" \n", allow_empty=True) is not None


@pytest.mark.parametrize("text", ["Hello again", "老朋友\u3000欢迎回来", "第一行\n第二行", "👨\u200d👩\u200d👧 family",
                                  "❤\ufe0f", "☺\ufe0e", "🇨🇳🎁", "🧑🏻\u200d💻", "café — 20% off!", "한국어 텍스트",
                                  "\u3000indented", "a\u00a0b"])
def test_emoji_and_cjk_texts_are_accepted(text):
    assert text_problem(text) is None
    assert check_text(text, "R-OC-10") == text


def test_the_message_names_five_code_points_at_most_each_once():
    problem = text_problem("\u2028\u2028\u2029\u3164\u115f\u1160\uffa0\u2800")
    assert problem == "text contains illegal characters U+2028, U+2029, U+3164, U+115F, U+1160 and 2 more"


BLANKISH = st.sampled_from([" ", "\n", "\u3000", "\u00a0", "\u2003", "\u202f", "\u200d", "\ufe0f"]
                           + sorted(BLANK_LOOKALIKES - {"\ufffc", "\ufffd"}))
VISIBLE_LETTERS = st.characters(categories=["L", "N"], exclude_characters="".join(BLANK_LOOKALIKES))


@PROPS
@given(st.text(alphabet=BLANKISH, max_size=40))
@example("\u3164")
@example(" \n \n ")
def test_any_text_of_only_whitespace_and_blank_lookalikes_is_refused(text):
    assert text_problem(text) is not None
    for field in ("card_text", "scene", "title"):
        detail = _refusal(_oldcust(**{field: text[:30] or " "}))
        assert (field, "R-OC-10") in [(d["field"], d["rule"]) for d in detail]
    with pytest.raises(ValidationError) as exc:
        PhaseSpec.model_validate(_phase(text=text or " "))
    assert [(d["field"], d["rule"]) for d in error_details(exc.value.errors())] == [("text", "R-PH-6")]


@PROPS
@given(st.lists(st.sampled_from(EMOJI) | VISIBLE_LETTERS
                | st.sampled_from([" ", "\u3000", "\n", "！", "。", "，"]), min_size=1, max_size=25)
       .filter(lambda parts: not is_blank("".join(parts))))
def test_any_text_of_letters_cjk_and_emoji_is_accepted(parts):
    text = "".join(parts)
    assert text_problem(text) is None
    spec = SPEC.validate_python(_oldcust(card_text=text[:50], body=text, title=text[:60]))
    assert spec.body == text
    assert PhaseSpec.model_validate(_phase(text=text)).text == text


@PROPS
@given(st.text(alphabet=VISIBLE_LETTERS, min_size=1, max_size=20),
       st.sampled_from(sorted(BLANK_LOOKALIKES | {"\u2028", "\u2029"})), st.integers(0, 20))
def test_one_separator_or_blank_lookalike_anywhere_is_refused_with_its_rule(text, bad, at):
    dirty = text[:at] + bad + text[at:]
    detail = _refusal(_oldcust(card_text=dirty))
    assert [(d["field"], d["rule"]) for d in detail] == [("card_text", "R-OC-10")]
    assert f"U+{ord(bad):04X}" in detail[0]["message"]
    with pytest.raises(ValidationError) as exc:
        PhaseSpec.model_validate(_phase(text=dirty))
    assert error_details(exc.value.errors())[0]["rule"] == "R-PH-6"


def test_the_emoji_format_characters_are_the_only_allowed_format_characters():
    assert ALLOWED_FORMAT == {"\u200d", "\ufe0f", "\ufe0e"}


# ---------------------------------------------------------------- image URL (R-OC-3)

REFUSED_URLS = {
    "javascript:alert(1)": "only http and https",
    "JAVASCRIPT://example.com/%0aalert(1)": "only http and https",
    "data:text/html,<script>": "only http and https",
    "file:///etc/passwd": "only http and https",
    "ftp://example.com/x.png": "only http and https",
    "//example.com/x.png": "only http and https",
    "http:example.com": "absolute",
    "http://example.com/\u202egnp.exe": "U+202E",
    "http://example.com/%E2%80%AEgnp.exe": "percent-encoded",
    "http://example.com/%00.png": "percent-encoded",
    "http://exa\u200bmple.com/": "U+200B",
    "http://example.com/\u2066x": "U+2066",
    "http://example.com/a b": "U+0020",
    "http://example.com/\tb": "U+0009",
    "http://example.com\\@evil.com/": "U+005C",
    "http://\u0430pple.com/x.png": "look-alike",
    "http://ex\u0430mple.com/": "look-alike",
    "http://\uff45xample.com/": "look-alike",
    "http://example\u3002com/": "look-alike",
    "http://b\u00fccher.de/": "look-alike",
    "http://xn--pple-43d.com/": "punycode",
    "http://img.xn--p1ai/": "punycode",
    "http://user@host.com/": "user name or password",
    "http://user:pw@host.com/": "user name or password",
    "http://host.com@169.254.169.254/": "user name or password",
    "http://169.254.169.254/": "private, loopback, link-local or reserved",
    "http://127.0.0.1/": "private, loopback",
    "http://127.0.0.1:8000/": "private, loopback",
    "http://[::1]/": "private, loopback",
    "http://[fe80::1]/": "private, loopback",
    "http://[fc00::1]/": "private, loopback",
    "http://[::ffff:10.0.0.1]/": "private, loopback",
    "http://10.0.0.1/": "private, loopback",
    "http://172.16.5.4/": "private, loopback",
    "http://192.168.0.1/": "private, loopback",
    "http://100.64.0.1/": "private, loopback",
    "http://0.0.0.0/": "private, loopback",
    "http://255.255.255.255/": "private, loopback",
    "http://2130706433/": "private, loopback",
    "http://0x7f.1/": "private, loopback",
    "http://0x7f000001/": "private, loopback",
    "http://127.1/": "private, loopback",
    "http://0177.0.0.1/": "private, loopback",
    "http://10.1/": "private, loopback",
    "http://1.2.3.4.5/": "not a valid IPv4",
    "http://256.1.1.1/": "not a valid IPv4",
    "http://4294967296/": "not a valid IPv4",
    "http://09.1.1.1/": "not a valid IPv4",
    "http://127.0.0.1./": "not a valid IPv4",
    "http://[::1/": "cannot be parsed",
    "http://[not-v6]/": "cannot be parsed",
    "http://localhost/": "no dot",
    "http://localhost.localdomain/": "local-only",
    "http://a.localhost/": "local-only",
    "http://printer.local/": "local-only",
    "http://metadata.google.internal/": "local-only",
    "http://nas.home.arpa/": "local-only",
    "http://intranet/": "no dot",
    "http://example.c0m/": "alphabetic top-level domain",
    "http://example.123a/": "alphabetic top-level domain",
    "http://-example.com/": "not a valid host name",
    "http://example..com/": "not a valid host name",
    "http://example.com./": "not a valid host name",
    "http://exa_mple.com/": "not a valid host name",
    "http:///x.png": "no host",
    "http://:80/x.png": "no host",
    "http://example.com:99999/": "not a port number",
    "http://example.com:0/": "not a port number",
    "http://example.com:8o/": "not a port number",
}


@pytest.mark.parametrize(("url", "expect"), REFUSED_URLS.items(), ids=list(REFUSED_URLS))
def test_refused_urls_say_why(url, expect):
    problem = url_problem(url)
    assert problem is not None and expect in problem, (url, problem)


ACCEPTED_URLS = ["https://img.example/x.png", "http://example.com", "https://cdn.example.co.uk:8443/a/b.png?x=1&y=2#top",
                 "HTTPS://IMG.EXAMPLE.COM/X.PNG", "https://example.com/%E5%9B%BE.png", "https://example.com/图片.png",
                 "https://example.com/a%20b.png", "http://8.8.8.8/x.png", "http://[2606:4700:4700::1111]/x.png",
                 "https://a-b.c-d.example.org/x"]


@pytest.mark.parametrize("url", ACCEPTED_URLS)
def test_public_http_urls_are_accepted(url):
    assert url_problem(url) is None
    assert SPEC.validate_python(_oldcust(image={"url": url, "configured_at": "2030-04-01T00:00:00Z"})).image.url == url


def test_the_spec_refuses_an_image_url_naming_field_and_rule():
    for url in REFUSED_URLS:
        detail = _refusal(_oldcust(image={"url": url, "configured_at": "2030-04-01T00:00:00Z"}))
        assert [(d["field"], d["rule"]) for d in detail] == [("image.url", "R-OC-3")], (url, detail)


@PROPS
@given(st.integers(0, 2**32 - 1))
def test_an_ipv4_host_in_any_form_is_accepted_exactly_when_public(n):
    address = ipaddress.IPv4Address(n)
    forms = [str(address), str(n), hex(n), ".".join(str(b) for b in address.packed[:2]) + "." + str(n & 0xFFFF)]
    for form in forms:
        problem = url_problem(f"http://{form}/x.png")
        assert (problem is None) == address.is_global, (form, problem)


@PROPS
@given(st.sampled_from(ACCEPTED_URLS), st.integers(0, 80),
       st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"]) | st.sampled_from(sorted(BLANK_LOOKALIKES)))
def test_a_hidden_character_anywhere_in_a_url_refuses_it(url, at, ch):
    assert url_problem(url[:at] + ch + url[at:]) is not None


# ---------------------------------------------------------------- strict types, alike in both modes

STRICT_CASES = [
    ({"pacing": {"per_hour": "5"}}, "pacing.per_hour", "schema:int_type"),
    ({"pacing": {"per_hour": True}}, "pacing.per_hour", "schema:int_type"),
    ({"pacing": {"per_hour": 2.0}}, "pacing.per_hour", "schema:int_type"),
    ({"send_date": 20300501}, "send_date", "schema:date_type"),
    ({"send_date": 1903910400}, "send_date", "schema:date_type"),
    ({"send_date": "2030-05-01T00:00:00"}, "send_date", "schema:date_parsing"),
    ({"end_date": 20300501}, "end_date", "schema:date_type"),
    ({"send_time": 36000}, "send_time", "schema:time_type"),
    ({"send_time": 600}, "send_time", "schema:time_type"),
    ({"send_time": 36000.0}, "send_time", "schema:time_type"),
    ({"send_time": True}, "send_time", "schema:time_type"),
    ({"image": {"url": "https://i.example/x.png", "configured_at": 1900000000}}, "image.configured_at",
     "schema:datetime_type"),
]


@pytest.mark.parametrize("json_mode", [False, True], ids=["python", "json"])
@pytest.mark.parametrize(("over", "field", "rule"), STRICT_CASES, ids=[repr(c[0])[:40] for c in STRICT_CASES])
def test_numbers_dates_and_times_are_strict_alike_in_python_and_json(over, field, rule, json_mode):
    detail = _refusal(_oldcust(**over), json_mode=json_mode)
    assert [(d["field"], d["rule"]) for d in detail] == [(field, rule)], detail


@pytest.mark.parametrize("json_mode", [False, True], ids=["python", "json"])
@pytest.mark.parametrize("cap", ["5", True, 2.0, False])
def test_daily_cap_is_a_strict_integer(cap, json_mode):
    spec = {"kind": "K-PHASED", "shop_id": "s1", "campaign_id": "p1", "phases": [_phase(daily_cap=cap)]}
    detail = _refusal(spec, json_mode=json_mode)
    assert [(d["field"], d["rule"]) for d in detail] == [("phases.0.daily_cap", "schema:int_type")]


def test_integers_and_iso_strings_still_pass_in_both_modes():
    spec = _oldcust(send_time="21:59:59", end_date="2030-05-03", pacing={"per_hour": 5},
                    image={"url": "https://i.example/x.png", "configured_at": "2030-04-01T00:00:00+08:00"})
    assert SPEC.validate_python(spec) == SPEC.validate_json(json.dumps(spec))


def test_python_callers_may_still_pass_date_and_time_objects():
    from datetime import date

    spec = SPEC.validate_python(_oldcust(send_date=date(2030, 5, 1), send_time=time(9, 30)))
    assert spec.send_date == date(2030, 5, 1) and spec.send_time == time(9, 30)


@PROPS
@given(st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.text(max_size=12), st.none()))
def test_python_and_json_validation_decide_alike(value):
    for over in ({"pacing": {"per_hour": value}}, {"send_time": value}, {"send_date": value}):
        data = _oldcust(**over)
        outcomes = []
        for validate in (SPEC.validate_python, lambda d: SPEC.validate_json(json.dumps(d))):
            try:
                outcomes.append(("ok", validate(data)))
            except ValidationError as exc:
                outcomes.append(("refused", [(d["field"], d["rule"]) for d in error_details(exc.errors())]))
        assert outcomes[0] == outcomes[1], (over, outcomes)


# ---------------------------------------------------------------- send times (R-WIN-1, R-PH-2)


@PROPS
@given(st.times())
@example(time(21, 59, 59))
@example(time(21, 59, 59, 999999))
@example(time(22, 0))
@example(time(7, 59, 59))
def test_oldcust_send_time_is_accepted_exactly_before_the_window_closes(t):
    if rules.WINDOW_OPEN <= t < rules.WINDOW_CLOSE:
        assert SPEC.validate_python(_oldcust(send_time=t.isoformat())).send_time == t
    else:
        detail = _refusal(_oldcust(send_time=t.isoformat()))
        assert [(d["field"], d["rule"]) for d in detail] == [("send_time", "R-WIN-1")]
        assert "08:00-22:00" in detail[0]["message"] and "before 22:00" in detail[0]["message"]


@PROPS
@given(st.times())
@example(time(21, 0))
@example(time(21, 0, 1))
def test_phase_send_time_is_accepted_up_to_21_00_inclusive(t):
    if rules.WINDOW_OPEN <= t <= rules.PHASED_SEND_TIME_LATEST:
        assert PhaseSpec.model_validate(_phase(send_time=t.isoformat())).send_time == t
    else:
        with pytest.raises(ValidationError) as exc:
            PhaseSpec.model_validate(_phase(send_time=t.isoformat()))
        detail = error_details(exc.value.errors())
        assert [(d["field"], d["rule"]) for d in detail] == [("send_time", "R-PH-2")]
        assert "08:00-21:00" in detail[0]["message"] and "at or before 21:00" in detail[0]["message"]


@pytest.mark.parametrize(("sent", "shown"), [("22:00", "22:00"), ("22:00:00", "22:00"), ("07:59:59", "07:59:59"),
                                             ("23:59:59.5", "23:59:59.500000")])
def test_the_message_prints_the_time_as_sent(sent, shown):
    detail = _refusal(_oldcust(send_time=sent))
    assert detail[0]["message"].startswith(f"send time {shown} is outside 08:00-22:00 shop-local"), detail


# ---------------------------------------------------------------- error messages echo the input, briefly


def test_schema_errors_echo_a_short_repr_of_the_input_and_rule_errors_do_not():
    assert _refusal(_oldcust(pacing={"per_hour": "5"}))[0]["message"] == "Input should be a valid integer (got '5')"
    rule = _refusal(_oldcust(card_text="x" * 51))[0]
    assert rule["rule"] == "R-OC-3" and "(got" not in rule["message"]
    missing = error_details([{"type": "missing", "loc": ("card_text",), "msg": "Field required", "input": {"a": 1}}])
    assert missing[0]["message"] == "Field required"


@PROPS
@given(st.one_of(st.text(max_size=500), st.integers(), st.lists(st.integers(), max_size=50), st.floats()))
def test_the_echo_is_never_longer_than_60_characters(value):
    detail = error_details([{"type": "int_type", "loc": ("x",), "msg": "Input should be a valid integer",
                             "input": value}])
    echoed = detail[0]["message"].removeprefix("Input should be a valid integer (got ").removesuffix(")")
    assert len(echoed) <= rules.ECHO_MAX
    # repr escapes control and bidi characters: the echo never carries them raw.
    assert not any(unicodedata.category(c) in {"Cc", "Cf"} for c in echoed)


# ---------------------------------------------------------------- the CLI decides like the API


def _api_decision(data):
    """What POST /campaigns decides: FastAPI validates the json.loads of the body in Python mode."""
    try:
        return ("ok", SPEC.validate_python(json.loads(json.dumps(data))))
    except ValidationError as exc:
        return ("refused", error_details(exc.errors()))


def _cli_decision(path: Path):
    try:
        return ("ok", load_spec(path))
    except ValidationError as exc:
        return ("refused", error_details(exc.errors()))


CLI_SPECS = [
    _oldcust(), _oldcust(send_time="21:59:59"), _oldcust(send_time=36000), _oldcust(pacing={"per_hour": "5"}),
    _oldcust(pacing={"per_hour": 2.0}), _oldcust(send_date=20300501), _oldcust(card_text="\u3164"),
    _oldcust(card_text="a\u2028b"), _oldcust(image={"url": "http://[::1]/", "configured_at": "2030-04-01T00:00:00Z"}),
    _oldcust(card_text="\ud800"),
]


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
@pytest.mark.parametrize("data", CLI_SPECS, ids=[str(i) for i in range(len(CLI_SPECS))])
def test_cli_files_are_decided_like_api_bodies(tmp_path, data, suffix):
    path = tmp_path / f"spec{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(data))
    else:
        path.write_text(yaml.safe_dump(data, allow_unicode=False))
    assert _cli_decision(path) == _api_decision(data)


def test_cli_yaml_unquoted_values(tmp_path):
    base = "kind: K-OLDCUST\nshop_id: s1\ncampaign_id: c1\nscene: Spring\ncard_text: Hi\n"
    path = tmp_path / "spec.yaml"
    path.write_text(base + "send_date: 2030-05-01\nsend_time: '10:00'\n"
                    "image: {url: 'https://i.example/x.png', configured_at: 2030-04-01T00:00:00Z}\n")
    spec = load_spec(path)
    assert str(spec.send_date) == "2030-05-01" and spec.send_time == time(10, 0)
    path.write_text(base + "send_date: 2030-05-01\nsend_time: 10:00\n")
    decision, detail = _cli_decision(path)
    assert decision == "refused" and detail == [
        {"field": "send_time", "rule": "schema:time_type",
         "message": 'Input should be a "HH:MM" time string (quoted, in YAML) (got 600)'}]
    path.write_text(base + "send_date: 2030-05-01\n2030-01-01: x\n")
    with pytest.raises(ValueError, match="not a JSON-like document"):
        load_spec(path)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_the_examples_still_validate(name):
    """The examples quote their dates and times; their dates may have passed (the service checks that)."""
    spec = load_spec(ROOT / "examples" / name)
    assert spec.kind in KINDS
