"""Where each kind of record goes, and the set-based statements that write a batch of them.

A batch (an API request, or a whole file of `sluice load`) runs in one transaction:

1. its valid records are COPYed into a temporary staging table (`stage`: no WAL, no index),
   each with its row number;
2. the reference checks (`Kind.checks`) take off the stage, set-based (one DELETE ... RETURNING
   each), the rows that point at what this shop does not have (a customer, an order, an agent)
   or that would overwrite an id another shop owns (products, orders and coupons have
   platform-wide ids); those rows are refused with field, rule and reason;
3. the kind's upsert (`UPSERT_<KIND>`, an `Upsert`): INSERT ... SELECT FROM stage ON CONFLICT
   (key) DO UPDATE ... WHERE the row differs; done as a plain INSERT of the staged rows whose
   key is new (through ON CONFLICT it costs ~30% more), then, only when some key was held,
   the ON CONFLICT statement for the rows whose key the table holds. A new key
   is inserted, a changed record updates its row, an identical one is left alone and counted a
   duplicate. When two rows of the batch share a key (ON CONFLICT DO UPDATE refuses to touch a
   row twice; the plain INSERT meets a unique violation) the statements are rolled back to their
   savepoint, the later copies leave the stage (identical: duplicate; different: refused,
   R-LOAD-KEY) and the whole upsert runs. Clean batches pay nothing for that check; a key a
   concurrent writer inserted meanwhile takes the same way (the ON CONFLICT upsert waits for it).

So a batch is all-or-nothing for its valid rows, and a refused row writes nothing.

Cost (PostgreSQL 18, the bench's embedded server, 2 cores, 50,000-event chunks into
behaviour_events holding millions of rows, machine shared): the staging COPY ~0.2 s, the customer check ~0.035 s (one probe per
distinct customer), the plain INSERT ~0.4 s (with its probe per row), which maintains the
table's indexes like a plain COPY into the table does (docs/benchmarks.md has the whole-file
figures).
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
    """Staged rows refused for a reason only the database knows. sql deletes them from the stage, returning
    (row, value); $1 is the shop. A row refused by an earlier check of the kind is gone for the later ones."""

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
    upsert: Upsert
    checks: tuple[Check, ...] = ()
    before: tuple[str, ...] = field(default=())  # statements run on the stage before the upsert ($1: shop)

    @property
    def names(self) -> list[str]:
        return [c for c, _ in self.columns]


@dataclass(frozen=True)
class Upsert:
    """A kind's upsert, whole (`all`) and in two steps that cost less when most keys are new (the insert of a
    new row through ON CONFLICT is a speculative insertion: ~30% dearer than a plain insert, measured on a
    50,000-event chunk, PostgreSQL 15): `new` is a plain INSERT of the staged rows whose key the table does not hold (a
    probe of its key index per row); only when it inserted fewer rows than staged, `existing` is `all` on
    the staged rows whose key the table holds (the rows `new` just inserted among them: identical, left
    alone). `new` fails with a unique violation when two staged rows share a new key or a concurrent
    writer inserted a key in between; `apply` then runs `all`, which waits for that writer and updates."""

    all: str  # selects (inserted, updated)
    existing: str  # selects (inserted, updated)
    new: str  # its status gives the rows inserted


def _upsert(table: str, key: tuple[str, ...], columns: tuple[tuple[str, str], ...], *, owned_ids: bool = False,
            keep_if_absent: tuple[str, ...] = (), stamp_if_absent: tuple[str, ...] = (), shop_column: bool = True) -> Upsert:
    """INSERT ... SELECT FROM stage ON CONFLICT (key) DO UPDATE ... WHERE the row differs, counting inserts
    and updates (and its two steps, `Upsert`). keep_if_absent: a column the record may leave out (NULL staged):
    a new row gets now(), an existing row keeps its value. stamp_if_absent: the same, but a changed row gets now(). Both test
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

    def upsert(rows: str) -> str:
        return f"""WITH w AS (
    INSERT INTO {table} AS t ({', '.join(insert_cols)})
    SELECT {', '.join(select)} FROM {STAGE} s{rows}
    ON CONFLICT ({', '.join(key)}) DO UPDATE SET {', '.join(sets)}
    WHERE {guard}({' OR '.join(differs)})
    RETURNING (t.xmax = 0) AS inserted)
SELECT count(*) FILTER (WHERE inserted) AS inserted, count(*) FILTER (WHERE NOT inserted) AS updated FROM w"""

    # Whether the table holds the staged row's key (of any shop for owned_ids: such a row is never touched).
    # A scalar subquery with LIMIT stays a per-row probe of the key index; as NOT EXISTS the planner may hash
    # the whole table (millions of events) for every chunk.
    match = [f"x.{k} = $1" if k == "shop_id" and shop_column else f"x.{k} = s.{k}" for k in key]
    held = f"(SELECT true FROM {table} x WHERE {' AND '.join(match)} LIMIT 1)"
    new = f"INSERT INTO {table} ({', '.join(insert_cols)})\n    SELECT {', '.join(select)} FROM {STAGE} s WHERE {held} IS NULL"
    return Upsert(upsert(""), upsert(f" WHERE {held} IS NOT NULL"), new)


