"""/api/templates: announcement templates per alert type, and their pre-positioning.

Everyone signed in reads templates (township staff fill them in); admins and duty
officers create, edit, disable and pre-position them.
"""

from __future__ import annotations

from aiohttp import web

from controller.api import keys
from controller.auth import Principal, Role, principal_of
from controller.errors import bad_request, forbidden, parse_body, read_json
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
async def preposition(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_editor(principal)
    body = parse_body(PrepositionIn, await read_json(request))
    view = await request.app[keys.PREPOSITIONER].preposition(principal, body)
    return web.json_response(view, status=201)


@routes.get("/api/templates/preposition")
async def preposition_status(request: web.Request) -> web.Response:
    view = await request.app[keys.PREPOSITIONER].status(principal_of(request))
    return web.json_response(view)


@routes.get("/api/templates")
async def list_all(request: web.Request) -> web.Response:
    category = request.query.get("category")
    include_disabled = request.query.get("enabled") not in ("1", "true")
    items = await request.app[keys.DB].run(
        lambda s: list_templates(s, category=category, include_disabled=include_disabled)
    )
    return web.json_response({"templates": items})


@routes.post("/api/templates")
async def create(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_editor(principal)
    body = parse_body(TemplateIn, await read_json(request))
    view = await request.app[keys.DB].run(lambda s: create_template(s, principal, body))
    return web.json_response(view, status=201)


@routes.get("/api/templates/{id}")
async def get_one(request: web.Request) -> web.Response:
    template_id = request.match_info["id"]
    view = await request.app[keys.DB].run(lambda s: template_view(get_template(s, template_id)))
    return web.json_response(view)


@routes.put("/api/templates/{id}")
async def replace(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_editor(principal)
    template_id = request.match_info["id"]
    body = parse_body(TemplateReplace, await read_json(request))
    changes = body.model_dump()
    view = await request.app[keys.DB].run(
        lambda s: update_template(s, principal, template_id, changes)
    )
    return web.json_response(view)


@routes.patch("/api/templates/{id}")
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
        lambda s: update_template(s, principal, template_id, changes)
    )
    return web.json_response(view)


@routes.delete("/api/templates/{id}")
async def delete(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_editor(principal)
    template_id = request.match_info["id"]
    await request.app[keys.DB].run(lambda s: delete_template(s, principal, template_id))
    return web.json_response({"deleted": template_id})


@routes.post("/api/templates/{id}/reset")
async def reset(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_editor(principal)
    template_id = request.match_info["id"]
    view = await request.app[keys.DB].run(lambda s: reset_template(s, principal, template_id))
    return web.json_response(view)
