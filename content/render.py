"""Merchant message templates: validated once at submission, rendered per recipient.

A template is text with placeholders from a fixed vocabulary (`PLACEHOLDERS`, or the subset a kind
allows), optionally piped through filters from an allow-list:

    Hi {{ name | default: 'friend' }}, {{ product | truncate: 20 }} is yours with {{ coupon }}
    until {{ ends_at }} at {{ shop }}.

The engine is python-liquid 2 (Liquid has no attribute access to Python objects by design: a path
resolves only mapping keys and sequence items, never `__class__` or methods). On top of Liquid's own
sandbox the environment here registers no tag at all (no `if`, `for`, `include`, `render`, `assign`,
`capture`, `liquid`, `raw`...: there is no loop to run away, no file or partial to load, no variable
to create) and only the filters of `ALLOWED_FILTERS`; `compile_template` walks the parsed template and
refuses anything but literal text and `{{ placeholder | filter: 'literal' }}` outputs, so what
`render` can do is fixed when the merchant submits the template.

Values come from the database (nicknames, product titles): `clean_value` removes the characters the
text rule refuses (control, format/bidi, private-use, unassigned, blank look-alikes: schemas/text.py),
turns line breaks and tabs into spaces, collapses spaces and caps the length, so a nickname holding
U+202E cannot reorder the message and a value cannot break the text rule the template passed. Values
are substituted once: a value containing `{{ coupon }}` is printed as it is, never rendered again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from zoneinfo import ZoneInfo

from liquid import Environment, StrictUndefined
from liquid.builtin import content as _content_tag
from liquid.builtin import illegal as _illegal_tag
from liquid.builtin import output as _output_tag
from liquid.builtin.content import ContentNode
from liquid.builtin.expressions import FilteredExpression, KeywordArgument, Path
from liquid.builtin.expressions.primitive import IntegerLiteral, StringLiteral
from liquid.builtin.filters.misc import default as _default
from liquid.builtin.filters.string import capitalize as _capitalize
from liquid.builtin.filters.string import downcase as _downcase
from liquid.builtin.filters.string import truncate as _truncate
from liquid.builtin.filters.string import upcase as _upcase
from liquid.builtin.output import OutputNode
from liquid.exceptions import LiquidError, UnknownFilterError
from liquid.template import BoundTemplate
from pydantic_core import PydanticCustomError
from sluice.schemas.rules import rule_error
from sluice.schemas.text import ALLOWED_FORMAT, BLANK_LOOKALIKES, is_blank, is_refused_character, text_problem

# The vocabulary of placeholders a campaign text may use; a kind passes the subset it fills.
PLACEHOLDERS = frozenset({"name", "product", "coupon", "ends_at", "shop", "benefit"})
# Filters a merchant may use (Liquid names). `default` and `truncate` take literal arguments only.
ALLOWED_FILTERS = frozenset({"default", "upcase", "downcase", "capitalize", "truncate"})
_FILTERS = {"default": _default, "upcase": _upcase, "downcase": _downcase, "capitalize": _capitalize,
            "truncate": _truncate}
# Case filters (str.upper/lower/capitalize) turn one code point into at most this many ("ΐ" -> "Ϊ́").
CASE_GROWTH = 3
_CASE_FILTERS = frozenset({"upcase", "downcase", "capitalize"})

MAX_TEMPLATE_CHARS = 2000  # a template source is at most this long
MAX_OUTPUT_CHARS = 2000  # a rendered message is at most this long (RenderError beyond)
VALUE_MAX_CHARS = 200  # clean_value keeps at most this many characters of a value

_VOCAB_HINT_MAX = 12  # how many allowed names a message lists


class TemplateError(ValueError):
    """A template refused at submission; `rule` is the rule id the caller validates for."""

    def __init__(self, rule: str, message: str):
        super().__init__(f"{rule}: {message}")
        self.rule = rule
        self.message = message

    def pydantic(self) -> PydanticCustomError:
        """The same refusal as pydantic's rule error (`schemas.rules.rule_error`), for a field validator."""
        return rule_error(self.rule, self.message)


