"""The API's error answers, in one shape: {"detail": [{"field", "rule", "message"}]}.

`field` names what was wrong (a spec field, `Authorization`, `body`) or, for
a 503, the dependency that did not answer (`postgres`, `temporal`,
`workers`); `rule` is the platform rule id or the API's own (R-API-*).
"""

from __future__ import annotations

import asyncpg
from fastapi.responses import JSONResponse

# How long a client is asked to wait before retrying a 503.
RETRY_AFTER_S = 5
UNAVAILABLE_RULE = "R-API-UNAVAILABLE"
# Postgres went away under a request (restart, failover, network): a 503, like Temporal, never a 500.
DATABASE_UNAVAILABLE = (
    OSError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
)


def error_response(status: int, field: str, rule: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"detail": [{"field": field, "rule": rule, "message": message}]}, headers=headers
    )


def unavailable(dependency: str, message: str) -> JSONResponse:
    """503 with Retry-After: nothing was done; the same request may be sent again."""
    return error_response(503, dependency, UNAVAILABLE_RULE, message, headers={"Retry-After": str(RETRY_AFTER_S)})
