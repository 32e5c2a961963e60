"""Where each kind of record goes, and the set-based statements that write a batch of them.

A batch (an API request, or a whole file of `sluice load`) runs in one transaction:

1. its valid records are COPYed into a temporary staging table (`stage`: no WAL, no index),
   each with its row number;
2. the reference checks (`Kind.checks`) find, set-based, the staged rows that point at what
   this shop does not have (a customer, an order, an agent) or that would overwrite an id
   another shop owns (products, orders and coupons have platform-wide ids); those rows are
   refused with field, rule and reason, and leave the stage;
3. the kind's upsert (`UPSERT[kind]`): INSERT ... SELECT FROM stage ON CONFLICT (key) DO UPDATE
   ... WHERE the row differs. A new key is inserted, a changed record updates its row, an
   identical one is left alone and counted a duplicate. When two rows of the batch share a key
   (ON CONFLICT DO UPDATE refuses to touch a row twice) the statement is rolled back to its
   savepoint, the later copies leave the stage (identical: duplicate; different: refused,
   R-LOAD-KEY) and it runs again. Clean batches pay nothing for that check.

So a batch is all-or-nothing for its valid rows, and a refused row writes nothing.

Cost (measured on PostgreSQL 15, 2 cores, 1M events into behaviour_events holding its seeded
rows): the staging COPY ~560,000 rows/s; the upsert is one pass over the stage with a probe
of the key's unique index per row, and its inserts maintain the table's indexes like a plain
COPY into the table does (docs/benchmarks.md has the whole-file figures).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
from pydantic import ValidationError
from sluice.ingest import records as R
from sluice.schemas.rules import error_details
from sluice.workers.metrics import count_load_rows

STAGE = "stage"


@dataclass(frozen=True)
class Check:
    """Staged rows refused for a reason only the database knows. sql selects (row, value) from the stage;
    $1 is the shop."""

    field: str
    rule: str
    message: str  # formatted with {value}
    sql: str


@dataclass(frozen=True)
class Kind:
    name: str
    model: type[R.Record]
    table: str
    columns: tuple[tuple[str, str], ...]  # (column, SQL type) of the record's fields, staged in this order
    key: tuple[str, ...]  # the table's conflict target
    upsert: str
    checks: tuple[Check, ...] = ()
    before: tuple[str, ...] = field(default=())  # statements run on the stage before the upsert ($1: shop)

    @property
    def names(self) -> list[str]:
        return [c for c, _ in self.columns]


def _upsert(table: str, key: tuple[str, ...], columns: tuple[tuple[str, str], ...], *, owned_ids: bool = False,
            keep_if_absent: tuple[str, ...] = (), stamp_if_absent: tuple[str, ...] = (), shop_column: bool = True) -> str:
    """INSERT ... SELECT FROM stage ON CONFLICT (key) DO UPDATE ... WHERE the row differs, counting inserts
    and updates. keep_if_absent: a column the record may leave out (NULL staged): a new row gets now(), an
    existing row keeps its value. stamp_if_absent: the same, but a changed row gets now(). Both test
    "left out" as `excluded.col = now()` (the transaction's start, which no record names).
    owned_ids: the key is a platform-wide id; a row of another shop is never touched (the checks have
    refused it already; the guard keeps a concurrent writer of another shop safe too)."""
    names = [c for c, _ in columns]
    insert_cols = (["shop_id"] if shop_column else []) + names
    select = (["$1"] if shop_column else []) + [f"coalesce({c}, now())" if c in keep_if_absent + stamp_if_absent else c
                                                for c in names]
    compared = [c for c in names if c not in key and c not in keep_if_absent + stamp_if_absent]
    sets = []
    for c in names:
        if c in key:
            continue
        if c in keep_if_absent:
            sets.append(f"{c} = CASE WHEN excluded.{c} = now() THEN t.{c} ELSE excluded.{c} END")
        else:
            sets.append(f"{c} = excluded.{c}")
    differs = [f"(t.{', t.'.join(compared)}) IS DISTINCT FROM (excluded.{', excluded.'.join(compared)})"]
    differs += [f"(excluded.{c} <> now() AND excluded.{c} IS DISTINCT FROM t.{c})" for c in keep_if_absent + stamp_if_absent]
    guard = "t.shop_id = excluded.shop_id AND " if owned_ids else ""
    return f"""WITH w AS (
    INSERT INTO {table} AS t ({', '.join(insert_cols)})
    SELECT {', '.join(select)} FROM {STAGE}
    ON CONFLICT ({', '.join(key)}) DO UPDATE SET {', '.join(sets)}
    WHERE {guard}({' OR '.join(differs)})
    RETURNING (t.xmax = 0) AS inserted)
SELECT count(*) FILTER (WHERE inserted) AS inserted, count(*) FILTER (WHERE NOT inserted) AS updated FROM w"""


def _columns(model: type[R.Record], types: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The record's fields (but shop_id) with their SQL types, in the model's order."""
    names = [n for n in model.model_fields if n != "shop_id"]
    assert set(names) == set(types), (model.KIND, set(names) ^ set(types))
    return tuple((n, types[n]) for n in names)


def _owned_by_other_shop(table: str, id_column: str) -> Check:
    # One probe of the table's primary key per staged row.
    return Check(id_column, R.RULE_REF, f"{id_column} {{value}} belongs to another shop",
                 f"SELECT s.row, s.{id_column}::text FROM {STAGE} s JOIN {table} x USING ({id_column}) WHERE x.shop_id <> $1")


# References to this shop's rows. Each is a scalar subquery with LIMIT, which PostgreSQL keeps as a
# per-row subplan: one probe of the referenced primary key per staged row. Written as NOT EXISTS the
# planner may hash the shop's whole customer table for every chunk instead (seen: 3.7 s per 50,000
# events at a 1M-customer shop, against well under a second for the probes).
NOT_A_CUSTOMER = Check(
    "consumer_id", R.RULE_REF, "consumer {value} is not a customer of this shop (load customers first)",
    f"SELECT s.row, s.consumer_id::text FROM {STAGE} s WHERE (SELECT true FROM shop_customers c"
    " WHERE c.shop_id = $1 AND c.consumer_id = s.consumer_id LIMIT 1) IS NULL",
)
NOT_AN_ORDER = Check(
    "order_id", R.RULE_REF, "order {value} is not an order of this shop (load orders first)",
    f"SELECT s.row, s.order_id::text FROM {STAGE} s WHERE (SELECT true FROM orders o"
    " WHERE o.order_id = s.order_id AND o.shop_id = $1 LIMIT 1) IS NULL",
)
NOT_AN_AGENT = Check(
    "agent_id", R.RULE_REF, "agent {value} is not an agent of this shop (load agents first)",
    f"SELECT s.row, s.agent_id FROM {STAGE} s WHERE (SELECT true FROM agents a"
    " WHERE a.shop_id = $1 AND a.agent_id = s.agent_id LIMIT 1) IS NULL",
)
# A customer is a platform consumer first (consumers is platform-wide; the shop adds its own row).
ENSURE_CONSUMERS = f"INSERT INTO consumers (consumer_id) SELECT consumer_id FROM {STAGE} ON CONFLICT DO NOTHING"

T, B, BIG, TS, NUM, INT = "text", "boolean", "bigint", "timestamptz", "numeric(12,2)", "integer"
_SHOP = _columns(R.ShopRecord, {"name": T, "timezone": T, "industry": T, "sms_signature": T, "virtual_category": B})
_CUSTOMER = _columns(R.CustomerRecord, {
    "consumer_id": BIG, "nick": T, "phone": T, "email": T, "chat_id": T, "phone_valid": B, "email_valid": B,
    "locale": T, "timezone": T, "is_member": B, "is_fan": B, "blacklisted": B, "deleted": B, "unsub_chat": B,
    "unsub_sms": B, "unsub_email": B, "unsub_inbox": B, "tags": "text[]", "created_at": TS,
})  # fmt: skip
_PRODUCT = _columns(R.ProductRecord, {"product_id": BIG, "title": T, "category": T, "price": NUM,
                                      "repurchase_cycle_days": INT, "on_shelf": B})
_COUPON = _columns(R.CouponRecord, {"coupon_id": T, "name": T, "valid_from": TS, "valid_to": TS, "stock": INT,
                                    "product_id": BIG})
_ORDER = _columns(R.OrderRecord, {"order_id": BIG, "consumer_id": BIG, "created_at": TS, "paid_at": TS, "amount": NUM,
                                  "status": T})
_ITEM = _columns(R.OrderItemRecord, {"order_id": BIG, "product_id": BIG, "quantity": INT, "price": NUM})
_EVENT = _columns(R.EventRecord, {"event_id": T, "consumer_id": BIG, "kind": T, "product_id": BIG, "occurred_at": TS})
_AGENT = _columns(R.AgentRecord, {"agent_id": T, "name": T, "online": B, "updated_at": TS})
_CUSTOMER_AGENT = _columns(R.CustomerAgentRecord, {"consumer_id": BIG, "agent_id": T, "served_at": TS})

# The shop's own row (primary key). Only through `sluice load shops` can it be new; a key's shop exists.
UPSERT_SHOPS = _upsert("shops", ("shop_id",), (("shop_id", T), *_SHOP), shop_column=False)
# shop_customers primary key (shop_id, consumer_id); tags changes touch the GIN index, the rest stays HOT.
UPSERT_CUSTOMERS = _upsert("shop_customers", ("shop_id", "consumer_id"), _CUSTOMER, keep_if_absent=("created_at",))
UPSERT_PRODUCTS = _upsert("products", ("product_id",), _PRODUCT, owned_ids=True)  # products primary key
UPSERT_COUPONS = _upsert("coupons", ("coupon_id",), _COUPON, owned_ids=True)  # coupons primary key
UPSERT_ORDERS = _upsert("orders", ("order_id",), _ORDER, owned_ids=True)  # orders primary key
# order_items primary key (order_id, product_id); the order's shop is checked first (NOT_AN_ORDER).
UPSERT_ORDER_ITEMS = _upsert("order_items", ("order_id", "product_id"), _ITEM, shop_column=False)
# behaviour_events_key (shop_id, event_id), from 0010; inserts also maintain behaviour_shop_consumer.
UPSERT_EVENTS = _upsert("behaviour_events", ("shop_id", "event_id"), _EVENT)
UPSERT_AGENTS = _upsert("agents", ("shop_id", "agent_id"), _AGENT, stamp_if_absent=("updated_at",))  # primary key
UPSERT_CUSTOMER_AGENTS = _upsert("customer_agents", ("shop_id", "consumer_id"), _CUSTOMER_AGENT)  # primary key

KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("shops", R.ShopRecord, "shops", (("shop_id", T), *_SHOP), ("shop_id",), UPSERT_SHOPS),
    Kind("customers", R.CustomerRecord, "shop_customers", _CUSTOMER, ("consumer_id",), UPSERT_CUSTOMERS,
         before=(ENSURE_CONSUMERS,)),
    Kind("products", R.ProductRecord, "products", _PRODUCT, ("product_id",), UPSERT_PRODUCTS,
         checks=(_owned_by_other_shop("products", "product_id"),)),
    Kind("coupons", R.CouponRecord, "coupons", _COUPON, ("coupon_id",), UPSERT_COUPONS,
         checks=(_owned_by_other_shop("coupons", "coupon_id"),)),
    Kind("orders", R.OrderRecord, "orders", _ORDER, ("order_id",), UPSERT_ORDERS,
         checks=(_owned_by_other_shop("orders", "order_id"), NOT_A_CUSTOMER)),
    Kind("order_items", R.OrderItemRecord, "order_items", _ITEM, ("order_id", "product_id"), UPSERT_ORDER_ITEMS,
         checks=(NOT_AN_ORDER,)),
    Kind("events", R.EventRecord, "behaviour_events", _EVENT, ("event_id",), UPSERT_EVENTS, checks=(NOT_A_CUSTOMER,)),
    Kind("agents", R.AgentRecord, "agents", _AGENT, ("agent_id",), UPSERT_AGENTS),
    Kind("customer_agents", R.CustomerAgentRecord, "customer_agents", _CUSTOMER_AGENT, ("consumer_id",),
         UPSERT_CUSTOMER_AGENTS, checks=(NOT_A_CUSTOMER, NOT_AN_AGENT)),
)}  # fmt: skip
assert tuple(KINDS) == R.KINDS


