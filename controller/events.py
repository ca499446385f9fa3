"""Typed internal events and the one small hub that carries them.

Services tell each other what happened with these frozen objects, never with the
console's JSON: the console's view is built from them at the edge (`controller.live`).
Listeners register with their owner's name, so `off(owner)` removes all of one owner's
listeners, and a failing listener is logged without stopping the others or the emitter.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from controller.deliveries import BroadcastStatus, Cause
from dalaba.protocol import DeliveryState

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of every internal event."""


@dataclass(frozen=True, kw_only=True)
class DeliveryChanged(Event):
    """A delivery moved (committed to the database before this is emitted)."""

    broadcast_id: str
    device_id: str
    village_id: str
    township_id: str
    state: DeliveryState
    previous: DeliveryState
    reason: str | None
    at: int  # when it happened (the terminal's clock for its own reports)
    cause: Cause


@dataclass(frozen=True, kw_only=True)
class DeviceLiveness(Event):
    """A terminal came online or went offline (by its status, its will, or silence)."""

    device_id: str
    village_id: str
    township_id: str
    online: bool
    why: str  # "status" | "will" | "silent"


@dataclass(frozen=True, kw_only=True)
class DeviceReported(Event):
    """A terminal's event (fault raised or cleared, schedule applied, ...) was stored."""

    device_id: str
    village_id: str
    township_id: str
    kind: str


@dataclass(frozen=True, kw_only=True)
class BroadcastChanged(Event):
    """A broadcast was created, cancelled, resent, settled or finished."""

    broadcast_id: str
    change: str  # "created" | "cancelled" | "resent" | "finished"
    status: BroadcastStatus
    actor: str | None = None


@dataclass(frozen=True, kw_only=True)
class ApprovalRequested(Event):
    """A request waits for (or was decided by) a second officer."""

    request_id: str
    change: str = "waiting"  # "waiting" | "approved" | "rejected"


E = TypeVar("E", bound=Event)

# Every event type, in the order a reader meets them: what controller replicas relay to
# each other (controller/replicas.py) so each sees what happened on any of them.
EVENT_TYPES: tuple[type[Event], ...] = (
    DeliveryChanged,
    DeviceLiveness,
    DeviceReported,
    BroadcastChanged,
    ApprovalRequested,
)


class EventHub:
    def __init__(self) -> None:
        self._listeners: dict[type[Event], list[tuple[str, Callable[[Any], None], bool]]] = (
            defaultdict(list)
        )

    def on(
        self,
        event_type: type[E],
        listener: Callable[[E], None],
        *,
        owner: str,
        relayed: bool = True,
    ) -> None:
        """`relayed=False`: only events of this process, not those another controller
        replica relayed (a per-process counter must not count the county's twice)."""
        self._listeners[event_type].append((owner, listener, relayed))

    def off(self, owner: str) -> None:
        for listeners in self._listeners.values():
            listeners[:] = [entry for entry in listeners if entry[0] != owner]

    def emit(self, event: Event, *, relayed: bool = False) -> None:
        """`relayed`: the event happened on another replica (controller/replicas.py)."""
        for owner, listener, wants_relayed in list(self._listeners.get(type(event), ())):
            if relayed and not wants_relayed:
                continue
            try:
                listener(event)
            except Exception:
                log.exception("%s failed on %s", owner, type(event).__name__)
