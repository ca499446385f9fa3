"""/api/broadcasts: push, watch, cancel and resend announcements."""

from __future__ import annotations

from aiohttp import web

from controller.api import keys
from controller.auth import principal_of
from controller.broadcasts import BroadcastIn
from controller.errors import bad_request, parse_body, read_json

routes = web.RouteTableDef()


@routes.post("/api/broadcasts")
async def create_broadcast(request: web.Request) -> web.Response:
    principal = principal_of(request)
    principal.require_broadcast()
    data = await read_json(request)
    body = parse_body(BroadcastIn, data)
    broadcast = await request.app[keys.BROADCASTS].create(principal, body)
    return web.json_response(
        {
            "id": broadcast.id,
            "device_count": broadcast.device_count,
            "start_at_ms": broadcast.start_at_ms,
            "expires_at_ms": broadcast.expires_at_ms,
            "dispatch": broadcast.dispatch,
            "drill": broadcast.drill,
        },
        status=201,
    )


@routes.get("/api/broadcasts")
async def list_broadcasts(request: web.Request) -> web.Response:
    items = await request.app[keys.BROADCASTS].list(principal_of(request))
    return web.json_response({"broadcasts": items})


@routes.get("/api/broadcasts/{id}")
async def get_broadcast(request: web.Request) -> web.Response:
    flag = request.query.get("deliveries", "1")
    if flag not in ("0", "1", "false", "true"):
        raise bad_request("deliveries", "0 or 1")
    view = await request.app[keys.BROADCASTS].get(
        principal_of(request), request.match_info["id"], deliveries=flag in ("1", "true")
    )
    return web.json_response(view)


@routes.post("/api/broadcasts/{id}/cancel")
async def cancel_broadcast(request: web.Request) -> web.Response:
    view = await request.app[keys.BROADCASTS].cancel(
        principal_of(request), request.match_info["id"]
    )
    return web.json_response(view)


@routes.post("/api/broadcasts/{id}/resend")
async def resend_broadcast(request: web.Request) -> web.Response:
    """Send again, as a new signed command, to the terminals it did not reach."""
    view = await request.app[keys.BROADCASTS].resend(
        principal_of(request), request.match_info["id"]
    )
    return web.json_response(view)
