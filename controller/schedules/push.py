"""Each terminal's local schedule: its coming occurrences, sealed into one command on
its own topic, so it can play them from its own clock when the broker or the
controller cannot be reached.

Pushes are debounced (a clerk editing three schedules in a row sends one update per
terminal), go only to the terminals whose items changed, and are repeated when a push
grows old so the horizon never shrinks below two days. The command expires with the
horizon: a terminal offline for hours still finds it in its persistent session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from sqlmodel import Session, col, select

from controller.db import Database
from controller.dispatch import Dispatcher
from controller.models import Device
from controller.schedules import store
from controller.schedules.models import TerminalSchedule
from controller.schedules.plan import (
    encode_items,
    fit_items,
    items_digest,
    sealed_size_estimate,
)
from controller.settings import Settings
from dalaba import protocol as p

log = logging.getLogger(__name__)

Previous = dict[str, TerminalSchedule]
SEND_BATCH = 8


@dataclass(frozen=True)
class PushStats:
    devices: int
    pushed: int
    items: int
    max_bytes: int
    compute_ms: int


class TerminalPusher:
    def __init__(self, db: Database, dispatcher: Dispatcher, settings: Settings) -> None:
        self._db = db
        self._dispatcher = dispatcher
        self._settings = settings
        self._pending: set[str] = set()
        self._force: set[str] = set()
        self._flush_task: asyncio.Task[None] | None = None
        self._last_version = 0
        self._lock = asyncio.Lock()

    def request(self, device_ids: Iterable[str], *, force: bool = False) -> None:
        """Push these terminals' schedules soon (debounced)."""
        ids = set(device_ids)
        if not ids:
            return
        self._pending |= ids
        if force:
            self._force |= ids
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        # Loop until nothing is pending: a request that arrives while a push is under
        # way finds this task still running and relies on it to go round again.
        while self._pending:
            await asyncio.sleep(self._settings.schedule_push_debounce_ms / 1000)
            devices, force = self._pending, self._force
            self._pending, self._force = set(), set()
            try:
                await self.push(devices, force=force)
            except Exception:
                log.exception("pushing local schedules to %d terminals failed", len(devices))

    async def stop(self) -> None:
        if self._flush_task is not None:
            self._flush_task.cancel()
            await asyncio.gather(self._flush_task, return_exceptions=True)

    async def push(
        self,
        device_ids: Iterable[str],
        *,
        force: Iterable[str] = (),
        stale_ms: int | None = None,
        came_online: bool = False,
    ) -> PushStats:
        """Send each terminal its items unless it already holds exactly these (and its
        copy is younger than `stale_ms`, when given); `force` sends regardless.

        `came_online`: these terminals just connected; resend what was sent while they
        were offline, since one that had never connected had no session to queue it in.
        A terminal with nothing to hold that was never told anything is not told."""
        async with self._lock:
            return await self._push(set(device_ids), set(force), stale_ms, came_online)

    async def _push(
        self, devices: set[str], force: set[str], stale_ms: int | None, came_online: bool
    ) -> PushStats:
        settings = self._settings
        t0 = p.now_ms()
        horizon_until = t0 + settings.schedule_horizon_h * 3600_000

        def load(
            session: Session,
        ) -> tuple[dict[str, list[p.ScheduledItem]], Previous, set[str]]:
            online = session.exec(
                select(Device.id).where(col(Device.id).in_(devices)).where(col(Device.online))
            )
            return (
                store.items_for_devices(
                    session, devices, t0, horizon_until, settings.media_mirrors
                ),
                store.terminal_schedules(session, devices),
                set(online.all()),
            )

        items, previous, online = await self._db.run(load)
        # Fitting, digesting and encoding a county's schedules is a few hundred ms of
        # CPU: off the event loop, so no occurrence fires late because of a push.
        sends, total_items, max_bytes = await asyncio.to_thread(
            self._build,
            devices,
            force,
            stale_ms,
            came_online,
            items,
            previous,
            online,
            t0,
            horizon_until,
        )
        compute_ms = p.now_ms() - t0
        results = await self._send_all(sends)
        rows = []
        for (_, _, row), ok in zip(sends, results, strict=True):
            row.published = ok is True
            rows.append(row)
        if rows:
            await self._db.run(lambda s: store.save_terminal_schedules(s, rows))
            log.info(
                "local schedules pushed to %d of %d terminals (%d items, largest %d bytes)",
                len(rows),
                len(devices),
                total_items,
                max_bytes,
            )
        return PushStats(len(devices), len(rows), total_items, max_bytes, compute_ms)

    async def _send_all(
        self, sends: list[tuple[str, p.Command, TerminalSchedule]]
    ) -> list[bool | BaseException]:
        # Signing happens inside `send`; started a few at a time, with the loop let go
        # in between, so a county's worth of signatures does not hold up a fire.
        tasks = []
        for n, (device_id, command, _) in enumerate(sends):
            topic = p.Topics.command_device(device_id)
            tasks.append(asyncio.ensure_future(self._dispatcher.send(command, (topic,))))
            if n % SEND_BATCH == SEND_BATCH - 1:
                await asyncio.sleep(0)
        return await asyncio.gather(*tasks, return_exceptions=True)

    def _build(
        self,
        devices: set[str],
        force: set[str],
        stale_ms: int | None,
        came_online: bool,
        items: dict[str, list[p.ScheduledItem]],
        previous: Previous,
        online: set[str],
        t0: int,
        horizon_until: int,
    ) -> tuple[list[tuple[str, p.Command, TerminalSchedule]], int, int]:
        encoded = encode_items(i for device_items in items.values() for i in device_items)
        sends: list[tuple[str, p.Command, TerminalSchedule]] = []
        max_bytes = total_items = 0
        for device_id in sorted(devices):
            fitted = fit_items(items.get(device_id, []), horizon_until, encoded=encoded)
            digest = items_digest(fitted.items, encoded)
            prev = previous.get(device_id)
            if device_id not in force:
                if not fitted.items and (prev is None or prev.items == 0):
                    continue
                held = (
                    prev is not None
                    and prev.digest == digest
                    and (stale_ms is None or t0 - prev.pushed_ms < stale_ms)
                    and (prev.device_online or not came_online)
                )
                if held:
                    continue
            if fitted.dropped:
                log.warning(
                    "%s: local schedule cut to %d items (%d more do not fit in one command)",
                    device_id,
                    len(fitted.items),
                    fitted.dropped,
                )
            version = self._next_version(prev.version if prev is not None else 0)
            body = p.ScheduleBody(
                version=version, horizon_until=fitted.horizon_until, items=fitted.items
            )
            command = p.Command.new(
                body, p.Target(devices=(device_id,)), expires_at=fitted.horizon_until
            )
            size = sealed_size_estimate(len(command.to_bytes()))
            max_bytes = max(max_bytes, size)
            total_items += len(fitted.items)
            sends.append(
                (
                    device_id,
                    command,
                    TerminalSchedule(
                        device_id=device_id,
                        version=version,
                        command_id=command.id,
                        digest=digest,
                        items=len(fitted.items),
                        bytes=size,
                        horizon_until_ms=fitted.horizon_until,
                        pushed_ms=t0,
                        dropped=fitted.dropped,
                        device_online=device_id in online,
                    ),
                )
            )
        return sends, total_items, max_bytes

    def _next_version(self, previous: int) -> int:
        # Wall-clock milliseconds, strictly increasing: a terminal keeps the newest
        # schedule it has seen, across controller restarts too.
        version = max(p.now_ms(), previous + 1, self._last_version + 1)
        self._last_version = version
        return version

    async def last_pushed(self, device_id: str) -> TerminalSchedule | None:
        rows = await self._db.run(lambda s: store.terminal_schedules(s, [device_id]))
        return rows.get(device_id)
