"""Pure ASGI middleware in front of every route: security headers, body size, API key, failure throttle.

Two layers, outermost first (api/http.py adds them):

* SecurityHeaders puts the same protective headers on every answer, whoever
  wrote it: a route, an exception handler, the Gate's own 400/401/413/429,
  the docs page and its assets, and a 500 from an unhandled exception (which
  Starlette would otherwise send from outside every middleware, bare).
* Gate: the body size (413; 64 KiB, or a route's own limit: the load batches'), then on every non-public path the API key:
  more than one Authorization header is refused (400) before anything else,
  a client address or key prefix over its failure budget is refused (429,
  Retry-After, api/throttle.py) before the database is asked, and anything
  but a live key of a shop is refused (401).
"""

from __future__ import annotations

import structlog
from fastapi.responses import JSONResponse
from sluice.api import keys
from sluice.api.docs import DOCS_CSP, DOCS_PATH
from sluice.api.errors import DATABASE_UNAVAILABLE, error_response, unavailable
from sluice.api.throttle import AuthThrottle, client_key
from sluice.api.ui import UI_CSP, UI_PAGE
from sluice.schemas.rules import MAX_SPEC_BYTES
from starlette.datastructures import MutableHeaders

SHOP_SCOPE_KEY = "sluice.shop_id"  # set in the ASGI scope by the gate once the key is checked
API_CSP = "default-src 'none'; frame-ancestors 'none'"
SECURITY_HEADERS = {  # on every answer; Content-Security-Policy is API_CSP but for the docs page (DOCS_CSP) and the
    # report page (UI_CSP)
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
DEFAULT_CACHE_CONTROL = "no-store"  # unless the answer sets its own (the docs assets do)
log = structlog.get_logger("sluice.api")


class SecurityHeaders:
    """Adds SECURITY_HEADERS, a Content-Security-Policy and a default Cache-Control to every answer."""

    def __init__(self, app, *, docs_path: str = DOCS_PATH, ui_page: str = UI_PAGE):
        self.app = app
        self.docs_path = docs_path
        self.ui_page = ui_page

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path")
        csp = DOCS_CSP if path == self.docs_path else UI_CSP if path == self.ui_page else API_CSP
        started = False

        async def send_with_headers(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                headers["Content-Security-Policy"] = csp
                if "cache-control" not in headers:
                    headers["Cache-Control"] = DEFAULT_CACHE_CONTROL
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            if not started:  # answer here, with the headers; the server still logs the exception
                response = JSONResponse(status_code=500, content={"detail": "internal server error"})
                await response(scope, receive, send_with_headers)
            raise


def _key_refusal(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return error_response(status, "Authorization", "R-API-KEY", message, headers=headers)


class _TooLarge(Exception):
    pass


class _Throttled(Exception):
    def __init__(self, retry_after: int):
        self.retry_after = retry_after


class Gate:
    """Body size, then the API key (module docstring).

    The size is checked on the declared Content-Length and again on the bytes
    actually received (a chunked body has no Content-Length), so no more than
    max_body is ever read. The body is buffered (it is small) and handed
    on unchanged.
    """

    def __init__(
        self, app, *, state, public_paths: frozenset[str], throttle: AuthThrottle | None = None, max_body: int = MAX_SPEC_BYTES,
        body_limits: tuple[tuple[str, int], ...] = (),
    ):
        self.app = app
        self.state = state  # the FastAPI app's state: the pool is there once the lifespan has run
        self.public_paths = public_paths
        self.throttle = throttle or AuthThrottle()
        self.max_body = max_body
        self.body_limits = body_limits  # (path prefix, bytes): routes with their own limit (the load batches)

    def _limit(self, path: str) -> int:
        for prefix, limit in self.body_limits:
            if path.startswith(prefix):
                return limit
        return self.max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        structlog.contextvars.clear_contextvars()
        raw = scope.get("headers", [])
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}
        length = headers.get("content-length")
        limit = self._limit(scope.get("path") or "")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await self._too_large(scope, receive, send, limit)
        if scope.get("path") not in self.public_paths:
            authorizations = [v.decode("latin-1") for k, v in raw if k.lower() == b"authorization"]
            if len(authorizations) > 1:
                # Which one counts would depend on who reads them (a proxy may check the first): none does.
                return await _key_refusal(400, "more than one Authorization header")(scope, receive, send)
            try:
                shop_id = await self._shop(scope, authorizations[0] if authorizations else None)
            except DATABASE_UNAVAILABLE as exc:
                log.warning("postgres unavailable for the key check", error=type(exc).__name__)
                response = unavailable("postgres", "the database is not answering; nothing was done, retry")
                return await response(scope, receive, send)
            except _Throttled as throttled:
                response = _key_refusal(429, f"too many failed authentications; retry in {throttled.retry_after} s",
                                        {"Retry-After": str(throttled.retry_after)})
                return await response(scope, receive, send)
            if shop_id is None:
                response = _key_refusal(401, "a valid API key is required: Authorization: Bearer <key>",
                                        {"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
            scope[SHOP_SCOPE_KEY] = shop_id
            structlog.contextvars.bind_contextvars(key_shop_id=shop_id)
        try:
            body = await self._read_body(receive, limit)
        except _TooLarge:
            return await self._too_large(scope, receive, send, limit)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _read_body(self, receive, limit: int) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _shop(self, scope, authorization: str | None) -> str | None:
        """The key's shop, None when there is no live key; raises _Throttled before any lookup."""
        client = client_key(scope.get("client"))
        token = None
        if authorization:
            scheme, _, token = authorization.partition(" ")
            token = token.strip() if scheme.lower() == "bearer" else None
        parsed = keys.parse(token) if token else None
        if parsed is None:  # malformed or absent: refused without a lookup, and not counted (nothing guessed)
            wait = self.throttle.retry_after(client, None)
            if wait:
                raise _Throttled(wait)
            return None
        prefix = parsed[0]
        admission = self.throttle.admit(client, prefix)
        if admission.retry_after:
            raise _Throttled(admission.retry_after)
        shop_id, looked_up = None, False
        try:
            shop_id = await keys.shop_for_key(self.state.pool, token)
            looked_up = True
        finally:  # a lookup that raised (the database) releases what it held and counts as no failure
            emptied = self.throttle.settle(admission, failed=looked_up and shop_id is None)
        if emptied:
            log.warning("failed authentications throttled", client=client, key_prefix=prefix, over=emptied)
        return shop_id

    async def _too_large(self, scope, receive, send, limit: int):
        response = error_response(413, "body", "R-API-SIZE", f"body over {limit // 1024} KiB")
        return await response(scope, receive, send)
