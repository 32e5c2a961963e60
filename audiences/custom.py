"""A merchant's custom audience (R-RP-3): a typed JSON filter compiled to one parameterised query.

`parse_filter` validates the JSON (pydantic; unknown ops, fields, kinds and keys are refused
with the path and the allowed values); `compile_custom` turns it into
`SELECT c.consumer_id FROM shop_customers c WHERE c.shop_id = $1 AND <predicate>` using the
refresh statement's $1 (shop_id) and $2 (snapshot instant) and binding the filter's values from
$first_param on; `evaluate` is the same semantics in plain Python, for tests.

Semantics: a time window of N days is [snapshot - N x 24 h, snapshot) (R-OC-5: nothing at or
after the snapshot instant counts; 24 h, not calendar days, so the session's TimeZone never
matters). A comparison with a NULL column is false, so `not` is the exact complement.
Orders count when their status is not 'pending' (as in `oldcust_valid`).

The SQL text holds only constant fragments chosen from the allow-lists below and `$n`
placeholders: every user value is a bound parameter.

Cost model (indexes of db/migrations/0001_core.sql): the outer query reads the shop's
customers (primary key shop_customers (shop_id, consumer_id)); a field leaf is a test on that
row, no extra read, and so is a `tags` leaf (the shop's tags of the customer, R-RP-3: has any /
all / none of a bound `text[]`; the tags are never NULL, so `none` is the exact complement of
`any`). A `behaviour` leaf is a correlated EXISTS or LIMIT-capped count, one range probe of
behaviour_shop_consumer (shop_id, consumer_id, kind, occurred_at) reading at most
max(at_least, at_most + 1) index entries (index-only when the visibility map allows). An
`orders` leaf is the same over orders_shop_consumer (shop_id, consumer_id, created_at), plus a
heap fetch per order in the window to test status and amount. Postgres runs the top-level
AND's cheap row tests before its subplans; nested and/or run in the filter's order and stop
early. So a filter costs at most customers x behavioural leaves x (one index descent + cap
entries); an EXISTS directly under the top-level AND may instead become a hashed semi-join.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from sluice.audiences.tags import TagList

MAX_DEPTH = 8  # nesting of and / or / not; a leaf at the top is depth 1
MAX_NODES = 64  # and / or / not nodes and leaves together
MAX_CHILDREN = 16
MAX_LIST = 64  # values of an `in`
MAX_TEXT = 200

# The allow-lists: a validated name selects a constant SQL fragment, nothing else.
TEXT_FIELDS: dict[str, tuple[str, bool]] = {  # name -> (column, nullable)
    "locale": ("c.locale", False),
    "timezone": ("c.timezone", True),  # the customer's own zone, when known
}
BOOL_FIELDS: dict[str, str] = {
    "is_member": "c.is_member",
    "is_fan": "c.is_fan",
    "phone_valid": "c.phone_valid",
    "email_valid": "c.email_valid",
}
TIME_FIELDS: dict[str, str] = {
    "created_at": "c.created_at",  # when the consumer became the shop's customer
}
# Exclusion flags (blacklisted, deleted, unsub_*) are left out on purpose: the refresh applies
# them to every audience (R-EXC-1). Identity columns (nick, phone, email, chat_id) are not filters.
FIELDS = (*TEXT_FIELDS, *BOOL_FIELDS, *TIME_FIELDS)

# behaviour_events.kind (db/migrations/0001_core.sql, db/seed.py): the one list, which loading checks too
# (ingest/records.py); "view" is a product page view.
BEHAVIOUR_KINDS = (
    "visit", "favourite", "cart", "inquiry", "live_view", "coupon_claim", "login",
    "message_read", "message_click", "message_reply", "view",
)  # fmt: skip

_CMP_SQL = {"eq": "=", "ne": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
_CMP_PY = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
}
TEXT_OPS = ("eq", "ne", "in")
BOOL_OPS = ("eq", "ne")
TIME_OPS = ("lt", "lte", "gt", "gte", "between", "within_days")
OPS = ("and", "or", "not", "behaviour", "orders", "tags", *dict.fromkeys((*TEXT_OPS, *BOOL_OPS, *TIME_OPS)))
# The `tags` condition on the shop's tags of the customer (shop_customers.tags, R-RP-3): holds any of
# the listed tags, all of them, or none of them.
TAG_MATCHES = ("any", "all", "none")
_TAG_SQL = {"any": "(c.tags && {p})", "all": "(c.tags @> {p})", "none": "NOT (c.tags && {p})"}


# ---------------------------------------------------------------------------------------------
# Value types: strict (a bool field refuses "true", a time refuses a number, an amount a string).


def _text(v: Any) -> Any:
    if isinstance(v, str) and "\x00" in v:
        raise ValueError("text cannot contain NUL (U+0000)")
    return v


Text = Annotated[str, Field(strict=True, max_length=MAX_TEXT), BeforeValidator(_text)]


def _instant(v: Any) -> Any:
    if not isinstance(v, str | datetime):
        raise ValueError("a time is an ISO 8601 string with a UTC offset, e.g. 2025-06-01T00:00:00+08:00")
    return v


Instant = Annotated[AwareDatetime, BeforeValidator(_instant)]


def _amount(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, int | float | Decimal):
        raise ValueError("an amount is a number")
    return Decimal(str(v)) if isinstance(v, float) else v


Amount = Annotated[Decimal, BeforeValidator(_amount), Field(ge=0, max_digits=12, decimal_places=2)]
Days = Annotated[int, Field(strict=True, ge=1, le=365)]
Count = Annotated[int, Field(strict=True, ge=0, le=10_000)]


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# Leaves on the customer's row.


class TextCompare(_Node):
    op: Literal["eq", "ne"]
    field: Literal[tuple(TEXT_FIELDS)]  # type: ignore[valid-type]
    value: Text


class TextIn(_Node):
    op: Literal["in"]
    field: Literal[tuple(TEXT_FIELDS)]  # type: ignore[valid-type]
    value: Annotated[list[Text], Field(min_length=1, max_length=MAX_LIST)]


class BoolCompare(_Node):
    op: Literal["eq", "ne"]
    field: Literal[tuple(BOOL_FIELDS)]  # type: ignore[valid-type]
    value: StrictBool


class TimeCompare(_Node):
    op: Literal["lt", "lte", "gt", "gte"]
    field: Literal[tuple(TIME_FIELDS)]  # type: ignore[valid-type]
    value: Instant


class TimeBetween(_Node):
    """low <= field <= high."""

    op: Literal["between"]
    field: Literal[tuple(TIME_FIELDS)]  # type: ignore[valid-type]
    value: tuple[Instant, Instant]

    @model_validator(mode="after")
    def _ordered(self):
        if self.value[0] > self.value[1]:
            raise ValueError("between: the first time is after the second")
        return self


class TimeWithin(_Node):
    """snapshot - value days <= field < snapshot."""

    op: Literal["within_days"]
    field: Literal[tuple(TIME_FIELDS)]  # type: ignore[valid-type]
    value: Days


class Tags(_Node):
    """The customer's tags in this shop hold any / all / none of `value` (audiences/tags.py bounds it)."""

    op: Literal["tags"]
    match: Literal[TAG_MATCHES]  # type: ignore[valid-type]
    value: TagList


