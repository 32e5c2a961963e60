"""Starting and controlling campaigns: the one path both HTTP and the CLI take.

Rules that need the database (the shop exists, the coupon is valid, the image
was configured in time) are checked here, before anything is written or
started; a second start of the same campaign is refused, never doubled.

Every failure of Temporal is one of three typed answers, never a bare RPC
error: the campaign is unknown (`CampaignNotFound`), it has finished
(`CampaignNotRunning`), or Temporal or the workers cannot answer now
(`TemporalUnavailable`, `StatusUnavailable`: try again later). A start that
wrote its row but could not start the workflow (Temporal down) is completed by
a retry with the same spec; a different spec under the same id is refused.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
from sluice.audiences.preview import Preview, preview
from sluice.kinds import Shop, SpecBase, compile_plan, kind_of
from sluice.outcomes.attribution import save_plan_windows
from sluice.reports.queries import report_path
from sluice.schemas import rules
from sluice.schemas.campaign import CampaignPlan, workflow_id_for
from sluice.schemas.rules import RuleViolation
from sluice.schemas.settings import get_settings
from sluice.schemas.workflow import CampaignInput, CampaignStatus
from sluice.workflows import search_attributes as SA
from sluice.workflows.campaign import CampaignWorkflow
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode


class CampaignExists(Exception):
    def __init__(self, workflow_id: str, detail: str = "already exists"):
        super().__init__(f"campaign {workflow_id} {detail}")
        self.workflow_id = workflow_id
        self.detail = detail


class TemporalUnavailable(Exception):
    """Temporal did not answer in time (down, restarting, overloaded): nothing was done; retry."""


class CampaignNotFound(Exception):
    pass


class CampaignNotRunning(CampaignNotFound):
    def __init__(self, workflow_id: str, status: str):
        super().__init__(f"{workflow_id} is not running ({status})")
        self.status = status


# The compiled plan's phase names on the campaigns row (by primary key), for its report.
SET_PHASE_NAMES = "UPDATE campaigns SET phase_names = $2 WHERE id = $1 AND phase_names IS DISTINCT FROM $2"


async def owns(pool: asyncpg.Pool, shop_id: str, workflow_id: str) -> bool:
    """Whether the campaign with this workflow id belongs to the shop (the campaigns table decides)."""
    return bool(
        await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM campaigns WHERE workflow_id = $1 AND shop_id = $2)", workflow_id, shop_id
        )
    )


async def check_spec(conn: asyncpg.Connection, spec: SpecBase, now: datetime) -> Shop:
    """Rules that need the database: the shop (exists, has an IANA zone), then the kind's own checks."""
    row = await conn.fetchrow("SELECT timezone, virtual_category FROM shops WHERE shop_id = $1", spec.shop_id)
    if row is None:
        raise RuleViolation("shop_id", "R-API-SHOP", f"unknown shop {spec.shop_id!r}")
    if not rules.is_iana_zone(row["timezone"]):
        # Shops are created with a checked zone (`sluice seed`); one written around that check must not
        # turn into a 500 in the window arithmetic.
        raise RuleViolation("shop_id", "R-WIN-1", f"the shop's time zone {row['timezone']!r} is not an IANA zone name")
    shop = Shop(shop_id=spec.shop_id, timezone=row["timezone"], virtual_category=row["virtual_category"])
    await kind_of(spec).check(conn, spec, shop, now)
    return shop


async def start_campaign(
    pool: asyncpg.Pool,
    client: Client,
    spec: SpecBase,
    *,
    task_queue: str,
    now: datetime | None = None,
    tuning: dict | None = None,
    api_base_url: str | None = None,
) -> tuple[CampaignPlan, WorkflowHandle]:
    """Check, record and start the campaign. The workflow's memo links its report (`api_base_url`, default
    the settings' SLUICE_API_PUBLIC_URL), so the Temporal UI points to it."""
    now = now or datetime.now(UTC)
    wf_id = workflow_id_for(spec.shop_id, spec.campaign_id)
    spec_json = spec.model_dump(mode="json")
    async with pool.acquire() as conn:
        async with conn.transaction():
            shop = await check_spec(conn, spec, now)
            precedence = kind_of(spec).precedence(spec)  # R-RP-9
            # No conflict target: the row is unique on (shop_id, campaign_ref) and on workflow_id, and a
            # racing identical start may hit either first; both mean "exists", never an error.
            row = await conn.fetchrow(
                """INSERT INTO campaigns (shop_id, campaign_ref, workflow_id, kind, spec, precedence_group, takes_precedence)
                   VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING
                   RETURNING id""",
                spec.shop_id,
                spec.campaign_id,
                wf_id,
                spec.kind,
                spec_json,
                precedence.group if precedence else None,
                bool(precedence and precedence.takes),
            )
        if row is None:
            existing = await conn.fetchrow(
                "SELECT id, state, spec = $2::jsonb AS same_spec FROM campaigns WHERE workflow_id = $1", wf_id, spec_json
            )
            if existing is None:  # another shop's row holds the id: impossible while ids embed the shop
                raise CampaignExists(wf_id)
            if not existing["same_spec"]:
                raise CampaignExists(wf_id, "already exists with a different spec")
            if existing["state"] != "created" or await _workflow_exists(client, wf_id):
                raise CampaignExists(wf_id)
            # The same spec, written by a start whose workflow never started (Temporal was down after
            # the insert): this retry completes it.
            row = existing
    plan = compile_plan(spec, campaign_db_id=row["id"], shop=shop, now=now)
    # Slices go to the providers' rate-limited queues when the deployment runs them (SLUICE_PROVIDER_QUEUES).
    tuning = {"provider_queues": True, **(tuning or {})} if get_settings().provider_queues else tuning
    if tuning:
        plan = plan.model_copy(update={"tuning": plan.tuning.model_copy(update=tuning)})
    # The report names the phases as the plan does (reports/refresh.py).
    await pool.execute(SET_PHASE_NAMES, row["id"], [p.name for p in plan.phases])
    await save_plan_windows(pool, plan)  # R-ATT-1: an attribution before the first day reads the plan's windows
    report_url = (api_base_url or get_settings().api_base_url).rstrip("/") + report_path(wf_id)
    with _temporal_errors():
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
                memo={"report": report_url},
                rpc_timeout=RPC_TIMEOUT,
            )
        except WorkflowAlreadyStartedError:
            raise CampaignExists(wf_id) from None
    return plan, started