class RenderError(ValueError):
    """A render that cannot produce a message: a placeholder without a value, a value of another type
    than text or number, or a message longer than MAX_OUTPUT_CHARS."""


class _SandboxEnvironment(Environment):
    """Liquid with output statements and literal text only, and the allow-listed filters."""

    output_stream_limit = 4 * MAX_OUTPUT_CHARS  # bytes (UTF-8): a second guard behind RenderError
    loop_iteration_limit = 0

    def setup_tags_and_filters(self, *, extra: bool = False) -> None:
        # The three pseudo tags every Liquid environment needs (text, {{ output }}, unknown tag error);
        # no real tag.
        self.add_tag(_content_tag.Literal)
        self.add_tag(_output_tag.Output)
        self.add_tag(_illegal_tag.Illegal)
        for name, func in _FILTERS.items():
            self.add_filter(name, func)


_ENV = _SandboxEnvironment(undefined=StrictUndefined, strict_filters=True, autoescape=False)
# Any tag opener ({% for %}, {%- include -%}, {% raw %} - which the lexer handles before any tag lookup).
_TAG = re.compile(r"\{%-?\s*([A-Za-z_]\w*)?")


# ------------------------------------------------------------------------------------------ values

_LINE_BREAKS = frozenset("\n\r\t\v\f\x1c\x1d\x1e\x1f\x85\u2028\u2029")
_BLANK_RE = re.compile("[" + "".join(sorted(BLANK_LOOKALIKES)) + "]")
_SPACES = re.compile(" {2,}")


def clean_value(value: object) -> str:
    """A context value as the text to substitute: str, int, float or Decimal (None is ""), with the
    characters the text rule refuses removed (bidi and other format characters, controls, private-use,
    unassigned, blank look-alikes), line breaks and tabs made spaces, runs of spaces collapsed, the
    ends stripped, and at most VALUE_MAX_CHARS characters kept. Emoji (with U+200D and variation
    selectors) and the ideographic space stay. Raises RenderError for any other type."""
    if isinstance(value, str):
        return _clean_str(value)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise RenderError(f"a value must be text or a number, got {type(value).__name__}")
    return _clean_str(str(value))


def _clean_str(text: str) -> str:
    # isprintable() is False for every Cc, Cf, Cs, Co, Cn, Zl, Zp and Zs character but " ": a printable
    # text without blank look-alikes holds no refused character.
    if not (text.isprintable() and not _BLANK_RE.search(text)):
        text = "".join(" " if ch in _LINE_BREAKS else ch for ch in text if ch in _LINE_BREAKS or not is_refused_character(ch))
    if "  " in text:
        text = _SPACES.sub(" ", text)
    text = text.strip()
    if len(text) > VALUE_MAX_CHARS:
        text = text[:VALUE_MAX_CHARS].rstrip()
        # Do not leave half an emoji sequence hanging on a joiner.
        while text and text[-1] in ALLOWED_FORMAT:
            text = text[:-1]
    return text


