"""Live updates for the console: the edge where internal events become the console's
JSON. It listens on the event hub (deliveries, device liveness and events, broadcasts
created/cancelled/resent/finished, approvals) and fans each out to every open event
stream it concerns.

Township staff receive only what concerns their own township; a county-wide event
(a new broadcast to the whole county) reaches everyone it concerns.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, select

from controller.approvals import PendingBroadcast, pending_view
from controller.auth import Principal
from controller.broadcasts import counted_view
from controller.db import Database
from controller.events import (
    ApprovalRequested,
    BroadcastChanged,
    DeliveryChanged,
    DeviceLiveness,
    DeviceReported,
    EventHub,
)
from controller.models import Broadcast, Device, Village
from controller.reasons import reason_code

log = logging.getLogger(__name__)

QUEUE_LIMIT = 5000  # a county-wide broadcast is ~4 events per terminal


@dataclass(eq=False)
class Subscriber:
    principal: Principal
    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_LIMIT)
    )
    overflowed: bool = False
    closed: bool = False

    @property
    def scope(self) -> str | None:
        return self.principal.township_scope()


class LiveHub:
    def __init__(self, db: Database, events: EventHub) -> None:
        self._db = db
        self._events = events
        self._tasks: set[asyncio.Task[None]] = set()
        self._subscribers: set[Subscriber] = set()
        self._device_place: dict[str, tuple[str, str]] = {}  # device -> (village, township)
        self._village_township: dict[str, str] = {}
        self.counters: dict[str, int] = {"published": 0, "overflows": 0}

    async def start(self) -> None:
        def load(session: Session) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
            devices = {
                d: (v, t)
                for d, v, t in session.exec(
                    select(Device.id, Device.village_id, Device.township_id)
                ).all()
            }
            villages = dict(session.exec(select(Village.id, Village.township_id)).all())
            return devices, villages

        self._device_place, self._village_township = await self._db.run(load)
        owner = "live"
        self._events.on(DeliveryChanged, self._on_delivery, owner=owner)
        self._events.on(DeviceLiveness, self._on_liveness, owner=owner)
        self._events.on(DeviceReported, self._on_device_event, owner=owner)
        self._events.on(BroadcastChanged, self._on_broadcast, owner=owner)
        self._events.on(ApprovalRequested, self._on_approval, owner=owner)

    async def close(self, *_: object) -> None:
        """End every stream, so the server's shutdown does not wait on them."""
        self._events.off("live")
        for task in list(self._tasks):
            task.cancel()
        for sub in list(self._subscribers):
            sub.closed = True
            if not sub.queue.full():
                sub.queue.put_nowait(None)
        self._subscribers.clear()

    def subscribe(self, principal: Principal) -> Subscriber:
        sub = Subscriber(principal)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    # ------------------------------------------------------------------ feeds

    def _on_delivery(self, e: DeliveryChanged) -> None:
        self.publish(
            "delivery",
            {
                "broadcast_id": e.broadcast_id,
                "device_id": e.device_id,
                "state": e.state.value,
                "reason": e.reason,
                **dict(zip(("reason_code", "reason_params"), reason_code(e.reason), strict=True)),
                "at": e.at,
                "village_id": e.village_id,
                "township_id": e.township_id,
            },
            {e.township_id},
        )

    def _on_liveness(self, e: DeviceLiveness) -> None:
        self.publish(
            "device",
            {
                "id": e.device_id,
                "online": e.online,
                "why": e.why,
                "village_id": e.village_id,
                "township_id": e.township_id,
            },
            {e.township_id},
        )

    def _on_device_event(self, e: DeviceReported) -> None:
        self.publish(
            "event",
            {
                "device_id": e.device_id,
                "kind": e.kind,
                "village_id": e.village_id,
                "township_id": e.township_id,
            },
            {e.township_id},
        )

    def _on_broadcast(self, e: BroadcastChanged) -> None:
        self._spawn(self._publish_broadcast(e.broadcast_id))

    def _on_approval(self, e: ApprovalRequested) -> None:
        self._spawn(self._publish_approval(e.request_id))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_broadcast(self, broadcast_id: str) -> None:
        def load(session: Session) -> dict[str, Any] | None:
            broadcast = session.get(Broadcast, broadcast_id)
            return None if broadcast is None else counted_view(session, broadcast)

        try:
            view = await self._db.run(load)
        except Exception:
            log.exception("live view of broadcast %s failed", broadcast_id)
            return
        if view is not None:
            self.publish("broadcast", view, self._townships_of(view.get("target") or {}))

    async def _publish_approval(self, request_id: str) -> None:
        def load(session: Session) -> dict[str, Any] | None:
            row = session.get(PendingBroadcast, request_id)
            return None if row is None else pending_view(row)

        view = await self._db.run(load)
        if view is not None:
            # A request for approval concerns only the county's officers.
            self.publish("approval", view, set())

    def _townships_of(self, target: dict[str, Any]) -> set[str] | None:
        if target.get("all"):
            return None
        found = set(target.get("townships") or ())
        found.update(
            t for v in target.get("villages") or () if (t := self._village_township.get(v))
        )
        found.update(
            place[1] for d in target.get("devices") or () if (place := self._device_place.get(d))
        )
        return found

    def publish(self, kind: str, data: dict[str, Any], townships: set[str] | None) -> None:
        """`townships`: who it concerns; None is everyone, an empty set the county only."""
        self.counters["published"] += 1
        for sub in list(self._subscribers):
            scope = sub.scope
            if scope is not None and townships is not None and scope not in townships:
                continue
            if sub.overflowed:
                continue
            try:
                sub.queue.put_nowait((kind, data))
            except asyncio.QueueFull:
                # A stream this far behind is better told to reload than fed stale news.
                self.counters["overflows"] += 1
                sub.overflowed = True
