"""The report page (R-REP-1, R-REP-2): the static files of sluice.web under /ui/, no key needed to load them.

The page is plain HTML, one JavaScript module and one stylesheet, shipped as
package data and served as they are (no build step, no CDN). Its Content
Security Policy (UI_CSP, set by api/gate.py's SecurityHeaders) allows scripts,
styles and fetches from this server only and nothing inline. The figures it
shows come from the JSON routes (api/reports_routes.py), which need the
shop's API key like every other route: the page asks for it once and sends it
as a Bearer header (docs/report-page.md).

Every path here is public (PUBLIC_PATHS in api/http.py includes UI_PATHS).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

UI_PREFIX = "/ui/"
UI_PAGE = UI_PREFIX  # the page; its files are beside it, so relative links work behind a path prefix too
_WEB = Path(str(files("sluice.web")))
# The page's files, by the name they are served under: content type.
_ASSETS = {
    "report.js": "text/javascript; charset=utf-8",
    "report.css": "text/css; charset=utf-8",
}
_INDEX = "index.html"
# Exactly these paths (no redirect from /ui: the API never redirects, api/http.py).
UI_PATHS = frozenset({UI_PAGE}) | frozenset(UI_PREFIX + name for name in _ASSETS)
# The page and its files follow the installed package: revalidated on each load (ETag, Last-Modified), never
# stale after an upgrade. The JSON the page reads is never cached (the API's default, no-store).
UI_CACHE_CONTROL = "no-cache"
UI_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


def _file(name: str, media_type: str):
    path = _WEB / name
    if not path.is_file():
        raise RuntimeError(f"the sluice.web package lacks {name} under {_WEB}")

    async def asset() -> FileResponse:
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": UI_CACHE_CONTROL})

    asset.__name__ = f"ui_{path.stem}_{path.suffix.lstrip('.')}"
    return asset


router.add_api_route(UI_PAGE, _file(_INDEX, "text/html; charset=utf-8"), methods=["GET"])
for _name, _media_type in _ASSETS.items():
    router.add_api_route(UI_PREFIX + _name, _file(_name, _media_type), methods=["GET"])
