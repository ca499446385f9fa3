"""/api/pronunciations: the county's pronunciation dictionary (read: anyone signed in;
replace: admins and duty officers)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from sqlmodel import Session

from controller import audit, pronunciations
from controller.api import keys
from controller.auth import Role, principal_of
from controller.errors import forbidden, read_json

routes = web.RouteTableDef()


def _path(request: web.Request) -> Path:
    return request.app[keys.SETTINGS].data_dir / "pronunciations.json"


@routes.get("/api/pronunciations")
async def get_pronunciations(request: web.Request) -> web.Response:
    custom = pronunciations.load_custom(_path(request))
    return web.json_response(pronunciations.as_json(custom))


@routes.put("/api/pronunciations")
async def put_pronunciations(request: web.Request) -> web.Response:
    principal = principal_of(request)
    if principal.role not in (Role.ADMIN, Role.DUTY_OFFICER):
        raise forbidden("only admins and duty officers edit the pronunciation dictionary")
    data = await read_json(request)
    custom = pronunciations.validate(data.get("entries"))
    pronunciations.save(_path(request), custom)
    request.app[keys.RENDERER].dictionary = pronunciations.effective(custom)

    def log(session: Session) -> None:
        audit.record(session, principal, "pronunciations.replace", entries=len(custom))

    await request.app[keys.DB].run(log)
    return web.json_response(pronunciations.as_json(custom))
