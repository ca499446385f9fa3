"""Work orders: a fault that outlasts `work_order_after_s` becomes a technician's job.

The fault history (`FaultEpisode`, written by `controller.ingest` in the same transaction
as the change on `Device`) is the only input. One sweep, run every `SWEEP_S` seconds,
as soon as an episode without an order reaches the threshold, and shortly after any
fault is raised or cleared, makes the orders agree with it:

- an open episode older than the threshold, on a terminal with no unclosed order for
  that kind of fault, opens an order (`open`);
- an `open` order whose fault is no longer open becomes `fault_cleared`, with the time
  the episode ended;
- a fault of the same kind that returns on that terminal before the order is closed
  reopens it at once (no threshold: the technician already knows this terminal), with a
  note saying so. An order is closed only by a technician or an admin, and only once
  its fault has cleared; a fault after that is a new order.

So there is at most one unclosed order per (terminal, fault kind). Everything the sweep
does and everything people do is written to the audit log in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, col, select

from controller import audit
from controller.auth import ROLE_PERMISSIONS, Permission, Principal, Role
from controller.db import Database
from controller.errors import ApiError, bad_request, forbidden, not_found
from controller.events import DeviceReported, EventHub
from controller.history import FaultEpisode, WorkOrder
from controller.models import User
from controller.settings import Settings
from controller.timefmt import iso
from dalaba import protocol as p

log = logging.getLogger(__name__)

OPEN, FAULT_CLEARED, CLOSED = "open", "fault_cleared", "closed"
STATUSES = (OPEN, FAULT_CLEARED, CLOSED)
SWEEP_S = 30.0
# Faults raised or cleared within this long are handled by one sweep.
DEBOUNCE_S = 0.5
MAX_NOTES = 200  # per order: a note box is not a chat room
SYSTEM = "system"
_FAULT_EVENTS = frozenset({p.EventKind.FAULT_RAISED.value, p.EventKind.FAULT_CLEARED.value})


@dataclass
class SweepResult:
    opened: list[int] = field(default_factory=list)
    cleared: list[int] = field(default_factory=list)
    reopened: list[int] = field(default_factory=list)
    # When the next episode without an order reaches the threshold (epoch ms), if any.
    next_due_ms: int | None = None


def sweep(session: Session, after_ms: int, now: int | None = None) -> SweepResult:
    """Make the work orders agree with the fault episodes (see the module docstring)."""
    now = p.now_ms() if now is None else now
    result = SweepResult()
    # FOR UPDATE (PostgreSQL; SQLite serialises writers anyway): controller replicas
    # sweeping at once take turns, and the second sees the first one's new orders
    # instead of opening the same order again.
    episodes = session.exec(
        select(FaultEpisode)
        .where(col(FaultEpisode.end_ms).is_(None))
        .order_by(col(FaultEpisode.start_ms))
        .with_for_update()
    ).all()
    orders = session.exec(
        select(WorkOrder).where(WorkOrder.status != CLOSED).with_for_update()
    ).all()
    unclosed = {(o.device_id, o.fault): o for o in orders}
    # Latest start wins should an episode have been left open beside a newer one.
    current = {(e.device_id, e.fault): e for e in episodes}

    for key, episode in current.items():
        assert episode.id is not None
        order = unclosed.get(key)
        if order is None:
            due = episode.start_ms + after_ms
            if due > now:
                result.next_due_ms = (
                    due if result.next_due_ms is None else min(result.next_due_ms, due)
                )
                continue
            order = WorkOrder(
                device_id=episode.device_id,
                village_id=episode.village_id,
                township_id=episode.township_id,
                fault=episode.fault,
                episode_id=episode.id,
                status=OPEN,
                opened_ms=now,
                notes=[],
            )
            session.add(order)
            session.flush()
            assert order.id is not None
            unclosed[key] = order
            result.opened.append(order.id)
            audit.record(
                session,
                SYSTEM,
                "workorder.open",
                str(order.id),
                device=order.device_id,
                fault=order.fault,
                episode=episode.id,
                since=iso(episode.start_ms),
            )
            continue
        if order.episode_id == episode.id and order.status == OPEN:
            continue
        # The fault came back while the order was still unclosed: the same order again.
        assert order.id is not None
        was = order.status
        order.episode_id = episode.id
        order.status = OPEN
        order.fault_cleared_ms = None
        order.notes = _with_reopen_note(order.notes, now)
        session.add(order)
        result.reopened.append(order.id)
        audit.record(
            session,
            SYSTEM,
            "workorder.reopen",
            str(order.id),
            device=order.device_id,
            fault=order.fault,
            episode=episode.id,
            was=was,
        )

    ended = [o for key, o in unclosed.items() if o.status == OPEN and key not in current]
    ended_at = _episode_ends(session, [o.episode_id for o in ended if o.episode_id is not None])
    for order in ended:
        assert order.id is not None
        order.status = FAULT_CLEARED
        # An episode already pruned away: the sweep saw it gone, now is the best we know.
        order.fault_cleared_ms = ended_at.get(order.episode_id or -1) or now
        session.add(order)
        result.cleared.append(order.id)
        audit.record(
            session,
            SYSTEM,
            "workorder.fault_cleared",
            str(order.id),
            device=order.device_id,
            fault=order.fault,
            at=iso(order.fault_cleared_ms),
        )
    return result


def _with_reopen_note(notes: list[dict[str, Any]], now: int) -> list[dict[str, Any]]:
    """The notes with one saying the fault returned. A fault that comes and goes all day
    adds to the last such note (`times`) instead of burying the technicians' notes."""
    last = notes[-1] if notes else None
    if last is not None and last.get("by") == SYSTEM and last.get("kind") == "reopened":
        return [*notes[:-1], {**last, "at": now, "times": int(last.get("times", 1)) + 1}]
    note = {"at": now, "by": SYSTEM, "kind": "reopened", "text": "故障再次出现 the fault returned"}
    return [*notes, {**note, "times": 1}]