def _columns(model: type[R.Record], types: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The record's fields (but shop_id) with their SQL types, in the model's order."""
    names = [n for n in model.model_fields if n != "shop_id"]
    assert set(names) == set(types), (model.KIND, set(names) ^ set(types))
    return tuple((n, types[n]) for n in names)


def _owned_by_other_shop(table: str, id_column: str) -> Check:
    # One probe of the table's primary key per staged row.
    return Check(id_column, R.RULE_REF, f"{id_column} {{value}} belongs to another shop",
                 f"DELETE FROM {STAGE} s USING {table} x WHERE x.{id_column} = s.{id_column} AND x.shop_id <> $1"
                 f" RETURNING s.row, s.{id_column}::text")


def _not_this_shops(column: str, table: str, message: str) -> Check:
    """The staged rows whose `column` names no row of this shop in `table` (keyed by (shop_id, column) or by
    column). The probe is a scalar subquery with LIMIT, which PostgreSQL keeps as a per-row subplan: one probe
    of the referenced primary key per distinct value of the stage (a file's events come grouped by customer:
    50,000 events name ~7,000 customers). Written as NOT EXISTS the planner may hash the shop's whole table
    for every chunk instead (seen: 3.7 s per 50,000 events at a 1M-customer shop)."""
    return Check(column, R.RULE_REF, message,
                 f"DELETE FROM {STAGE} s WHERE s.{column} IN (SELECT d.{column} FROM (SELECT DISTINCT {column} FROM {STAGE}) d"
                 f" WHERE (SELECT true FROM {table} x WHERE x.shop_id = $1 AND x.{column} = d.{column} LIMIT 1) IS NULL)"
                 f" RETURNING s.row, s.{column}::text")


# References to this shop's rows.
NOT_A_CUSTOMER = _not_this_shops("consumer_id", "shop_customers",
                                 "consumer {value} is not a customer of this shop (load customers first)")
NOT_AN_ORDER = _not_this_shops("order_id", "orders", "order {value} is not an order of this shop (load orders first)")
NOT_AN_AGENT = _not_this_shops("agent_id", "agents", "agent {value} is not an agent of this shop (load agents first)")
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
    for check in kind.checks:  # each takes its refused rows off the stage
        for r in await conn.fetch(check.sql, shop_id):
            out.refused.append(Refusal(r[0], check.field, check.rule, check.message.format(value=r[1])))
    staged = await conn.fetchval(f"SELECT count(*) FROM {STAGE}")
    for sql in kind.before:
        await conn.execute(sql, *_params(sql, shop_id))
    up = kind.upsert
    try:
        async with conn.transaction():  # a savepoint
            status = await conn.execute(up.new, *_params(up.new, shop_id))
            out.inserted = int(status.split()[-1])
            if out.inserted < staged:  # some keys were held already: update those rows that differ
                counts = await conn.fetchrow(up.existing, *_params(up.existing, shop_id))
                out.inserted, out.updated = out.inserted + counts["inserted"], counts["updated"]
    except (asyncpg.CardinalityViolationError, asyncpg.UniqueViolationError):  # two rows of the batch share a key
        same, differ = await _drop_repeated_keys(conn, kind)  # (or a concurrent writer inserted one of the keys)
        out.duplicate += same
        out.refused += differ
        staged -= same + len(differ)
        counts = await conn.fetchrow(up.all, *_params(up.all, shop_id))
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
