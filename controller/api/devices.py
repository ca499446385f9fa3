"""/api/devices: every terminal with its liveness, playing state and latest telemetry."""

from __future__ import annotations

from aiohttp import web
from sqlmodel import Session, col, select

from controller.api import keys
from controller.auth import principal_of
from controller.errors import forbidden, not_found
from controller.models import Device
from controller.timefmt import iso

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