# ---------------------------------------------------------------------------------------------
# Leaves on the customer's behaviour in this shop, in [snapshot - within_days, snapshot).


class _Counted(_Node):
    within_days: Days
    at_least: Count | None = None
    at_most: Count | None = None

    @model_validator(mode="after")
    def _bounds(self):
        if self.at_least is None and self.at_most is None:
            raise ValueError("give at_least, at_most or both")
        if self.at_least is not None and self.at_most is not None and self.at_least > self.at_most:
            raise ValueError("at_least is greater than at_most")
        return self

    @property
    def low(self) -> int:
        return self.at_least or 0


class Behaviour(_Counted):
    op: Literal["behaviour"]
    kind: Literal[BEHAVIOUR_KINDS]  # type: ignore[valid-type]


class Orders(_Counted):
    """Non-pending orders of the shop; with min_amount, only those of at least that amount."""

    op: Literal["orders"]
    min_amount: Amount | None = None


# ---------------------------------------------------------------------------------------------
# Combinators and the union. The discriminator routes on `op` (and on the field's type for the
# comparison ops); a name off the allow-lists goes to a model that can only fail, so the error
# names the path and lists the allowed values.


class And(_Node):
    op: Literal["and"]
    children: Annotated[list[Filter], Field(min_length=1, max_length=MAX_CHILDREN)]


class Or(_Node):
    op: Literal["or"]
    children: Annotated[list[Filter], Field(min_length=1, max_length=MAX_CHILDREN)]


