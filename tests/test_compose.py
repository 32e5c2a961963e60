"""docker-compose.yml and Dockerfile, checked against the code without Docker.

No Docker engine runs where these tests run, so the compose file is kept honest
by reading it: every environment variable must be one Settings reads, every
address must name a service on a port it listens on, every command must be a
sluice subcommand, and every search attribute the workflows set must be
registered. Each test here fails if the file drifts from the code.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from sluice.schemas.settings import Settings
from sluice.workflows import search_attributes as SA

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"
CLI_FILE = ROOT / "api" / "cli.py"

APP_SERVICES = ("migrate", "worker", "api")
EXPECTED_SERVICES = {
    "temporal-db",
    "temporal",
    "temporal-setup",
    "temporal-ui",
    "app-db",
    *APP_SERVICES,
}
# The subcommand each app service must run.
EXPECTED_COMMANDS = {"migrate": "migrate", "worker": "worker", "api": "api"}
SETUP_SERVICE = "temporal-setup"
POSTGRES_PORT = 5432
UI_CONTAINER_PORT_DEFAULT = 8080  # temporalio/ui listens here unless TEMPORAL_UI_PORT says otherwise

# SearchAttributeIndexedValueType member name -> the --type word of `temporal operator search-attribute create`.
CLI_TYPE_NAMES = {
    "TEXT": "Text",
    "KEYWORD": "Keyword",
    "INT": "Int",
    "DOUBLE": "Double",
    "BOOL": "Bool",
    "DATETIME": "Datetime",
    "KEYWORD_LIST": "KeywordList",
}


# --------------------------------------------------------------------- reading


_VARIABLE = re.compile(
    r"\$\$"  # escaped dollar
    r"|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def _interpolate_str(text: str, where: str) -> str:
    """Resolve variables as compose would with an empty shell environment."""

    def resolve(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        if m.group("op") in (":-", "-"):
            return m.group("arg")
        raise AssertionError(
            f"{where}: ${{{name}}} has no default; `docker compose up` must work without a .env file"
        )

    return _VARIABLE.sub(resolve, text)


def _interpolate(node, where: str = ""):
    if isinstance(node, dict):
        return {k: _interpolate(v, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{where}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):
        return _interpolate_str(node, where)
    return node


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    # safe_load resolves the YAML anchors and `<<` merge keys the file uses.
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose(raw_compose) -> dict:
    return _interpolate(raw_compose)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {k: v for k, v in pairs}
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _port_pair(spec) -> tuple[int | None, int]:
    """(published host port or None, container port) from short or long port syntax."""
    if isinstance(spec, dict):
        published = spec.get("published")
        return (int(published) if published not in (None, "") else None, int(spec["target"]))
    text = str(spec).split("/", 1)[0]
    parts = text.rsplit(":", 2)
    if len(parts) == 1:
        return None, int(parts[0])
    host = parts[-2]
    return (int(host) if host else None, int(parts[-1]))


def published_ports(service: dict) -> list[tuple[int | None, int]]:
    return [_port_pair(p) for p in service.get("ports") or []]


def container_ports(service: dict) -> set[int]:
    ports = {container for _, container in published_ports(service)}
    ports |= {int(str(p).split("/", 1)[0]) for p in service.get("expose") or []}
    return ports


def depends_of(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def depends_closure(services: dict, name: str) -> set[str]:
    seen: set[str] = set()
    todo = list(depends_of(services[name]))
    while todo:
        dep = todo.pop()
        if dep in seen:
            continue
        seen.add(dep)
        todo.extend(depends_of(services[dep]))
    return seen


def words(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    assert host and port.isdigit(), f"{address!r} is not host:port"
    return host, int(port)


def settings_aliases() -> set[str]:
    return {field.alias or name.upper() for name, field in Settings.model_fields.items()}


def settings_default(field: str):
    return Settings.model_fields[field].default


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        instruction, _, args = full.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def cli_commands() -> set[str]:
    if not CLI_FILE.exists():
        # api/cli.py is being written alongside this file; until it lands, check
        # against the commands it is specified to have. Once it exists the set
        # below is replaced by the commands the Typer app really registers.
        return {"worker", "api", "migrate"}
    import typer.main
    from sluice.api.cli import app

    command = typer.main.get_command(app)
    commands = getattr(command, "commands", None)
    assert commands is not None, "sluice.api.cli:app is a single command, not a group of subcommands"
    return set(commands)


def setup_script(service: dict) -> str:
    """The setup service's shell text (entrypoint + command), shell comments removed."""
    text = "\n".join(words(service.get("entrypoint")) + words(service.get("command")))
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    return "\n".join(lines)


