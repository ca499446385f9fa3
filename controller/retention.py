"""What is kept, for how long, and the daily job that applies it.

The policy (docs/operations.md, "Retention"; every period is a setting):

| what | kept | then |
| --- | --- | --- |
| raw telemetry samples | 7 days | rolled up into hours (min/max/avg per field, faults seen) |
| hourly telemetry rollups | 90 days | rolled up into days |
| daily telemetry rollups | 5 years | deleted |
| broadcasts with their deliveries, schedule occurrences, approval requests | 5 years | deleted |
| the audit log | for ever | (a period can be set) |
| security events | 3 years | deleted |
| online intervals, fault episodes, closed work orders | 5 years | deleted |

Everything is done in small transactions (`RetentionPolicy.batch_size` rows each), so
the controller keeps ingesting between them: on SQLite every transaction waits for the
one before it. A job stopped at any point leaves nothing half done: telemetry rows are
rolled up and deleted per hour (or day) window in an order a rerun can pick up (a
terminal's rollup of a window is written whole, once, before its samples go: samples
of a window that already has the terminal's rollup are only deleted, never counted
twice), and every deletion is of rows the policy no longer keeps.

`apply_retention(session, now, policy)` does it all in one call (for tests and tools);
`RetentionJob` runs the same steps daily at the configured local hour, each batch
through the database's worker.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, delete, exists, func, or_
from sqlmodel import Session, col, select

from controller.approvals import PendingBroadcast
from controller.db import Database
from controller.history import (
    FaultEpisode,
    OnlineInterval,
    TelemetryRollup,
    WorkOrder,
    local_day_start,
    local_hour_start,
    next_local_day,
)
from controller.models import (
    AuditEntry,
    Broadcast,
    BroadcastCount,
    Delivery,
    DeliveryTransition,
    SecurityEvent,
    TelemetrySample,
)
from controller.schedules.models import Occurrence
from dalaba import protocol as p

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000
HOUR_MS = 3600 * 1000
# Telemetry fields summarised in rollups: what tells a technician about a terminal's
# health over months (a clock that drifts is the `clock` fault, kept in "faults"). Each
# field costs about 50 bytes in each of a province's 20 million hourly rollups.
ROLLED_FIELDS = ("temperature_c", "signal_dbm", "battery_pct", "volume")


@dataclass(frozen=True, kw_only=True)
class RetentionPolicy:
    """How long each kind of record is kept, in days; 0 keeps it for ever."""

    raw_telemetry_days: int = 7
    hourly_telemetry_days: int = 90
    daily_telemetry_days: int = 1826  # 5 years
    broadcast_days: int = 1826
    audit_days: int = 0
    security_days: int = 1096  # 3 years
    history_days: int = 1826
    # Rows per transaction. On SQLite every other database call (the ingest included)
    # waits for the one running: 1,000 telemetry rows take about 50 ms on a small server.
    batch_size: int = 1000
    timezone: str = "Asia/Shanghai"

    def __post_init__(self) -> None:
        if self.raw_telemetry_days < 1 or self.hourly_telemetry_days < self.raw_telemetry_days:
            raise ValueError("raw telemetry is kept >= 1 day, hourly rollups at least as long")
        if 0 < self.daily_telemetry_days < self.hourly_telemetry_days:
            raise ValueError("daily rollups are kept at least as long as hourly ones")
        if self.batch_size < 1:
            raise ValueError("batch_size >= 1")

    @classmethod
    def from_settings(cls, settings: Any) -> RetentionPolicy:
        return cls(
            raw_telemetry_days=settings.retention_raw_telemetry_days,
            hourly_telemetry_days=settings.retention_hourly_telemetry_days,
            daily_telemetry_days=settings.retention_daily_telemetry_days,
            broadcast_days=settings.retention_broadcast_days,
            audit_days=settings.retention_audit_days,
            security_days=settings.retention_security_days,
            history_days=settings.retention_history_days,
            timezone=settings.timezone,
        )


# A step does one batch in the session it is given and says whether more remains.
Step = Callable[[Session], bool]


@dataclass
class _Field:
    low: float
    high: float
    total: float
    n: int

    def add(self, low: float, high: float, total: float, n: int) -> None:
        self.low, self.high = min(self.low, low), max(self.high, high)
        self.total += total
        self.n += n


@dataclass
class _Summary:
    """One terminal's telemetry over one hour or day, built from samples or rollups."""

    samples: int = 0
    fields: dict[str, _Field] = field(default_factory=dict)
    faults: set[str] = field(default_factory=set)
    firmware: str | None = None
    latest_ms: int = -1

    def _add_field(self, name: str, low: float, high: float, total: float, n: int) -> None:
        if name in self.fields:
            self.fields[name].add(low, high, total, n)
        else:
            self.fields[name] = _Field(low, high, total, n)

    def _note(self, at_ms: int, firmware: Any, faults: Any) -> None:
        if isinstance(faults, list):
            self.faults.update(str(f) for f in faults)
        if isinstance(firmware, str) and at_ms >= self.latest_ms:
            self.firmware, self.latest_ms = firmware, at_ms

    def add_sample(self, at_ms: int, data: dict[str, Any]) -> None:
        self.samples += 1
        for name in ROLLED_FIELDS:
            value = data.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._add_field(name, value, value, value, 1)
        self._note(at_ms, data.get("firmware"), data.get("faults"))

    def add_rollup(self, start_ms: int, samples: int, data: dict[str, Any]) -> None:
        self.samples += samples
        for name in ROLLED_FIELDS:
            stats = data.get(name)
            if isinstance(stats, dict):
                n = int(stats.get("n", samples))
                self._add_field(name, stats["min"], stats["max"], stats["avg"] * n, n)
        self._note(start_ms, data.get("firmware"), data.get("faults"))

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, f in self.fields.items():
            stats: dict[str, Any] = {"min": f.low, "max": f.high, "avg": round(f.total / f.n, 2)}
            if f.n != self.samples:  # only some samples had it (battery_pct on mains)
                stats["n"] = f.n
            out[name] = stats
        out["faults"] = sorted(self.faults)
        if self.firmware is not None:
            out["firmware"] = self.firmware
        return out


