"""Device reports in: status, delivery acknowledgements, events and telemetry.

Messages are parsed on arrival (garbage is counted and dropped there) and written in
batches, one transaction per batch: a county-wide broadcast brings four reports from
every terminal within a second, and one commit per report would not keep up.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from sqlmodel import Session, col, select

from controller.db import Database
from controller.models import Broadcast, Delivery, Device, SecurityEvent, TelemetrySample
from controller.prepositioning import record_preload_report
from dalaba import protocol as p

log = logging.getLogger(__name__)

Listener = Callable[[str, dict[str, Any]], None]


def apply_report(delivery: Delivery, report: p.DeliveryReport, received_ms: int) -> bool:
    """Move a delivery to the state a terminal reported. Returns False when the report
    is stale (older sequence) or would reopen a state the terminal itself finished."""
    if report.seq <= delivery.last_seq:
        return False
    current = p.DeliveryState(delivery.state)
    if current.final and delivery.state_source == "device":
        return False
    delivery.state = report.state.value
    delivery.reason = report.reason
    delivery.updated_ms = received_ms
    delivery.last_seq = report.seq
    delivery.state_source = "device"
    transition: dict[str, Any] = {"state": report.state.value, "at": report.at, "rx": received_ms}
    if report.reason:
        transition["reason"] = report.reason
    if report.offline:
        transition["offline"] = True
    # A new list, so SQLAlchemy sees the JSON column change.
    delivery.transitions = [*delivery.transitions, transition]
    return True


class Ingestor:
    def __init__(self, db: Database, *, batch_ms: int = 50, history_interval_s: int = 300) -> None:
        self._db = db
        self._batch_s = batch_ms / 1000
        self._history_ms = history_interval_s * 1000
        self._queue: list[
            tuple[str, p.DeviceStatus | p.DeliveryReport | p.DeviceEvent | p.Telemetry, int]
        ] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.counters: Counter[str] = Counter()
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """Called after each batch is committed, with (kind, data): for live views."""
        self._listeners.append(listener)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._flush_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()

    def submit(self, device_id: str, kind: str, payload: bytes) -> None:
        """Called for every message on a device topic (on the event loop; cheap)."""
        try:
            message = p.parse_report(kind, payload)
        except p.ProtocolError as exc:
            self.counters["dropped"] += 1
            self.counters[f"dropped_{exc.reason.value}"] += 1
            log.info("dropped %s from %s: %s", kind, device_id, exc)
            return
        if message.device_id != device_id:
            # The broker's ACL pins the topic to the account; a payload claiming to be
            # another terminal is a bug or an attack either way.
            self.counters["dropped"] += 1
            self.counters["dropped_device_mismatch"] += 1
            return
        self.counters[f"received_{kind}"] += 1
        self._queue.append((kind, message, p.now_ms()))
        self._wakeup.set()

    async def _flush_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            await asyncio.sleep(self._batch_s)  # let a burst gather into one transaction
            try:
                await self.flush()
            except Exception:
                log.exception("ingest batch failed")

    async def flush(self) -> None:
        if not self._queue:
            return
        batch, self._queue = self._queue, []
        changes = await self._db.run(lambda s: self._write(s, batch))
        for kind, data in changes:
            for listener in self._listeners:
                listener(kind, data)

    def _write(
        self, session: Session, batch: list[tuple[str, Any, int]]
    ) -> list[tuple[str, dict[str, Any]]]:
        changes: list[tuple[str, dict[str, Any]]] = []
        device_ids = {m.device_id for _, m, _ in batch}
        devices = {
            d.id: d for d in session.exec(select(Device).where(col(Device.id).in_(device_ids)))
        }
        reports = [(m, rx) for kind, m, rx in batch if kind == "ack"]
        deliveries: dict[tuple[str, str], Delivery] = {}
        if reports:
            bids = {m.broadcast_id for m, _ in reports}
            rows = session.exec(
                select(Delivery)
                .where(col(Delivery.broadcast_id).in_(bids))
                .where(col(Delivery.device_id).in_({m.device_id for m, _ in reports}))
            )
            deliveries = {(d.broadcast_id, d.device_id): d for d in rows}
        issued = self._issued_command_ids(session, batch)

        # Arrival order: the broker keeps each terminal's messages in order, and a stale
        # report is caught by its sequence number anyway.
        for _kind, message, rx in batch:
            device = devices.get(message.device_id)
            if device is None:
                # Not (or no longer) in the database; the broker's ACL let it in, so it
                # was provisioned somewhere: count it for the operator to notice.
                self.counters["dropped"] += 1
                self.counters["dropped_unknown_device"] += 1
                continue
            device.last_seen_ms = rx
            if isinstance(message, p.DeviceStatus):
                if device.online != message.online:
                    device.online = message.online
                    device.status_changed_ms = rx
                    changes.append(("device", {"id": device.id, "online": message.online}))
                if message.firmware:
                    device.firmware = message.firmware
            elif isinstance(message, p.DeliveryReport):
                delivery = deliveries.get((message.broadcast_id, message.device_id))
                if delivery is None:
                    self.counters["reports_unknown_delivery"] += 1
                    continue
                if apply_report(delivery, message, rx):
                    if message.state is p.DeliveryState.PLAYING:
                        device.playing_broadcast_id = message.broadcast_id
                    elif device.playing_broadcast_id == message.broadcast_id:
                        device.playing_broadcast_id = None
                    changes.append(
                        (
                            "delivery",
                            {
                                "broadcast_id": message.broadcast_id,
                                "device_id": message.device_id,
                                "state": message.state.value,
                                "reason": message.reason,
                                "at": message.at,
                            },
                        )
                    )
            elif isinstance(message, p.DeviceEvent):
                self._apply_event(session, device, message, rx, issued, deliveries)
                changes.append(("event", {"device_id": device.id, "kind": message.kind.value}))
            elif isinstance(message, p.Telemetry):
                self._apply_telemetry(session, device, message, rx)
        # Tagged with the terminal's place (the row is at hand here), so listeners such
        # as the live views need no copy of the county that goes stale as it grows.
        for _kind, data in changes:
            device = devices[data.get("device_id") or data["id"]]
            data["village_id"], data["township_id"] = device.village_id, device.township_id
        return changes

    def _issued_command_ids(self, session: Session, batch: list[tuple[str, Any, int]]) -> set[str]:
        ids = {
            m.command_id
            for kind, m, _ in batch
            if kind == "event" and getattr(m, "command_id", None)
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
        deliveries: dict[tuple[str, str], Delivery],
    ) -> None:
        if event.kind is p.EventKind.FAULT_RAISED and event.reason:
            device.faults = {**device.faults, event.reason: event.at}
            return
        if event.kind is p.EventKind.FAULT_CLEARED and event.reason:
            device.faults = {k: v for k, v in device.faults.items() if k != event.reason}
            return
        if event.kind is p.EventKind.PRELOADED:
            record_preload_report(session, device.id, event, rx)
            return
        if event.kind is not p.EventKind.COMMAND_REJECTED:
            return
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
        if known and event.broadcast_id is not None and event.reason in ends_delivery:
            delivery = (
                deliveries.get((event.broadcast_id, device.id))
                or session.exec(
                    select(Delivery)
                    .where(Delivery.broadcast_id == event.broadcast_id)
                    .where(Delivery.device_id == device.id)
                ).first()
            )
            if delivery is not None and delivery.state == p.DeliveryState.SENT.value:
                state = ends_delivery[event.reason]
                delivery.state = state.value
                delivery.reason = f"terminal refused the command: {event.reason}"
                delivery.state_source = "device"
                delivery.updated_ms = rx
                delivery.transitions = [
                    *delivery.transitions,
                    {"state": state.value, "at": event.at, "rx": rx, "reason": delivery.reason},
                ]

    def _apply_telemetry(self, session: Session, device: Device, t: p.Telemetry, rx: int) -> None:
        data = t.model_dump(mode="json", exclude={"v", "device_id"})
        device.telemetry = data
        device.volume = t.volume
        device.firmware = t.firmware
        device.playing_broadcast_id = t.playing
        if (
            device.telemetry_history_ms is None
            or rx - device.telemetry_history_ms >= self._history_ms
        ):
            device.telemetry_history_ms = rx
            session.add(TelemetrySample(device_id=device.id, at_ms=rx, data=data))
