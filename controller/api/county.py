"""/api/townships and /api/villages: the county, within the caller's reach."""

from __future__ import annotations

from aiohttp import web
from sqlmodel import Session, col, select

from controller import schemas as s
from controller.api import keys
from controller.auth import principal_of
from controller.models import Device, Township, Village
from controller.openapi import Param, describe

routes = web.RouteTableDef()


@routes.get("/api/townships")
@describe("The townships in the caller's reach", tag="county", responses={200: s.TownshipList})
async def list_townships(request: web.Request) -> web.Response:
    scope = principal_of(request).township_scope()

    def load(session: Session) -> list[dict[str, object]]:
        query = select(Township).order_by(col(Township.id))
        if scope is not None:
            query = query.where(Township.id == scope)
        return [t.model_dump() for t in session.exec(query)]

    return s.respond(s.TownshipList, {"townships": await request.app[keys.DB].run(load)})


@routes.get("/api/villages")
@describe(
    "The villages in the caller's reach, with how many terminals each has",
    tag="county",
    responses={200: s.VillageList},
    query=(Param("township", "only this township's villages"),),
)
async def list_villages(request: web.Request) -> web.Response:
    scope = principal_of(request).township_scope()
    township = request.query.get("township")

    def load(session: Session) -> list[dict[str, object]]:
        query = select(Village).order_by(col(Village.id))
        if scope is not None:
            query = query.where(Village.township_id == scope)
        if township:
            query = query.where(Village.township_id == township)
        counts: dict[str, int] = {}
        for vid in session.exec(select(Device.village_id)):
            counts[vid] = counts.get(vid, 0) + 1
        return [
            {**v.model_dump(), "device_count": counts.get(v.id, 0)} for v in session.exec(query)
        ]

    return s.respond(s.VillageList, {"villages": await request.app[keys.DB].run(load)})
