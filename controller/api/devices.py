"""/api/devices: every terminal with its liveness, playing state and latest telemetry."""

from __future__ import annotations

from aiohttp import web
from sqlmodel import Session, col, select

from controller.api import keys
from controller.auth import principal_of
from controller.errors import bad_request, forbidden, not_found
from controller.models import Broadcast, Delivery, Device, TelemetrySample
from controller.timefmt import iso, parse_instant
from dalaba import protocol as p

routes = web.RouteTableDef()


def device_view(d: Device) -> dict[str, object]:
    return {
        "id": d.id,
        "name": d.name,
        "village_id": d.village_id,
        "township_id": d.township_id,
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
    return web.json_response({"devices": devices, "online": online, "total": len(devices)})


@routes.get("/api/devices/{id}")
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

    return web.json_response(await request.app[keys.DB].run(load))


def _device_in_scope(session: Session, device_id: str, scope: str | None) -> Device:
    d = session.get(Device, device_id)
    if d is None:
        raise not_found(f"device {device_id}")
    if scope is not None and d.township_id != scope:
        raise forbidden(f"device {device_id} is outside your township")
    return d


def _limit(request: web.Request, default: int, maximum: int) -> int:
    try:
        return max(1, min(maximum, int(request.query.get("limit", default))))
    except ValueError:
        raise bad_request("limit", "must be a whole number") from None


@routes.get("/api/devices/{id}/telemetry")
async def telemetry_history(request: web.Request) -> web.Response:
    """Sampled telemetry (one sample per `telemetry_history_interval_s`), oldest first."""
    scope = principal_of(request).township_scope()
    device_id = request.match_info["id"]
    since = request.query.get("since")
    since_ms = parse_instant(since, "since") if since else p.now_ms() - 7 * 24 * 3600 * 1000
    limit = _limit(request, 2000, 10_000)

    def load(session: Session) -> list[dict[str, object]]:
        _device_in_scope(session, device_id, scope)
        rows = session.exec(
            select(TelemetrySample)
            .where(TelemetrySample.device_id == device_id)
            .where(col(TelemetrySample.at_ms) >= since_ms)
            .order_by(col(TelemetrySample.at_ms).desc())
            .limit(limit)
        ).all()
        return [{"at": iso(r.at_ms), **r.data} for r in reversed(rows)]

    return web.json_response({"samples": await request.app[keys.DB].run(load)})


@routes.get("/api/devices/{id}/deliveries")
async def last_deliveries(request: web.Request) -> web.Response:
    scope = principal_of(request).township_scope()
    device_id = request.match_info["id"]
    limit = _limit(request, 20, 200)

    def load(session: Session) -> list[dict[str, object]]:
        _device_in_scope(session, device_id, scope)
        rows = session.exec(
            select(Delivery, Broadcast)
            .where(Delivery.device_id == device_id)
            .where(Delivery.broadcast_id == Broadcast.id)
            .order_by(col(Broadcast.created_ms).desc())
            .limit(limit)
        ).all()
        return [
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
                "states": [t["state"] for t in d.transitions],
            }
            for d, b in rows
        ]

    return web.json_response({"deliveries": await request.app[keys.DB].run(load)})
