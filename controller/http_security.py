"""Security headers on every response the controller sends (API, console, media,
errors), and the limits every JSON request body is parsed within.

The console is plain modules from our own origin with no inline script or style, so the
Content-Security-Policy can forbid both; nothing may frame it (clickjacking a "send"
button is how a console is attacked); browsers must not guess content types (an uploaded
file is never run as script); no referrer leaves the console; HSTS only when the console
is served over HTTPS (`cookie_secure`), since a browser remembers it for a year.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from controller.errors import ApiError

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), geolocation=(), microphone=(self)",
}
HSTS = "max-age=31536000"


def security_headers(*, https: bool):  # type: ignore[no-untyped-def]
    """An `on_response_prepare` hook: runs for every response, static files and error
    pages included, which a middleware would miss."""

    async def add(_request: web.Request, response: web.StreamResponse) -> None:
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        if https:
            response.headers.setdefault("Strict-Transport-Security", HSTS)

    return add


# Path ids longer than this, or integers no database column can hold, name nothing: a
# 404 here saves every handler from a 500 (`OverflowError` on SQLite, an out-of-range
# error on PostgreSQL) for a 20-digit id. Nor does an id with a NUL character: PostgreSQL
# text cannot hold one and refuses the query (a 500), where SQLite just finds no row.
MAX_PATH_ID_CHARS = 200
MAX_INTEGER_ID = 2**63 - 1


@web.middleware
async def path_id_guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    for name, value in request.match_info.items():
        if name == "filename":
            continue  # static files: aiohttp checks those paths itself
        too_big = value.isdigit() and int(value) > MAX_INTEGER_ID
        if len(value) > MAX_PATH_ID_CHARS or too_big or "\x00" in value:
            raise ApiError(404, "not_found", f"{name}: no such {name}", name)
    return await handler(request)
