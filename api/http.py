"""The HTTP API (FastAPI): start, watch and control campaigns.

Errors name the field and the rule: a 422 body is
{"detail": [{"field": "card_text", "rule": "R-OC-3", "message": "..."}]}.

Every route but /healthz, /readyz, /openapi.json, /docs, the report page's files under /ui/ (api/ui.py) and
/metrics (its own optional token, api/metrics.py) needs `Authorization: Bearer <key>` (api/keys.py): the Gate
(api/gate.py) refuses anything else with 401 before a route runs, so a new route is protected
without saying so; failed keys are throttled per client and per key prefix
(429, api/throttle.py). A dependency that does not answer is a 503 with
Retry-After naming it, never a 500 (api/errors.py). A key acts for its
own shop only: another shop's campaign answers exactly like a campaign that
does not exist (404), and a spec for another shop is refused (403) before
anything about that shop is looked up.
"""

from __future__ import annotations

import dataclasses
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Literal

import structlog
from fastapi import Body, FastAPI, HTTPException, Path, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sluice.activities import offers
from sluice.api import agents, docs, health, load, service, ui
from sluice.api import metrics as metrics_api
from sluice.api.deps import ErrorBody, KeyShop, WorkflowId
from sluice.api.errors import DATABASE_UNAVAILABLE, RETRY_AFTER_S, error_response, unavailable
from sluice.api.gate import Gate, SecurityHeaders
from sluice.api.metrics import METRICS_PATH
from sluice.api.reports_routes import reports_router
from sluice.api.throttle import AuthThrottle
from sluice.audiences.preview import Preview
from sluice.db.pool import create_pool
from sluice.kinds import CampaignSpec
from sluice.outcomes import api as events_api
from sluice.outcomes.events import MAX_EVENTS_BYTES
from sluice.schemas.rules import MAX_SPEC_BYTES, RuleViolation, error_details
from sluice.schemas.settings import Settings, get_settings
from sluice.schemas.workflow import CampaignStatus
from sluice.workers.logs import configure_logging
from sluice.workers.metrics import temporal_runtime
from sluice.workers.tracing import RequestSpans, setup_tracing, temporal_interceptors
from sluice.workers.worker import connect_client
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.client import Client

MAX_BODY_BYTES = MAX_SPEC_BYTES
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", METRICS_PATH}) | docs.DOCS_PATHS | ui.UI_PATHS
log = structlog.get_logger("sluice.api")


class Started(BaseModel):
    campaign_id: str
    workflow_id: str
    status_url: str
    temporal_ui_url: str


class Accepted(BaseModel):
    workflow_id: str
    action: str
    accepted: bool = True


class ClaimRequest(BaseModel):
    consumer_id: int | None = Field(default=None, description="when given, the offer must be this consumer's")


class OfferClaim(BaseModel):
    offer_id: int
    state: str = Field(description="claimed | ended")
    coupon_id: str
    product_id: int | None
    consumer_id: int
    expires_at: datetime | None
    claimed_at: datetime | None




