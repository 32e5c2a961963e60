"""structlog JSON lines: ids on every activity line, personal data masked."""

from __future__ import annotations

import io
import json
import uuid
from datetime import time, timedelta

import structlog
from sluice.api.service import start_campaign
from sluice.kinds.oldcust import OldCustomerSpec
from sluice.schemas.settings import Settings
from sluice.workers.logs import configure_logging, mask
from sluice.workers.worker import build_worker
from sluice.workflows.calendar import local_day

from tests.factories import add_customers, make_shop


def test_mask_hides_phones_and_emails_but_keeps_a_hint():
    assert mask("call 13812345678 now") == "call 1381****78 now"
    assert mask("mail li.lei@example.com") == "mail l***@example.com"
    assert "13812345678" not in mask("+8613812345678")
    assert mask("order 2026-11-23 total 99") == "order 2026-11-23 total 99"


def test_log_lines_are_json_and_masked():
    out = io.StringIO()
    configure_logging("INFO", stream=out)
    structlog.get_logger("t").info("hello", contact="13812345678", nested={"email": "a.b@example.org"})
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert line["msg"] == "hello"
    assert "13812345678" not in out.getvalue() and "a.b@example.org" not in out.getvalue()


async def test_a_send_logs_ids_and_no_contact_details(clean_db, ts_env):
    out = io.StringIO()
    configure_logging("INFO", stream=out)
    pool = clean_db
    now = await ts_env.get_current_time()
    await make_shop(pool, "s1", "Asia/Shanghai")
    ids = list(range(1, 131))
    await add_customers(pool, "s1", ids, ordered_at=now - timedelta(days=9), visited_at=now - timedelta(days=1))
    settings = Settings(SLUICE_TASK_QUEUE=f"logs-{uuid.uuid4().hex[:6]}")
    spec = OldCustomerSpec(kind="K-OLDCUST", shop_id="s1", campaign_id="c1", scene="x", card_text="hi",
                           send_date=local_day(now, "Asia/Shanghai") + timedelta(days=1), send_time=time(9))
    async with build_worker(ts_env.client, pool, settings):
        _, handle = await start_campaign(pool, ts_env.client, spec, task_queue=settings.task_queue, now=now)
        await handle.result()
    text = out.getvalue()
    lines = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    slice_lines = [x for x in lines if x.get("msg") == "slice done"]
    assert slice_lines and all(x["workflow_id"] == "s1.c1" and x["run_id"] and x["shop_id"] == "s1"
                               for x in slice_lines)
    contacts = await pool.fetch("SELECT phone, email FROM shop_customers")
    for c in contacts:
        assert c["phone"] not in text and c["email"] not in text