@dataclass
class Refusal:
    row: int  # the record's index in the batch (0-based), or its line in a file
    field: str
    rule: str
    message: str

    def as_dict(self) -> dict:
        return {"row": self.row, "field": self.field, "rule": self.rule, "message": self.message}


@dataclass
class Outcome:
    inserted: int = 0
    updated: int = 0
    duplicate: int = 0
    refused: list[Refusal] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.inserted + self.updated

    @property
    def refused_rows(self) -> int:
        return len({r.row for r in self.refused})

    def add(self, other: Outcome) -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.duplicate += other.duplicate
        self.refused += other.refused


async def create_stage(conn: asyncpg.Connection, kind: Kind) -> None:
    """The batch's staging table, dropped when the transaction ends (call inside one)."""
    cols = ", ".join(f"{c} {t}" for c, t in kind.columns)
    # The checks and the upsert are estimated costly enough for JIT, whose compiling took seconds per
    # statement here and saved nothing: off for the batch's transaction.
    await conn.execute("SET LOCAL jit = off")
    await conn.execute(f"CREATE TEMP TABLE {STAGE} (row bigint NOT NULL, {cols}) ON COMMIT DROP")


def stage_tuple(kind: Kind, row: int, record: R.Record, shop_id: str) -> tuple:
    """(row, *fields) in the stage's column order: the model's field order, shop_id (first) set or left out."""
    values = tuple(record.__dict__.values())  # a model's __dict__ holds its fields in declaration order
    return (row, shop_id, *values[1:]) if kind.name == "shops" else (row, *values[1:])


