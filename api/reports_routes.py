"""Where people read results (R-REP-1, R-REP-2): the campaign list, reports, per-buyer detail, CSV, the dashboard.

Every route reads Postgres only (sluice.reports), never Temporal, so a report
answers after the workflow's history is gone. A key reaches its own shop's
campaigns only: another shop's campaign is a 404 exactly like a missing one.
A campaign's report is materialised after each of its days by the workflow;
POST .../report/refresh does it now (attribution included), and a campaign
never materialised yet is materialised on its first read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from sluice.api.deps import ErrorBody, KeyShop, WorkflowId
from sluice.reports import queries
from sluice.reports.definitions import DEFAULT_PAGE, DELIVERY_STATES, MAX_PAGE
from sluice.reports.models import CampaignList, CampaignReport, Dashboard, RecipientPage
from sluice.reports.refresh import refresh
from sluice.schemas.settings import Settings

State = Literal[DELIVERY_STATES]  # type: ignore[valid-type]
_NOT_FOUND = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}}
Cursor = Annotated[str | None, Query(max_length=512, description="the `next` of the previous page")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
Phase = Annotated[int | None, Query(ge=0, le=32767, description="a phase index, from 0")]
States = Annotated[list[State] | None, Query(description="ledger states (repeatable)")]
Failures = Annotated[bool, Query(description="only decisions that reached nobody: failed, unknown, suppressed, not_sent")]
Reason = Annotated[str | None, Query(max_length=200, description="only decisions with this reason")]


def reports_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["reports"])

    async def _campaign(request: Request, shop: str, workflow_id: str):
        row = await queries.campaign(request.app.state.pool, shop, workflow_id)
        if row is None:
            raise HTTPException(status_code=404, detail=f"campaign {workflow_id} not found")
        return row

    async def _refreshed(request: Request, row) -> CampaignReport:
        pool = request.app.state.pool
        async with pool.acquire() as conn:
            await refresh(conn, row["id"])
            return await queries.read_report(conn, row)

    @router.get("/campaigns", response_model=CampaignList, responses={401: {"model": ErrorBody}, 422: {"model": ErrorBody}})
    async def list_campaigns(
        request: Request,
        shop: KeyShop,
        state: Annotated[str | None, Query(pattern=r"^[a-z_]{1,32}$", description="the campaign's state")] = None,
        kind: Annotated[str | None, Query(pattern=r"^K-[A-Z0-9-]{1,30}$", description="a registered campaign kind")] = None,
        after: Cursor = None,
        limit: Limit = DEFAULT_PAGE,
    ) -> CampaignList:
        """The key's shop's campaigns, newest first, with a link to each one's report."""
        return await queries.list_campaigns(
            request.app.state.pool, shop, state=state, kind=kind, after=after, limit=limit, base_url=settings.api_base_url
        )

    @router.get("/campaigns/{workflow_id}/report", response_model=CampaignReport, responses=_NOT_FOUND)
    async def report(request: Request, shop: KeyShop, workflow_id: WorkflowId) -> CampaignReport:
        """R-REP-1: per phase tasks sent, reached, inquiry and conversion rates, revenue, cost, ROI; the
        campaign's totals; the daily trend. As last materialised (`refreshed_at`)."""
        row = await _campaign(request, shop, workflow_id)
        found = await queries.read_report(request.app.state.pool, row)
        return found if found is not None else await _refreshed(request, row)

    @router.post("/campaigns/{workflow_id}/report/refresh", response_model=CampaignReport, responses=_NOT_FOUND)
    async def refresh_report(request: Request, shop: KeyShop, workflow_id: WorkflowId) -> CampaignReport:
        """Attribute the campaign's orders and materialise its report now; answers the new report."""
        return await _refreshed(request, await _campaign(request, shop, workflow_id))

    @router.get("/campaigns/{workflow_id}/recipients", response_model=RecipientPage, responses=_NOT_FOUND)
    async def recipients(
        request: Request, shop: KeyShop, workflow_id: WorkflowId, phase: Phase = None, state: States = None,
        failures: Failures = False, reason: Reason = None, after: Cursor = None, limit: Limit = DEFAULT_PAGE,
    ) -> RecipientPage:  # fmt: skip
        """R-REP-1 per-buyer detail: each ledger decision (state, reason, content, channel, ordered or not), in
        (phase, buyer, day, channel) order, a page at a time; `failures=true` (or `state=failed`) with `reason`."""
        row = await _campaign(request, shop, workflow_id)
        return await queries.recipients(
            request.app.state.pool, row["id"], phase=phase, states=state, failures=failures, reason=reason, after=after,
            limit=limit,
        )  # fmt: skip

    @router.get(
        "/campaigns/{workflow_id}/recipients.csv",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/csv": {}}, "description": "the per-buyer detail as CSV"}, **_NOT_FOUND},
    )
    async def recipients_csv(
        request: Request, shop: KeyShop, workflow_id: WorkflowId, phase: Phase = None, state: States = None,
        failures: Failures = False, reason: Reason = None,
    ) -> StreamingResponse:  # fmt: skip
        """The per-buyer detail, every row the filters keep, as CSV streamed from a database cursor."""
        row = await _campaign(request, shop, workflow_id)
        pool = request.app.state.pool

        async def body():
            async with pool.acquire() as conn:
                async for chunk in queries.recipients_csv(
                    conn, row["id"], phase=phase, states=state, failures=failures, reason=reason
                ):
                    yield chunk

        filename = f"{workflow_id}-recipients.csv"
        return StreamingResponse(
            body(), media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )  # fmt: skip

    @router.get("/dashboard", response_model=Dashboard, responses={401: {"model": ErrorBody}, 422: {"model": ErrorBody}})
    async def dashboard(
        request: Request, shop: KeyShop, months: Annotated[int, Query(ge=1, le=120, description="months split")] = 12
    ) -> Dashboard:
        """R-REP-2: the shop's totals over its campaigns' reports, today's figures against yesterday's (the shop's
        calendar), and a monthly split by phase."""
        return await queries.dashboard(request.app.state.pool, shop, now=datetime.now(UTC), months=months)

    return router
