"""Device reports in: status, delivery acknowledgements, events and telemetry.

Messages are parsed on arrival (garbage is counted and dropped there) and written in
batches, one transaction per batch: a county-wide broadcast brings four reports from
every terminal within a second, and one commit per report would not keep up.

Three promises, each with its reason:

- **Acknowledged only once stored.** The broker's QoS 1 acknowledgement for a report is
  sent after the transaction that stores it commits. A controller killed at any instant
  leaves every report it had not stored with the broker, which redelivers it to the
  controller's persistent session; a report applied twice is harmless (sequence numbers).
- **One bad message never blocks the others.** A batch that fails to store is split in
  halves and retried until the one report that fails alone is found; that one is
  counted, logged once with its device id, recorded as a security event and acknowledged
  (redelivering it would only fail again). Everyone else's reports are stored.
- **Liveness from silence too.** A terminal is online while it talks; one silent for
  `liveness_intervals` of its telemetry intervals is shown offline even when the broker
  never delivered its last will (it died while the broker was down).

Each change of a terminal's online state and each fault raised or cleared is also kept
as history (`controller.history`: online intervals, fault episodes), in the same
transaction as the change on `Device`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from controller import deliveries as dm
from controller.db import Database
from controller.events import DeliveryChanged, DeviceLiveness, DeviceReported, Event, EventHub
from controller.history import FaultBook, IntervalBook, repair
from controller.models import Broadcast, Delivery, Device, SecurityEvent, TelemetrySample
from controller.phone import record_call
from controller.prepositioning import record_preload_report
from controller.updates import record_update_report
from dalaba import protocol as p

log = logging.getLogger(__name__)

Message = p.DeviceStatus | p.DeliveryReport | p.DeviceEvent | p.Telemetry


# PostgreSQL's deadlock_detected and serialization_failure: the transaction lost a race
# with another replica's and may simply run again.
TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})
TRANSIENT_RETRIES = 3


def _transient(exc: BaseException) -> bool:
    original = getattr(exc, "orig", None) or exc
    return getattr(original, "sqlstate", None) in TRANSIENT_SQLSTATES


def _no_ack() -> None:
    return None


@dataclass(eq=False)
class _Inbound:
    device_id: str
    kind: str
    message: Message | None  # None: dropped at parsing, only owed an acknowledgement
    rx: int
    ack: Callable[[], None]
    stored: bool = False


@dataclass
class _Outcome:
    events: list[Event] = field(default_factory=list)


class DatabaseUnavailable(Exception):
    """Even a single small write fails: the database, not a message, is the problem."""


class Ingestor:
    def __init__(
        self,
        db: Database,
        events: EventHub | None = None,
        *,
        batch_ms: int = 50,
        history_interval_s: int = 300,
        ack_after_commit: bool = True,
        liveness_intervals: float = 3.0,
        default_telemetry_interval_s: float = 60.0,
    ) -> None:
        self._db = db
        self._events = events or EventHub()
        self._batch_s = batch_ms / 1000
        self._history_ms = history_interval_s * 1000
        # False only for the benchmark's baseline: the old acknowledge-on-arrival.
        self._ack_after_commit = ack_after_commit
        self._liveness_intervals = liveness_intervals
        self._default_interval_s = default_telemetry_interval_s
        self._queue: list[_Inbound] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._liveness_task: asyncio.Task[None] | None = None
        self._started_ms = p.now_ms()
        self.counters: Counter[str] = Counter()
        self._noted_bad: dict[str, float] = {}  # device -> monotonic time last recorded
        self._security_notes: list[SecurityEvent] = []

    async def start(self) -> None:
        self._started_ms = p.now_ms()
        # Before the first report: every terminal shown online has its one open
        # interval, every fault shown its episode (a restart closes nothing).
        repaired = await self._db.run(lambda s: repair(s, self._started_ms))
        if repaired:
            log.warning("history mended at start: %s", repaired)
        self._task = asyncio.create_task(self._flush_loop())

    def start_liveness(self) -> None:
        """The silence sweep: on one controller replica only, the leader (controller.app)."""
        if self._liveness_task is None:
            self._liveness_task = asyncio.create_task(self._liveness_loop())

    async def stop_liveness(self) -> None:
        task, self._liveness_task = self._liveness_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def stop(self) -> None:
        await self.stop_liveness()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()

    # ------------------------------------------------------------------ arrival

    def submit(
        self, device_id: str, kind: str, payload: bytes, ack: Callable[[], None] = _no_ack
    ) -> None:
        """Called for every message on a device topic (on the event loop; cheap). `ack`
        acknowledges it to the broker; it is called once the message is stored."""
        rx = p.now_ms()
        if not self._ack_after_commit:
            ack()
            ack = _no_ack
        try:
            message = p.parse_report(kind, payload)
        except p.ProtocolError as exc:
            self._drop(device_id, kind, f"{exc.reason.value}", str(exc), rx)
            self._queue.append(_Inbound(device_id, kind, None, rx, ack))
            self._wakeup.set()
            return
        if message.device_id != device_id:
            # The broker's ACL pins the topic to the account; a payload claiming to be
            # another terminal is a bug or an attack either way.
            self._drop(device_id, kind, "device_mismatch", f"claims {message.device_id!r}", rx)
            self._queue.append(_Inbound(device_id, kind, None, rx, ack))
            self._wakeup.set()
            return
        self.counters[f"received_{kind}"] += 1
        self._queue.append(_Inbound(device_id, kind, message, rx, ack))
        self._wakeup.set()

    def _drop(self, device_id: str, kind: str, reason: str, detail: str, rx: int) -> None:
        self.counters["dropped"] += 1
        self.counters[f"dropped_{reason}"] += 1
        self._note_bad(device_id, f"{kind}: {reason}", detail, rx)

    def _note_bad(self, device_id: str, reason: str, detail: str, rx: int) -> None:
        """Log and record a bad message once a minute per terminal: a hostile terminal
        must not be able to flood the log or the security table."""
        now = time.monotonic()
        last = self._noted_bad.get(device_id)
        if last is not None and now - last < 60:
            self.counters["bad_not_recorded"] += 1
            return
        self._noted_bad[device_id] = now
        log.warning("bad report from %s: %s (%s)", device_id, reason, detail[:200])
        self._security_notes.append(
            SecurityEvent(
                at_ms=rx,
                device_id=device_id[:64],
                kind="bad_report",
                reason=reason[:200],
                detail={"message": detail[:500]},
            )
        )

    # ------------------------------------------------------------------ storing

    async def _flush_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await asyncio.sleep(self._batch_s)  # let a burst gather into one transaction
            try:
                await self.flush()
            except DatabaseUnavailable:
                log.error("database unavailable; %d reports wait unacknowledged", len(self._queue))
                await asyncio.sleep(1.0)
                self._wakeup.set()
            except Exception:
                log.exception("ingest batch failed")

    async def flush(self) -> None:
        if not self._queue and not self._security_notes:
            return
        batch, self._queue = self._queue, []
        outcome = _Outcome()
        try:
            await self._write_security_notes()
            await self._store_isolating([i for i in batch if i.message is not None], outcome)
        except DatabaseUnavailable:
            # Nothing unstored is acknowledged: it waits here, and with the broker.
            self._queue = [i for i in batch if not i.stored and i.message is not None] + [
                *self._queue
            ]
            self._ack([i for i in batch if i.stored or i.message is None])
            self._emit(outcome.events)
            raise
        self._ack(batch)
        self._emit(outcome.events)

    async def _write_security_notes(self) -> None:
        notes, self._security_notes = self._security_notes, []
        if not notes:
            return
        try:
            await self._db.run(lambda s: s.add_all(notes))
        except Exception as exc:
            self._security_notes = notes + self._security_notes
            raise DatabaseUnavailable(repr(exc)) from exc

    def _ack(self, batch: list[_Inbound]) -> None:
        # In arrival order, as MQTT expects acknowledgements to be sent.
        for inbound in batch:
            inbound.ack()
            inbound.ack = _no_ack

    def _emit(self, events: list[Event]) -> None:
        for event in events:
            self._events.emit(event)

    async def _store_isolating(self, entries: list[_Inbound], outcome: _Outcome) -> None:
        if not entries:
            return
        for attempt in range(TRANSIENT_RETRIES + 1):
            try:
                events = await self._db.run(lambda s: self._write(s, entries))
                break
            except Exception as exc:
                if attempt < TRANSIENT_RETRIES and _transient(exc):
                    # Another replica's batch holds rows this one needs (PostgreSQL chose
                    # this transaction as a deadlock's victim): nothing is wrong with the
                    # reports, so the same batch again rather than quarantining one.
                    self.counters["batches_retried"] += 1
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                await self._split_or_quarantine(entries, outcome, exc)
                return
        for inbound in entries:
            inbound.stored = True
        outcome.events.extend(events)

    async def _split_or_quarantine(
        self, entries: list[_Inbound], outcome: _Outcome, exc: Exception
    ) -> None:
        """A batch that fails for its content: halves until the one bad report is alone."""
        if len(entries) > 1:
            half = len(entries) // 2
            await self._store_isolating(entries[:half], outcome)
            await self._store_isolating(entries[half:], outcome)
            return
        await self._quarantine(entries[0], exc)

    async def _quarantine(self, inbound: _Inbound, exc: Exception) -> None:
        """The one report that fails alone: recorded, counted and logged, then let go
        (acknowledged: redelivering it would only fail again). If even the record of it
        cannot be written, the database is down, not the message bad."""
        self._noted_bad.pop(inbound.device_id, None)  # always record this kind
        self._note_bad(inbound.device_id, f"{inbound.kind}: unstorable", repr(exc), inbound.rx)
        await self._write_security_notes()
        self.counters["dropped"] += 1
        self.counters["dropped_unstorable"] += 1
        inbound.stored = True

    def _write(self, session: Session, batch: list[_Inbound]) -> list[Event]:
        events: list[Event] = []
        now = p.now_ms()
        device_ids = {i.device_id for i in batch}
        devices = self._devices(session, batch, device_ids)
        # Deliveries as plain rows, written back with one executemany UPDATE and their
        # transitions appended with one INSERT (controller.deliveries): a batch of 5,000
        # reports as ORM objects cost more than everything else here together.
        deliveries = dm.load_rows(
            session,
            (
                (i.message.broadcast_id, i.message.device_id)
                for i in batch
                if isinstance(i.message, p.DeliveryReport)
            ),
        )
        issued = self._issued_command_ids(session, batch)
        came_online: list[Device] = []
        intervals = IntervalBook(session, device_ids)
        faults = FaultBook(session, device_ids)

        # Arrival order: the broker keeps each terminal's messages in order, and a stale
        # report is caught by its sequence number anyway.
        for inbound in batch:
            message = inbound.message
            rx = inbound.rx
            device = devices.get(inbound.device_id)
            if device is None or message is None:
                # Not (or no longer) in the database; the broker's ACL let it in, so it
                # was provisioned somewhere: count it for the operator to notice.
                self.counters["dropped"] += 1
                self.counters["dropped_unknown_device"] += 1
                continue
            device.last_seen_ms = rx
            if isinstance(message, p.DeviceStatus):
                why = "will" if not message.online and message.at == 0 else "status"
                changed = self._set_online(intervals, device, message.online, rx, why, events)
                if changed and message.online:
                    came_online.append(device)
                if message.firmware:
                    device.firmware = message.firmware
                continue
            # Anything else it sends proves it is alive (its "online" status may have
            # been lost with a broker that died, or shadowed by a stale will).
            if not device.online and self._set_online(intervals, device, True, rx, "heard", events):
                came_online.append(device)
            if isinstance(message, p.DeliveryReport):
                delivery = deliveries.get((message.broadcast_id, message.device_id))
                if delivery is None:
                    self.counters["reports_unknown_delivery"] += 1
                    continue
                extra: dict[str, Any] = {}
                if message.offline:
                    extra["offline"] = True
                if message.late_ms:
                    extra["late_ms"] = message.late_ms
                if message.offset_ms is not None:
                    extra["offset_ms"] = message.offset_ms
                if message.on_receipt:
                    extra["on_receipt"] = True  # its clock could not be placed
                if message.silent_ms is not None:
                    extra["silent_ms"] = message.silent_ms
                applied = dm.apply(
                    delivery,
                    message.state,
                    dm.Cause.TERMINAL,
                    now=rx,
                    at=message.at,
                    reason=message.reason,
                    seq=message.seq,
                    attempt=message.attempt,
                    extra=extra,
                    session=session,
                )
                if applied is None:
                    self.counters["reports_not_applied"] += 1
                    continue
                if message.state is p.DeliveryState.PLAYING:
                    device.playing_broadcast_id = message.broadcast_id
                elif device.playing_broadcast_id == message.broadcast_id:
                    device.playing_broadcast_id = None
                events.append(_delivery_event(applied, device))
            elif isinstance(message, p.DeviceEvent):
                applied_events = self._apply_event(
                    session, device, message, rx, issued, deliveries, faults
                )
                for applied in applied_events:
                    events.append(_delivery_event(applied, device))
                events.append(
                    DeviceReported(
                        device_id=device.id,
                        village_id=device.village_id,
                        township_id=device.township_id,
                        kind=message.kind.value,
                    )
                )
            elif isinstance(message, p.Telemetry):
                self._apply_telemetry(session, device, message, rx)
        dm.save_rows(session, deliveries.values())
        _save_seen(session, devices.values())
        for device in came_online:
            events += _release_offline(session, device, now)
        return events

    def _devices(
        self, session: Session, batch: list[_Inbound], device_ids: set[str]
    ) -> dict[str, Any]:
        """The batch's terminals: a `_Seen` row (five columns, saved in bulk) for one
        online that only reports deliveries, the hot path of a county-wide broadcast;
        the ORM `Device` for everyone else (status, events, telemetry, back online),
        whose history books need it."""
        busy = {i.device_id for i in batch if not isinstance(i.message, p.DeliveryReport)}
        quiet = sorted(device_ids - busy)
        found: dict[str, Any] = {}
        table = Device.__table__  # type: ignore[attr-defined]
        columns = [table.c[name] for name in _Seen.COLUMNS]
        conn = session.connection()
        if conn.dialect.name == "postgresql" and quiet:
            # Joined to an array of ids: an IN list of thousands filters every row there.
            rows: Any = conn.exec_driver_sql(
                f"SELECT {', '.join('d.' + c for c in _Seen.COLUMNS)} FROM device AS d "
                "JOIN unnest(%s::text[]) AS k(id) ON d.id = k.id",
                (quiet,),
            )
            found.update((row.id, _Seen(*row)) for row in rows if row.online)
            quiet = []
        for start in range(0, len(quiet), 900):  # within SQLite's bound-parameter limit
            for row in session.execute(
                sa_select(*columns).where(table.c.id.in_(quiet[start : start + 900]))
            ):
                if row.online:
                    found[row.id] = _Seen(*row)
        full = device_ids - found.keys()
        if full:
            found.update(
                (d.id, d) for d in session.exec(select(Device).where(col(Device.id).in_(full)))
            )
        return found

    def _set_online(
        self,
        intervals: IntervalBook,
        device: Device,
        online: bool,
        rx: int,
        why: str,
        events: list[Event],
        last_heard: int | None = None,
    ) -> bool:
        if device.online == online:
            return False
        device.online = online
        device.status_changed_ms = rx
        if online:
            intervals.opened(device, rx)
        else:
            # Said goodbye, or its will: offline now (the broker sends the will when the
            # connection breaks, or at most 1.5 keepalives later). Silent: we notice after
            # several telemetry intervals; it was last known online when last heard.
            ended = last_heard if why == "silent" and last_heard is not None else rx
            intervals.closed(device, ended, why)
        events.append(
            DeviceLiveness(
                device_id=device.id,
                village_id=device.village_id,
                township_id=device.township_id,
                online=online,
                why=why,
            )
        )
        return True

    def _issued_command_ids(self, session: Session, batch: list[_Inbound]) -> set[str]:
        ids = {
            i.message.command_id
            for i in batch
            if isinstance(i.message, p.DeviceEvent) and i.message.command_id
        }
        if not ids:
            return set()
        rows = session.exec(select(Broadcast.command_id).where(col(Broadcast.command_id).in_(ids)))
        return set(rows.all())

    def _apply_event(
        self,
        session: Session,
        device: Device,
        event: p.DeviceEvent,
        rx: int,
        issued: set[str],
        deliveries: dict[tuple[str, str], dm.DeliveryRow],
        faults: FaultBook | None = None,
    ) -> list[dm.Applied]:
        if event.kind in (p.EventKind.FAULT_RAISED, p.EventKind.FAULT_CLEARED) and event.reason:
            # Device.faults (the latest state) and the fault's episode change together.
            book = faults or FaultBook(session)
            if event.kind is p.EventKind.FAULT_RAISED:
                book.raised(device, event.reason[:64], event.at, rx, event.detail)
            else:
                book.cleared(device, event.reason[:64], event.at, rx)
            return []
        if event.kind is p.EventKind.UPDATE_STATE:
            if not record_update_report(session, device.id, event, rx):
                self.counters["update_reports_unknown"] += 1
            return []
        if event.kind is p.EventKind.PRELOADED:
            record_preload_report(session, device.id, event, rx)
            return []
        if event.kind is p.EventKind.CALL:
            try:
                record_call(session, device, event, rx)
            except ValueError:
                self.counters["call_events_malformed"] += 1
            return []
        if event.kind is not p.EventKind.COMMAND_REJECTED:
            return []
        known = event.command_id in issued
        session.add(
            SecurityEvent(
                at_ms=rx,
                device_id=device.id,
                kind=event.kind.value,
                reason=event.reason,
                command_id=event.command_id,
                broadcast_id=event.broadcast_id,
                known_command=known,
                detail=event.detail,
            )
        )
        self.counters[f"rejections_{event.reason}"] += 1
        # A genuine command refused before it was ever received ends that delivery: it
        # reached the terminal after its expiry, or the terminal's clock is so far off
        # that it thinks the command is from the future. Nothing else may move a
        # delivery: a forger can name a real command id (bad_signature), and a replay or a
        # broker's duplicate (replayed, not_addressed) says nothing about the original.
        ends_delivery = {
            p.RejectReason.EXPIRED.value: p.DeliveryState.EXPIRED,
            p.RejectReason.NOT_YET_VALID.value: p.DeliveryState.REJECTED,
        }
        if not (known and event.broadcast_id is not None and event.reason in ends_delivery):
            return []
        key = (event.broadcast_id, device.id)
        if key not in deliveries:
            # Kept with the batch's rows, so `_write` saves it with them.
            deliveries.update(dm.load_rows(session, [key]))
        delivery = deliveries.get(key)
        if delivery is None or delivery.state not in (
            p.DeliveryState.SENT.value,
            p.DeliveryState.OFFLINE.value,
        ):
            return []
        applied = dm.apply(
            delivery,
            ends_delivery[event.reason],
            dm.Cause.TERMINAL,
            now=rx,
            at=event.at,
            reason=f"terminal refused the command: {event.reason}",
            attempt=delivery.attempt,
            session=session,
        )
        return [applied] if applied else []

    def _apply_telemetry(self, session: Session, device: Device, t: p.Telemetry, rx: int) -> None:
        data = t.model_dump(mode="json", exclude={"v", "device_id"})
        # The safety net for fault events that were lost (history.FaultBook.telemetry).
        FaultBook(session).telemetry(device, data["faults"], t.at, rx, device.telemetry)
        device.telemetry = data
        device.volume = t.volume
        device.firmware = t.firmware
        device.playing_broadcast_id = t.playing
        if t.interval_s is not None:
            device.telemetry_interval_s = t.interval_s
        if (
            device.telemetry_history_ms is None
            or rx - device.telemetry_history_ms >= self._history_ms
        ):
            device.telemetry_history_ms = rx
            session.add(TelemetrySample(device_id=device.id, at_ms=rx, data=data))

    # ------------------------------------------------------------------ liveness

    async def _liveness_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                events = await self._db.run(self.sweep_silent)
            except Exception:
                log.exception("liveness sweep failed")
                continue
            self._emit(events)

    def sweep_silent(self, session: Session, now: int | None = None) -> list[Event]:
        """Terminals shown online but silent for too long are offline; what was sent to
        them and not yet answered waits as `offline`."""
        now = p.now_ms() if now is None else now
        events: list[Event] = []
        silent = [
            d
            for d in session.exec(select(Device).where(Device.online == True))  # noqa: E712
            if self._silent(d, now)
        ]
        if not silent:
            return events
        ids = sorted(d.id for d in silent)
        # Their deliveries locked first (the ingest batch locks deliveries, then writes
        # terminals: the same order, so the two cannot deadlock), and only those still
        # `sent` once a batch applying their reports has committed (dm.for_update).
        waiting: dict[str, list[Delivery]] = {}
        for delivery in session.exec(
            dm.for_update(
                session,
                select(Delivery)
                .where(col(Delivery.device_id).in_(ids))
                .where(Delivery.state == p.DeliveryState.SENT.value),
            )
        ):
            waiting.setdefault(delivery.device_id, []).append(delivery)
        if session.get_bind().dialect.name == "postgresql":
            # Read again, locked: a batch that heard the terminal meanwhile has
            # committed its `last_seen_ms`, and it is not silent after all.
            silent = [
                d
                for d in session.exec(
                    select(Device)
                    .where(col(Device.id).in_(ids))
                    .order_by(col(Device.id))
                    .with_for_update()
                    .execution_options(populate_existing=True)
                )
                if d.online and self._silent(d, now)
            ]
        for device in silent:
            heard = self._heard(device)
            self._set_online(IntervalBook(session), device, False, now, "silent", events, heard)
            for delivery in waiting.get(device.id, []):
                applied = dm.apply(
                    delivery,
                    p.DeliveryState.OFFLINE,
                    dm.Cause.DISPATCH,
                    now=now,
                    reason="the terminal went silent",
                )
                if applied:
                    events.append(_delivery_event(applied, device))
        return events

    def _heard(self, device: Device) -> int:
        # Silence while this controller was down is not the terminal's: count from
        # our own start at the earliest.
        return max(device.last_seen_ms or 0, device.status_changed_ms or 0, self._started_ms)

    def _silent(self, device: Device, now: int) -> bool:
        interval_s = device.telemetry_interval_s or self._default_interval_s
        window_ms = int(self._liveness_intervals * interval_s * 1000)
        return now - self._heard(device) >= window_ms


@dataclass(eq=False)
class _Seen:
    """A terminal that is online and only reported deliveries in this batch: what the
    batch reads and changes of it, without an ORM object."""

    COLUMNS = ("id", "village_id", "township_id", "online", "playing_broadcast_id")

    id: str
    village_id: str
    township_id: str
    online: bool
    playing_broadcast_id: str | None
    last_seen_ms: int | None = None


def _save_seen(session: Session, devices: Any) -> None:
    """One executemany UPDATE for the `_Seen` terminals of a batch."""
    rows = [
        {"id": d.id, "last_seen_ms": d.last_seen_ms, "playing_broadcast_id": d.playing_broadcast_id}
        for d in devices
        if isinstance(d, _Seen)
    ]
    dm.executemany(session.connection(), _UPDATE_SEEN, rows)


_UPDATE_SEEN = dm.Bulk(
    "device", ("id", "last_seen_ms", "playing_broadcast_id"), ("text", "bigint", "text"), key="id"
)


def _release_offline(session: Session, device: Device, now: int) -> list[Event]:
    """A terminal back online gets what the broker queued for it: its `offline`
    deliveries are `sent` again (waiting on it, not on its link)."""
    events: list[Event] = []
    # Locked (dm.for_update): the expiry sweep or a resend may be moving the same
    # deliveries, and a move from the `offline` they were would undo theirs.
    for delivery in session.exec(
        dm.for_update(
            session,
            select(Delivery)
            .where(Delivery.device_id == device.id)
            .where(Delivery.state == p.DeliveryState.OFFLINE.value),
        )
    ):
        applied = dm.apply(
            delivery, p.DeliveryState.SENT, dm.Cause.DISPATCH, now=now, reason="terminal online"
        )
        if applied:
            events.append(_delivery_event(applied, device))
    return events


def _delivery_event(applied: dm.Applied, device: Device) -> DeliveryChanged:
    return DeliveryChanged(
        broadcast_id=applied.broadcast_id,
        device_id=applied.device_id,
        village_id=device.village_id,
        township_id=device.township_id,
        state=applied.state,
        previous=applied.previous,
        reason=applied.reason,
        at=applied.at,
        cause=applied.cause,
    )