class Not(_Node):
    op: Literal["not"]
    child: Filter


class _UnknownOp(BaseModel):
    op: Literal[OPS]  # type: ignore[valid-type]


class _UnknownField(BaseModel):
    field: Literal[FIELDS]  # type: ignore[valid-type]


class _TextOp(BaseModel):
    op: Literal[TEXT_OPS]  # type: ignore[valid-type]


class _BoolOp(BaseModel):
    op: Literal[BOOL_OPS]  # type: ignore[valid-type]


class _TimeOp(BaseModel):
    op: Literal[TIME_OPS]  # type: ignore[valid-type]


def _tag(v: Any) -> str | None:
    if isinstance(v, BaseModel):
        return _MODEL_TAGS.get(type(v))
    if not isinstance(v, Mapping):
        return None  # pydantic: "Unable to extract tag"
    op, field = v.get("op"), v.get("field")
    if op in ("and", "or", "not", "behaviour", "orders", "tags"):
        return op
    if op not in OPS:
        return "unknown_op"
    if not isinstance(field, str) or field not in FIELDS:
        return "unknown_field"
    if field in TEXT_FIELDS:
        return {"eq": "text", "ne": "text", "in": "text_in"}.get(op, "text_op")
    if field in BOOL_FIELDS:
        return "bool" if op in BOOL_OPS else "bool_op"
    if op in ("lt", "lte", "gt", "gte"):
        return "time"
    return {"between": "time_between", "within_days": "time_within"}.get(op, "time_op")


Filter = Annotated[
    Union[  # noqa: UP007 (forward references)
        Annotated[And, Tag("and")],
        Annotated[Or, Tag("or")],
        Annotated[Not, Tag("not")],
        Annotated[Behaviour, Tag("behaviour")],
        Annotated[Orders, Tag("orders")],
        Annotated[Tags, Tag("tags")],
        Annotated[TextCompare, Tag("text")],
        Annotated[TextIn, Tag("text_in")],
        Annotated[BoolCompare, Tag("bool")],
        Annotated[TimeCompare, Tag("time")],
        Annotated[TimeBetween, Tag("time_between")],
        Annotated[TimeWithin, Tag("time_within")],
        Annotated[_UnknownOp, Tag("unknown_op")],
        Annotated[_UnknownField, Tag("unknown_field")],
        Annotated[_TextOp, Tag("text_op")],
        Annotated[_BoolOp, Tag("bool_op")],
        Annotated[_TimeOp, Tag("time_op")],
    ],
    Discriminator(_tag, custom_error_type="filter_type", custom_error_message="a filter is an object with an 'op'"),
]
_MODEL_TAGS = {And: "and", Or: "or", Not: "not", Behaviour: "behaviour", Orders: "orders", Tags: "tags", TextCompare: "text",
               TextIn: "text_in", BoolCompare: "bool", TimeCompare: "time", TimeBetween: "time_between",
               TimeWithin: "time_within"}  # fmt: skip
_TAGS = {*_MODEL_TAGS.values(), "unknown_op", "unknown_field", "text_op", "bool_op", "time_op"}
for _m in (And, Or, Not):
    _m.model_rebuild()

Node = (And | Or | Not | Behaviour | Orders | Tags | TextCompare | TextIn | BoolCompare | TimeCompare | TimeBetween
        | TimeWithin)


