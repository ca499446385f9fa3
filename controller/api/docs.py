"""/api/openapi.json and /api/docs: the API's description and a page to read it.

Both are public. They describe the API's shape, which is already public in the source
and the README, and hold no data: an integrator or a monitoring system reads them
before it has a token, and the page works on the county's offline network (the renderer
is vendored under web/vendor/redoc, no CDN).
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable

from aiohttp import web

from controller import openapi
from controller.errors import dumps

routes = web.RouteTableDef()

PUBLIC_PATHS = frozenset({"/api/openapi.json", "/api/docs"})

# The console's policy (controller/http_security.py) with what the renderer needs: it
# writes its styles at run time and builds its search index in a blob: worker. Scripts,
# images and connections only from our own origin: nothing leaves the county's network.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

_PAGE = """<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>大喇叭 Dalaba API</title>
</head>
<body>
<redoc spec-url="/api/openapi.json" hide-hostname="true"></redoc>
<script src="/static/vendor/redoc/redoc.standalone.js"></script>
</body>
</html>
"""


@routes.get("/api/openapi.json")
@openapi.describe(
    "This description (OpenAPI 3.1)",
    tag="docs",
    responses={200: openapi.Content("application/json", {"type": "object"}, "OpenAPI 3.1")},
    public=True,
)
async def openapi_json(request: web.Request) -> web.Response:
    # Built once per application (the routes are fixed once it runs): the route is public,
    # and building takes about a tenth of a second.
    body = _built.get(request.app)
    if body is None:
        body = _built[request.app] = dumps(openapi.build(request.app)).encode()
    return web.Response(
        body=body,
        content_type="application/json",
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


_built: weakref.WeakKeyDictionary[web.Application, bytes] = weakref.WeakKeyDictionary()


@routes.get("/api/docs")
@openapi.describe(
    "The API reference as a page (offline; the renderer is served by the controller)",
    tag="docs",
    responses={200: openapi.Content("text/html", {"type": "string"})},
    public=True,
)
async def docs_page(_request: web.Request) -> web.Response:
    return web.Response(
        text=_PAGE, content_type="text/html", headers={"Content-Security-Policy": DOCS_CSP}
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def public_docs_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve the two public documents without asking who is calling; placed just
    before the authentication middleware, which guards everything else under /api/.
    (Adding these paths to controller.auth.PUBLIC_PATHS would do the same.)"""
    if request.path in PUBLIC_PATHS and request.method in ("GET", "HEAD"):
        return await request.match_info.handler(request)
    return await handler(request)
