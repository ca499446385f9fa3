"""/api/groups: saved target groups ("riverside villages") for picking an area fast.

A broadcast to a group is a broadcast to its villages (`targets.villages`): the group is
a shortcut for the person choosing, not a new kind of target on the wire.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session, col, select

from controller import audit
from controller import schemas as s
from controller.api import keys
from controller.auth import Principal, principal_of
from controller.errors import (
    bad_request,
    forbidden,
    not_found,
    parse_body,
    read_json,
)
from controller.groups import TargetGroup
from controller.models import Village
from controller.openapi import describe
from controller.timefmt import iso
from dalaba.protocol import now_ms

routes = web.RouteTableDef()


class GroupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=60)
    description: str = Field(default="", max_length=300)
    villages: list[str] = Field(min_length=1, max_length=2000)
    township_id: str | None = None


def group_view(g: TargetGroup, village_township: dict[str, str]) -> dict[str, Any]:
    return {
        "id": g.id,
        "name": g.name,
        "description": g.description,
        "township_id": g.township_id,
        "villages": g.villages,
        "townships": sorted({village_township[v] for v in g.villages if v in village_township}),
        "created_by": g.created_by,
        "updated_at": iso(g.updated_ms),
    }


def _villages(session: Session) -> dict[str, str]:
    return dict(session.exec(select(Village.id, Village.township_id)).all())


def _validate(session: Session, body: GroupIn, principal: Principal) -> str | None:
    if not principal.can_broadcast:
        raise forbidden(f"role {principal.role.value} may not keep groups")
    scope = principal.township_scope()
    owner = scope if scope is not None else body.township_id
    if scope is not None and body.township_id not in (None, scope):
        raise forbidden(f"township_id: {body.township_id} is outside your township")
    known = _villages(session)
    for i, vid in enumerate(body.villages):
        if vid not in known:
            raise bad_request(f"villages[{i}]", f"unknown village {vid!r}")
        if owner is not None and known[vid] != owner:
            raise forbidden(f"villages[{i}]: {vid} is outside township {owner}")
    return owner


def _load_own(session: Session, group_id: str, principal: Principal) -> TargetGroup:
    try:
        row = session.get(TargetGroup, int(group_id))
    except ValueError:
        row = None
    if row is None:
        raise not_found(f"group {group_id}")
    scope = principal.township_scope()
    if scope is not None and row.township_id != scope:
        raise forbidden(f"group {group_id} belongs to another township or the county")
    return row


async def _body(request: web.Request) -> GroupIn:
    return parse_body(GroupIn, await read_json(request))


@routes.get("/api/groups")
@describe("Saved target groups in the caller's reach", tag="groups", responses={200: s.GroupList})
async def list_groups(request: web.Request) -> web.Response:
    scope = principal_of(request).township_scope()

    def load(session: Session) -> list[dict[str, Any]]:
        query = select(TargetGroup).order_by(col(TargetGroup.name))
        if scope is not None:
            query = query.where(TargetGroup.township_id == scope)
        known = _villages(session)
        return [group_view(g, known) for g in session.exec(query)]

    return s.respond(s.GroupList, {"groups": await request.app[keys.DB].run(load)})


@routes.post("/api/groups")
@describe("Save a target group", tag="groups", body=GroupIn, responses={201: s.GroupOut})
async def create_group(request: web.Request) -> web.Response:
    principal = principal_of(request)
    body = await _body(request)

    def create(session: Session) -> dict[str, Any]:
        owner = _validate(session, body, principal)
        now = now_ms()
        row = TargetGroup(
            name=body.name,
            description=body.description,
            township_id=owner,
            villages=sorted(set(body.villages)),
            created_by=principal.user,
            created_ms=now,
            updated_ms=now,
        )
        session.add(row)
        session.flush()
        audit.record(session, principal, "group.create", str(row.id), name=row.name)
        return group_view(row, _villages(session))

    view = await request.app[keys.DB].run(create)
    return s.respond(s.GroupOut, view, status=201, location=f"/api/groups/{view['id']}")


@routes.put("/api/groups/{id}")
@describe("Replace a target group", tag="groups", body=GroupIn, responses={200: s.GroupOut})
async def update_group(request: web.Request) -> web.Response:
    principal = principal_of(request)
    body = await _body(request)

    def update(session: Session) -> dict[str, Any]:
        row = _load_own(session, request.match_info["id"], principal)
        row.township_id = _validate(session, body, principal)
        row.name, row.description = body.name, body.description
        row.villages = sorted(set(body.villages))
        row.updated_ms = now_ms()
        session.add(row)
        audit.record(session, principal, "group.update", str(row.id), name=row.name)
        return group_view(row, _villages(session))

    return s.respond(s.GroupOut, await request.app[keys.DB].run(update))


@routes.delete("/api/groups/{id}")
@describe("Delete a target group", tag="groups", responses={200: s.Deleted})
async def delete_group(request: web.Request) -> web.Response:
    principal = principal_of(request)
    principal.require_broadcast()

    def delete(session: Session) -> None:
        row = _load_own(session, request.match_info["id"], principal)
        audit.record(session, principal, "group.delete", str(row.id), name=row.name)
        session.delete(row)

    await request.app[keys.DB].run(delete)
    return s.respond(s.Deleted, {"deleted": True})
