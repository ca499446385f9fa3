"""/api/township-languages: the languages each township's villages hear
("Mandarin then Cantonese"), used by broadcasts that do not name their own."""

from __future__ import annotations

from aiohttp import web
from sqlmodel import Session, col, select

from controller.api import keys
from controller.api.templates import require_editor
from controller.auth import principal_of
from controller.errors import json_response, parse_body, read_json
from controller.models import Township
from controller.openapi import GENERIC, describe
from controller.templates import LanguagesIn, set_township_languages, township_language_settings

routes = web.RouteTableDef()


@routes.get("/api/township-languages")
@describe(
    "The languages each township hears (null: not set)",
    tag="speech",
    responses={200: GENERIC},
)
async def list_languages(request: web.Request) -> web.Response:
    scope = principal_of(request).township_scope()

    def load(session: Session) -> list[dict[str, object]]:
        settings = township_language_settings(session)
        query = select(Township).order_by(col(Township.id))
        if scope is not None:
            query = query.where(Township.id == scope)
        # null: not set; broadcasts use the template's languages, else Mandarin.
        return [
            {"township_id": t.id, "name": t.name, "languages": settings.get(t.id)}
            for t in session.exec(query)
        ]

    return json_response({"townships": await request.app[keys.DB].run(load)})


@routes.put("/api/township-languages/{township_id}")
@describe(
    "Set the languages a township hears, in order",
    tag="speech",
    body=LanguagesIn,
    responses={200: GENERIC},
)
async def set_languages(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_editor(principal)
    township_id = request.match_info["township_id"]
    body = parse_body(LanguagesIn, await read_json(request))
    languages: list[str] = list(body.languages)
    view = await request.app[keys.DB].run(
        lambda s: set_township_languages(s, principal, township_id, languages)
    )
    return json_response(view)


@routes.delete("/api/township-languages/{township_id}")
@describe(
    "Clear a township's languages (back to the default)", tag="speech", responses={200: GENERIC}
)
async def clear_languages(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_editor(principal)
    township_id = request.match_info["township_id"]
    view = await request.app[keys.DB].run(
        lambda s: set_township_languages(s, principal, township_id, None)
    )
    return json_response(view)