async def preview_campaign(pool: asyncpg.Pool, spec: SpecBase, *, platform_tz: str, now: datetime | None = None) -> Preview:
    """R-PRE-1: the spec's checks, then whom each phase would reach and what removes the rest; nothing is written."""
    now = now or datetime.now(UTC)
    async with pool.acquire() as conn:
        shop = await check_spec(conn, spec, now)
    plan = compile_plan(spec, campaign_db_id=0, shop=shop, now=now)
    return await preview(pool, plan, now=now, platform_tz=platform_tz)


async def _workflow_exists(client: Client, wf_id: str) -> bool:
    with _temporal_errors():
        try:
            await client.get_workflow_handle(wf_id).describe(rpc_timeout=RPC_TIMEOUT)
            return True
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise


def handle(client: Client, workflow_id: str) -> WorkflowHandle:
    return client.get_workflow_handle_for(CampaignWorkflow.run, workflow_id)


class StatusUnavailable(Exception):
    """No worker answered the progress query in time (workers down or busy): try again later."""


# How long one call to Temporal may take before the answer is "unavailable, retry" (503).
RPC_TIMEOUT = timedelta(seconds=5)
QUERY_TIMEOUT = timedelta(seconds=10)
_UNAVAILABLE = {
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.CANCELLED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.ABORTED,
    RPCStatusCode.UNKNOWN,
    RPCStatusCode.INTERNAL,
}


@contextmanager
def _temporal_errors():
    """Temporal not answering (a refused connection, or an RPC status in _UNAVAILABLE) becomes
    TemporalUnavailable; any other RPC error passes on, for the caller's own mapping before it."""
    try:
        yield
    except RuntimeError as err:  # the client cannot (re)connect: "Failed client connect"
        raise TemporalUnavailable(str(err)[:300]) from None
    except RPCError as err:
        if err.status in _UNAVAILABLE:
            raise TemporalUnavailable(f"temporal: {err.status.name}: {err.message}"[:300]) from None
        raise


async def status(client: Client, workflow_id: str) -> CampaignStatus:
    with _temporal_errors():
        try:
            return await handle(client, workflow_id).query(CampaignWorkflow.progress_query, rpc_timeout=QUERY_TIMEOUT)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise CampaignNotFound(workflow_id) from None
            # FAILED_PRECONDITION: "no poller seen for task queue recently" (every worker is down).
            if err.status in _UNAVAILABLE or err.status == RPCStatusCode.FAILED_PRECONDITION:
                raise StatusUnavailable(workflow_id) from None
            raise


ACTIONS = ("pause", "resume", "cancel")


async def control(client: Client, workflow_id: str, action: str, reason: str | None = None) -> None:
    """Signal the campaign's current run. The signal is the check: a finished run refuses it (no
    describe-then-signal race); Temporal keeps an accepted signal durably, so it takes effect even if no
    worker runs now (the workflow's state exists before any handler runs)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    h = handle(client, workflow_id)
    signal = {"pause": CampaignWorkflow.pause, "resume": CampaignWorkflow.resume, "cancel": CampaignWorkflow.cancel}
    args = (reason,) if action == "cancel" else ()
    with _temporal_errors():
        try:
            await h.signal(signal[action], *args, rpc_timeout=RPC_TIMEOUT)
            return
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
        # "workflow execution already completed", or no such workflow: say which.
        try:
            desc = await h.describe(rpc_timeout=RPC_TIMEOUT)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise CampaignNotFound(workflow_id) from None
            raise
    raise CampaignNotRunning(workflow_id, desc.status.name.lower() if desc.status else "closed")