async def stage(conn: asyncpg.Connection, kind: Kind, rows) -> None:
    """COPY (row, *fields) tuples (an iterable or async iterable, consumed as it streams) into the stage."""
    await conn.copy_records_to_table(STAGE, columns=["row", *kind.names], records=rows)


async def apply(conn: asyncpg.Connection, kind: Kind, shop_id: str) -> Outcome:
    """Refuse, then upsert, the staged rows (inside the batch's transaction). Refusals carry staged row numbers."""
    out = Outcome()
    refused: set[int] = set()
    for check in kind.checks:
        for r in await conn.fetch(check.sql, shop_id):
            if r[0] not in refused:
                refused.add(r[0])
                out.refused.append(Refusal(r[0], check.field, check.rule, check.message.format(value=r[1])))
    if refused:
        await conn.execute(f"DELETE FROM {STAGE} WHERE row = ANY($1::bigint[])", list(refused))
    staged = await conn.fetchval(f"SELECT count(*) FROM {STAGE}")
    for sql in kind.before:
        await conn.execute(sql, *_params(sql, shop_id))
    try:
        async with conn.transaction():  # a savepoint
            counts = await conn.fetchrow(kind.upsert, *_params(kind.upsert, shop_id))
    except asyncpg.CardinalityViolationError:  # two rows of the batch share a key
        same, differ = await _drop_repeated_keys(conn, kind)
        out.duplicate += same
        out.refused += differ
        staged -= same + len(differ)
        counts = await conn.fetchrow(kind.upsert, *_params(kind.upsert, shop_id))
    out.inserted, out.updated = counts["inserted"], counts["updated"]
    out.duplicate += staged - out.inserted - out.updated
    out.refused.sort(key=lambda r: r.row)
    return out