def _episode_ends(session: Session, ids: list[int]) -> dict[int, int]:
    if not ids:
        return {}
    rows = session.exec(
        select(FaultEpisode.id, FaultEpisode.end_ms).where(col(FaultEpisode.id).in_(ids))
    ).all()
    return {i: end for i, end in rows if i is not None and end is not None}


# --------------------------------------------------------------------------- views


def order_view(order: WorkOrder, episode: FaultEpisode | None) -> dict[str, Any]:
    return {
        "id": order.id,
        "device_id": order.device_id,
        "village_id": order.village_id,
        "township_id": order.township_id,
        "fault": order.fault,
        "status": order.status,
        "opened_at": iso(order.opened_ms),
        "assigned_to": order.assigned_to,
        "notes": [
            {
                "at": iso(n.get("at")),
                "by": n.get("by", ""),
                "text": n.get("text", ""),
                "kind": n.get("kind"),
                "times": n.get("times"),
            }
            for n in order.notes
        ],
        "fault_cleared_at": iso(order.fault_cleared_ms),
        "closed_at": iso(order.closed_ms),
        "closed_by": order.closed_by,
        "episode": None
        if episode is None
        else {
            "id": episode.id,
            "start_at": iso(episode.start_ms),
            "end_at": iso(episode.end_ms),
            "detail": episode.detail or {},
        },
    }


def _views(session: Session, orders: list[WorkOrder]) -> list[dict[str, Any]]:
    ids = {o.episode_id for o in orders if o.episode_id is not None}
    episodes = (
        {e.id: e for e in session.exec(select(FaultEpisode).where(col(FaultEpisode.id).in_(ids)))}
        if ids
        else {}
    )
    return [order_view(o, episodes.get(o.episode_id)) for o in orders]


# --------------------------------------------------------------------------- service


