"""/api/templates: announcement templates per alert type, and their pre-positioning.

Everyone signed in reads templates (township staff fill them in); admins and duty
officers create, edit, disable and pre-position them.
"""

from __future__ import annotations

from aiohttp import web

from controller import schemas as s
from controller.api import keys
from controller.auth import Principal, Role, principal_of
from controller.errors import bad_request, forbidden, json_response, parse_body, read_json
from controller.openapi import GENERIC, Param, describe
from controller.prepositioning import PrepositionIn
from controller.templates import (
    TemplateIn,
    TemplatePatch,
    TemplateReplace,
    create_template,
    delete_template,
    get_template,
    list_templates,
    reset_template,
    template_view,
    update_template,
)

routes = web.RouteTableDef()

# PATCH may set these to null (back to "no level" / "the priority's default repeat").
_NULLABLE = frozenset({"level", "repeat", "version"})


def require_editor(principal: Principal) -> None:
    if principal.role not in (Role.ADMIN, Role.DUTY_OFFICER):
        raise forbidden(f"role {principal.role.value} may not edit templates")


# Registered before /api/templates/{id} so "preposition" is not taken for an id.
@routes.post("/api/templates/preposition")
@describe(
    "Push rendered emergency templates to terminals ahead of need",
    tag="templates",
    body=PrepositionIn,
    responses={201: GENERIC},
)
async def preposition(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_editor(principal)
    body = parse_body(PrepositionIn, await read_json(request))
    view = await request.app[keys.PREPOSITIONER].preposition(principal, body)
    return json_response(view, status=201, location="/api/templates/preposition")


@routes.get("/api/templates/preposition")
@describe(
    "Which terminals hold which pre-positioned templates", tag="templates", responses={200: GENERIC}
)
async def preposition_status(request: web.Request) -> web.Response:
    view = await request.app[keys.PREPOSITIONER].status(principal_of(request))
    return json_response(view)


@routes.get("/api/templates")
@describe(
    "Announcement templates (disabled ones too unless ?enabled=1)",
    tag="templates",
    responses={200: s.TemplateList},
    query=(
        Param("category", "only this category"),
        Param("enabled", "1: only enabled templates", {"type": "string", "enum": ["1", "true"]}),
    ),
)
async def list_all(request: web.Request) -> web.Response:
    category = request.query.get("category")
    include_disabled = request.query.get("enabled") not in ("1", "true")
    items = await request.app[keys.DB].run(
        lambda s: list_templates(s, category=category, include_disabled=include_disabled)
    )
    return s.respond(s.TemplateList, {"templates": items})


@routes.post("/api/templates")
@describe("Create a template", tag="templates", body=TemplateIn, responses={201: s.TemplateOut})
async def create(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_editor(principal)
    body = parse_body(TemplateIn, await read_json(request))
    view = await request.app[keys.DB].run(lambda ses: create_template(ses, principal, body))
    return s.respond(s.TemplateOut, view, status=201, location=f"/api/templates/{view['id']}")


@routes.get("/api/templates/{id}")
@describe("One template", tag="templates", responses={200: s.TemplateOut})
async def get_one(request: web.Request) -> web.Response:
    template_id = request.match_info["id"]
    view = await request.app[keys.DB].run(lambda ses: template_view(get_template(ses, template_id)))
    return s.respond(s.TemplateOut, view)


@routes.put("/api/templates/{id}")
@describe(
    "Replace a template (every field; `version`, if given, must be the current one)",
    tag="templates",
    body=TemplateReplace,
    responses={200: s.TemplateOut},
)
async def replace(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_editor(principal)
    template_id = request.match_info["id"]
    body = parse_body(TemplateReplace, await read_json(request))
    changes = body.model_dump()
    view = await request.app[keys.DB].run(
        lambda ses: update_template(ses, principal, template_id, changes)
    )
    return s.respond(s.TemplateOut, view)


@routes.patch("/api/templates/{id}")
@describe(
    "Change some of a template's fields",
    tag="templates",
    body=TemplatePatch,
    responses={200: s.TemplateOut},
)
async def patch(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_editor(principal)
    template_id = request.match_info["id"]
    body = parse_body(TemplatePatch, await read_json(request))
    changes = body.model_dump(exclude_unset=True)
    for name, value in changes.items():
        if value is None and name not in _NULLABLE:
            raise bad_request(name, "must not be null")
    view = await request.app[keys.DB].run(
        lambda ses: update_template(ses, principal, template_id, changes)
    )
    return s.respond(s.TemplateOut, view)


@routes.delete("/api/templates/{id}")
@describe(
    "Delete a county template (built-in ones can only be disabled)",
    tag="templates",
    responses={200: s.Deleted},
)
async def delete(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_editor(principal)
    template_id = request.match_info["id"]
    await request.app[keys.DB].run(lambda ses: delete_template(ses, principal, template_id))
    return s.respond(s.Deleted, {"deleted": template_id})


@routes.post("/api/templates/{id}/reset")
@describe(
    "Put a built-in template back as shipped", tag="templates", responses={200: s.TemplateOut}
)
async def reset(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_editor(principal)
    template_id = request.match_info["id"]
    view = await request.app[keys.DB].run(lambda ses: reset_template(ses, principal, template_id))
    return s.respond(s.TemplateOut, view)
