"""No request text reaches SQL except as a bound parameter (issue 4).

1. A source scan of the packages that run in production: every SQL-looking
   string built by interpolation (f-string, %, .format, +) may interpolate
   only the expressions of ALLOWED_INTERPOLATIONS, each a constant chosen
   by code (a column per channel enum, a table list, an audience query
   picked by a validated name); every query call (execute, fetch, ...) gets
   its SQL as a literal, a module constant or one of ALLOWED_SQL_ARGUMENTS.
2. End to end: a campaign whose free-text fields are SQL (legal text, so it is
   accepted) runs through the API, the worker and the ledger, while every
   statement the pool runs is logged: the text appears in bound arguments,
   never in a statement. Ids that look like SQL are refused by the id pattern
   (tests/test_bad_input.py: sql-campaign, sql-coupon, sql-audience, shop ids
   with quotes, workflow ids in paths).
"""

from __future__ import annotations

import ast
import re
from datetime import timedelta
from pathlib import Path

import asyncpg
from sluice.activities.audience import CHANNEL_ADDRESS, CHANNEL_COLUMNS
from sluice.audiences import AUDIENCES
from sluice.db.pool import _init_connection
from sluice.schemas.campaign import Channel
from sluice.workflows.calendar import local_day
from sluice.workflows.campaign import CampaignWorkflow

from tests.api_helpers import client, running_app, shop_key
from tests.factories import add_customers

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["api", "activities", "audiences", "channels", "db", "kinds", "schemas", "workers", "workflows"]
SQL = re.compile(
    r"\b(SELECT|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE|DROP|TRUNCATE|ANALYZE|ALTER|COPY|VALUES|WHERE)\b",
    re.IGNORECASE,
)
QUERY_METHODS = {"execute", "executemany", "fetch", "fetchrow", "fetchval", "prepare", "cursor", "copy_from_query"}

