"""/api/schedules: township programmes; a township's day; quiet hours; what a terminal
holds as its local schedule."""

from __future__ import annotations

from aiohttp import web

from controller.api import keys
from controller.auth import principal_of
from controller.errors import bad_request, read_json

routes = web.RouteTableDef()


def _int_query(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise bad_request(name, f"{raw!r} is not a whole number") from None


@routes.post("/api/schedules")
async def create_schedule(request: web.Request) -> web.Response:
    principal = principal_of(request)
    principal.require_broadcast()
    data = await read_json(request)
    view = await request.app[keys.SCHEDULES].create(principal, data)
    return web.json_response(view, status=201)


@routes.get("/api/schedules")
async def list_schedules(request: web.Request) -> web.Response:
    items = await request.app[keys.SCHEDULES].list(
        principal_of(request),
        township=request.query.get("township"),
        status=request.query.get("status"),
    )
    return web.json_response({"schedules": items})


@routes.get("/api/schedules/{id}")
async def get_schedule(request: web.Request) -> web.Response:
    view = await request.app[keys.SCHEDULES].get(principal_of(request), request.match_info["id"])
    return web.json_response(view)


@routes.patch("/api/schedules/{id}")
async def update_schedule(request: web.Request) -> web.Response:
    data = await read_json(request)
    view = await request.app[keys.SCHEDULES].update(
        principal_of(request), request.match_info["id"], data
    )
    return web.json_response(view)


@routes.post("/api/schedules/{id}/pause")
async def pause_schedule(request: web.Request) -> web.Response:
    view = await request.app[keys.SCHEDULES].set_status(
        principal_of(request), request.match_info["id"], "pause"
    )
    return web.json_response(view)


@routes.post("/api/schedules/{id}/resume")
async def resume_schedule(request: web.Request) -> web.Response:
    view = await request.app[keys.SCHEDULES].set_status(
        principal_of(request), request.match_info["id"], "resume"
    )
    return web.json_response(view)


@routes.delete("/api/schedules/{id}")
async def delete_schedule(request: web.Request) -> web.Response:
    view = await request.app[keys.SCHEDULES].set_status(
        principal_of(request), request.match_info["id"], "delete"
    )
    return web.json_response(view)


@routes.get("/api/schedules/{id}/next")
async def next_occurrences(request: web.Request) -> web.Response:
    view = await request.app[keys.SCHEDULES].next(
        principal_of(request), request.match_info["id"], _int_query(request, "count", 10)
    )
    return web.json_response(view)


@routes.get("/api/schedules/{id}/occurrences")
async def list_occurrences(request: web.Request) -> web.Response:
    view = await request.app[keys.SCHEDULES].occurrences(
        principal_of(request), request.match_info["id"], _int_query(request, "limit", 100)
    )
    return web.json_response(view)


@routes.get("/api/townships/{id}/timeline")
async def township_timeline(request: web.Request) -> web.Response:
    view = await request.app[keys.SCHEDULES].timeline(
        principal_of(request), request.match_info["id"], request.query.get("date")
    )
    return web.json_response(view)


@routes.get("/api/townships/{id}/quiet-hours")
async def get_quiet_hours(request: web.Request) -> web.Response:
    view = await request.app[keys.SCHEDULES].quiet_hours(
        principal_of(request), request.match_info["id"]
    )
    return web.json_response(view)


@routes.put("/api/townships/{id}/quiet-hours")
async def set_quiet_hours(request: web.Request) -> web.Response:
    data = await read_json(request)
    view = await request.app[keys.SCHEDULES].set_quiet_hours(
        principal_of(request), request.match_info["id"], data
    )
    return web.json_response(view)


@routes.get("/api/devices/{id}/local-schedule")
async def terminal_schedule(request: web.Request) -> web.Response:
    view = await request.app[keys.SCHEDULES].terminal_schedule(
        principal_of(request), request.match_info["id"]
    )
    return web.json_response(view)