def _shape(raw: Any) -> tuple[int, int]:
    """(depth, nodes) of a raw filter, walked before validation so a huge input costs nothing."""
    depth, nodes, stack = 0, 0, [(raw, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, BaseModel):
            v = {"op": getattr(v, "op", None), "children": getattr(v, "children", None), "child": getattr(v, "child", None)}
        if not isinstance(v, Mapping):
            continue
        nodes += 1
        depth = max(depth, d)
        if nodes > MAX_NODES or depth > MAX_DEPTH:
            break
        children = v.get("children")
        if isinstance(children, list):
            stack.extend((c, d + 1) for c in children[: MAX_CHILDREN + 1])
        if v.get("child") is not None:
            stack.append((v["child"], d + 1))
    return depth, nodes


def _bounded(raw: Any) -> Any:
    depth, nodes = _shape(raw)
    if depth > MAX_DEPTH:
        raise ValueError(f"the filter nests deeper than {MAX_DEPTH} levels")
    if nodes > MAX_NODES:
        raise ValueError(f"the filter has more than {MAX_NODES} nodes")
    return raw


CustomFilter = Annotated[Filter, BeforeValidator(_bounded)]
_ADAPTER: TypeAdapter[Node] = TypeAdapter(CustomFilter, config=ConfigDict(title="custom audience filter"))


def checked_filter(raw: dict | None, rule: str) -> dict | None:
    """A spec's custom filter, unchanged when it parses; refused under the kind's rule id when it does not
    (the field validator every kind with a custom audience uses)."""
    if raw is not None:
        from sluice.schemas.rules import rule_error

        try:
            parse_filter(raw)
        except ValueError as exc:
            raise rule_error(rule, f"the custom filter is invalid: {str(exc)[:400]}") from None
    return raw


def parse_filter(raw: Any) -> Node:
    """The validated filter of a JSON value (dict) or JSON text; raises pydantic.ValidationError."""
    if isinstance(raw, str | bytes):
        return _ADAPTER.validate_json(raw)
    return _ADAPTER.validate_python(raw)


def describe_errors(exc: ValidationError) -> list[dict[str, str]]:
    """[{"field": "children.0.kind", "message": ...}]: pydantic's errors without the union tags in the path."""
    out = []
    for e in exc.errors(include_url=False):
        loc = e["loc"]
        # pydantic puts the union's tag before each node's keys: at the top, after a list index, after "child"
        path = [str(p) for i, p in enumerate(loc)
                if not (p in _TAGS and (i == 0 or isinstance(loc[i - 1], int) or loc[i - 1] == "child"))]  # fmt: skip
        out.append({"field": ".".join(path) or "(filter)", "message": e["msg"]})
    return out


# ---------------------------------------------------------------------------------------------
# The compiler.

_WINDOW = "{col} >= $2::timestamptz - {days} * interval '24 hours' AND {col} < $2::timestamptz"


class _Params:
    def __init__(self, first: int):
        self.first = first
        self.values: list[Any] = []

    def __call__(self, value: Any, cast: str) -> str:
        self.values.append(value)
        return f"${self.first + len(self.values) - 1}::{cast}"


def _counted(node: _Counted, source: str, p: _Params) -> str:
    if node.at_most is None and node.low == 1:
        return f"EXISTS ({source})"
    if node.at_most == 0:
        return f"NOT EXISTS ({source})"
    cap = node.low if node.at_most is None else node.at_most + 1  # the count saturates at cap
    count = f"(SELECT count(*) FROM ({source} LIMIT {p(cap, 'int')}) w)"
    if node.at_most is None:
        return f"({count} >= {p(node.low, 'int')})"
    return f"({count} BETWEEN {p(node.low, 'int')} AND {p(node.at_most, 'int')})"


def _predicate(node: Node, p: _Params) -> str:
    match node:
        case And(children=children) | Or(children=children):
            joiner = " AND " if isinstance(node, And) else " OR "
            return "(" + joiner.join(_predicate(c, p) for c in children) + ")"
        case Not(child=child):
            return f"NOT {_predicate(child, p)}"
        case TextCompare(op=op, field=field, value=value):
            col, nullable = TEXT_FIELDS[field]
            test = f"{col} {_CMP_SQL[op]} {p(value, 'text')}"
            return f"coalesce({test}, false)" if nullable else f"({test})"
        case TextIn(field=field, value=value):
            col, nullable = TEXT_FIELDS[field]
            test = f"{col} = ANY({p(list(value), 'text[]')})"
            return f"coalesce({test}, false)" if nullable else f"({test})"
        case BoolCompare(op=op, field=field, value=value):
            return f"({BOOL_FIELDS[field]} {_CMP_SQL[op]} {p(value, 'boolean')})"
        case TimeCompare(op=op, field=field, value=value):
            return f"({TIME_FIELDS[field]} {_CMP_SQL[op]} {p(value, 'timestamptz')})"
        case TimeBetween(field=field, value=(low, high)):
            return f"({TIME_FIELDS[field]} BETWEEN {p(low, 'timestamptz')} AND {p(high, 'timestamptz')})"
        case TimeWithin(field=field, value=days):
            return "(" + _WINDOW.format(col=TIME_FIELDS[field], days=p(days, "int")) + ")"
        case Tags(match=match, value=value):
            return _TAG_SQL[match].format(p=p(list(value), "text[]"))
        case Behaviour():
            source = ("SELECT 1 FROM behaviour_events e WHERE e.shop_id = $1 AND e.consumer_id = c.consumer_id"
                      f" AND e.kind = {p(node.kind, 'text')} AND "
                      + _WINDOW.format(col="e.occurred_at", days=p(node.within_days, "int")))  # fmt: skip
            return _counted(node, source, p)
        case Orders():
            source = ("SELECT 1 FROM orders o WHERE o.shop_id = $1 AND o.consumer_id = c.consumer_id"
                      " AND o.status <> 'pending' AND "
                      + _WINDOW.format(col="o.created_at", days=p(node.within_days, "int")))  # fmt: skip
            if node.min_amount is not None:
                source += f" AND o.amount >= {p(node.min_amount, 'numeric')}"
            return _counted(node, source, p)
    raise TypeError(f"not a custom audience filter: {node!r}")


def compile_predicate(node: Node, first_param: int = 11) -> tuple[str, list[Any]]:
    """The filter as a boolean SQL expression over the customer row `c` (shop_customers), with
    $1 shop_id and $2 snapshot instant of the outer statement and $first_param.. for its values."""
    if not isinstance(node, BaseModel):
        node = parse_filter(node)
    if first_param < 3:
        raise ValueError("first_param: $1 and $2 belong to the outer statement")
    p = _Params(first_param)
    return _predicate(node, p), p.values


def compile_custom(node: Node | Mapping, first_param: int = 11) -> tuple[str, list[Any]]:
    """(sql, params): the audience query of the filter; params bind $first_param, $first_param + 1, ..."""
    predicate, params = compile_predicate(node, first_param)
    # $2 typed even when no window uses it, so the query also runs on its own with ($1, $2, params...)
    sql = f"SELECT c.consumer_id FROM shop_customers c WHERE c.shop_id = $1 AND $2::timestamptz IS NOT NULL AND {predicate}"
    return sql, params


# ---------------------------------------------------------------------------------------------
# The evaluator: the same semantics over rows in memory, written without the SQL.


def _in_window(at: datetime, snapshot_at: datetime, days: int) -> bool:
    # in UTC: Python's arithmetic on a zone-aware datetime is wall-clock (a DST day has 23 hours)
    snapshot_at = snapshot_at.astimezone(UTC)
    return snapshot_at - timedelta(days=days) <= at < snapshot_at


def _count_ok(node: _Counted, n: int) -> bool:
    return n >= node.low and (node.at_most is None or n <= node.at_most)


def evaluate(
    node: Node | Mapping,
    customer: Mapping[str, Any],
    events: Iterable[Mapping[str, Any]],
    orders: Iterable[Mapping[str, Any]],
    snapshot_at: datetime,
) -> bool:
    """Whether a shop_customers row matches. events / orders: rows with the columns of
    behaviour_events / orders; those of other shops or consumers (when the row has shop_id /
    consumer_id) are ignored."""
    if not isinstance(node, BaseModel):
        node = parse_filter(node)

    def mine(row: Mapping[str, Any]) -> bool:
        return all(row.get(k, customer.get(k)) == customer.get(k) for k in ("shop_id", "consumer_id"))

    events = [e for e in events if mine(e)]
    orders = [o for o in orders if mine(o)]

    def ev(n: Node) -> bool:
        if isinstance(n, And):
            return all(ev(c) for c in n.children)
        if isinstance(n, Or):
            return any(ev(c) for c in n.children)
        if isinstance(n, Not):
            return not ev(n.child)
        if isinstance(n, Behaviour):
            k = sum(1 for e in events if e["kind"] == n.kind and _in_window(e["occurred_at"], snapshot_at, n.within_days))
            return _count_ok(n, k)
        if isinstance(n, Tags):
            held = set(customer.get("tags") or ())
            return {"any": bool(held & set(n.value)), "all": set(n.value) <= held, "none": not held & set(n.value)}[n.match]
        if isinstance(n, Orders):
            k = sum(1 for o in orders
                    if o["status"] != "pending" and _in_window(o["created_at"], snapshot_at, n.within_days)
                    and (n.min_amount is None or Decimal(o["amount"]) >= n.min_amount))  # fmt: skip
            return _count_ok(n, k)
        value = customer[n.field]
        if value is None:
            return False
        if isinstance(n, TextIn):
            return value in n.value
        if isinstance(n, TimeBetween):
            return n.value[0] <= value <= n.value[1]
        if isinstance(n, TimeWithin):
            return _in_window(value, snapshot_at, n.value)
        return _CMP_PY[n.op](value, n.value)

    return ev(node)