class _Rollup:
    """Rolls every row of `source` older than `cutoff` into `period` rollups, one local
    hour or day window at a time: read the window's rows (in batches, keyset on time
    and id), write one rollup per terminal, then delete the window's rows."""

    def __init__(
        self, name: str, period: str, cutoff: int, policy: RetentionPolicy, counts: Counter[str]
    ) -> None:
        self.name, self.period, self.cutoff = name, period, cutoff
        self.batch = policy.batch_size
        self.zone = ZoneInfo(policy.timezone)
        self.counts = counts
        self._window: tuple[int, int] | None = None
        self._phase = "read"
        self._after: tuple[int, int] | None = None  # keyset: last (time, id) read
        self._done_devices: set[str] = set()
        self._summaries: dict[str, _Summary] = {}
        self._pending: list[TelemetryRollup] = []

    # -- what the source is (raw samples or hourly rollups)

    def _time(self) -> Any:
        raise NotImplementedError

    def _source(self) -> Any:
        raise NotImplementedError

    def _window_of(self, ms: int) -> tuple[int, int]:
        raise NotImplementedError

    def _read(self, session: Session, lo: int, hi: int) -> list[Any]:
        raise NotImplementedError

    def _summarise(self, row: Any) -> None:
        raise NotImplementedError

    # -- the walk

    def __call__(self, session: Session) -> bool:
        if self._window is None:
            oldest = session.exec(
                self._source()
                .with_only_columns(func.min(self._time()))
                .where(self._time() < self.cutoff)
            ).one()
            if oldest is None:
                return False
            self._start_window(session, self._window_of(int(oldest)))
            return True
        lo, hi = self._window
        if self._phase == "read":
            rows = self._read(session, lo, hi)
            for row in rows:
                self._summarise(row)
            if len(rows) < self.batch:
                self._pending = [
                    TelemetryRollup(
                        device_id=device_id,
                        period=self.period,
                        start_ms=lo,
                        samples=summary.samples,
                        data=summary.data(),
                    )
                    for device_id, summary in sorted(self._summaries.items())
                ]
                self._summaries = {}
                self._phase = "write"
            return True
        if self._phase == "write":
            chunk, self._pending = self._pending[: self.batch], self._pending[self.batch :]
            session.add_all(chunk)
            self.counts[f"{self.name}_written"] += len(chunk)
            if not self._pending:
                self._phase = "delete"
            return True
        deleted = self._delete(session, lo, hi)
        self.counts[f"{self.name}_deleted"] += deleted
        if deleted < self.batch:
            self._window = None  # the next window, if any
        return True

    def _start_window(self, session: Session, window: tuple[int, int]) -> None:
        self._window, self._phase, self._after = window, "read", None
        # Terminals whose rollup of this window exists: a run stopped between writing
        # and deleting. Their rows were counted; they are deleted, not counted again.
        self._done_devices = set(
            session.exec(
                select(TelemetryRollup.device_id)
                .where(TelemetryRollup.period == self.period)
                .where(TelemetryRollup.start_ms == window[0])
            ).all()
        )

    def _keyset(self, query: Any, id_column: Any) -> Any:
        if self._after is None:
            return query
        at, row_id = self._after
        return query.where(or_(self._time() > at, and_(self._time() == at, id_column > row_id)))

    def _delete(self, session: Session, lo: int, hi: int) -> int:
        raise NotImplementedError

    def _summary(self, device_id: str) -> _Summary | None:
        if device_id in self._done_devices:
            return None
        return self._summaries.setdefault(device_id, _Summary())


