"""The HTTP API (FastAPI): start, watch and control campaigns.

Errors name the field and the rule: a 422 body is
{"detail": [{"field": "card_text", "rule": "R-OC-3", "message": "..."}]}.

Every route but /healthz, /openapi.json and /docs needs `Authorization: Bearer
<key>` (api/keys.py): the gate below refuses anything else with 401 before a
route runs, so a new route is protected without saying so. A key acts for its
own shop only: another shop's campaign answers exactly like a campaign that
does not exist (404), and a spec for another shop is refused (403) before
anything about that shop is looked up.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Annotated, Literal

import structlog
from fastapi import Body, Depends, FastAPI, HTTPException, Path, Request, Security
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.client import Client

from api import keys, service
from db.pool import create_pool
from schemas.campaign import WORKFLOW_ID_PATTERN, CampaignSpec
from schemas.rules import MAX_SPEC_BYTES, RuleViolation, error_details
from schemas.settings import Settings, get_settings
from schemas.workflow import CampaignStatus
from workers.logs import configure_logging
from workers.worker import connect_client

MAX_BODY_BYTES = MAX_SPEC_BYTES
PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/docs"})
SHOP_SCOPE_KEY = "sluice.shop_id"  # set in the ASGI scope by the gate once the key is checked
log = structlog.get_logger("sluice.api")
_bearer = HTTPBearer(auto_error=False, description="an API key from `sluice keys create SHOP`")


class Started(BaseModel):
    campaign_id: str
    workflow_id: str
    status_url: str
    temporal_ui_url: str


class Accepted(BaseModel):
    workflow_id: str
    action: str
    accepted: bool = True


class RuleError(BaseModel):
    field: str
    rule: str
    message: str


class ErrorBody(BaseModel):
    detail: list[RuleError] | str


def _error(status: int, field: str, rule: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"detail": [{"field": field, "rule": rule, "message": message}]}, headers=headers
    )


class _TooLarge(Exception):
    pass


class Gate:
    """Pure ASGI middleware in front of every route: body size, then the API key.

    The size is checked on the declared Content-Length and again on the bytes
    actually received (a chunked body has no Content-Length), so no more than
    MAX_BODY_BYTES is ever read. The body is buffered (it is small) and handed
    on unchanged.
    """

    def __init__(self, app, *, state, public_paths=PUBLIC_PATHS, max_body: int = MAX_BODY_BYTES):
        self.app = app
        self.state = state  # the FastAPI app's state: the pool is there once the lifespan has run
        self.public_paths = public_paths
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        structlog.contextvars.clear_contextvars()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await self._too_large(scope, receive, send)
        if scope.get("path") not in self.public_paths:
            shop_id = await self._shop(scope, headers.get("authorization"))
            if shop_id is None:
                response = _error(
                    401,
                    "Authorization",
                    "R-API-KEY",
                    "a valid API key is required: Authorization: Bearer <key>",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                return await response(scope, receive, send)
            scope[SHOP_SCOPE_KEY] = shop_id
            structlog.contextvars.bind_contextvars(key_shop_id=shop_id)
        try:
            body = await self._read_body(receive)
        except _TooLarge:
            return await self._too_large(scope, receive, send)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _read_body(self, receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _shop(self, scope, authorization: str | None) -> str | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return await keys.shop_for_key(self.state.pool, token.strip())

    async def _too_large(self, scope, receive, send):
        response = _error(413, "body", "R-API-SIZE", f"body over {self.max_body // 1024} KiB")
        return await response(scope, receive, send)


def key_shop(
    request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None
) -> str:
    """The shop of the request's API key (the Gate has checked it; the Security part documents it)."""
    shop_id = request.scope.get(SHOP_SCOPE_KEY)
    if shop_id is None:  # only if a route were mounted outside the Gate
        raise HTTPException(status_code=401, detail="a valid API key is required")
    return shop_id


KeyShop = Annotated[str, Depends(key_shop)]
WorkflowId = Annotated[
    str, Path(pattern=WORKFLOW_ID_PATTERN, max_length=129, description="{shop_id}.{campaign_id}")
]


def create_app(settings: Settings | None = None, *, pool=None, client: Client | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        own_pool = pool is None
        app.state.pool = pool or await create_pool(settings.database_url, size=settings.pool_size)
        app.state.client = client or await connect_client(settings)
        yield
        if own_pool:
            await app.state.pool.close()

    app = FastAPI(
        title="sluice",
        version="0.1.0",
        description="Durable campaign executor: start, watch, pause, resume and cancel campaigns.",
        lifespan=lifespan,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    app.add_middleware(Gate, state=app.state)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError):
        return JSONResponse(status_code=422, content={"detail": error_details(exc.errors())})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:
            # FastAPI's answer to a body it could not parse (bytes that are not UTF-8, nesting too deep
            # for the JSON parser): the same answer as any other malformed JSON.
            return _error(422, "body", "schema:json_invalid", "the body is not valid UTF-8 JSON")
        return await http_exception_handler(request, exc)

    @app.exception_handler(RuleViolation)
    async def _rule(_request: Request, exc: RuleViolation):
        return JSONResponse(status_code=422, content={"detail": [exc.as_dict()]})

    def _urls(workflow_id: str) -> tuple[str, str]:
        ui = f"{settings.temporal_ui_base}/namespaces/{settings.temporal_namespace}/workflows/{workflow_id}"
        return f"/campaigns/{workflow_id}", ui

    @app.post(
        "/campaigns",
        status_code=201,
        response_model=Started,
        responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 409: {"model": ErrorBody},
                   413: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    )
    async def start(request: Request, shop: KeyShop, spec: Annotated[CampaignSpec, Body()]) -> Started:
        if spec.shop_id != shop:
            # Same answer whether or not that shop exists; nothing about it is looked up.
            return _error(403, "shop_id", "R-API-KEY", "this API key may not start campaigns for that shop_id")
        structlog.contextvars.bind_contextvars(shop_id=spec.shop_id, campaign_id=spec.campaign_id)
        try:
            plan, _ = await service.start_campaign(
                request.app.state.pool, request.app.state.client, spec, task_queue=settings.task_queue
            )
        except service.CampaignExists as exc:
            raise HTTPException(status_code=409, detail=f"campaign {exc.workflow_id} already exists") from None
        status_url, ui = _urls(plan.workflow_id)
        log.info("campaign started", workflow_id=plan.workflow_id)
        return Started(
            campaign_id=plan.campaign_id, workflow_id=plan.workflow_id, status_url=status_url, temporal_ui_url=ui
        )

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
        except service.StatusUnavailable:
            raise HTTPException(
                status_code=503, detail="no worker answered the progress query; retry", headers={"Retry-After": "5"}
            ) from None

    @app.post(
        "/campaigns/{workflow_id}/{action}",
        status_code=202,
        response_model=Accepted,
        responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
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
    async def healthz(request: Request) -> dict:
        await request.app.state.pool.fetchval("SELECT 1")
        return {"ok": True}

    return app


def _not_found(workflow_id: str) -> str:
    return f"campaign {workflow_id} not found"


def serve(settings: Settings | None = None) -> None:
    import uvicorn

    settings = settings or get_settings()
    configure_logging(settings.log_level)
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_level="warning")