# ---------------------------------------------------------------- the services


def test_every_service_is_defined(services):
    missing = EXPECTED_SERVICES - set(services)
    assert not missing, f"docker-compose.yml lacks services: {sorted(missing)}"


def test_images_are_pinned_and_app_services_build_from_the_dockerfile(services):
    for name, svc in services.items():
        if name in APP_SERVICES:
            build = svc.get("build")
            assert build, f"{name} must build the sluice image"
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (ROOT / context).resolve() == ROOT, f"{name} builds from {context!r}, not the project root"
            assert (ROOT / context / dockerfile).resolve() == DOCKERFILE
            continue
        image = svc.get("image", "")
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), (
            f"{name}: pin a version, got {image!r}"
        )


def test_app_env_names_are_settings_aliases(services):
    aliases = settings_aliases()
    for name in APP_SERVICES:
        unknown = set(env_of(services[name])) - aliases
        assert not unknown, f"{name} sets variables Settings never reads: {sorted(unknown)}"


def test_app_services_get_the_addresses_they_need(services):
    for name in ("worker", "api"):
        env = env_of(services[name])
        assert env.get("DATABASE_URL") and env.get("TEMPORAL_ADDRESS"), name
    assert env_of(services["migrate"]).get("DATABASE_URL")


def test_database_url_points_at_app_db(services):
    db = services["app-db"]
    db_env = env_of(db)
    assert db["image"].startswith("postgres:")
    assert "PGPORT" not in db_env, "app-db moved off the standard port; update DATABASE_URL"
    for name in APP_SERVICES:
        url = urlsplit(env_of(services[name])["DATABASE_URL"])
        assert url.scheme in ("postgresql", "postgres"), f"{name}: {url.scheme}"
        assert url.hostname == "app-db", f"{name}: DATABASE_URL host is {url.hostname!r}"
        assert url.port == POSTGRES_PORT, f"{name}: DATABASE_URL port is {url.port!r}"
        assert url.username == db_env["POSTGRES_USER"], name
        assert url.password == db_env["POSTGRES_PASSWORD"], name
        assert url.path.lstrip("/") == db_env.get("POSTGRES_DB", db_env["POSTGRES_USER"]), name


def test_temporal_address_points_at_the_temporal_service(services):
    listening = container_ports(services["temporal"])
    assert 7233 in listening, "the temporal service must publish or expose its frontend port 7233"
    for name in ("worker", "api", SETUP_SERVICE, "temporal-ui"):
        address = env_of(services[name]).get("TEMPORAL_ADDRESS")
        assert address, f"{name} has no TEMPORAL_ADDRESS"
        host, port = host_port(address)
        assert host == "temporal", f"{name}: TEMPORAL_ADDRESS host is {host!r}"
        assert port in listening, f"{name}: TEMPORAL_ADDRESS port {port} is not one temporal listens on"
    migrate_address = env_of(services["migrate"]).get("TEMPORAL_ADDRESS")
    if migrate_address:
        assert host_port(migrate_address)[0] == "temporal"


def test_temporal_ui_is_where_sluice_links_point(services):
    ui = services["temporal-ui"]
    assert ui["image"].startswith("temporalio/ui:")
    container_port = int(env_of(ui).get("TEMPORAL_UI_PORT", UI_CONTAINER_PORT_DEFAULT))
    published = {host for host, container in published_ports(ui) if container == container_port}
    expected = settings_default("temporal_ui_port")
    assert expected in published, f"Temporal UI must be published on {expected} (Settings.temporal_ui_base)"
    for name in APP_SERVICES:
        override = env_of(services[name]).get("SLUICE_TEMPORAL_UI_PORT")
        if override:
            assert int(override) in published, name


def test_api_listens_on_all_interfaces_and_publishes_its_port(services):
    api = services["api"]
    env = env_of(api)
    assert env.get("SLUICE_API_HOST") == "0.0.0.0", "inside a container uvicorn must bind 0.0.0.0"
    api_port = int(env.get("SLUICE_API_PORT", settings_default("api_port")))
    published = published_ports(api)
    assert any(container == api_port and host is not None for host, container in published), (
        f"api listens on {api_port} but publishes {published}"
    )
    health = api.get("healthcheck")
    if health:
        assert str(api_port) in " ".join(words(health["test"])), "api healthcheck probes the wrong port"


