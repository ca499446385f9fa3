"""Live updates for the console: one in-process hub fed by the ingestor (deliveries,
device status, device events) and the broadcast service (created, cancelled, waiting
for approval), fanned out to each open event stream.

Township staff receive only what concerns their own township; a county-wide event
(a new broadcast to the whole county) reaches everyone it concerns.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, select

from controller.auth import Principal
from controller.db import Database
from controller.models import Device, Village

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
    def __init__(self, db: Database) -> None:
        self._db = db
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

    async def close(self, *_: object) -> None:
        """End every stream, so the server's shutdown does not wait on them."""
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

    def on_ingest(self, kind: str, data: dict[str, Any]) -> None:
        """Ingestor listener: device-level changes, already tagged with their place."""
        self.publish(kind, data, {data["township_id"]})

    def on_broadcast(self, kind: str, data: dict[str, Any]) -> None:
        """Broadcast service listener: a broadcast concerns the townships it reaches; a
        request for approval concerns only the county's officers."""
        if kind == "approval":
            self.publish(kind, data, set())
            return
        self.publish(kind, data, self._townships_of(data.get("target") or {}))

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