def _params(sql: str, shop_id: str) -> list:
    return [shop_id] if "$1" in sql else []


async def _drop_repeated_keys(conn: asyncpg.Connection, kind: Kind) -> tuple[int, list[Refusal]]:
    """Take every later copy of a key off the stage: identical ones are duplicates, different ones refused."""
    key = ", ".join(kind.key)
    others = [c for c in kind.names if c not in kind.key]
    first = f"first_value(ROW({', '.join(others)})) OVER (PARTITION BY {key} ORDER BY row)" if others else "NULL"
    rows = await conn.fetch(f"""
        WITH later AS (
            SELECT row, ROW({', '.join(others) or 'NULL'}) IS NOT DISTINCT FROM {first} AS same,
                   row_number() OVER (PARTITION BY {key} ORDER BY row) AS n,
                   concat_ws('/', {key}) AS k
            FROM {STAGE})
        DELETE FROM {STAGE} s USING later l WHERE s.row = l.row AND l.n > 1
        RETURNING l.row, l.same, l.k""")  # fmt: skip
    refused = [Refusal(r["row"], kind.key[-1], R.RULE_KEY,
                       f"an earlier record of this batch has the key {r['k']} with other values") for r in rows if not r["same"]]
    return sum(1 for r in rows if r["same"]), refused


def validate(kind: Kind, row: int, raw, shop_id: str, *, text: bool = False) -> tuple[R.Record | None, list[Refusal]]:
    """The record of one raw row, or why not. A JSON object is validated strictly; `text`: the values are CSV
    cells (strings), decoded as pydantic's lax mode decodes text ("12" an integer, "true" a boolean)."""
    if not isinstance(raw, dict):
        return None, [Refusal(row, "record", "schema:model_type", "a record is a JSON object")]
    try:
        record = kind.model.model_validate(raw, strict=not text)
    except ValidationError as exc:
        return None, [Refusal(row, d["field"], d["rule"], d["message"]) for d in error_details(exc.errors())]
    if record.shop_id is not None and record.shop_id != shop_id:
        return None, [Refusal(row, "shop_id", R.RULE_SHOP, "this key (or --shop) may not load records of another shop")]
    return record, []


async def load_batch(conn: asyncpg.Connection, kind: Kind, shop_id: str, raws: list) -> Outcome:
    """Validate, stage and upsert one batch in one transaction: all of its valid records or none."""
    refused: list[Refusal] = []
    rows = []
    for i, raw in enumerate(raws):
        record, why = validate(kind, i, raw, shop_id)
        if record is None:
            refused += why
        else:
            rows.append(stage_tuple(kind, i, record, shop_id))
    async with conn.transaction():
        await create_stage(conn, kind)
        if rows:
            await stage(conn, kind, rows)
        out = await apply(conn, kind, shop_id)
    out.refused = sorted(refused + out.refused, key=lambda r: r.row)
    count_load_rows(kind.name, accepted=out.accepted, duplicate=out.duplicate, refused=out.refused_rows)
    return out