# (file, interpolated expression): why it is safe.
ALLOWED_INTERPOLATIONS = {
    ("activities/audience.py", "audience_sql"):
        "a constant query of the AUDIENCES library (the name checked before), or the custom audience compiled by"
        " audiences/custom.py from allow-listed fragments with every value bound from $11 on",
    ("activities/audience.py", "item"): "a constant column expression chosen by the audience's yields_item",
    ("activities/audience.py", "held"):
        "outcomes/holdout.py's held_out_sql over placeholders ($n of int() of a parameter number) and a constant column",
    ("activities/send.py", "personal_columns"): "constant columns (item, nick) chosen by a bool",
    ("activities/send.py", "_EARLIER_IN_WINDOW"): "a constant statement of the module (the template window's read)",
    ("audiences/repurchase.py", "_CATEGORY_PRODUCTS.format(category='p.category')"):
        "a constant subquery with a constant column",
    ("audiences/repurchase.py", "_PURCHASES_OF.format(products='ARRAY(SELECT f.product_id FROM offered f)')"):
        "a constant purchases query over a constant array expression",
    ("audiences/repurchase.py",
     "_PURCHASES_OF.format(products=_CATEGORY_PRODUCTS.format(category='ANY(ARRAY(SELECT fb.category FROM fallback fb))'))"):
        "a constant purchases query over a constant category subquery",
    ("activities/send.py", "A.HELD_OUT"): "the held-out state's name, a constant of schemas/activities.py",
    ("activities/send.py", "A.NOT_SENT_BUDGET"): "the budget's not_sent reason (R-COST-BUDGET), a constant of schemas/",
    ("audiences/edm.py", "int(days)"): "an int: the window's days, literals 7/30/90 of the module",
    # audiences/custom.py: the merchant's filter compiled from allow-listed fragments; every value is `p(...)`,
    # which appends it to the bound parameters and returns its "$n".
    ("audiences/custom.py", "source"): "a constant table expression of the counted leaf (events or orders)",
    ("audiences/custom.py", "p(cap, 'int')"): "a $n placeholder: the value is bound",
    ("audiences/custom.py", "p(node.kind, 'text')"): "a $n placeholder: the value is bound",
    ("audiences/custom.py", "predicate"): "the compiled predicate: fragments and $n placeholders only",
    ("audiences/custom.py",
     'f"SELECT 1 FROM behaviour_events e WHERE e.shop_id = $1 AND e.consumer_id = c.consumer_id AND e.kind = '
     '{p(node.kind, \'text\')} AND " + _WINDOW.format(col=\'e.occurred_at\', days=p(node.within_days, \'int\'))'):
        "a constant window fragment with a constant column and a $n placeholder",
    ("audiences/custom.py",
     '"SELECT 1 FROM orders o WHERE o.shop_id = $1 AND o.consumer_id = c.consumer_id AND o.status <> \'pending\' AND " '
     "+ _WINDOW.format(col='o.created_at', days=p(node.within_days, 'int'))"):
        "a constant window fragment with a constant column and a $n placeholder",
    ("activities/audience.py", "exclusion_branches(channel, non_customers)"):
        "CASE branches built only from CHANNELS[channel]: an opt-out column and a constant contact"
        " predicate per Channel enum value, over the constant row aliases c and p",
    ("activities/audience.py", "rows"):
        "recipient_rows(): a constant join of the recipient's rows with the constant '$1' and 'm.consumer_id', or nothing",
    ("activities/audience.py", "branches"):
        "CASE branches of audiences/filters.py, chosen by filter names checked against filters.NAMES before",
    ("activities/audience.py", "joins"): "constant joins of audiences/filters.py, chosen as above",
    ("activities/send.py", "exclusion_branches(channel, non_customers)"): "CASE branches from CHANNELS, as above",
    ("activities/send.py", "recipient_address(channel, non_customers)"): "a constant address expression per Channel",
    ("activities/send.py", "recipient_rows('$4', 's.consumer_id', non_customers)"):
        "a constant join of the recipient's rows, with constant parameter and column names",
    ("activities/send.py", "prior"): "a constant ledger probe or NULL, chosen by the probe bool",
    ("activities/send.py", "recipient_address(inp.channel.value, True)"): "a constant address expression per Channel",
    ("activities/send.py", "recipient_rows('d.shop_id', 'd.consumer_id', True)"):
        "a constant join of the recipient's rows, with constant column names",
    # _write_sql(handoff): two statements built once at import from a bool, never from input.
    ("activities/send.py", "ref"): "a constant provider_ref expression or NULL, chosen by the handoff bool",
    ("activities/send.py", "outbox"): "a constant outbox batch CTE, chosen by the handoff bool",
    ("db/embedded.py", "name"):
        "CREATE DATABASE takes no parameters; the name comes from the test fixtures / launcher, never a request",
    ("db/seed.py", "', '.join(SEEDED_TABLES)"): "ANALYZE over a constant list of table names",
    ("audiences/filters.py", "EXCLUDED_MEMBER"): "a reason constant of schemas/activities.py (R-AQ-1)",
    ("audiences/filters.py", "EXCLUDED_BUYER"): "a reason constant of schemas/activities.py (R-AQ-1)",
    ("activities/send.py", "fatigue_day_sql('$7', '$8')"): "R-FAT-DAY: placeholders",
    ("activities/send.py", "window_deferred_sql('$7', later_pass)"):
        "R-WIN-1: a placeholder, the window's time constants of schemas/rules.py and a literal chosen by a bool",
    ("activities/send.py", "zoned"): "a constant predicate or nothing, chosen by the zoned_only bool (R-WIN-1)",
    ("activities/audience.py", "RECIPIENT_ZONE"): "a constant expression over the joined rows (R-FAT-DAY)",
    ("activities/audience.py", "zone_row('m.consumer_id')"): "a constant join of consumers with a constant column",
    ("activities/audience.py", "in_part('a.consumer_id')"): "the refresh part's constant predicate over a constant column",
    ("activities/audience.py", "matched"): "_flagged_sql: the `matched` CTE built from the interpolations above, or nothing",
    ("activities/audience.py", "source"):
        "_flagged_sql: 'matched m', or the constant _CUSTOMERS with the constant product choice's join",
    ("activities/audience.py", "recipient_item"):
        "_flagged_sql: 'm.item', NULL, or the product choice's constant expression over its $n (audiences item_choice)",
    ("activities/audience.py", "where"):
        "_flagged_sql: nothing, or the constant _CUSTOMERS_WHERE with in_part() and the custom filter compiled by"
        " audiences/custom.py compile_predicate from allow-listed fragments with every value bound from $11 on",
    ("activities/audience.py", "_flagged_sql(audience_sql, yields_item, channel, filters, non_customers, customers)"):
        "the refresh's CTEs, built only from the allowed interpolations above",
    ("activities/audience.py", "_flagged_sql(audience_sql, False, channel, filters, non_customers, customers)"):
        "the refresh's CTEs, built only from the allowed interpolations above",
    ("activities/audience.py", "window"): "preview_count_sql: int() of a parameter number, a placeholder $n",
    ("activities/audience.py", "zones"): "preview_count_sql: int() of a parameter number, a placeholder $n",
    ("activities/audience.py", "zone_days"): "preview_count_sql: int() of a parameter number, a placeholder $n",
    ("activities/audience.py", "platform_day"): "preview_count_sql: int() of a parameter number, a placeholder $n",
    ("activities/audience.py", "tkey"): "preview_count_sql: int() of a parameter number, a placeholder $n",
    ("activities/audience.py", "channel"): "preview_count_sql: a key of CHANNELS, checked before it is interpolated",
}
# (file, first argument of a query call): why it is safe.
ALLOWED_SQL_ARGUMENTS = {
    ("activities/send.py",
     "_chunk_sql(ch, probe, personal is not None, inp.reaches_non_customers, inp.later_pass, inp.zoned_only)"):
        "built only from the allowed interpolations above",
    ("activities/send.py", "_HOLD_OFFERS.sql"): "Named.of() of a constant statement (db/params.py: names become $n)",
    ("activities/send.py", "SHOP_BENEFITS"): "a module constant of schemas/benefits.py",
    ("kinds/repurchase.py", "SHOP_BENEFITS"): "a module constant of schemas/benefits.py",
    ("kinds/acquire.py", "SHOP_BENEFITS"): "a module constant of schemas/benefits.py",
    ("activities/send.py", "statement.sql"):
        "_WRITE_HANDED_OFF or _WRITE_RESERVED, _write_sql(True/False) at import: built only from the allowed"
        " interpolations above, its names numbered by Named.of (db/params.py)",
    ("activities/audience.py", "sql"): "refresh_sql() or preview_count_sql(): built only from the allowed interpolations above",
    ("activities/audience.py", "settings"): "REFRESH_SETTINGS or PREVIEW_SETTINGS, module constants",
    ("activities/audience.py", "F.EARLIER_SAME_KIND"): "a constant statement of audiences/filters.py",
    ("db/migrate.py", "path.read_text()"): "the migration files shipped in db/migrations",
    ("activities/quota.py", "_account(plan, _ACCOUNT_LOCK)"): "a constant statement of the quota's account table",
    ("activities/quota.py", "_account(plan, _ACCOUNT_READ)"): "a constant statement of the quota's account table",
    ("activities/quota.py", "_account(plan, _ACCOUNT_DEBIT)"): "a constant statement of the quota's account table",
    ("activities/quota.py", "_account(plan, _ACCOUNT_CREDIT)"): "a constant statement of the quota's account table",
    ("db/seed.py", "_named(sql, used)"):
        "a module constant _RP_* of the repurchase seed with its $name placeholders numbered; every value is bound",
}


