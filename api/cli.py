"""The `sluice` command line (typer + rich)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.markup import escape
from sluice.api import reports_cli
from sluice.kinds import CampaignSpec
from sluice.outcomes.cli import events as outcome_events
from sluice.schemas.settings import Settings

app = typer.Typer(help="sluice: a durable campaign executor on Temporal and Postgres.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    """Settings from the environment, falling back to the addresses of a running `sluice dev`."""
    from sluice.workers.dev import load_stack_env

    for key, value in load_stack_env(Settings()).items():
        os.environ.setdefault(key, value)
    return Settings()


def _stop_on_sigterm() -> None:
    """SIGTERM (from a supervisor, `timeout`, CI) stops the stack as cleanly as Ctrl-C."""
    import signal

    def handler(_sig, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


@app.command()
def dev() -> None:
    """Run the local stack (PostgreSQL, Temporal dev server + UI, worker, API) until Ctrl-C."""
    from sluice.workers.dev import Stack

    settings = Settings()
    stack = Stack(settings)
    _stop_on_sigterm()
    try:
        env = stack.up()
        _print_stack(settings, env)
        _hold(stack)
    except KeyboardInterrupt:
        console.print("\nstopping...")
    finally:
        stack.down()


@app.command()
def demo(customers: Annotated[int, typer.Option(help="customers in the demo shop")] = 50_000) -> None:
    """Bring up the stack, load a demo shop, start a demo campaign and watch it (Ctrl-C stops)."""
    import httpx
    from sluice.db.seed import seed_shop
    from sluice.workers import demo as D
    from sluice.workers.dev import Stack

    settings = Settings()
    stack = Stack(settings)
    _stop_on_sigterm()
    try:
        env = stack.up()
        _print_stack(settings, env)
        now = D.utcnow()
        tz = D.open_window_zone(now)
        # A fresh shop and fresh consumers per run: a rerun must not meet the caps of the last one.
        shop_id = f"demo-{tz.lower().replace('/', '-').replace('_', '-')}-{now:%H%M%S}"
        offset = asyncio.run(D.next_consumer_offset(env["DATABASE_URL"]))
        r = asyncio.run(
            seed_shop(env["DATABASE_URL"], shop_id=shop_id, customers=customers, timezone=tz, now=now, consumer_id_offset=offset)
        )
        # The seed gives a few customers a zone of their own; R-WIN-1 would send them hours later in their own
        # window. The demo's customers all live in the shop's zone, whose window is open now.
        asyncio.run(D.same_zone_as_shop(env["DATABASE_URL"], shop_id, tz))
        console.print(
            f"seeded shop [bold]{shop_id}[/] ({tz}, local time {now.astimezone(D.zone(tz)):%H:%M}): "
            f"{r.customers:,} customers, {r.orders:,} orders, {r.events:,} events in {r.seconds:.1f}s"
        )
        api_key = asyncio.run(D.create_demo_key(env["DATABASE_URL"], shop_id))
        auth = {"Authorization": f"Bearer {api_key}"}
        api_base = f"http://{settings.api_host}:{settings.api_port}"
        spec = D.demo_spec(shop_id, tz, now)
        started = httpx.post(f"{api_base}/campaigns", json=spec, headers=auth, timeout=30)
        if started.status_code != 201:
            _fail(f"POST /campaigns answered {started.status_code}: {started.text}")
        body = started.json()
        console.print(f"\n[bold green]campaign started[/]: {body['workflow_id']}")
        console.print(f"  Temporal UI : {body['temporal_ui_url']}")
        console.print(f"  API status  : {api_base}{body['status_url']}")
        console.print(f"  API key     : {api_key}  (shop {shop_id}; shown once)")
        console.print(f"  curl        : curl -H 'Authorization: Bearer {api_key}' {api_base}{body['status_url']}")
        console.print(
            f"  pause       : temporal workflow signal --address {env['TEMPORAL_ADDRESS']} "
            f"--workflow-id {body['workflow_id']} --name pause\n"
        )
        t0 = time.monotonic()
        last = D.watch(api_base, body["workflow_id"], api_key=api_key, echo=console.print)
        sent = last.get("progress", {}).get("totals", {}).get("reach", {}).get("sent", 0)
        elapsed = time.monotonic() - t0
        console.print(
            f"\n[bold]{sent:,} sent in {elapsed:.1f}s (~{sent / max(elapsed, 1e-9):,.0f} recipients/s incl. polling)[/]"
        )
        console.print("The stack keeps running; Ctrl-C stops it.")
        _hold(stack)
    except KeyboardInterrupt:
        console.print("\nstopping...")
    finally:
        stack.down()


def _print_stack(settings: Settings, env: dict) -> None:
    console.print("[bold]sluice stack is up[/]")
    console.print(f"  Temporal    : {env['TEMPORAL_ADDRESS']}   UI: {settings.temporal_ui_base}")
    console.print(f"  API         : http://{settings.api_host}:{settings.api_port}/docs")
    console.print(f"  Postgres    : {env['DATABASE_URL']}")
    console.print(f"  logs        : {Path(settings.data_dir).resolve()}/*.log")


def _hold(stack) -> None:
    while True:
        dead = stack.failed_child()
        if dead is not None:
            _fail(f"{dead.args[:3]} exited with {dead.returncode}; see the logs in {stack.data_dir}")
        time.sleep(1)


@app.command()
def worker() -> None:
    """Run a Temporal worker (DATABASE_URL, TEMPORAL_ADDRESS)."""
    from sluice.workers.worker import run_worker

    asyncio.run(run_worker(_settings()))


@app.command()
def dispatch(
    once: Annotated[bool, typer.Option("--once", help="drain what is due now, print the counts and exit")] = False,
) -> None:
    """Drain the outbox into the providers of SLUICE_DISPATCH_CHANNELS (docs/channels.md); Ctrl-C stops."""
    import signal

    from sluice.channels.registry import ChannelRegistry, dispatch_adapters
    from sluice.db.pool import create_pool
    from sluice.workers.logs import configure_logging
    from sluice.workers.worker import build_dispatcher

    settings = _settings()
    if not settings.database_url:
        _fail("DATABASE_URL is not set and no `sluice dev` is running")
    try:
        adapters = dispatch_adapters(settings)
    except ValueError as exc:
        _fail(str(exc), 2)
    if not adapters:
        _fail("SLUICE_DISPATCH_CHANNELS names no channel to dispatch (e.g. SLUICE_DISPATCH_CHANNELS=sms)", 2)
    configure_logging(settings.log_level)

    async def run():
        pool = await create_pool(settings.database_url, size=settings.dispatch_batches * len(adapters) + 2)
        try:
            dispatcher = build_dispatcher(pool, adapters, settings)
            if once:
                return await dispatcher.run_once()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await dispatcher.run(stop, idle_s=settings.dispatch_idle_s)
        finally:
            await ChannelRegistry(adapters).aclose()
            await pool.close()

    stats = asyncio.run(run())
    if stats is not None:
        print(json.dumps(dataclasses.asdict(stats)))


@app.command()
def api() -> None:
    """Run the HTTP API (SLUICE_API_HOST:SLUICE_API_PORT, loopback by default)."""
    from sluice.api.http import serve

    serve(_settings())


@app.command()
def migrate() -> None:
    """Apply pending SQL migrations to DATABASE_URL."""
    from sluice.db.migrate import migrate as run

    settings = _settings()
    if not settings.database_url:
        _fail("DATABASE_URL is not set and no `sluice dev` is running")
    applied = asyncio.run(run(settings.database_url))
    console.print(f"applied: {', '.join(applied) or 'nothing (up to date)'}")


@app.command()
def seed(
    shop: Annotated[str, typer.Option(help="shop id")] = "shop-1",
    customers: Annotated[int, typer.Option(help="number of customers")] = 100_000,
    tz: Annotated[str, typer.Option(help="shop IANA time zone")] = "Asia/Shanghai",
    industry: Annotated[str, typer.Option()] = "beauty",
    consumer_offset: Annotated[int, typer.Option(help="first platform consumer id - 1")] = 0,
    repurchase: Annotated[
        bool, typer.Option(help="add the repurchase catalogue and its exclusive coupons (examples/repurchase.yaml)")
    ] = False,
    acquire: Annotated[
        bool, typer.Option(help="add a join gift, a rival shop and platform prospects (examples/acquire.yaml)")
    ] = False,
) -> None:
    """Generate a realistic synthetic shop (COPY bulk load)."""
    from sluice.db.seed import seed_shop
    from sluice.schemas.campaign import ID_PATTERN
    from sluice.schemas.rules import is_iana_zone

    if not re.fullmatch(ID_PATTERN, shop):
        _fail(f"invalid --shop {shop!r}: letters, digits, '_' and '-', 1 to 64", 2)
    if not is_iana_zone(tz):
        _fail(f"invalid --tz {tz!r}: not an IANA time zone name (for example Asia/Shanghai); R-WIN-1", 2)
    settings = _settings()
    if not settings.database_url:
        _fail("DATABASE_URL is not set and no `sluice dev` is running")
    try:
        r = asyncio.run(
            seed_shop(
                settings.database_url,
                shop_id=shop,
                customers=customers,
                timezone=tz,
                industry=industry,
                consumer_id_offset=consumer_offset,
                repurchase=repurchase,
                acquire=acquire,
            )
        )
    except ValueError as exc:
        _fail(str(exc))
    console.print(
        f"{r.shop_id}: {r.customers:,} customers, {r.orders:,} orders, {r.order_items:,} items, "
        f"{r.events:,} events, {r.products} products, {r.coupons} coupons in {r.seconds:.1f}s"
    )


def _read_bounded(path: Path, limit: int) -> bytes:
    with path.open("rb") as f:
        return f.read(limit)


def load_spec(path: Path):
    """A campaign spec from YAML or JSON, validated like the API does."""
    from sluice.schemas.rules import MAX_SPEC_BYTES

    raw = sys.stdin.buffer.read(MAX_SPEC_BYTES + 1) if str(path) == "-" else _read_bounded(path, MAX_SPEC_BYTES + 1)
    if len(raw) > MAX_SPEC_BYTES:
        raise ValueError(f"R-API-SIZE: spec over {MAX_SPEC_BYTES // 1024} KiB")
    text = raw.decode("utf-8")
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except RecursionError:
        raise ValueError("the document is nested too deeply") from None
    # The API validates the body as json.loads gives it (FastAPI); the CLI does the very same with the
    # JSON form of the document, so both accept and refuse the same specs. YAML's own types become what
    # JSON has: a date or datetime its ISO string (`send_date: 2026-11-24` unquoted is fine), but an
    # unquoted `send_time: 10:00` stays the number 600 YAML reads, and is refused as one.
    import datetime as dt

    def iso(value):
        if isinstance(value, dt.date | dt.datetime):
            return value.isoformat()
        raise TypeError(f"a YAML {type(value).__name__} has no JSON form")

    chunks, size = [], 0
    try:
        # YAML aliases can make a small file a huge document: stop well before that.
        for chunk in json.JSONEncoder(default=iso, ensure_ascii=False).iterencode(data):
            size += len(chunk)
            if size > 4 * MAX_SPEC_BYTES:
                raise ValueError(f"R-API-SIZE: spec over {MAX_SPEC_BYTES // 1024} KiB once its aliases are expanded")
            chunks.append(chunk)
    except TypeError as exc:
        raise ValueError(f"not a JSON-like document: {exc}") from None
    except RecursionError:
        raise ValueError("the document is nested too deeply") from None
    return TypeAdapter(CampaignSpec).validate_python(json.loads("".join(chunks)))


def _spec_or_exit(spec_file: Path):
    try:
        return load_spec(spec_file)
    except ValidationError as exc:
        from sluice.schemas.rules import error_details

        for d in error_details(exc.errors()):
            err.print(f"[red]invalid[/red] {escape(d['field'])}: {escape(d['rule'])}: {escape(d['message'])}")
        raise typer.Exit(2) from None
    except (OSError, ValueError, yaml.YAMLError) as exc:
        _fail(f"cannot read {spec_file}: {exc}", 2)


@app.command()
def preview(
    spec_file: Annotated[Path, typer.Argument(help="campaign spec, .yaml/.yml or .json")],
    output: Annotated[str, typer.Option("-o", "--output", help="table or json")] = "table",
) -> None:
    """Whom a spec would reach, phase by phase, and what removes the rest (R-PRE-1); nothing is started."""
    from rich.table import Table
    from sluice.api import service
    from sluice.db.pool import create_pool
    from sluice.schemas.rules import RuleViolation

    spec = _spec_or_exit(spec_file)
    settings = _settings()

    async def run():
        pool = await create_pool(settings.database_url, size=2)
        try:
            return await service.preview_campaign(pool, spec, platform_tz=settings.platform_timezone)
        finally:
            await pool.close()

    try:
        result = asyncio.run(run())
    except RuleViolation as exc:
        _fail(f"invalid {exc.field}: {exc.rule}: {exc.message}", 2)
    if output == "json":
        console.print_json(result.model_dump_json())
        return
    for p in result.phases:
        table = Table(title=f"{result.workflow_id} {p.phase} {p.day}: audience {p.audience}")
        table.add_column("")
        table.add_column("rule")
        table.add_column("recipients", justify="right")
        table.add_row("matched", "", f"{p.matched:,}")
        for reason, n in p.removed.items():
            table.add_row(f"- {reason}", p.rules.get(reason, ""), f"{n:,}")
        table.add_row("would send", "", f"{p.would_send:,}")
        console.print(table)


@app.command()
def start(spec_file: Annotated[Path, typer.Argument(help="campaign spec, .yaml/.yml or .json")]) -> None:
    """Start a campaign from a spec file (same rules and answers as POST /campaigns)."""
    from sluice.api import service
    from sluice.db.pool import create_pool
    from sluice.schemas.rules import RuleViolation
    from sluice.workers.worker import connect_client

    spec = _spec_or_exit(spec_file)
    settings = _settings()

    async def run():
        pool = await create_pool(settings.database_url, size=2)
        try:
            client = await connect_client(settings)
            return await service.start_campaign(pool, client, spec, task_queue=settings.task_queue)
        finally:
            await pool.close()

    try:
        plan, _ = asyncio.run(run())
    except RuleViolation as exc:
        _fail(f"invalid {exc.field}: {exc.rule}: {exc.message}", 2)
    except service.CampaignExists as exc:
        _fail(str(exc), 3)
    except service.TemporalUnavailable as exc:
        _fail(f"Temporal is not answering, nothing was started; run the same command again ({exc})", 4)
    console.print(f"started {plan.workflow_id}")
    console.print(
        f"  Temporal UI: {settings.temporal_ui_base}/namespaces/{settings.temporal_namespace}/workflows/{plan.workflow_id}"
    )


@app.command()
def status(workflow_id: str) -> None:
    """Print a campaign's progress (the workflow's progress query)."""
    from sluice.api import service
    from sluice.workers.worker import connect_client

    settings = _settings()

    async def run():
        return await service.status(await connect_client(settings), workflow_id)

    try:
        console.print_json(asyncio.run(run()).model_dump_json())
    except service.CampaignNotFound:
        _fail(f"campaign {workflow_id} not found")
    except service.StatusUnavailable:
        _fail(f"no worker answered the progress query of {workflow_id} in time; is a worker running?", 4)
    except service.TemporalUnavailable as exc:
        _fail(f"Temporal is not answering; retry ({exc})", 4)


def _control(action: str):
    def command(workflow_id: str) -> None:
        from sluice.api import service
        from sluice.workers.worker import connect_client

        settings = _settings()

        async def run():
            await service.control(await connect_client(settings), workflow_id, action)

        try:
            asyncio.run(run())
        except service.CampaignNotFound as exc:  # and CampaignNotRunning
            _fail(str(exc))
        except service.TemporalUnavailable as exc:
            _fail(f"Temporal is not answering, {action} was not sent; run the same command again ({exc})", 4)
        console.print(f"{action} sent to {workflow_id}")

    command.__doc__ = f"{action.capitalize()} a running campaign (signal `{action}`)."
    return command


for _action in ("pause", "resume", "cancel"):
    app.command(name=_action)(_control(_action))


app.command(name="events")(outcome_events)  # sluice events FILE --shop SHOP (outcomes/cli.py)

from sluice.ingest.command import load_command  # noqa: E402  (the command and its help text)

app.command(name="load")(load_command)

keys_app = typer.Typer(help="API keys: one shop each, shown once, stored hashed.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _keys_db(fn):
    """Run fn(conn) against DATABASE_URL (or a running `sluice dev`)."""
    import asyncpg

    settings = _settings()
    if not settings.database_url:
        _fail("DATABASE_URL is not set and no `sluice dev` is running")

    async def run():
        conn = await asyncpg.connect(settings.database_url)
        try:
            return await fn(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


@keys_app.command("create")
def keys_create(shop: Annotated[str, typer.Argument(help="shop id")]) -> None:
    """Create an API key for SHOP and print it (it is shown only this once)."""
    from sluice.api import keys

    try:
        new = _keys_db(lambda conn: keys.create_key(conn, shop))
    except keys.UnknownShop:
        _fail(f"unknown shop {shop!r}")
    err.print(f"API key {new.prefix} for shop {new.shop_id} (store it now; it cannot be shown again):")
    print(new.key)


@keys_app.command("revoke")
def keys_revoke(prefix: Annotated[str, typer.Argument(help="the key's prefix (12 hex digits)")]) -> None:
    """Revoke an API key; requests with it are refused from now on."""
    from sluice.api import keys

    if not _keys_db(lambda conn: keys.revoke_key(conn, prefix)):
        _fail(f"no live key with prefix {prefix!r}")
    console.print(f"revoked {prefix}")


@keys_app.command("list")
def keys_list(shop: Annotated[str | None, typer.Argument(help="only this shop's keys")] = None) -> None:
    """List keys (prefix, shop, created, revoked); secrets are never shown."""
    from sluice.api import keys

    for r in _keys_db(lambda conn: keys.list_keys(conn, shop)):
        revoked = f"revoked {r['revoked_at']:%Y-%m-%d %H:%M}" if r["revoked_at"] else "live"
        console.print(f"{r['prefix']}  {r['shop_id']}  created {r['created_at']:%Y-%m-%d %H:%M}  {revoked}")


@app.command(
    name="bench",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def bench(ctx: typer.Context) -> None:
    """Benchmark a 1,000,000-recipient phase day end to end (`sluice bench --help`; `sluice bench caps`).

    The bench package ships with the source tree, not the wheel: run it from a checkout."""
    import sys

    sys.path.insert(0, str(Path.cwd()))
    try:
        from bench.__main__ import main
    except ImportError:
        _fail("the benchmark needs the source tree: run `sluice bench` from a checkout of sluice")
    raise typer.Exit(main(list(ctx.args)))


reports_cli.register(app)  # `sluice report CAMPAIGN`, `sluice campaigns` (api/reports_cli.py)


if __name__ == "__main__":
    app()
