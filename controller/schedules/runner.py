"""Firing schedules on time, and accounting for every occurrence that was not.

APScheduler 3 (`AsyncIOScheduler`, an in-memory job store: the database is the source
of truth and the jobs are rebuilt from it at every start) holds one date job per
planned occurrence, due `schedule_fire_lead_ms` before the occurrence so the signed
play command reaches the terminals before the instant they all start together. Its
misfire grace is explicit (APScheduler's default of one second would silently drop a
job delayed by a busy loop): within the schedule's grace an occurrence still fires,
late; past it, a listener records it "missed" with the reason. Nothing is coalesced.

A heartbeat row records that the runner is alive; after a restart, every due time
since the last heartbeat is accounted for, and the terminals that played it from their
own local schedule meanwhile turn "missed" into "played_offline" by their reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any, Protocol, TypeVar

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlmodel import Session, col, select

from controller.db import Database
from controller.dispatch import Dispatcher
from controller.events import BroadcastChanged, DeliveryChanged, DeviceLiveness, EventHub
from controller.models import Device
from controller.schedules import store
from controller.schedules.models import Schedule
from controller.schedules.plan import OCCURRENCE_PREFIX, from_ms, local_label
from controller.schedules.push import TerminalPusher
from controller.settings import Settings
from controller.targets import topics_for
from dalaba import protocol as p

log = logging.getLogger(__name__)

T = TypeVar("T")
UTC = datetime.UTC
HEARTBEAT_JOB = "schedules.heartbeat"
REFRESH_JOB = "schedules.refresh"
# Occurrences this close to their due time are left as they are by edits: they are
# being fired, or terminals are claiming them from their local schedule.
EDIT_GUARD_MS = 2_000


class ScheduleRunner:
    def __init__(
        self,
        db: Database,
        dispatcher: Dispatcher,
        pusher: TerminalPusher,
        settings: Settings,
    ) -> None:
        self._db = db
        self._dispatcher = dispatcher
        self._pusher = pusher
        self._settings = settings
        self._scheduler: AsyncIOScheduler | None = None
        self._lock = asyncio.Lock()  # one reconcile at a time
        self._in_flight: set[str] = set()
        self._grace: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reported: set[str] = set()
        self._came_online: set[str] = set()
        self._settle_task: asyncio.Task[None] | None = None
        self._online_task: asyncio.Task[None] | None = None
        self.started_ms = 0
        self.down_since_ms: int | None = None

    @property
    def timezone(self) -> str:
        return self._settings.timezone

    @property
    def lead_ms(self) -> int:
        return self._settings.schedule_fire_lead_ms

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        now = p.now_ms()
        beat = await self._db.run(store.read_heartbeat)
        self.down_since_ms = beat.heartbeat_ms if beat is not None else None
        self.started_ms = now
        self._scheduler = AsyncIOScheduler(
            jobstores={"default": MemoryJobStore()},
            timezone=UTC,
            job_defaults={"coalesce": False, "max_instances": 1},
        )
        self._scheduler.add_listener(self._on_job_event, EVENT_JOB_MISSED | EVENT_JOB_ERROR)
        self._scheduler.start()

        changes = store.Changes()
        if self.down_since_ms is not None:
            down_since = self.down_since_ms

            def downtime(session: Session) -> store.Changes:
                return store.record_downtime(
                    session,
                    _schedules(session, None),
                    store.load_topology(session),
                    down_since_ms=down_since,
                    now=now,
                    timezone=self.timezone,
                )

            changes.merge(await self._db.run(downtime))
        changes.merge(await self.reconcile(None, push=False))
        # Every occurrence still waiting, overdue ones too: APScheduler fires those
        # within their grace at once and reports the others missed.
        for occurrence_id, due_ms, grace_s in await self._db.run(store.scheduled_rows):
            self._add_job(occurrence_id, due_ms, grace_s)
        # Only now: a crash during the recovery above leaves the old heartbeat in place,
        # so the next start accounts for the whole outage again.
        await self._db.run(lambda s: store.write_heartbeat(s, now, started=True))
        self._scheduler.add_job(
            self._heartbeat,
            IntervalTrigger(seconds=self._settings.schedule_heartbeat_s, timezone=UTC),
            id=HEARTBEAT_JOB,
            coalesce=True,
            misfire_grace_time=None,
        )
        self._scheduler.add_job(
            self.refresh,
            IntervalTrigger(seconds=self._settings.schedule_refresh_s, timezone=UTC),
            id=REFRESH_JOB,
            coalesce=True,
            misfire_grace_time=None,
        )
        # Terminals already holding their current items are not sent them again.
        all_devices = await self._db.run(lambda s: list(s.exec(select(Device.id)).all()))
        self._spawn(
            self._pusher.push(all_devices, stale_ms=self._settings.schedule_repush_s * 1000)
        )
        log.info(
            "schedule runner up: %d occurrences recorded, %d waiting to fire%s",
            changes.inserted,
            self.pending_jobs(),
            ""
            if self.down_since_ms is None
            else f" (last heartbeat {local_label(self.down_since_ms, self.timezone)})",
        )

    async def stop(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
            await asyncio.sleep(0)  # AsyncIOScheduler shuts down on the loop
        tasks = [t for t in (*self._tasks, self._settle_task, self._online_task) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._pusher.stop()
        now = p.now_ms()
        try:
            await self._db.run(lambda s: store.write_heartbeat(s, now))
        except Exception:
            log.exception("could not record the last heartbeat")

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("schedule task failed", exc_info=task.exception())

    async def _heartbeat(self) -> None:
        now = p.now_ms()
        await self._db.run(lambda s: store.write_heartbeat(s, now))
        if not self._db.is_sqlite:
            # Another replica may have planned occurrences (a schedule edited through
            # it): waiting ones get their job here within a heartbeat.
            for occurrence_id, due_ms, grace_s in await self._db.run(store.scheduled_rows):
                self._add_job(occurrence_id, due_ms, grace_s)

    # ------------------------------------------------------------------ planning

    async def reconcile(
        self, schedule_ids: Collection[str] | None, *, push: bool = True
    ) -> store.Changes:
        """Bring the recorded occurrences of these schedules (None: all) in line with
        their rules up to the horizon; (re)schedule jobs; push the terminals affected."""
        async with self._lock:
            now = p.now_ms()
            settings = self._settings

            def run(session: Session) -> store.Changes:
                return store.reconcile(
                    session,
                    _schedules(session, schedule_ids),
                    store.load_topology(session),
                    start_ms=now,
                    end_ms=now + settings.schedule_horizon_h * 3600_000,
                    guard_ms=self.lead_ms + EDIT_GUARD_MS,
                    now=now,
                    timezone=self.timezone,
                )

            changes = await self._db.run(run)
        for occurrence_id in changes.unjobs:
            self._remove_job(occurrence_id)
        for occurrence_id, due_ms, grace_s in changes.jobs:
            self._add_job(occurrence_id, due_ms, grace_s)
        if push:
            self._pusher.request(changes.devices)
        return changes

    async def refresh(self) -> None:
        """Extend the horizon (hourly): plan what came into it and push the terminals
        whose items changed or whose copy is getting old."""
        await self.reconcile(None, push=False)
        devices = await self._db.run(lambda s: list(s.exec(select(Device.id)).all()))
        await self._pusher.push(devices, stale_ms=self._settings.schedule_repush_s * 1000)

    # ------------------------------------------------------------------ jobs

    @property
    def active(self) -> bool:
        """Running here: on the leader among controller replicas (controller/replicas.py).
        A follower still plans occurrences in the database; the leader picks them up."""
        return self._scheduler is not None and self._scheduler.running

    def _add_job(self, occurrence_id: str, due_ms: int, grace_s: int) -> None:
        if not self.active:
            return
        assert self._scheduler is not None
        run_date = from_ms(due_ms - self.lead_ms)
        job = self._scheduler.get_job(occurrence_id)
        if (
            job is not None
            and job.next_run_time == run_date
            and self._grace.get(occurrence_id) == grace_s
        ):
            return  # already waiting, unchanged (every reconcile lists every occurrence)
        self._grace[occurrence_id] = grace_s
        self._scheduler.add_job(
            self._fire,
            DateTrigger(run_date=run_date, timezone=UTC),
            args=[occurrence_id],
            id=occurrence_id,
            name=f"fire {occurrence_id}",
            replace_existing=True,
            # Measured from the fire time, which is the lead before the due time.
            misfire_grace_time=grace_s + -(-self.lead_ms // 1000),
        )

    def _remove_job(self, occurrence_id: str) -> None:
        if not self.active:
            return
        assert self._scheduler is not None
        self._grace.pop(occurrence_id, None)
        with contextlib.suppress(JobLookupError):
            self._scheduler.remove_job(occurrence_id)

    def pending_jobs(self) -> int:
        if self._scheduler is None:
            return 0
        return sum(1 for j in self._scheduler.get_jobs() if j.id.startswith(OCCURRENCE_PREFIX))

    async def _fire(self, occurrence_id: str) -> None:
        if occurrence_id in self._in_flight:
            return
        self._in_flight.add(occurrence_id)
        try:
            if self._db.is_sqlite:
                await self._fire_once(occurrence_id, _QueuedTxn(self._db))
            else:
                await self._fire_claimed(occurrence_id)
        finally:
            self._in_flight.discard(occurrence_id)
            self._grace.pop(occurrence_id, None)

    async def _fire_claimed(self, occurrence_id: str) -> None:
        """PostgreSQL, where several controller replicas may run: the whole fire in one
        transaction that holds the occurrence's row lock (store.claim_for_fire)."""
        txn = _HeldTxn(self._db.session())
        try:
            if not await txn.read(lambda s: store.claim_for_fire(s, occurrence_id)):
                log.info(
                    "occurrence %s: no longer waiting, or being fired elsewhere", occurrence_id
                )
                return
            await self._fire_once(occurrence_id, txn)
            await txn.commit()
        finally:
            await txn.close()  # rolls back what was not committed, releasing the lock

    async def _fire_once(self, occurrence_id: str, txn: _FireTxn) -> None:
        settings = self._settings
        plan = await txn.read(
            lambda s: store.load_fire_plan(s, occurrence_id, settings.media_mirrors)
        )
        if plan is None:
            return
        if plan.cancelled_by is not None:
            reason = f"broadcast cancelled by {plan.cancelled_by}"
            await txn.write(lambda s: store.record_cancelled(s, occurrence_id, reason))
            return
        now = p.now_ms()
        late_ms = now - plan.due_ms
        if late_ms > plan.grace_s * 1000:
            await self._record_missed(
                occurrence_id, plan.due_ms, plan.grace_s, now, write=txn.write
            )
            return
        note = None
        start_at = plan.due_ms
        if now + settings.sync_lead_ms > plan.due_ms:
            # Too late to start on the instant: start as soon as every terminal can.
            start_at = now + settings.sync_lead_ms + settings.fetch_lead_ms
            if late_ms > 0:
                note = f"fired {late_ms / 1000:.1f} s after its time"
            else:
                note = (
                    f"fired only {-late_ms} ms ahead, so it starts {start_at - plan.due_ms} ms late"
                )
            if plan.due_ms < self.started_ms:
                note += (
                    " after a controller restart; terminals holding it in their local "
                    "schedule played it on time"
                )
        body = plan.body.model_copy(update={"start_at": start_at})
        command = p.Command.new(body, plan.target, plan.expires_at_ms)
        published = await self._dispatcher.send(command, topics_for(plan.target))
        await txn.write(
            lambda s: store.record_fired(
                s,
                occurrence_id,
                fired_ms=now,
                start_at_ms=start_at,
                command_id=command.id,
                published=published,
                note=note,
            )
        )
        log.info(
            "occurrence %s of %s fired by replica %s",
            occurrence_id,
            plan.schedule_id,
            settings.replica_name,
        )
        if note:
            log.warning("occurrence %s of %s: %s", occurrence_id, plan.schedule_id, note)

    async def _record_missed(
        self,
        occurrence_id: str,
        due_ms: int,
        grace_s: int,
        now: int,
        write: Callable[[Callable[[Session], bool]], Awaitable[bool]] | None = None,
    ) -> None:
        if self.down_since_ms is not None and self.down_since_ms <= due_ms < self.started_ms:
            reason = store.downtime_reason(
                due_ms, grace_s, self.down_since_ms, self.started_ms, self.timezone
            )
        else:
            reason = (
                f"due at {local_label(due_ms, self.timezone)} but the scheduler ran it "
                f"{(now - due_ms) / 1000:.1f} s late, past the grace of {grace_s} s "
                "(controller overloaded, or its clock jumped)"
            )
        write = write or self._db.run
        recorded = await write(lambda s: store.record_missed(s, occurrence_id, reason))
        if recorded:
            log.warning("occurrence %s missed: %s", occurrence_id, reason)

    def _on_job_event(self, event: JobExecutionEvent) -> None:
        if not event.job_id.startswith(OCCURRENCE_PREFIX):
            if event.code == EVENT_JOB_ERROR:
                log.error("schedule job %s failed: %r", event.job_id, event.exception)
            return
        due_ms = int(event.scheduled_run_time.timestamp() * 1000) + self.lead_ms
        grace_s = self._grace.pop(event.job_id, self._settings.schedule_misfire_grace_s)
        if event.code == EVENT_JOB_MISSED:
            self._spawn(self._record_missed(event.job_id, due_ms, grace_s, p.now_ms()))
        else:
            reason = f"firing failed: {event.exception!r}"
            self._spawn(self._db.run(lambda s: store.record_missed(s, event.job_id, reason)))

    # ------------------------------------------------------------------ reports

    def listen(self, events: EventHub) -> None:
        events.on(DeliveryChanged, self._on_delivery, owner="schedules")
        events.on(DeviceLiveness, self._on_liveness, owner="schedules")
        events.on(BroadcastChanged, self._on_broadcast, owner="schedules")

    def _on_delivery(self, e: DeliveryChanged) -> None:
        """A terminal's report on an occurrence may show it played one the controller
        could not dispatch."""
        if (
            self.active
            and e.broadcast_id.startswith(OCCURRENCE_PREFIX)
            and e.state
            in (
                p.DeliveryState.PLAYING,
                p.DeliveryState.DONE,
            )
        ):
            self._reported.add(e.broadcast_id)
            if self._settle_task is None or self._settle_task.done():
                self._settle_task = asyncio.create_task(self._settle_later())

    def _on_liveness(self, e: DeviceLiveness) -> None:
        """A terminal back online gets its local schedule if it is stale."""
        if self.active and e.online:
            self._came_online.add(e.device_id)
            if self._online_task is None or self._online_task.done():
                self._online_task = asyncio.create_task(self._push_came_online())

    def _on_broadcast(self, e: BroadcastChanged) -> None:
        """An occurrence's broadcast cancelled by hand (before or after it fired) leaves
        the terminals' local schedules at once."""
        if self.active and e.change == "cancelled" and e.broadcast_id.startswith(OCCURRENCE_PREFIX):
            self._spawn(self._withdraw(e.broadcast_id, f"broadcast cancelled by {e.actor}"))

    async def _withdraw(self, occurrence_id: str, reason: str) -> None:
        devices = await self._db.run(lambda s: store.withdraw(s, occurrence_id, reason))
        self._remove_job(occurrence_id)
        self._pusher.request(devices)

    async def _settle_later(self) -> None:
        await asyncio.sleep(0.2)
        ids, self._reported = self._reported, set()
        try:
            settled = await self._db.run(lambda s: store.settle_played_offline(s, ids))
        except Exception:
            log.exception("settling occurrences played offline failed")
            return
        for occurrence_id in settled:
            log.info("occurrence %s was played by terminals on their own", occurrence_id)

    async def _push_came_online(self) -> None:
        await asyncio.sleep(self._settings.schedule_push_debounce_ms / 1000)
        devices, self._came_online = self._came_online, set()
        try:
            await self._pusher.push(
                devices,
                stale_ms=self._settings.schedule_online_repush_s * 1000,
                came_online=True,
            )
        except Exception:
            log.exception("pushing schedules to terminals back online failed")


