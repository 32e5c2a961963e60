"""Self-hosted API docs: a Swagger UI page whose scripts, styles and icon come from this server.

FastAPI's own /docs page pulls Swagger UI from a CDN (no integrity check) and
starts it with an inline script. This one serves the files shipped in the
`fastapi-offline` wheel (Swagger UI 5, which renders OpenAPI 3.1) under
/docs/assets/, and the script that starts Swagger UI is a file too, so the
page runs under a Content-Security-Policy with no 'unsafe-inline' (DOCS_CSP,
set by api/gate.py's SecurityHeaders).

Every path here is public (PUBLIC_PATHS in api/http.py includes DOCS_PATHS).
"""

from __future__ import annotations

import html
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

DOCS_PATH = "/docs"
ASSETS_PREFIX = "/docs/assets/"
# Swagger UI's files, by the name they are served under: (file in the fastapi-offline wheel, content type).
_STATIC = Path(str(files("fastapi_offline") / "static"))
_PACKAGED = {
    "swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    "swagger-ui.css": ("swagger-ui.css", "text/css; charset=utf-8"),
    "favicon.png": ("favicon.png", "image/png"),
}
INIT_SCRIPT = "init.js"
ASSET_PATHS = frozenset(ASSETS_PREFIX + name for name in (*_PACKAGED, INIT_SCRIPT))
DOCS_PATHS = frozenset({DOCS_PATH}) | ASSET_PATHS
# The assets change only with the installed package; the page and the API answers are never cached.
ASSET_CACHE_CONTROL = "public, max-age=3600"
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

# Starts Swagger UI on the schema named by the page (data-openapi-url), without the online validator.
_INIT_JS = """\
(function () {
  "use strict";
  var node = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: node.getAttribute("data-openapi-url"),
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset]
  });
})();
"""

_PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - API docs</title>
<link rel="icon" type="image/png" href="{root}/docs/assets/favicon.png">
<link rel="stylesheet" href="{root}/docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{root}{openapi_url}"></div>
<script src="{root}/docs/assets/swagger-ui-bundle.js"></script>
<script src="{root}/docs/assets/init.js"></script>
</body>
</html>
"""


def install(app: FastAPI) -> None:
    """Add the /docs page and its assets to `app` (created with docs_url=None); none is in the schema."""
    missing = [name for name, (file, _) in _PACKAGED.items() if not (_STATIC / file).is_file()]
    if missing:
        raise RuntimeError(f"the fastapi-offline package lacks {missing} under {_STATIC}")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs_page(request: Request) -> HTMLResponse:
        root = html.escape(request.scope.get("root_path", "") or "", quote=True)
        page = _PAGE.format(title=html.escape(app.title), root=root, openapi_url=html.escape(openapi_url, quote=True))
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    for name, (file, media_type) in _PACKAGED.items():
        app.add_api_route(ASSETS_PREFIX + name, _file_endpoint(_STATIC / file, media_type), include_in_schema=False)

    @app.get(ASSETS_PREFIX + INIT_SCRIPT, include_in_schema=False)
    async def docs_init() -> Response:
        return Response(_INIT_JS, media_type="text/javascript; charset=utf-8", headers={"Cache-Control": ASSET_CACHE_CONTROL})


def _file_endpoint(path: Path, media_type: str):
    async def asset() -> FileResponse:
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": ASSET_CACHE_CONTROL})

    asset.__name__ = f"docs_asset_{path.stem.replace('-', '_').replace('.', '_')}"
    return asset
