"""/api/devices: every terminal with its liveness, playing state and latest telemetry."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from controller import schemas as s
from controller.api import keys
from controller.api.paging import limit_param, query_int
from controller.auth import principal_of
from controller.errors import forbidden, not_found
from controller.models import Broadcast, Delivery, DeliveryTransition, Device, TelemetrySample
from controller.openapi import Param, describe
from controller.reasons import with_code
from controller.timefmt import iso, parse_instant
from dalaba import protocol as p

routes = web.RouteTableDef()


def device_view(d: Device) -> dict[str, object]:
    return {
        "id": d.id,
        "name": d.name,
        "village_id": d.village_id,
        "township_id": d.township_id,
        "resource_code": d.resource_code,
        "online": d.online,
        "last_seen": iso(d.last_seen_ms),
        "status_changed_at": iso(d.status_changed_ms),
        "firmware": d.firmware,
        "volume": d.volume,
        "playing": d.playing_broadcast_id,
        "faults": {name: iso(since) for name, since in d.faults.items()},
        "telemetry": d.telemetry,
    }


@routes.get("/api/devices")
@describe(
    "Every terminal in reach: liveness, what it plays, faults, latest telemetry",
    tag="devices",
    responses={200: s.DeviceList},
    query=(
        Param("township", "only this township's terminals"),
        Param("village", "only this village's terminals"),
    ),
)
async def list_devices(request: web.Request) -> web.Response:
    scope = principal_of(request).township_scope()
    village = request.query.get("village")
    township = request.query.get("township")

    def load(session: Session) -> list[dict[str, object]]:
        query = select(Device).order_by(col(Device.id))
        if scope is not None:
            query = query.where(Device.township_id == scope)
        if village:
            query = query.where(Device.village_id == village)
        if township:
            query = query.where(Device.township_id == township)
        return [device_view(d) for d in session.exec(query)]

    devices = await request.app[keys.DB].run(load)
    online = sum(1 for d in devices if d["online"])
    view = {"devices": devices, "online": online, "total": len(devices)}
    return s.respond(s.DeviceList, view, bulk="devices")


@routes.get("/api/devices/{id}")
@describe("One terminal", tag="devices", responses={200: s.DeviceOut})
async def get_device(request: web.Request) -> web.Response:
    scope = principal_of(request).township_scope()
    device_id = request.match_info["id"]

    def load(session: Session) -> dict[str, object]:
        d = session.get(Device, device_id)
        if d is None:
            raise not_found(f"device {device_id}")
        if scope is not None and d.township_id != scope:
            raise forbidden(f"device {device_id} is outside your township")
        return device_view(d)

    return s.respond(s.DeviceOut, await request.app[keys.DB].run(load))


def _device_in_scope(session: Session, device_id: str, scope: str | None) -> Device:
    d = session.get(Device, device_id)
    if d is None:
        raise not_found(f"device {device_id}")
    if scope is not None and d.township_id != scope:
        raise forbidden(f"device {device_id} is outside your township")
    return d


@routes.get("/api/devices/{id}/telemetry")
@describe(
    "Sampled telemetry history, oldest first",
    tag="devices",
    responses={200: s.TelemetryList},
    query=(
        Param("since", "ISO 8601 time or epoch ms (default: 7 days ago)"),
        limit_param(2000, 10_000),
    ),
)
async def telemetry_history(request: web.Request) -> web.Response:
    """Sampled telemetry (one sample per `telemetry_history_interval_s`), oldest first."""
    scope = principal_of(request).township_scope()
    device_id = request.match_info["id"]
    since = request.query.get("since")
    since_ms = parse_instant(since, "since") if since else p.now_ms() - 7 * 24 * 3600 * 1000
    limit = query_int(request, "limit", 2000, 1, 10_000)

    def load(session: Session) -> list[dict[str, object]]:
        _device_in_scope(session, device_id, scope)
        rows = session.exec(
            select(TelemetrySample)
            .where(TelemetrySample.device_id == device_id)
            .where(col(TelemetrySample.at_ms) >= since_ms)
            .order_by(col(TelemetrySample.at_ms).desc())
            .limit(limit)
        ).all()
        # `at` is when the sample was taken, as an ISO time like every time on the API
        # (the terminal's own field of that name is epoch ms).
        return [{**r.data, "at": iso(r.at_ms)} for r in reversed(rows)]

    samples = await request.app[keys.DB].run(load)
    return s.respond(s.TelemetryList, {"samples": samples}, bulk="samples")


@routes.get("/api/devices/{id}/deliveries")
@describe(
    "The terminal's latest deliveries, newest broadcast first",
    tag="devices",
    responses={200: s.DeviceDeliveries},
    query=(limit_param(20, 200),),
)
async def last_deliveries(request: web.Request) -> web.Response:
    scope = principal_of(request).township_scope()
    device_id = request.match_info["id"]
    limit = query_int(request, "limit", 20, 1, 200)

    def load(session: Session) -> list[dict[str, object]]:
        _device_in_scope(session, device_id, scope)
        rows = session.exec(
            select(Delivery, Broadcast)
            .where(Delivery.device_id == device_id)
            .where(Delivery.broadcast_id == Broadcast.id)
            .order_by(col(Broadcast.created_ms).desc())
            .limit(limit)
        ).all()
        states = _states(session, device_id, [b.id for _, b in rows])
        return [
            with_code(
                {
                    "broadcast_id": b.id,
                    "title": b.title,
                    "category": b.category,
                    "priority": b.priority,
                    "level": b.level,
                    "drill": b.drill,
                    "created_at": iso(b.created_ms),
                    "state": d.state,
                    "reason": d.reason,
                    "updated_at": iso(d.updated_ms),
                    "states": states.get(b.id, []),
                }
            )
            for d, b in rows
        ]

    return s.respond(s.DeviceDeliveries, {"deliveries": await request.app[keys.DB].run(load)})


def _states(session: Session, device_id: str, broadcast_ids: list[str]) -> dict[str, list[str]]:
    """Each delivery's states in the terminal's order, from the transition table."""
    t = DeliveryTransition.__table__  # type: ignore[attr-defined]
    out: dict[str, list[str]] = {}
    if not broadcast_ids:
        return out
    for broadcast_id, state in session.execute(
        sa_select(t.c.broadcast_id, t.c.state)
        .where(t.c.device_id == device_id)
        .where(t.c.broadcast_id.in_(broadcast_ids))
        .order_by(t.c.broadcast_id, t.c.at_ms, t.c.id)
    ):
        out.setdefault(broadcast_id, []).append(state)
    return out