class _RawToHourly(_Rollup):
    def _time(self) -> Any:
        return col(TelemetrySample.at_ms)

    def _source(self) -> Any:
        return select(TelemetrySample)

    def _window_of(self, ms: int) -> tuple[int, int]:
        start = local_hour_start(ms, self.zone)
        return start, start + HOUR_MS

    def _read(self, session: Session, lo: int, hi: int) -> list[Any]:
        ids = col(TelemetrySample.id)
        query = (
            select(TelemetrySample.id, TelemetrySample.device_id, TelemetrySample.at_ms)
            .add_columns(col(TelemetrySample.data))
            .where(self._time() >= lo)
            .where(self._time() < hi)
        )
        rows = list(
            session.exec(
                self._keyset(query, ids).order_by(self._time(), ids).limit(self.batch)
            ).all()
        )
        if rows:
            self._after = (rows[-1][2], rows[-1][0])
        return rows

    def _summarise(self, row: Any) -> None:
        _id, device_id, at_ms, data = row
        summary = self._summary(device_id)
        if summary is not None and isinstance(data, dict):
            summary.add_sample(at_ms, data)

    def _delete(self, session: Session, lo: int, hi: int) -> int:
        doomed = (
            select(TelemetrySample.id)
            .where(self._time() >= lo)
            .where(self._time() < hi)
            .limit(self.batch)
        )
        result = session.exec(  # type: ignore[call-overload]
            delete(TelemetrySample).where(col(TelemetrySample.id).in_(doomed))
        )
        return int(result.rowcount)