def test_worker_and_api_share_queue_and_namespace(services):
    worker, api = env_of(services["worker"]), env_of(services["api"])
    queue_default = settings_default("task_queue")
    assert worker.get("SLUICE_TASK_QUEUE", queue_default) == api.get("SLUICE_TASK_QUEUE", queue_default)
    ns_default = settings_default("temporal_namespace")
    namespace = worker.get("TEMPORAL_NAMESPACE", ns_default)
    assert api.get("TEMPORAL_NAMESPACE", ns_default) == namespace
    # auto-setup creates DEFAULT_NAMESPACE ("default" when unset); attributes are registered there.
    assert env_of(services["temporal"]).get("DEFAULT_NAMESPACE", "default") == namespace
    assert env_of(services[SETUP_SERVICE]).get("TEMPORAL_NAMESPACE") == namespace


def test_worker_can_scale(services):
    worker = services["worker"]
    replicas = (worker.get("deploy") or {}).get("replicas", 1)
    assert replicas >= 2, "run at least two workers (deploy.replicas)"
    assert "container_name" not in worker, "a fixed container_name prevents more than one replica"
    assert not any(host is not None for host, _ in published_ports(worker)), (
        "published ports clash across replicas"
    )


# ------------------------------------------------------------------ databases


@pytest.mark.parametrize("name", ["temporal-db", "app-db"])
def test_databases_have_healthchecks_and_named_volumes(compose, services, name):
    svc = services[name]
    assert svc["image"].startswith("postgres:16"), svc["image"]
    assert "pg_isready" in " ".join(words(svc["healthcheck"]["test"]))
    named = set(compose.get("volumes") or {})
    data_volumes = [
        v.split(":", 1)[0]
        for v in svc.get("volumes") or []
        if isinstance(v, str) and v.split(":")[1:2] == ["/var/lib/postgresql/data"]
    ]
    assert data_volumes and data_volumes[0] in named, f"{name}: data must live in a named volume"


def test_temporal_uses_temporal_db(services):
    temporal = services["temporal"]
    env, db_env = env_of(temporal), env_of(services["temporal-db"])
    assert temporal["image"].startswith("temporalio/auto-setup:")
    assert env["DB"] == "postgres12"
    assert env["POSTGRES_SEEDS"] == "temporal-db"
    assert int(env["DB_PORT"]) == POSTGRES_PORT
    assert env["POSTGRES_USER"] == db_env["POSTGRES_USER"]
    assert env["POSTGRES_PWD"] == db_env["POSTGRES_PASSWORD"]
    assert depends_of(temporal).get("temporal-db") == "service_healthy"


# ------------------------------------------------------------------- commands


def test_dockerfile_entrypoint_is_the_sluice_script():
    entrypoints = [args for ins, args in dockerfile_instructions() if ins == "ENTRYPOINT"]
    assert entrypoints, "Dockerfile has no ENTRYPOINT"
    assert yaml.safe_load(entrypoints[-1]) == ["sluice"], 'use the exec form ENTRYPOINT ["sluice"]'
    scripts = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    assert "sluice" in scripts, "pyproject.toml no longer installs the `sluice` console script"


def test_app_commands_are_sluice_subcommands(services):
    known = cli_commands()
    for name, expected in EXPECTED_COMMANDS.items():
        svc = services[name]
        assert "entrypoint" not in svc, f"{name} overrides the image's sluice entrypoint"
        command = words(svc.get("command"))
        assert command, f"{name} has no command"
        assert command[0] == expected, f"{name} runs `sluice {command[0]}`, expected `sluice {expected}`"
        assert command[0] in known, f"`sluice {command[0]}` is not a command of api/cli.py ({sorted(known)})"


# --------------------------------------------------------- search attributes


def test_setup_registers_every_search_attribute(raw_compose, services):
    setup = services[SETUP_SERVICE]
    assert setup["image"].startswith("temporalio/admin-tools:")
    entrypoint = words(setup.get("entrypoint"))
    if entrypoint and entrypoint[-1] in ("-c", "-ec", "-euc"):
        # compose shell-splits a string command; `sh -c` needs the script as ONE argument.
        assert isinstance(setup["command"], list) and len(setup["command"]) == 1
    raw_text = "\n".join(words(raw_compose["services"][SETUP_SERVICE].get("command")))
    assert "$" not in raw_text.replace("$$", ""), (
        "unescaped $ in the setup script: compose would interpolate it"
    )

    script = setup_script(setup)
    assert "temporal operator search-attribute create" in script
    registered = dict(re.findall(r"--name\s+([A-Za-z_][A-Za-z0-9_]*)\s+--type\s+([A-Za-z]+)", script))
    expected = {key.name: CLI_TYPE_NAMES[key.indexed_value_type.name] for key in SA.ALL}
    assert set(registered) == set(expected), (
        f"setup registers {sorted(registered)}, workflows/search_attributes.py uses {sorted(expected)}"
    )
    for attr, type_name in expected.items():
        assert registered[attr] == type_name, (
            f"{attr} registered as {registered[attr]}, code uses {type_name}"
        )


