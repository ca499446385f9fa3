"""/api/health, /api/time, /api/metrics and /api/security-events."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlmodel import Session, col, select

from controller import schemas as s
from controller.api import keys
from controller.api.paging import limit_param, query_int
from controller.auth import principal_of
from controller.errors import forbidden, json_response
from controller.models import SecurityEvent
from controller.openapi import GENERIC, Param, describe, integer
from controller.timefmt import iso
from dalaba import protocol as p

routes = web.RouteTableDef()

MAX_EVENTS = 500


@routes.get("/api/health")
@describe(
    "Liveness: 200 when the broker is connected, 503 when not (same body)",
    tag="system",
    responses={200: s.HealthOut, 503: s.HealthOut},
    public=True,
)
async def health(request: web.Request) -> web.Response:
    connected = request.app[keys.DISPATCHER].connected
    return s.respond(
        s.HealthOut,
        {"status": "ok" if connected else "degraded", "broker_connected": connected},
        status=200 if connected else 503,
    )


@routes.get(p.TIME_PATH)
@describe(
    "The controller's clock, for terminals estimating their offset from it",
    tag="system",
    responses={200: s.TimeOut},
    description="No login: terminals ask it several times and keep the shortest round "
    "trip (edge_agent/clocksync.py). Never cached.",
    public=True,
)
async def controller_time(_request: web.Request) -> web.Response:
    answer = p.TimeAnswer(now_ms=p.now_ms())
    return web.json_response(answer.model_dump(), headers={"Cache-Control": "no-store"})


@routes.get("/api/metrics")
@describe(
    "Counters of ingested, dropped and dispatched messages", tag="system", responses={200: GENERIC}
)
async def metrics(request: web.Request) -> web.Response:
    leadership = request.app[keys.LEADERSHIP]
    return json_response(
        {
            "ingest": dict(request.app[keys.INGESTOR].counters),
            "dispatch": dict(request.app[keys.DISPATCHER].counters),
            # Which controller replica answered, and whether it runs the singletons.
            "replica": {"id": leadership.replica, "leader": leadership.is_leader},
        }
    )


@routes.get("/api/security-events")
@describe(
    "Commands terminals refused (forged, replayed, expired, misaddressed), newest first",
    tag="system",
    responses={200: s.SecurityEventList},
    query=(
        Param("broadcast", "only events about this broadcast"),
        limit_param(MAX_EVENTS, MAX_EVENTS),
        Param("before", "an event id: only older events (`next_before`)", integer(1, 2**62)),
    ),
)
async def security_events(request: web.Request) -> web.Response:
    principal = principal_of(request)
    if not principal.county_wide:
        raise forbidden("security events are for the county's duty officers")
    broadcast_id = request.query.get("broadcast")
    limit = query_int(request, "limit", MAX_EVENTS, 1, MAX_EVENTS)
    before = query_int(request, "before", 0, 1, 2**62) or None

    def load(session: Session) -> dict[str, Any]:
        query = select(SecurityEvent).order_by(col(SecurityEvent.id).desc()).limit(limit + 1)
        if broadcast_id:
            query = query.where(SecurityEvent.broadcast_id == broadcast_id)
        if before is not None:
            query = query.where(col(SecurityEvent.id) < before)
        rows = session.exec(query).all()
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "events": [{**e.model_dump(exclude={"at_ms"}), "at": iso(e.at_ms)} for e in rows],
            "limit": limit,
            "next_before": rows[-1].id if more else None,
        }

    return s.respond(s.SecurityEventList, await request.app[keys.DB].run(load))