def create_app(settings: Settings | None = None, *, pool=None, client: Client | None = None, tracer=None) -> FastAPI:
    """`tracer` (workers/tracing.py): a span per request, carried into Temporal by the client's
    interceptor (a `client` given here brings its own interceptors)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        own_pool = pool is None
        app.state.pool = pool or await create_pool(settings.database_url, size=settings.pool_size)
        app.state.client = client or await connect_client(
            settings, runtime=temporal_runtime(), interceptors=temporal_interceptors(tracer)
        )
        yield
        if own_pool:
            await app.state.pool.close()

    app = FastAPI(
        title="sluice",
        version="0.1.0",
        description="Durable campaign executor: start, watch, pause, resume and cancel campaigns.",
        lifespan=lifespan,
        docs_url=None,  # docs.install: self-hosted assets, no inline script
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        redirect_slashes=False,  # a redirect would be built from the Host header: /x/ is 404, never a Location
    )
    docs.install(app)
    app.include_router(load.router)
    app.state.auth_throttle = AuthThrottle()  # failed keys per client address and per key prefix
    app.add_middleware(
        Gate, state=app.state, public_paths=PUBLIC_PATHS, throttle=app.state.auth_throttle, max_body=MAX_BODY_BYTES,
        body_limits=((load.LOAD_PREFIX, load.MAX_LOAD_BYTES), (events_api.EVENTS_PATH, MAX_EVENTS_BYTES)),
    )
    app.add_middleware(SecurityHeaders)  # outermost: its headers are on every answer, the Gate's too
    if tracer is not None:
        app.add_middleware(RequestSpans, tracer=tracer)  # around everything: a refused request is traced too
    metrics_api.install(app, settings)
    app.include_router(reports_router(settings))
    app.include_router(ui.router)  # the report page's static files (public; its data needs the key)
    app.include_router(events_api.router)
    app.include_router(agents.router)  # R-PH-5: chat agents' presence

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError):
        return JSONResponse(status_code=422, content={"detail": error_details(exc.errors())})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:
            # FastAPI's answer to a body it could not parse (bytes that are not UTF-8, nesting too deep
            # for the JSON parser): the same answer as any other malformed JSON.
            return error_response(422, "body", "schema:json_invalid", "the body is not valid UTF-8 JSON")
        return await http_exception_handler(request, exc)

    @app.exception_handler(RuleViolation)
    async def _rule(_request: Request, exc: RuleViolation):
        return JSONResponse(status_code=422, content={"detail": [exc.as_dict()]})

    # A dependency that cannot answer now is a 503 with Retry-After, never a 500: nothing was done.
    @app.exception_handler(service.TemporalUnavailable)
    async def _temporal_down(_request: Request, exc: service.TemporalUnavailable):
        log.warning("temporal unavailable", error=str(exc))
        return unavailable("temporal", "Temporal is not answering; nothing was done, retry")

    @app.exception_handler(service.StatusUnavailable)
    async def _no_worker(_request: Request, _exc: service.StatusUnavailable):
        return unavailable("workers", "no worker answered the progress query; retry")

    for db_error in DATABASE_UNAVAILABLE:

        @app.exception_handler(db_error)
        async def _db_down(_request: Request, exc: Exception):
            log.warning("postgres unavailable", error=type(exc).__name__)
            return unavailable("postgres", "the database is not answering; nothing was done, retry")

    def _urls(workflow_id: str) -> tuple[str, str]:
        ui = f"{settings.temporal_ui_base}/namespaces/{settings.temporal_namespace}/workflows/{workflow_id}"
        return f"/campaigns/{workflow_id}", ui

    @app.post(
        "/campaigns",
        status_code=201,
        response_model=Started,
        responses={
            401: {"model": ErrorBody},
            403: {"model": ErrorBody},
            409: {"model": ErrorBody},
            413: {"model": ErrorBody},
            422: {"model": ErrorBody},
        },
    )
    async def start(request: Request, shop: KeyShop, spec: Annotated[CampaignSpec, Body()]) -> Started:
        if spec.shop_id != shop:
            # Same answer whether or not that shop exists; nothing about it is looked up.
            return error_response(403, "shop_id", "R-API-KEY", "this API key may not start campaigns for that shop_id")
        structlog.contextvars.bind_contextvars(shop_id=spec.shop_id, campaign_id=spec.campaign_id)
        try:
            plan, _ = await service.start_campaign(
                request.app.state.pool, request.app.state.client, spec, task_queue=settings.task_queue,
                api_base_url=settings.api_base_url,
            )
        except service.CampaignExists as exc:
            raise HTTPException(status_code=409, detail=f"campaign {exc.workflow_id} {exc.detail}") from None
        status_url, ui = _urls(plan.workflow_id)
        log.info("campaign started", workflow_id=plan.workflow_id)
        return Started(campaign_id=plan.campaign_id, workflow_id=plan.workflow_id, status_url=status_url, temporal_ui_url=ui)

    @app.post(
        "/campaigns/preview",
        response_model=Preview,
        responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 413: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    )
    async def preview(request: Request, shop: KeyShop, spec: Annotated[CampaignSpec, Body()]) -> Preview:
        """R-PRE-1: the spec checked as a start would check it, then per phase whom it would reach and what removes
        the rest (exclusions, filters, fatigue caps by rule id, minimum size, daily cap, coupon stock). Nothing is
        written or started."""
        if spec.shop_id != shop:
            return error_response(403, "shop_id", "R-API-KEY", "this API key may not preview campaigns for that shop_id")
        return await service.preview_campaign(request.app.state.pool, spec, platform_tz=settings.platform_timezone)

    @app.post(
        "/offers/{offer_id}/claim",
        response_model=OfferClaim,
        responses={
            401: {"model": ErrorBody},
            404: {"model": ErrorBody, "description": "no such offer of this shop (or not this consumer's)"},
            409: {"model": OfferClaim, "description": "the offer has ended: its window is over (state 'ended')"},
        },
    )
    async def claim_offer(
        request: Request, shop: KeyShop, offer_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
        body: Annotated[ClaimRequest | None, Body()] = None,
    ) -> OfferClaim:
        """R-RP-5: the consumer claims a countdown-bounded offer. Before it ends: `claimed` (again and again:
        idempotent). After: 409 with the state `ended`. The platform calls it with the shop's key."""
        consumer = body.consumer_id if body is not None else None
        answer = await offers.claim(request.app.state.pool, offer_id, shop, datetime.now(UTC), consumer)
        if answer is None:
            raise HTTPException(status_code=404, detail=f"offer {offer_id} not found")
        result = OfferClaim(**dataclasses.asdict(answer))
        if answer.state != offers.CLAIMED:
            return JSONResponse(status_code=409, content=result.model_dump(mode="json"))
        return result

    async def _own(request: Request, shop: str, workflow_id: str) -> None:
        # Ownership comes from the campaigns table, never from the shape of the id; another
        # shop's campaign gets the very answer a missing one gets.
        if not await service.owns(request.app.state.pool, shop, workflow_id):
            raise HTTPException(status_code=404, detail=_not_found(workflow_id))

    @app.get(
        "/campaigns/{workflow_id}",
        response_model=CampaignStatus,
        responses={
            401: {"model": ErrorBody},
            404: {"model": ErrorBody},
            422: {"model": ErrorBody},
            503: {"model": ErrorBody, "description": "no worker answered the progress query in time"},
        },
    )
    async def get_status(request: Request, shop: KeyShop, workflow_id: WorkflowId) -> CampaignStatus:
        await _own(request, shop, workflow_id)
        try:
            return await service.status(request.app.state.client, workflow_id)
        except service.CampaignNotFound:
            raise HTTPException(status_code=404, detail=_not_found(workflow_id)) from None

    @app.post(
        "/campaigns/{workflow_id}/{action}",
        status_code=202,
        response_model=Accepted,
        responses={
            401: {"model": ErrorBody},
            404: {"model": ErrorBody, "description": "unknown, or not running any more"},
            422: {"model": ErrorBody},
            503: {"model": ErrorBody, "description": "Temporal is not answering; nothing was done"},
        },
    )
    async def act(
        request: Request, shop: KeyShop, workflow_id: WorkflowId, action: Literal["pause", "resume", "cancel"]
    ) -> Accepted:
        await _own(request, shop, workflow_id)
        try:
            await service.control(request.app.state.client, workflow_id, action)
        except service.CampaignNotRunning as exc:
            raise HTTPException(status_code=404, detail=f"campaign {workflow_id} is not running ({exc.status})") from None
        except service.CampaignNotFound:
            raise HTTPException(status_code=404, detail=_not_found(workflow_id)) from None
        log.info("campaign control", workflow_id=workflow_id, action=action)
        return Accepted(workflow_id=workflow_id, action=action)

    @app.get("/healthz")
    async def healthz() -> dict:
        """Liveness: the API process answers. Which dependencies answer is /readyz."""
        return {"ok": True}

    @app.get("/readyz", responses={503: {"description": "a dependency is missing; the body names it"}})
    async def readyz(request: Request):
        checks = await health.readiness(request.app.state.pool, request.app.state.client, settings.task_queue)
        ready = health.is_ready(checks)
        return JSONResponse(
            status_code=200 if ready else 503,
            content={"ready": ready, "checks": checks},
            headers=None if ready else {"Retry-After": str(RETRY_AFTER_S)},
        )

    return app


def _not_found(workflow_id: str) -> str:
    return f"campaign {workflow_id} not found"


def serve(settings: Settings | None = None) -> None:
    import uvicorn

    settings = settings or get_settings()
    configure_logging(settings.log_level)
    tracer = setup_tracing(settings, "sluice-api")
    # The client address the failure throttle counts is the TCP peer; behind a proxy run uvicorn with
    # --proxy-headers and --forwarded-allow-ips (FORWARDED_ALLOW_IPS) naming the proxy (api/throttle.py).
    # log_config=None: uvicorn's loggers propagate to the root handler (structlog JSON, masked; workers/logs.py).
    uvicorn.run(create_app(settings, tracer=tracer), host=settings.api_host, port=settings.api_port, log_level="warning",
                server_header=False, log_config=None)