def _schedules(session: Session, ids: Collection[str] | None) -> list[Schedule]:
    query = select(Schedule)
    if ids is None:
        query = query.where(Schedule.status != "deleted")
    else:
        query = query.where(col(Schedule.id).in_(list(ids)))
    return list(session.exec(query))


class _FireTxn(Protocol):
    """Where one fire reads and writes."""

    async def read(self, fn: Callable[[Session], T]) -> T: ...

    async def write(self, fn: Callable[[Session], T]) -> T: ...


class _QueuedTxn:
    """SQLite (one controller process): reads beside the database's write queue (WAL
    lets a reader in while the single writer works, so a big reconcile or ingest batch
    never delays a fire); writes through it."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def read(self, fn: Callable[[Session], T]) -> T:
        return await asyncio.to_thread(self._db.run_sync, fn)

    async def write(self, fn: Callable[[Session], T]) -> T:
        return await self._db.run(fn)


class _HeldTxn:
    """PostgreSQL: one session and transaction for the whole fire, committed at the end."""

    def __init__(self, session: Session) -> None:
        self._session = session

    async def read(self, fn: Callable[[Session], T]) -> T:
        return await asyncio.to_thread(fn, self._session)

    write = read

    async def commit(self) -> None:
        await asyncio.to_thread(self._session.commit)

    async def close(self) -> None:
        await asyncio.to_thread(self._session.close)
