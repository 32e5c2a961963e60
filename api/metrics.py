"""GET /metrics: the API process's Prometheus metrics (R-API-METRICS, docs/observability.md).

Platform-wide counters and the Temporal client's metrics, labelled by nothing that names a
shop, a campaign or a consumer; so a shop's API key is not what guards it. The path is
public (api/http.py PUBLIC_PATHS: the Gate asks no shop key) unless SLUICE_METRICS_TOKEN is
set; then it wants `Authorization: Bearer <that token>`, and anything else is 401.
"""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sluice.api.errors import error_response
from sluice.schemas.settings import Settings

METRICS_PATH = "/metrics"


def install(app: FastAPI, settings: Settings) -> None:
    """The route on the app itself (like api/docs.py): one plain route, outside the OpenAPI document."""
    expected = f"Bearer {settings.metrics_token}".encode() if settings.metrics_token else None

    async def metrics(request: Request) -> Response:
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return error_response(401, "Authorization", "R-API-METRICS", "the metrics token is required: Bearer <token>",
                                      headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(METRICS_PATH, metrics, methods=["GET"], include_in_schema=False)