class _HourlyToDaily(_Rollup):
    def _time(self) -> Any:
        return col(TelemetryRollup.start_ms)

    def _source(self) -> Any:
        return select(TelemetryRollup).where(TelemetryRollup.period == "hour")

    def _window_of(self, ms: int) -> tuple[int, int]:
        return local_day_start(ms, self.zone), next_local_day(ms, self.zone)

    def _read(self, session: Session, lo: int, hi: int) -> list[Any]:
        ids = col(TelemetryRollup.id)
        query = (
            select(
                TelemetryRollup.id,
                TelemetryRollup.device_id,
                TelemetryRollup.start_ms,
                TelemetryRollup.samples,
            )
            .add_columns(col(TelemetryRollup.data))
            .where(col(TelemetryRollup.period) == "hour")
            .where(self._time() >= lo)
            .where(self._time() < hi)
        )
        rows = list(
            session.exec(
                self._keyset(query, ids).order_by(self._time(), ids).limit(self.batch)
            ).all()
        )
        if rows:
            self._after = (rows[-1][2], rows[-1][0])
        return rows

    def _summarise(self, row: Any) -> None:
        _id, device_id, start_ms, samples, data = row
        summary = self._summary(device_id)
        if summary is not None and isinstance(data, dict):
            summary.add_rollup(start_ms, samples, data)

    def _delete(self, session: Session, lo: int, hi: int) -> int:
        doomed = (
            select(TelemetryRollup.id)
            .where(TelemetryRollup.period == "hour")
            .where(self._time() >= lo)
            .where(self._time() < hi)
            .limit(self.batch)
        )
        result = session.exec(  # type: ignore[call-overload]
            delete(TelemetryRollup).where(col(TelemetryRollup.id).in_(doomed))
        )
        return int(result.rowcount)


def _prune(
    name: str, model: Any, key: Any, condition: Any, batch: int, counts: Counter[str]
) -> Step:
    """Deletes rows of `model` matching `condition`, `batch` at a time."""

    def step(session: Session) -> bool:
        doomed = select(key).where(condition).limit(batch)
        result = session.exec(delete(model).where(key.in_(doomed)))  # type: ignore[call-overload]
        deleted = int(result.rowcount)
        counts[f"{name}_deleted"] += deleted
        return deleted >= batch

    return step


def plan(policy: RetentionPolicy, now_ms: int, counts: Counter[str]) -> Iterator[Step]:
    """The steps of one run, in order; each is called until it says it is done."""
    zone = ZoneInfo(policy.timezone)
    batch = policy.batch_size

    def before(days: int) -> int:
        return now_ms - days * DAY_MS

    # Whole local hours and days only: a window is rolled up once, complete.
    yield _RawToHourly(
        "telemetry_raw",
        "hour",
        local_hour_start(before(policy.raw_telemetry_days), zone),
        policy,
        counts,
    )
    yield _HourlyToDaily(
        "telemetry_hourly",
        "day",
        local_day_start(before(policy.hourly_telemetry_days), zone),
        policy,
        counts,
    )
    if policy.daily_telemetry_days:
        yield _prune(
            "telemetry_daily",
            TelemetryRollup,
            col(TelemetryRollup.id),
            and_(
                col(TelemetryRollup.period) == "day",
                col(TelemetryRollup.start_ms) < before(policy.daily_telemetry_days),
            ),
            batch,
            counts,
        )
    if policy.broadcast_days:
        cutoff = before(policy.broadcast_days)
        # By expiry, the last moment a broadcast could still be played: 5 years after
        # it nothing of it is live, whatever its status says.
        old = select(Broadcast.id).where(col(Broadcast.expires_at_ms) < cutoff)
        # A delivery's history before the delivery, its broadcast's counts with it.
        yield _prune(
            "delivery_transitions",
            DeliveryTransition,
            col(DeliveryTransition.id),
            col(DeliveryTransition.broadcast_id).in_(old),
            batch,
            counts,
        )
        yield _prune(
            "broadcast_counts",
            BroadcastCount,
            col(BroadcastCount.broadcast_id),
            col(BroadcastCount.broadcast_id).in_(old),
            batch,
            counts,
        )
        yield _prune(
            "deliveries",
            Delivery,
            col(Delivery.id),
            col(Delivery.broadcast_id).in_(old),
            batch,
            counts,
        )
        yield _prune(
            "broadcasts",
            Broadcast,
            col(Broadcast.id),
            and_(
                col(Broadcast.expires_at_ms) < cutoff,
                ~exists().where(col(Delivery.broadcast_id) == col(Broadcast.id)),
            ),
            batch,
            counts,
        )
        yield _prune(
            "occurrences",
            Occurrence,
            col(Occurrence.id),
            and_(col(Occurrence.due_ms) < cutoff, col(Occurrence.outcome) != "scheduled"),
            batch,
            counts,
        )
        yield _prune(
            "approval_requests",
            PendingBroadcast,
            col(PendingBroadcast.id),
            and_(
                col(PendingBroadcast.created_ms) < cutoff, col(PendingBroadcast.status) != "pending"
            ),
            batch,
            counts,
        )
    if policy.audit_days:
        yield _prune(
            "audit",
            AuditEntry,
            col(AuditEntry.id),
            col(AuditEntry.at_ms) < before(policy.audit_days),
            batch,
            counts,
        )
    if policy.security_days:
        yield _prune(
            "security_events",
            SecurityEvent,
            col(SecurityEvent.id),
            col(SecurityEvent.at_ms) < before(policy.security_days),
            batch,
            counts,
        )
    if policy.history_days:
        cutoff = before(policy.history_days)
        # Closed ones only: a terminal online (or a fault open) for five years is
        # still history in the making.
        yield _prune(
            "online_intervals",
            OnlineInterval,
            col(OnlineInterval.id),
            col(OnlineInterval.end_ms) < cutoff,
            batch,
            counts,
        )
        yield _prune(
            "fault_episodes",
            FaultEpisode,
            col(FaultEpisode.id),
            col(FaultEpisode.end_ms) < cutoff,
            batch,
            counts,
        )
        yield _prune(
            "work_orders",
            WorkOrder,
            col(WorkOrder.id),
            and_(col(WorkOrder.status) == "closed", col(WorkOrder.closed_ms) < cutoff),
            batch,
            counts,
        )


