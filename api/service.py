"""Starting and controlling campaigns: the one path both HTTP and the CLI take.

Rules that need the database (the shop exists, the coupon is valid, the image
was configured in time) are checked here, before anything is written or
started; a second start of the same campaign is refused, never doubled.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.audience import AUDIENCES
from schemas import rules
from schemas.campaign import (
    CampaignPlan,
    OldCustomerSpec,
    PhasedSpec,
    compile_plan,
    workflow_id_for,
)
from schemas.rules import RuleViolation
from schemas.workflow import CampaignInput, CampaignStatus
from workflows import search_attributes as SA
from workflows.calendar import day_window
from workflows.campaign import CampaignWorkflow


class CampaignExists(Exception):
    def __init__(self, workflow_id: str):
        super().__init__(f"campaign {workflow_id} already exists")
        self.workflow_id = workflow_id


class CampaignNotFound(Exception):
    pass


class CampaignNotRunning(CampaignNotFound):
    def __init__(self, workflow_id: str, status: str):
        super().__init__(f"{workflow_id} is not running ({status})")
        self.status = status


async def owns(pool: asyncpg.Pool, shop_id: str, workflow_id: str) -> bool:
    """Whether the campaign with this workflow id belongs to the shop (the campaigns table decides)."""
    return bool(
        await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM campaigns WHERE workflow_id = $1 AND shop_id = $2)", workflow_id, shop_id
        )
    )


async def check_spec(conn: asyncpg.Connection, spec: OldCustomerSpec | PhasedSpec, now: datetime) -> str:
    """Rules that need the database; returns the shop's time zone."""
    shop = await conn.fetchrow("SELECT timezone, virtual_category FROM shops WHERE shop_id = $1", spec.shop_id)
    if shop is None:
        raise RuleViolation("shop_id", "R-API-SHOP", f"unknown shop {spec.shop_id!r}")
    tz = shop["timezone"]
    if not rules.is_iana_zone(tz):
        # Shops are created with a checked zone (`sluice seed`); one written around that check must not
        # turn into a 500 in the window arithmetic.
        raise RuleViolation("shop_id", "R-WIN-1", f"the shop's time zone {tz!r} is not an IANA zone name")
    if isinstance(spec, OldCustomerSpec):
        last = spec.end_date or spec.send_date
        if day_window(last, spec.send_time, tz).close_at <= now:
            raise RuleViolation("send_date", "R-WIN-1", "the send window of the last day has already closed")
        first_send = day_window(spec.send_date, spec.send_time, tz).send_at
        if spec.image is not None:
            ready = spec.image.configured_at + timedelta(hours=rules.OLDCUST_IMAGE_REVIEW_HOURS)
            if ready > max(first_send, now):
                raise RuleViolation(
                    "image.configured_at",
                    "R-OC-3",
                    "a custom image must be configured at least 24 hours before sending",
                )
        if spec.coupon_id is not None:
            coupon = await conn.fetchrow(
                "SELECT valid_from, valid_to, stock FROM coupons WHERE coupon_id = $1 AND shop_id = $2",
                spec.coupon_id,
                spec.shop_id,
            )
            send_at = max(first_send, now)
            if coupon is None:
                raise RuleViolation("coupon_id", "R-BEN-1", f"coupon {spec.coupon_id!r} not found for this shop")
            if not (coupon["valid_from"] <= send_at < coupon["valid_to"]):
                raise RuleViolation("coupon_id", "R-OC-9", "the coupon is not valid when the message is sent")
            if coupon["stock"] <= 0:
                raise RuleViolation("coupon_id", "R-BEN-1", "the coupon is out of stock")
    else:
        for i, phase in enumerate(spec.phases):
            # An unknown name would only fail in the workflow's first audience refresh.
            if phase.audience is not None and phase.audience not in AUDIENCES:
                raise RuleViolation(f"phases.{i}.audience", "R-PH-4", f"unknown audience {phase.audience!r}")
        last = spec.phases[-1]
        if day_window(last.end_date, last.send_time, tz).close_at <= now:
            raise RuleViolation("phases", "R-PH-2", "the last phase has already ended")
    return tz


async def start_campaign(
    pool: asyncpg.Pool,
    client: Client,
    spec: OldCustomerSpec | PhasedSpec,
    *,
    task_queue: str,
    now: datetime | None = None,
    tuning: dict | None = None,
) -> tuple[CampaignPlan, WorkflowHandle]:
    now = now or datetime.now(UTC)
    wf_id = workflow_id_for(spec.shop_id, spec.campaign_id)
    async with pool.acquire() as conn:
        async with conn.transaction():
            tz = await check_spec(conn, spec, now)
            row = await conn.fetchrow(
                """INSERT INTO campaigns (shop_id, campaign_ref, workflow_id, kind, spec)
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT (shop_id, campaign_ref) DO NOTHING
                   RETURNING id""",
                spec.shop_id,
                spec.campaign_id,
                wf_id,
                spec.kind,
                spec.model_dump(mode="json"),
            )
        if row is None:
            existing = await conn.fetchrow("SELECT id, state FROM campaigns WHERE workflow_id = $1", wf_id)
            if existing["state"] != "created" or await _workflow_exists(client, wf_id):
                raise CampaignExists(wf_id)
            # A row whose workflow never started (the start failed after the insert): start it now.
            row = existing
    plan = compile_plan(spec, campaign_db_id=row["id"], timezone=tz)
    if tuning:
        plan = plan.model_copy(update={"tuning": plan.tuning.model_copy(update=tuning)})
    try:
        started = await client.start_workflow(
            CampaignWorkflow.run,
            CampaignInput(plan=plan),
            id=wf_id,
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=SA.initial(plan.shop_id, plan.kind, plan.phases[0].name),
            static_summary=f"{plan.kind} {plan.shop_id}/{plan.campaign_id}",
        )
    except WorkflowAlreadyStartedError:
        raise CampaignExists(wf_id) from None
    return plan, started


async def _workflow_exists(client: Client, wf_id: str) -> bool:
    try:
        await client.get_workflow_handle(wf_id).describe()
        return True
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise


def handle(client: Client, workflow_id: str) -> WorkflowHandle:
    return client.get_workflow_handle_for(CampaignWorkflow.run, workflow_id)


class StatusUnavailable(Exception):
    """No worker answered the progress query in time (workers down or busy): try again later."""


QUERY_TIMEOUT = timedelta(seconds=10)
_UNAVAILABLE = {RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.UNAVAILABLE, RPCStatusCode.CANCELLED}


async def status(client: Client, workflow_id: str) -> CampaignStatus:
    try:
        return await handle(client, workflow_id).query(CampaignWorkflow.progress_query, rpc_timeout=QUERY_TIMEOUT)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise CampaignNotFound(workflow_id) from None
        if err.status in _UNAVAILABLE:
            raise StatusUnavailable(workflow_id) from None
        raise


async def control(client: Client, workflow_id: str, action: str, reason: str | None = None) -> None:
    h = handle(client, workflow_id)
    try:
        desc = await h.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise CampaignNotFound(workflow_id) from None
        raise
    if desc.status is not None and desc.status.name != "RUNNING":
        raise CampaignNotRunning(workflow_id, desc.status.name.lower())
    if action == "pause":
        await h.signal(CampaignWorkflow.pause)
    elif action == "resume":
        await h.signal(CampaignWorkflow.resume)
    elif action == "cancel":
        await h.signal(CampaignWorkflow.cancel, reason)
    else:
        raise ValueError(f"unknown action {action!r}")
