"""Merchant message templates (content/render.py): validation at submission, the sandbox, value
cleaning against the text rule, render speed."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import BaseModel, ValidationError, field_validator
from sluice.content import (
    MAX_OUTPUT_CHARS,
    MAX_TEMPLATE_CHARS,
    PLACEHOLDERS,
    VALUE_MAX_CHARS,
    RenderError,
    TemplateError,
    check_template,
    clean_value,
    compile_template,
    format_ends_at,
)
from sluice.content.render import CASE_GROWTH
from sluice.schemas.rules import error_details
from sluice.schemas.text import text_problem

RULE = "R-TPL-1"
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CTX = {"name": "Ann", "product": "Red Shoes", "coupon": "SAVE10", "ends_at": "05-01 22:00", "shop": "Acme"}


def compile_(source: str, allowed: frozenset[str] = PLACEHOLDERS):
    return compile_template(source, allowed=allowed, rule=RULE)


def refused(source: str, allowed: frozenset[str] = PLACEHOLDERS) -> str:
    with pytest.raises(TemplateError) as info:
        compile_(source, allowed)
    assert info.value.rule == RULE
    assert str(info.value).startswith(f"{RULE}: ")
    return info.value.message


# ------------------------------------------------------------------------------------- rendering


def test_placeholders_are_rendered():
    tpl = compile_("Hi {{ name }}, {{ product }} is yours with {{ coupon }} until {{ ends_at }} at {{ shop }}.")
    assert tpl.render(CTX) == "Hi Ann, Red Shoes is yours with SAVE10 until 05-01 22:00 at Acme."
    assert tpl.placeholders == frozenset(CTX)


def test_filters_from_the_allow_list():
    tpl = compile_("{{ name | default: 'friend' | upcase }} {{ product | truncate: 6 }} {{ shop | downcase }} "
                   "{{ coupon | capitalize }} {{ product | truncate: 4, '…' }}")
    assert tpl.render({**CTX, "name": ""}) == "FRIEND Red... acme Save10 Red…"
    assert tpl.render(CTX).startswith("ANN ")
    # a value that is only refused characters is empty once cleaned, so the default applies
    assert tpl.render({**CTX, "name": "\u202e\u3164"}).startswith("FRIEND ")


def test_numbers_and_none_are_values_other_objects_are_not():
    tpl = compile_("{{ coupon }}|{{ name | default: 'x' }}")
    assert tpl.render({"coupon": 10, "name": None}) == "10|x"
    assert tpl.render({"coupon": 2.5, "name": "y"}) == "2.5|y"
    for bad in (object(), True, ["a"], {"a": 1}, b"bytes"):
        with pytest.raises(RenderError, match="text or a number"):
            tpl.render({"coupon": bad, "name": "a"})


def test_missing_value_is_a_render_error_and_extra_keys_are_ignored():
    tpl = compile_("Hi {{ name }}")
    with pytest.raises(RenderError, match="'name'"):
        tpl.render({"product": "x"})
    assert tpl.render({"name": "Bo", "product": object()}) == "Hi Bo"


def test_values_are_not_rendered_again():
    tpl = compile_("{{ name }} / {{ product }}")
    payloads = ["{{ coupon }}", "{% for i in (1..9) %}x{% endfor %}", "{{ name | attr: '__class__' }}", "{%raw%}"]
    for value in payloads:
        assert tpl.render({"name": value, "product": "P"}) == f"{value} / P"


def test_static_and_max_length():
    tpl = compile_("Hi {{ name | default: 'friend' }}, {{ product | truncate: 10 }}! {{ shop | upcase }}")
    assert tpl.static_length() == len("Hi , ! ")
    assert tpl.max_length({"name": 3, "product": 50, "shop": 4}) == len("Hi , ! ") + 6 + 10 + 4 * CASE_GROWTH
    assert tpl.max_length() == len("Hi , ! ") + VALUE_MAX_CHARS + 10 + VALUE_MAX_CHARS * CASE_GROWTH
    # the bound holds for real renders
    ctx = {"name": "", "product": "Sneakers deluxe edition", "shop": "straße"}
    out = tpl.render(ctx)
    assert out == "Hi friend, Sneaker...! STRASSE"
    assert len(out) <= tpl.max_length({k: len(v) for k, v in ctx.items()})


def test_case_growth_bounds_every_code_point():
    worst = max(max(len(ch.upper()), len(ch.lower()), len(ch.capitalize()))
                for ch in map(chr, range(sys.maxunicode + 1)))
    assert worst <= CASE_GROWTH


def test_format_ends_at_in_shop_time_zone():
    end = datetime(2026, 4, 30, 16, 5, tzinfo=UTC)
    assert format_ends_at(end, "Asia/Shanghai") == "05-01 00:05"
    assert format_ends_at(end, "America/New_York") == "04-30 12:05"
    with pytest.raises(ValueError):
        format_ends_at(datetime(2026, 4, 30, 16, 5), "Asia/Shanghai")


# ------------------------------------------------------------------------------------ refusals


def test_unknown_variable_is_refused_by_name():
    msg = refused("Hi {{ nickname }}")
    assert "unknown placeholder 'nickname'" in msg and "line 1, column 4" in msg
    # the vocabulary is the caller's: a kind without coupons refuses {{ coupon }}
    assert "unknown placeholder 'coupon'" in refused("{{ coupon }}", frozenset({"name"}))


@pytest.mark.parametrize("source, tag", [
    ("{% if name %}hi{% endif %}", "if"),
    ("{% for i in (1..100000000) %}x{% endfor %}", "for"),
    ("{% include 'x' %}", "include"),
    ("{% render 'x' %}", "render"),
    ("{% assign x = 'a' %}{{ x }}", "assign"),
    ("{%- capture x -%}a{%- endcapture -%}", "capture"),
    ("{% raw %}{{ name }}{% endraw %}", "raw"),
    ("{% liquid echo name %}", "liquid"),
    ("{% comment %}x{% endcomment %}", "comment"),
    ("a\n  {% cycle 'a', 'b' %}", "cycle"),
])
def test_tags_are_refused_by_name(source, tag):
    msg = refused(source)
    assert f"tag '{tag}' is not allowed" in msg
    assert "line" in msg


def test_unknown_filter_is_refused_by_name():
    assert "filter 'date' is not allowed" in refused("{{ name | date: '%Y' }}")
    assert "filter 'escape' is not allowed" in refused("{{ name | upcase | escape }}")
    # a smaller allow-list from the caller
    with pytest.raises(TemplateError, match="filter 'upcase' is not allowed"):
        compile_template("{{ name | upcase }}", allowed=PLACEHOLDERS, rule=RULE, filters=frozenset({"default"}))


@pytest.mark.parametrize("source, words", [
    ("Hi {{ name", "syntax error"),
    ("{{ }}", "syntax error"),
    ("{{ name | default: coupon }}", "'default' takes one text in quotes"),
    ("{{ name | default: 'x', allow_false: true }}", "no named arguments"),
    ("{{ name | default: ' ' }}", "blank"),
    ("{{ name | upcase: 3 }}", "'upcase' takes no argument"),
    ("{{ name | truncate: 'x' }}", "'truncate' takes a number"),
    ("{{ name | truncate: 1 }}", "length from 3"),  # Liquid would keep name[:-2] + '...'
    ("{{ name | truncate: 100000 }}", "length from 3"),
    ("{{ name.size }}", "no attributes or items"),
    ("{{ name[0] }}", "no attributes or items"),
    ("{{ 'literal' }}", "not a placeholder"),
    ("{{ name if coupon else shop }}", "syntax error"),
    ("x\u202e{{ name }}", "illegal characters U+202E"),
    ("   ", "blank"),
    ("x" * (MAX_TEMPLATE_CHARS + 1), f"at most {MAX_TEMPLATE_CHARS}"),
])
def test_malformed_templates_are_refused_naming_the_problem(source, words):
    assert words in refused(source)


# ---------------------------------------------------------------------------------- injections

INJECTIONS = [
    "{{ self }}",
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ config }}",
    "{{ config.items() }}",
    "{{ request.application.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ name | attr('__class__') }}",
    "{{ name | attr: '__class__' }}",
    "{{ name.__class__ }}",
    "{{ name['__class__'] }}",
    "{{ name.size }}",
    "{{ name.first }}",
    "{{ 7*7 }}",
    "{% include 'x' %}",
    "{% include '/etc/passwd' %}",
    "{% render 'secrets' %}",
    "{% for i in (1..100000000) %}x{% endfor %}",
    "{% tablerow i in (1..100000000) %}{% endtablerow %}",
    "{% assign x = (1..100000000) %}{{ x | join }}",
    "{{ (1..100000000) | join: ',' }}",
    "{{ name | append: name | append: name }}",
    "{{ product | split: '' | join: '' }}",
    "{{ name | replace: 'a', 'aaaaaaaa' }}",
    "{{ name | map: '__class__' }}",
    "{{ name | date: 'now' }}",
    "{% increment x %}",
    "{% capture x %}{{ x }}{{ x }}{% endcapture %}",
    "{% liquid for i in (1..9) %}",
    "{{ template.name }}",
    "{{ forloop.index }}",
    "{% for x in name %}{% break %}{% endfor %}",
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_payloads_are_refused_at_submission(payload):
    with pytest.raises(TemplateError) as info:
        compile_(payload)
    assert info.value.rule == RULE


def test_inert_brace_text_renders_as_itself():
    # Comments are not enabled, single braces are text: nothing here is evaluated.
    for text in ["{# c #}", "a { b } c", "{", "}", "set {x} to }} y", "%}"]:
        assert compile_(text).render({}) == text


# --------------------------------------------------------------------------------- value cleaning


def test_bidi_override_in_a_nickname_cannot_reorder_the_message():
    tpl = compile_("{{ name }}, your coupon {{ coupon }} ends {{ ends_at }}")
    out = tpl.render({"name": "Eve\u202eevE\u2066x\u2069\u200f", "coupon": "SAVE\u200b10", "ends_at": "05-01 22:00"})
    assert out == "EveevEx, your coupon SAVE10 ends 05-01 22:00"
    assert text_problem(out) is None


def test_clean_value_removes_refused_and_keeps_legitimate_characters():
    assert clean_value("a\u202eb") == "ab"  # RIGHT-TO-LEFT OVERRIDE
    assert clean_value("\u2067x\u2069") == "x"  # isolates
    assert clean_value("a\x00b\x1bc\x7f") == "abc"  # controls
    assert clean_value("a\u200bb\ufeffc\u00adde") == "abcde"  # zero-width space, BOM, soft hyphen
    assert clean_value("x\u3164y\u2800z\ufffd") == "xyz"  # blank look-alikes
    assert clean_value("\ue000p\U000f0000q") == "pq"  # private use
    assert clean_value("line1\nline2\r\n\tline3\u2028end") == "line1 line2 line3 end"
    assert clean_value("  a    b  ") == "a b"
    assert clean_value("\u3164\u200b") == ""
    # emoji with joiners and variation selectors, CJK with the ideographic space, RTL letters stay
    for keep in ["👨‍👩‍👧 Family", "❤️ love", "小明\u3000同学", "שלום", "Zoë", "O'Brien & Co. <3"]:
        assert clean_value(keep) == keep
    long = "x" * (VALUE_MAX_CHARS - 1) + "👨‍👩‍👧"
    assert len(clean_value(long)) <= VALUE_MAX_CHARS
    assert clean_value(long)[-1] != "\u200d"


@PROPS
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=80))
def test_any_cleaned_value_passes_the_text_rule(value):
    cleaned = clean_value(value)
    assert len(cleaned) <= VALUE_MAX_CHARS
    assert "\n" not in cleaned
    out = compile_("Hi {{ name }}!").render({"name": value})
    assert text_problem(out) is None


@PROPS
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="{}"), min_size=1, max_size=200))
def test_text_without_braces_renders_to_itself(text):
    if text_problem(text) is not None:
        assert text_problem(text).removeprefix("text ") in refused(text)
        return
    assert compile_(text).render({}) == text


@PROPS
@given(st.dictionaries(st.sampled_from(sorted(PLACEHOLDERS)), st.text(max_size=300),
                       min_size=len(PLACEHOLDERS), max_size=len(PLACEHOLDERS)))
def test_max_length_bounds_the_render(ctx):
    tpl = compile_("{{ name | default: 'friend' | upcase }}: {{ product | truncate: 20 }} {{ coupon }} "
                   "{{ ends_at }} {{ shop | capitalize }}")
    out = tpl.render(ctx)
    assert len(out) <= tpl.max_length({k: len(clean_value(v)) for k, v in ctx.items()})
    assert len(out) <= tpl.max_length()


def test_output_length_is_bounded():
    tpl = compile_("{{ name }}" * 20)
    with pytest.raises(RenderError, match=f"at most {MAX_OUTPUT_CHARS}"):
        tpl.render({"name": "x" * 1000})
    assert tpl.render({"name": "x" * 100}) == "x" * 2000


# ------------------------------------------------------------------------------------- pydantic


class _Spec(BaseModel):
    card_text: str

    @field_validator("card_text")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_template(value, allowed=frozenset({"name", "coupon"}), rule=RULE)


def test_check_template_in_a_pydantic_validator_names_field_and_rule():
    assert _Spec(card_text="Hi {{ name }}").card_text == "Hi {{ name }}"
    with pytest.raises(ValidationError) as info:
        _Spec(card_text="Hi {{ product }}")
    [detail] = error_details(info.value.errors())
    assert detail["field"] == "card_text" and detail["rule"] == RULE
    assert "unknown placeholder 'product'" in detail["message"]


# ------------------------------------------------------------------------------- the fast path

# Literal text without braces or '%' (so it never opens an output or a tag), with CJK, emoji, spaces
# and line breaks (whitespace control strips them next to an output).
_LITERAL = st.text(alphabet=st.sampled_from(list("ab Z,.!:-_\n\t 0123456789") + ["好", "券", "😀", "é"]), max_size=12)
_OUTPUT = st.tuples(st.sampled_from(sorted(PLACEHOLDERS)), st.sampled_from(["{{ %s }}", "{{%s}}", "{{- %s }}",
                                                                             "{{ %s -}}", "{{-%s-}}"]))
_VALUE = st.one_of(st.text(max_size=40), st.integers(-10**6, 10**6),
                   st.sampled_from(["", "  a  b  ", "x\u202ey", "{{ coupon }}"]))


@PROPS
@given(parts=st.lists(st.one_of(_LITERAL, _OUTPUT), max_size=8), values=st.fixed_dictionaries(
    {name: _VALUE for name in sorted(PLACEHOLDERS)}))
def test_fast_path_renders_what_liquid_renders(parts, values):
    source = "".join(p if isinstance(p, str) else p[1] % p[0] for p in parts)
    try:
        tpl = compile_(source)
    except TemplateError:  # blank, or a text the text rule refuses: never rendered
        return
    assert tpl._plain is not None, source  # only text and plain outputs: the fast path is taken
    cleaned = {name: clean_value(values[name]) for name in tpl.placeholders}
    try:
        general = tpl.render_liquid(cleaned)
    except RenderError:
        general = RenderError
    try:
        fast = tpl.render(values)
    except RenderError:
        fast = RenderError
    assert fast == general, (source, values)


@PROPS
@given(parts=st.lists(st.one_of(_LITERAL, _OUTPUT, st.just("{{ name | upcase }}")), max_size=8),
       values=st.fixed_dictionaries({name: _VALUE for name in sorted(PLACEHOLDERS)}),
       fixed=st.sets(st.sampled_from(sorted(PLACEHOLDERS))))
def test_a_bound_template_renders_what_the_template_renders(parts, values, fixed):
    """Template.bind (the send path fills product, coupon, offer end and benefit once per chunk): the same text, or
    the same RenderError, as a whole render, with or without filters (the Liquid path)."""
    source = "".join(p if isinstance(p, str) else p[1] % p[0] for p in parts)
    try:
        tpl = compile_(source)
    except TemplateError:
        return
    try:
        whole = tpl.render(values)
    except RenderError:
        whole = RenderError
    try:
        bound = tpl.bind({n: values[n] for n in fixed}).render({n: v for n, v in values.items() if n not in fixed})
    except RenderError:
        bound = RenderError
    assert bound == whole, (source, values, fixed)


def test_a_bound_template_needs_the_open_placeholders_and_ignores_fixed_ones_in_the_context():
    tpl = compile_("Hi {{ name }}, {{ product }} with {{ coupon }}")
    partial = tpl.bind({"product": " Red\u202eShoes ", "coupon": "SAVE10"})
    assert partial.render({"name": "Ann", "product": "ignored"}) == "Hi Ann, RedShoes with SAVE10"
    with pytest.raises(RenderError, match="name"):
        partial.render({})
    assert tpl.bind({}).render(CTX) == tpl.render(CTX)


def test_fast_path_only_without_filters():
    assert compile_("Hi {{ name }}, {{ coupon }}")._plain is not None
    tpl = compile_("Hi {{ name | upcase }}, {{ coupon }}")
    assert tpl._plain is None
    assert tpl.render(CTX) == "Hi ANN, SAVE10"


# ---------------------------------------------------------------------------------------- speed


def test_render_speed(capsys):
    tpl = compile_("Hi {{ name }}, {{ product }} is waiting: use {{ coupon }} before {{ ends_at }}!")
    ctxs = [{**CTX, "name": f"customer {i}"} for i in range(20_000)]
    start = time.perf_counter()
    for ctx in ctxs:
        tpl.render(ctx)
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\ncontent: {len(ctxs) / elapsed:,.0f} renders/s (4 placeholders, distinct names)")