def _sources():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), filename=str(path))


def _module_constants(tree: ast.Module) -> set[str]:
    """Module-level names bound once to a literal (the SQL constants and the thresholds they interpolate),
    or to an f-string / join built only from literals and such names."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            free = {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
            bound = {n.id for n in ast.walk(node.value) if isinstance(n, ast.comprehension) for n in ast.walk(n.target)
                     if isinstance(n, ast.Name)}
            calls = [n for n in ast.walk(node.value) if isinstance(n, ast.Call)]
            if free - bound <= names and all(isinstance(c.func, ast.Attribute) and c.func.attr == "join" for c in calls):
                names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _sql_text(node) -> str:
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant))
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return ""


def test_sql_is_built_only_from_allowed_constants():
    interpolations, bad_calls, constants_of = [], [], {}
    for rel, tree in _sources():
        constants = constants_of[rel] = _module_constants(tree)
        for node in ast.walk(tree):
            # f"... SELECT ... {expr} ..."
            if isinstance(node, ast.JoinedStr) and SQL.search(_sql_text(node)):
                for v in node.values:
                    if isinstance(v, ast.FormattedValue):
                        interpolations.append((rel, ast.unparse(v.value), node.lineno))
            # "... %s ..." % x, "SELECT " + x
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
                if any(SQL.search(_sql_text(side)) for side in (node.left, node.right)):
                    interpolations.append((rel, ast.unparse(node), node.lineno))
            # "... {} ...".format(x)
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"
                    and SQL.search(_sql_text(node.func.value))):
                interpolations.append((rel, ast.unparse(node), node.lineno))
            # conn.execute(<sql>, ...): the SQL must be a literal, a module constant, or allowed.
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in QUERY_METHODS and node.args):
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    continue
                if isinstance(first, ast.JoinedStr):
                    continue  # judged by its interpolations above
                if isinstance(first, ast.Name) and first.id in constants:
                    continue
                if (rel, ast.unparse(first)) not in ALLOWED_SQL_ARGUMENTS:
                    bad_calls.append((rel, node.lineno, ast.unparse(node)[:120]))
    unexpected = [(f, e, line) for f, e, line in interpolations
                  if (f, e) not in ALLOWED_INTERPOLATIONS and e not in constants_of[f]]
    assert not unexpected, (
        "SQL built by interpolating something that is not a known constant; use a bound parameter ($1), "
        f"or add it to ALLOWED_INTERPOLATIONS with the reason it can never carry request text: {unexpected}"
    )
    assert not bad_calls, f"query calls whose SQL is not a literal or a module constant: {bad_calls}"
    # The allowlist is not stale: every entry still names a real interpolation.
    seen = {(f, e) for f, e, _ in interpolations}
    assert set(ALLOWED_INTERPOLATIONS) <= seen, set(ALLOWED_INTERPOLATIONS) - seen


def test_the_allowed_interpolations_are_constants_without_quotes():
    """What the allowlist interpolates: fixed per Channel, no quote or statement separator in it."""
    assert set(CHANNEL_COLUMNS) == set(CHANNEL_ADDRESS) == {c.value for c in Channel}
    fragments = [*CHANNEL_ADDRESS.values()] + [part for pair in CHANNEL_COLUMNS.values() for part in pair]
    for fragment in fragments:
        assert re.fullmatch(r"[a-z_. ():]+", fragment, re.IGNORECASE), fragment
    # exclusion_branches' no_contact stands for "no address" too: each contact predicate requires
    # the channel's address column (the in-site inbox addresses the consumer id itself).
    for channel, address in CHANNEL_ADDRESS.items():
        assert channel == "inbox" or f"{address} IS NOT NULL" in CHANNEL_COLUMNS[channel][1], channel
    for name, audience in AUDIENCES.items():
        assert re.fullmatch(r"[a-z0-9_]+", name)
        assert "{" not in audience.sql and ";" not in audience.sql.split("--")[0], name


MARKERS = {
    "card_text": "x'); DROP TABLE campaigns;-- \\ \"q\" $1",
    "scene": "S'; DELETE FROM shops;--",
    "title": "T\"; TRUNCATE deliveries CASCADE;--",
    "body": "') OR 1=1; UPDATE coupons SET stock = 0 WHERE '1'='1'; -- %s {0} $$ E'\\x27'",
}


async def test_sql_looking_text_only_ever_travels_as_bound_arguments(clean_db, db_dsn, ts_env):
    logged: list = []

    async def init(conn):
        await _init_connection(conn)
        conn.add_query_logger(logged.append)

    now = await ts_env.get_current_time()
    key = await shop_key(clean_db, "s1")
    await add_customers(clean_db, "s1", list(range(1, 121)), ordered_at=now - timedelta(days=20),
                        visited_at=now - timedelta(days=2))
    spec = {"kind": "K-OLDCUST", "shop_id": "s1", "campaign_id": "c1", "send_time": "09:00",
            "send_date": (local_day(now, "Asia/Shanghai") + timedelta(days=1)).isoformat(), **MARKERS}
    # db.pool's pool, plus a logger of every statement on each connection.
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=6, init=init,
                                     server_settings={"plan_cache_mode": "force_custom_plan"})
    try:
        async with running_app(pool, ts_env) as app, client(app, key) as http:
            res = await http.post("/campaigns", json=spec)
            assert res.status_code == 201, res.text
            # A handle from get_workflow_handle does not skip time by itself (only start_workflow's do).
            async with ts_env.time_skipping_unlocked():
                result = await ts_env.client.get_workflow_handle_for(CampaignWorkflow.run, "s1.c1").result()
            assert result.state == "completed"
            status = await http.get("/campaigns/s1.c1")
            assert status.status_code == 200
    finally:
        await pool.close()

    # The text went all the way: stored verbatim, and sent (the outbox has the card text) ...
    stored = await clean_db.fetchval("SELECT spec FROM campaigns WHERE workflow_id = 's1.c1'")
    assert {k: stored[k] for k in MARKERS} == MARKERS
    assert await clean_db.fetchval("SELECT count(*) FROM outbox_messages WHERE strpos(body, $1) > 0",
                                   MARKERS["card_text"]) == 120
    assert await clean_db.fetchval("SELECT count(*) FROM shops") == 1
    assert await clean_db.fetchval("SELECT count(*) FROM coupons WHERE stock = 0") == 0
    # ... and in every statement the pool ran, it was an argument, never SQL text.
    assert logged, "the query logger saw nothing"
    statements = "\n".join(r.query for r in logged)
    for marker in MARKERS.values():
        for piece in (marker, marker[:12]):
            assert piece not in statements, piece
    arguments = [s for r in logged for s in _strings(r.args)]
    assert any(MARKERS["card_text"] in a for a in arguments), "the logger did not see the arguments"


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)
