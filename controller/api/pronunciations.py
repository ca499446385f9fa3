"""/api/pronunciations: the county's pronunciation dictionary (read: anyone signed in;
replace: admins and duty officers)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from sqlmodel import Session

from controller import audit, pronunciations
from controller import schemas as s
from controller.api import keys
from controller.auth import Role, principal_of
from controller.errors import forbidden, parse_body, read_json
from controller.openapi import describe

routes = web.RouteTableDef()


def _path(request: web.Request) -> Path:
    return request.app[keys.SETTINGS].data_dir / "pronunciations.json"


@routes.get("/api/pronunciations")
@describe(
    "The pronunciation dictionary: the county's entries and the built-in ones",
    tag="speech",
    responses={200: s.PronunciationsOut},
)
async def get_pronunciations(request: web.Request) -> web.Response:
    custom = pronunciations.load_custom(_path(request))
    return s.respond(s.PronunciationsOut, pronunciations.as_json(custom))


@routes.put("/api/pronunciations")
@describe(
    "Replace the county's entries (admins, duty officers)",
    tag="speech",
    body=s.PronunciationsIn,
    responses={200: s.PronunciationsOut},
)
async def put_pronunciations(request: web.Request) -> web.Response:
    principal = principal_of(request)
    if principal.role not in (Role.ADMIN, Role.DUTY_OFFICER):
        raise forbidden("only admins and duty officers edit the pronunciation dictionary")
    body = parse_body(s.PronunciationsIn, await read_json(request))
    custom = pronunciations.validate(body.entries)
    pronunciations.save(_path(request), custom)
    request.app[keys.RENDERER].dictionary = pronunciations.effective(custom)

    def log(session: Session) -> None:
        audit.record(session, principal, "pronunciations.replace", entries=len(custom))

    await request.app[keys.DB].run(log)
    return s.respond(s.PronunciationsOut, pronunciations.as_json(custom))
