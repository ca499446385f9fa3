"""/api/health, /api/metrics and /api/security-events."""

from __future__ import annotations

from aiohttp import web
from sqlmodel import Session, col, select

from controller.api import keys
from controller.auth import principal_of
from controller.errors import forbidden
from controller.models import SecurityEvent
from controller.timefmt import iso

routes = web.RouteTableDef()


@routes.get("/api/health")
async def health(request: web.Request) -> web.Response:
    connected = request.app[keys.DISPATCHER].connected
    return web.json_response(
        {"status": "ok" if connected else "degraded", "broker_connected": connected},
        status=200 if connected else 503,
    )


@routes.get("/api/metrics")
async def metrics(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "ingest": dict(request.app[keys.INGESTOR].counters),
            "dispatch": dict(request.app[keys.DISPATCHER].counters),
        }
    )


@routes.get("/api/security-events")
async def security_events(request: web.Request) -> web.Response:
    principal = principal_of(request)
    if not principal.county_wide:
        raise forbidden("security events are for the county's duty officers")
    broadcast_id = request.query.get("broadcast")

    def load(session: Session) -> list[dict[str, object]]:
        query = select(SecurityEvent).order_by(col(SecurityEvent.id).desc()).limit(500)
        if broadcast_id:
            query = query.where(SecurityEvent.broadcast_id == broadcast_id)
        return [
            {**e.model_dump(exclude={"at_ms"}), "at": iso(e.at_ms)} for e in session.exec(query)
        ]

    return web.json_response({"events": await request.app[keys.DB].run(load)})
