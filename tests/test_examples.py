"""The shipped examples start as they are, on any day, through the README's commands.

Each examples/*.yaml goes through the real `sluice` CLI against a shop the CLI itself seeded
(`sluice seed --shop shop-1 --repurchase --acquire`, in a zone where it is afternoon now, as the demo picks
one: K-REPURCHASE sends now and is refused while the shop's window is closed, R-WIN-1): `sluice
preview` reaches someone on the first phase and writes nothing, `sluice start` starts the workflow.
No example names a date, so the same files keep working every day.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from sluice.api.cli import app as cli_app
from sluice.kinds import KINDS
from typer.testing import CliRunner

from tests.test_crash import pick_zone

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_there_is_an_example_of_every_kind():
    assert {yaml.safe_load(p.read_text())["kind"] for p in EXAMPLES} == set(KINDS)


@pytest.fixture
async def cli(clean_db, ts_env, db_dsn, tmp_path):
    env = {
        "DATABASE_URL": db_dsn,
        "TEMPORAL_ADDRESS": ts_env.client.service_client.config.target_host,
        "SLUICE_DATA_DIR": str(tmp_path / "data"),
        "SLUICE_TASK_QUEUE": "cli-examples",
        "COLUMNS": "300",
    }

    async def run(*args: str) -> tuple[int, str]:
        # The CLI runs its own event loop (asyncio.run): give it a thread.
        result = await asyncio.to_thread(CliRunner().invoke, cli_app, list(args), env=env)
        return result.exit_code, result.output

    return run


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
async def test_each_example_previews_and_starts_as_shipped(cli, clean_db, ts_env, example: Path):
    pool, spec = clean_db, yaml.safe_load(example.read_text())
    workflow_id = f"{spec['shop_id']}.{spec['campaign_id']}"
    tz = pick_zone(datetime.now(UTC))
    code, out = await cli("seed", "--shop", spec["shop_id"], "--customers", "3000", "--tz", tz, "--repurchase", "--acquire")
    assert code == 0, out

    code, out = await cli("preview", str(example), "-o", "json")
    assert code == 0, out
    preview = json.loads(out)
    assert preview["workflow_id"] == workflow_id
    assert preview["phases"][0]["would_send"] > 0, preview
    assert await pool.fetchval("SELECT count(*) FROM campaigns") == 0

    code, out = await cli("start", str(example))
    assert code == 0, out
    assert f"started {workflow_id}" in out
    assert await pool.fetchval("SELECT kind FROM campaigns WHERE workflow_id = $1", workflow_id) == spec["kind"]
    handle = ts_env.client.get_workflow_handle(workflow_id)
    assert (await handle.describe()).status.name == "RUNNING"
    await handle.terminate("test over")