def apply_retention(session: Session, now_ms: int, policy: RetentionPolicy) -> dict[str, int]:
    """Apply `policy` as of `now_ms`, committing after every batch. Returns how many
    rows each step wrote or deleted (e.g. "telemetry_raw_deleted")."""
    counts: Counter[str] = Counter()
    for step in plan(policy, now_ms, counts):
        while True:
            more = step(session)
            session.commit()
            if not more:
                break
    return dict(counts)


class RetentionJob:
    """Applies the policy once a day at `hour` o'clock local time, one batch per
    database transaction. A day missed (the controller was down) only leaves more for
    the next run."""

    def __init__(
        self, db: Database, policy: RetentionPolicy, hour: int = 3, enabled: bool = True
    ) -> None:
        self._db = db
        self._policy = policy
        self._hour = hour
        self._enabled = enabled
        self._zone = ZoneInfo(policy.timezone)
        self._task: asyncio.Task[None] | None = None
        self.last_run: dict[str, int] | None = None

    @classmethod
    def from_settings(cls, db: Database, settings: Any) -> RetentionJob:
        return cls(
            db,
            RetentionPolicy.from_settings(settings),
            hour=settings.retention_hour,
            enabled=settings.retention_enabled,
        )

    async def start(self) -> None:
        if self._enabled:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def seconds_until_next(self, now_ms: int) -> float:
        now = dt.datetime.fromtimestamp(now_ms / 1000, self._zone)
        due = now.replace(hour=self._hour, minute=0, second=0, microsecond=0)
        if due <= now:
            due = dt.datetime.combine(
                now.date() + dt.timedelta(days=1), dt.time(self._hour), self._zone
            )
        return (due.timestamp() * 1000 - now_ms) / 1000

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.seconds_until_next(p.now_ms()))
            try:
                await self.run_once()
            except Exception:
                log.exception("retention run failed; the rest waits for tomorrow's run")

    async def run_once(self, now_ms: int | None = None) -> dict[str, int]:
        now = p.now_ms() if now_ms is None else now_ms
        counts: Counter[str] = Counter()
        for step in plan(self._policy, now, counts):
            while await self._db.run(step):
                pass
        self.last_run = dict(counts)
        log.info("retention applied: %s", self.last_run or "nothing to do")
        return self.last_run