@lru_cache(maxsize=256)  # a chunk's offers share one end: formatted once, not per recipient
def format_ends_at(when: datetime, tz: str) -> str:
    """The `ends_at` value: the offer's end in the shop's time zone as "MM-DD HH:MM"."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("ends_at must be an aware datetime")
    return when.astimezone(ZoneInfo(tz)).strftime("%m-%d %H:%M")


# ---------------------------------------------------------------------------------------- template


class Template:
    """A validated template: `render(ctx)` per recipient, compiled once per phase by compile_template."""

    __slots__ = ("source", "placeholders", "_bound", "_names", "_static", "_outputs", "_plain")

    def __init__(self, source: str, bound: BoundTemplate, outputs: tuple[tuple[str, tuple], ...], static: int,
                 plain: tuple[str | None, ...] | None = None):
        self.source = source
        self._bound = bound
        self._outputs = outputs  # ((placeholder, ((filter, args), ...)), ...) in order
        self._static = static
        self._names = tuple(dict.fromkeys(name for name, _ in outputs))
        self.placeholders: frozenset[str] = frozenset(self._names)
        # The fast path of a template that is only text and plain {{ placeholder }} outputs (no filter):
        # its parts in order, literal text as itself and each output as its placeholder's name, rendered
        # by joining the cleaned values into the text (~20x faster than Liquid's renderer, the same text:
        # tests/test_content.py compares them on generated templates and values). None: Liquid renders.
        self._plain = plain

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def render(self, ctx: Mapping[str, object]) -> str:
        """The message for one recipient. `ctx` maps each placeholder the template uses to a str or
        number (other keys are ignored); every value passes clean_value before substitution."""
        try:
            values = {name: clean_value(ctx[name]) for name in self._names}
        except KeyError as err:
            raise RenderError(f"no value for placeholder {err.args[0]!r}") from None
        if self._plain is not None:
            out = "".join([values[part[1:]] if part[0] == "\0" else part for part in self._plain])
            if len(out) > MAX_OUTPUT_CHARS:
                raise RenderError(f"the message has {len(out)} characters, at most {MAX_OUTPUT_CHARS} allowed")
            return out
        return self.render_liquid(values)

    def bind(self, fixed: Mapping[str, object]) -> Partial:
        """The template with the placeholders of `fixed` filled in once (cleaned as `render` cleans them): its
        `render(ctx)` needs only the others (ctx's values for the fixed ones are ignored), and renders what this
        template renders with the fixed values and ctx's for the others. For a
        chunk's recipients who share a product, coupon and offer end, only the name is filled per recipient."""
        return Partial(self, fixed)

    def render_liquid(self, values: Mapping[str, str]) -> str:
        """The general path: Liquid renders the cleaned `values` (every placeholder's, as `render` builds them)."""
        try:
            out = self._bound.render(values)
        except LiquidError as err:  # the output stream guard; nothing else can fail on cleaned strings
            raise RenderError(f"the template could not be rendered: {err.message}") from None
        if len(out) > MAX_OUTPUT_CHARS:
            raise RenderError(f"the message has {len(out)} characters, at most {MAX_OUTPUT_CHARS} allowed")
        return out

    def static_length(self) -> int:
        """Characters of literal text (what the message has with every placeholder empty and no default)."""
        return self._static

    def max_length(self, ctx_lengths: Mapping[str, int] | None = None) -> int:
        """An upper bound of the rendered length when each placeholder's value has at most
        `ctx_lengths[name]` characters (VALUE_MAX_CHARS for a name not given; clean_value caps there).
        Exact for plain placeholders, `default` and `truncate`; a case filter counts CASE_GROWTH
        characters per character (str.upper can lengthen: "ß" -> "SS")."""
        lengths = ctx_lengths or {}
        total = self._static
        for name, filters in self._outputs:
            n = min(max(lengths.get(name, VALUE_MAX_CHARS), 0), VALUE_MAX_CHARS)
            for fname, args in filters:
                if fname == "default":
                    n = max(n, len(args[0]))
                elif fname == "truncate":
                    n = min(n, args[0])
                elif fname in _CASE_FILTERS:
                    n *= CASE_GROWTH
            total += n
        return total


class Partial:
    """A template with some placeholders filled (`Template.bind`). A plain template (text and plain outputs) keeps
    its text as literal segments between the placeholders still open, joined per render; any other renders through
    `Template.render` with the fixed values."""

    __slots__ = ("_template", "_fixed", "_segments", "_open")

    def __init__(self, template: Template, fixed: Mapping[str, object]):
        self._template = template
        self._fixed = {name: fixed[name] for name in template.placeholders if name in fixed}
        self._segments: tuple[str, ...] | None = None
        self._open: tuple[str, ...] = ()
        if template._plain is not None:
            cleaned = {name: clean_value(value) for name, value in self._fixed.items()}
            segments, open_names, text = [], [], []
            for part in template._plain:
                if part[0] != "\0":
                    text.append(part)
                elif part[1:] in cleaned:
                    text.append(cleaned[part[1:]])
                else:
                    segments.append("".join(text))
                    open_names.append(part[1:])
                    text = []
            segments.append("".join(text))
            self._segments, self._open = tuple(segments), tuple(open_names)

    def render(self, ctx: Mapping[str, object]) -> str:
        """The message for one recipient: `ctx` maps each placeholder not fixed to its value."""
        segments = self._segments
        if segments is None:
            return self._template.render({**ctx, **self._fixed})
        try:
            if len(self._open) == 1:  # the usual case: only the name differs between recipients
                out = segments[0] + clean_value(ctx[self._open[0]]) + segments[1]
            else:
                parts = [segments[0]]
                for name, segment in zip(self._open, segments[1:], strict=True):
                    parts.append(clean_value(ctx[name]))
                    parts.append(segment)
                out = "".join(parts)
        except KeyError as err:
            raise RenderError(f"no value for placeholder {err.args[0]!r}") from None
        if len(out) > MAX_OUTPUT_CHARS:
            raise RenderError(f"the message has {len(out)} characters, at most {MAX_OUTPUT_CHARS} allowed")
        return out


def compile_template(source: str, *, allowed: frozenset[str], rule: str,
                     filters: frozenset[str] = ALLOWED_FILTERS) -> Template:
    """Validate and parse a merchant template; raise TemplateError(rule, message) naming what is wrong:
    a syntax error (with line and column), a tag (`{% ... %}`: none is allowed), a placeholder outside
    `allowed`, attribute or index access (`name.size`, `name[0]`), a literal where a placeholder belongs,
    a filter outside `filters`, a filter argument that is not a literal of the right kind, a source
    longer than MAX_TEMPLATE_CHARS, or text the text rule refuses (illegal characters, blank)."""
    if not isinstance(source, str):
        raise TemplateError(rule, "a template must be text")
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError(rule, f"template has {len(source)} characters, at most {MAX_TEMPLATE_CHARS} allowed")
    problem = text_problem(source)
    if problem:
        raise TemplateError(rule, f"template {problem.removeprefix('text ')}")
    unknown_filters = filters - ALLOWED_FILTERS
    if unknown_filters:
        raise ValueError(f"filters {sorted(unknown_filters)} are not supported (supported: {sorted(ALLOWED_FILTERS)})")
    tag = _TAG.search(source)
    if tag:
        what = f"tag '{tag.group(1)}'" if tag.group(1) else "'{%'"
        raise TemplateError(rule, f"{what} is not allowed: a template has only text and {{{{ placeholders }}}} "
                                  f"({_where(source, tag.start())})")
    try:
        bound = _ENV.from_string(source)
    except UnknownFilterError as err:
        raise TemplateError(rule, f"{_unknown_filter(err)}{_at(err)}") from None
    except LiquidError as err:
        raise TemplateError(rule, f"template syntax error{_at(err)}: {err.message}") from None
    except RecursionError:  # defensive: a pathological expression
        raise TemplateError(rule, "template syntax error: expression too deeply nested") from None

    outputs: list[tuple[str, tuple]] = []
    static = 0
    # The parts for the fast path: literal text, and "\0" + the placeholder's name for an output (text
    # passed text_problem, so it holds no NUL and cannot be taken for an output).
    parts: list[str] = []
    for node in bound.nodes:
        if isinstance(node, ContentNode):
            static += len(node.text)
            if node.text:
                parts.append(node.text)
        elif isinstance(node, OutputNode):
            outputs.append(_check_output(node, source, allowed, filters, rule))
            parts.append("\0" + outputs[-1][0])
        else:  # no tag is registered, so nothing else parses; keep the walk closed anyway
            raise TemplateError(rule, f"{type(node).__name__} is not allowed ({_where(source, node.token.start_index)})")
    plain = tuple(parts) if all(not flt for _, flt in outputs) else None
    return Template(source, bound, tuple(outputs), static, plain)


def check_template(source: str, *, allowed: frozenset[str], rule: str,
                   filters: frozenset[str] = ALLOWED_FILTERS) -> str:
    """For a pydantic field validator: `source` if compile_template accepts it, else the rule error
    (`schemas.rules.rule_error`, a PydanticCustomError) naming `rule` and what is wrong."""
    try:
        compile_template(source, allowed=allowed, rule=rule, filters=filters)
    except TemplateError as err:
        raise err.pydantic() from None
    return source


def _check_output(node: OutputNode, source: str, allowed: frozenset[str], filters: frozenset[str],
                  rule: str) -> tuple[str, tuple]:
    expr = node.expression
    where = _where(source, node.token.start_index)
    if type(expr) is not FilteredExpression:
        raise TemplateError(rule, f"{node.token.value} is not allowed: only a placeholder and filters ({where})")
    left = expr.left
    if type(left) is not Path:
        raise TemplateError(rule, f"{node.token.value} is not a placeholder: an output holds one of {_names(allowed)} ({where})")
    head = left.path[0] if left.path else None
    if not isinstance(head, str) or head not in allowed:
        raise TemplateError(rule, f"unknown placeholder '{head if isinstance(head, str) else left}' "
                                  f"(allowed: {_names(allowed)}) ({where})")
    if len(left.path) != 1:
        raise TemplateError(rule, f"'{left}' is not allowed: placeholders have no attributes or items, "
                                  f"write '{{{{ {head} }}}}' ({where})")
    checked = []
    for flt in expr.filters or ():
        checked.append(_check_filter(flt, filters, rule, where))
    return head, tuple(checked)


def _check_filter(flt, filters: frozenset[str], rule: str, where: str) -> tuple[str, tuple]:
    name = flt.name
    if name not in filters:
        raise TemplateError(rule, f"filter '{name}' is not allowed (allowed: {', '.join(sorted(filters))}) ({where})")
    if any(isinstance(arg, KeywordArgument) for arg in flt.args):
        raise TemplateError(rule, f"filter '{name}' takes no named arguments ({where})")
    args = [arg.value for arg in flt.args]
    if name in _CASE_FILTERS:
        if args:
            raise TemplateError(rule, f"filter '{name}' takes no argument ({where})")
        return name, ()
    if name == "default":
        if len(args) != 1 or type(args[0]) is not StringLiteral:
            raise TemplateError(rule, f"filter 'default' takes one text in quotes, e.g. default: 'friend' ({where})")
        text = args[0].value
        if is_blank(text):
            raise TemplateError(rule, f"the text of filter 'default' is blank ({where})")
        return name, (text,)
    # truncate: a length, optionally the text that ends a cut value ("..." by default)
    if not 1 <= len(args) <= 2 or type(args[0]) is not IntegerLiteral or (len(args) == 2 and type(args[1]) is not StringLiteral):
        raise TemplateError(rule, f"filter 'truncate' takes a number and optionally a text in quotes, "
                                  f"e.g. truncate: 20 or truncate: 20, '…' ({where})")
    num, end = args[0].value, (args[1].value if len(args) == 2 else "...")
    # Liquid cuts to num - len(end) characters: a num below len(end) would keep almost all of the value.
    if not max(1, len(end)) <= num <= MAX_OUTPUT_CHARS:
        raise TemplateError(rule, f"filter 'truncate' needs a length from {max(1, len(end))} to {MAX_OUTPUT_CHARS}, "
                                  f"got {num} ({where})")
    return name, (num, end)


def _names(allowed: frozenset[str]) -> str:
    names = sorted(allowed)
    more = f" and {len(names) - _VOCAB_HINT_MAX} more" if len(names) > _VOCAB_HINT_MAX else ""
    return ", ".join(names[:_VOCAB_HINT_MAX]) + more if names else "none"


def _where(source: str, index: int) -> str:
    line = source.count("\n", 0, index) + 1
    col = index - (source.rfind("\n", 0, index) + 1) + 1
    return f"line {line}, column {col}"


def _at(err: LiquidError) -> str:
    token = err.token
    if token is None or token.start_index < 0:
        return ""
    return f" at {_where(token.source, token.start_index)}"


def _unknown_filter(err: UnknownFilterError) -> str:
    name = err.token.value if err.token is not None else None
    if not name:
        match = re.search(r"'([^']*)'", str(err.message))
        name = match.group(1) if match else "?"
    return f"filter '{name}' is not allowed (allowed: {', '.join(sorted(ALLOWED_FILTERS))})"