# ------------------------------------------------------------------- ordering


def test_start_order(services):
    for name in ("worker", "api"):
        deps = depends_of(services[name])
        assert deps.get("migrate") == "service_completed_successfully", f"{name} must wait for migrations"
        assert deps.get(SETUP_SERVICE) == "service_completed_successfully", (
            f"{name} must wait for search attributes"
        )
        closure = depends_closure(services, name)
        assert {"migrate", "app-db", "temporal", "temporal-db", SETUP_SERVICE} <= closure, (name, closure)
    assert depends_of(services["migrate"]).get("app-db") == "service_healthy"
    assert "temporal" in depends_of(services[SETUP_SERVICE])
    assert "temporal" in depends_of(services["temporal-ui"])


def test_dependency_conditions_are_satisfiable(services):
    for name in services:
        assert name not in depends_closure(services, name), f"{name} depends on itself"
        for dep, condition in depends_of(services[name]).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if condition == "service_healthy":
                assert services[dep].get("healthcheck"), (
                    f"{name} waits for {dep} healthy; it has no healthcheck"
                )
            elif condition == "service_completed_successfully":
                assert str(services[dep].get("restart", "no")) == "no", (
                    f"{name} waits for one-shot {dep} to complete; it must not restart"
                )
            else:
                assert condition == "service_started", condition


# ----------------------------------------------------------------- Dockerfile


def test_dockerfile_installs_the_project_on_python_311_or_newer():
    instructions = dockerfile_instructions()
    bases = [args for ins, args in instructions if ins == "FROM"]
    assert bases, "Dockerfile has no FROM"
    m = re.match(r"(?:docker\.io/(?:library/)?)?python:(\d+)\.(\d+)", bases[-1].split()[0])
    assert m, f"final stage is not a python image: {bases[-1]!r}"
    version = (int(m.group(1)), int(m.group(2)))
    project = tomllib.loads(PYPROJECT.read_text())
    floor = re.search(r">=\s*(\d+)\.(\d+)", project["project"]["requires-python"])
    assert version >= (3, 11) and version >= (int(floor.group(1)), int(floor.group(2))), version

    copied = " ".join(args for ins, args in instructions if ins in ("COPY", "ADD"))
    copied_paths = set(shlex.split(copied))
    # each package's source folder, by the package-dir mapping (sluice.workflows -> workflows)
    package_dirs = project["tool"]["setuptools"]["package-dir"]
    packages = [package_dirs[name] for name in project["tool"]["setuptools"]["packages"]]
    for item in ["pyproject.toml", *packages]:
        assert item in copied_paths or "." in copied_paths, f"Dockerfile does not copy {item}"

    runs = [args for ins, args in instructions if ins == "RUN"]
    install_at = next(
        (
            i
            for i, (ins, args) in enumerate(instructions)
            if ins == "RUN" and re.search(r"pip install[^&;]*\s\.(\s|$)", args)
        ),
        None,
    )
    assert install_at is not None, f"no `pip install .` in {runs}"

    users = [(i, args) for i, (ins, args) in enumerate(instructions) if ins == "USER"]
    assert users, "the image must drop root (USER)"
    last_at, last_user = users[-1]
    assert last_user.split(":")[0] not in ("root", "0"), last_user
    assert last_at > install_at, "USER must come after the install, or pip cannot write site-packages"


def test_dockerfile_env_names_are_settings_aliases():
    aliases = settings_aliases()
    for ins, args in dockerfile_instructions():
        if ins != "ENV":
            continue
        for token in shlex.split(args):
            name = token.split("=", 1)[0]
            if name.startswith("SLUICE_") or name in (
                "DATABASE_URL",
                "TEMPORAL_ADDRESS",
                "TEMPORAL_NAMESPACE",
            ):
                assert name in aliases, f"Dockerfile sets {name}, which Settings never reads"