class WorkOrderService:
    """Runs the sweep and carries out what people do to orders (list, assign, note,
    close). Township staff see their own township's orders and change nothing; assigning,
    notes and closing need `Permission.WORK_ORDERS` (technicians and admins)."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        # Read at every sweep, so a changed threshold applies from the next one.
        self._settings = settings
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._events: EventHub | None = None

    def listen(self, events: EventHub) -> None:
        self._events = events
        events.on(DeviceReported, self._on_reported, owner="workorders")

    def _on_reported(self, event: DeviceReported) -> None:
        if event.kind in _FAULT_EVENTS:
            self._wakeup.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="workorders")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def sweep_now(self) -> SweepResult:
        after_ms = int(self._settings.work_order_after_s * 1000)
        return await self._db.run(lambda s: sweep(s, after_ms))

    async def _loop(self) -> None:
        while True:
            wait_s = SWEEP_S
            try:
                result = await self.sweep_now()
            except Exception:
                log.exception("work-order sweep failed")
            else:
                if result.opened or result.cleared or result.reopened:
                    log.info(
                        "work orders: opened %s, fault cleared %s, reopened %s",
                        result.opened,
                        result.cleared,
                        result.reopened,
                    )
                if result.next_due_ms is not None:
                    wait_s = min(wait_s, max(0.0, (result.next_due_ms - p.now_ms()) / 1000))
            # asyncio.timeout, not wait_for: 3.11's wait_for loses a stop()'s cancel that
            # lands as the wakeup fires (bpo-42130), and the loop would sweep on.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wakeup.wait()
            if self._wakeup.is_set():
                await asyncio.sleep(DEBOUNCE_S)  # a burst of fault reports: one sweep
            self._wakeup.clear()

    # ------------------------------------------------------------------ people

    async def list(
        self, principal: Principal, status: str | None, township: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """Newest first. `status` None: the unclosed ones (open and fault_cleared);
        "all": closed ones too."""
        if status is not None and status != "all" and status not in STATUSES:
            raise bad_request("status", f"one of {', '.join(STATUSES)} or all")
        scope = principal.township_scope()
        if scope is not None and township not in (None, scope):
            raise bad_request(
                "township", f"{township} is outside your township", "outside_township"
            )
        township = scope or township

        def load(session: Session) -> list[dict[str, Any]]:
            query = select(WorkOrder).order_by(
                col(WorkOrder.opened_ms).desc(), col(WorkOrder.id).desc()
            )
            if status is None:
                query = query.where(WorkOrder.status != CLOSED)
            elif status != "all":
                query = query.where(WorkOrder.status == status)
            if township:
                query = query.where(WorkOrder.township_id == township)
            return _views(session, list(session.exec(query.limit(limit))))

        return await self._db.run(load)

    async def assign(self, principal: Principal, order_id: int, user: str) -> dict[str, Any]:
        def act(session: Session) -> dict[str, Any]:
            order = _order_for_change(session, principal, order_id)
            found = session.exec(select(User).where(User.name == user)).first()
            if found is None or found.disabled:
                raise bad_request("user", f"no active user named {user!r}")
            if Permission.WORK_ORDERS not in _permissions(found.role):
                raise bad_request("user", f"{user} ({found.role}) does not work on orders")
            before = order.assigned_to
            order.assigned_to = found.name
            session.add(order)
            audit.record(
                session,
                principal,
                "workorder.assign",
                str(order_id),
                device=order.device_id,
                user=found.name,
                before=before,
            )
            return _views(session, [order])[0]

        return await self._db.run(act)

    async def add_note(self, principal: Principal, order_id: int, text: str) -> dict[str, Any]:
        def act(session: Session) -> dict[str, Any]:
            order = _order_for_change(session, principal, order_id)
            if len(order.notes) >= MAX_NOTES:
                raise ApiError(409, "too_many_notes", f"text: an order keeps {MAX_NOTES} notes")
            _append_note(order, principal.user, text)
            session.add(order)
            audit.record(
                session, principal, "workorder.note", str(order_id), device=order.device_id
            )
            return _views(session, [order])[0]

        return await self._db.run(act)

    async def close(self, principal: Principal, order_id: int, note: str | None) -> dict[str, Any]:
        def act(session: Session) -> dict[str, Any]:
            order = _order_for_change(session, principal, order_id)
            if order.status == OPEN:
                raise ApiError(
                    409,
                    "fault_not_cleared",
                    f"work order {order_id}: the {order.fault} fault has not cleared yet; "
                    "close it once the terminal reports it cleared",
                )
            now = p.now_ms()
            if note:
                _append_note(order, principal.user, note, now)
            order.status = CLOSED
            order.closed_ms = now
            order.closed_by = principal.user
            session.add(order)
            audit.record(
                session,
                principal,
                "workorder.close",
                str(order_id),
                device=order.device_id,
                fault=order.fault,
                note=bool(note),
            )
            return _views(session, [order])[0]

        return await self._db.run(act)


def _permissions(role: str) -> frozenset[Permission]:
    try:
        return ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return frozenset()


def _order_for_change(session: Session, principal: Principal, order_id: int) -> WorkOrder:
    """The order, locked for this change; 403 for those who may only read, 404 for an
    order that does not exist, 409 for one already closed."""
    if not principal.can(Permission.WORK_ORDERS):
        raise forbidden(f"role {principal.role.value} may not change work orders")
    order = session.get(WorkOrder, order_id, with_for_update=True)
    if order is None:
        raise not_found(f"work order {order_id}")
    if order.status == CLOSED:
        raise ApiError(409, "work_order_closed", f"work order {order_id} is closed")
    return order


def _append_note(order: WorkOrder, by: str, text: str, now: int | None = None) -> None:
    # A new list: the JSON column is saved only when it is assigned, not mutated.
    order.notes = [*order.notes, {"at": now or p.now_ms(), "by": by, "text": text}]
