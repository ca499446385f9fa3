"""What happened to the terminals over time, kept so that figures are computed, not
guessed: when each terminal was online (intervals), each fault from its start to its end
(episodes), the work orders that faults open, and telemetry rolled up as it ages.

The latest state lives on `Device` (online, faults, telemetry); these tables are its
history. `controller.ingest` writes intervals and episodes in the same transaction as
the change on `Device`, so the two never disagree; `repair` (at every start) restores
that agreement if anything ever broke it; `controller.retention` rolls up and prunes;
`controller.workorders` opens and closes work orders.

Two invariants hold after every committed transaction:

- a terminal shown online has exactly one open interval (end_ms None), one shown
  offline has none;
- the keys of `Device.faults` are exactly the faults of its open episodes.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from typing import Any, Generic, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy import JSON, BigInteger, Column, Index, func
from sqlmodel import Field, Session, SQLModel, col, select

from controller.models import Device
from dalaba import protocol as p

K = TypeVar("K")
R = TypeVar("R")


def _ms(nullable: bool = False, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(BigInteger, nullable=nullable, index=index))


class OnlineInterval(SQLModel, table=True):
    """One stretch of a terminal being online: [start_ms, end_ms), end_ms None while it
    lasts. The online rate of any period is the overlap of these with the period."""

    # The largest history table (years of it): only the indexes its queries use. A
    # terminal's open interval and its history by time: the two (device_id, ...); the
    # online rate's range sums: start_ms and end_ms. Scope (township, village) comes
    # from the join with Device, so those two columns are not indexed.
    __table_args__ = (
        Index("ix_onlineinterval_device_start", "device_id", "start_ms"),
        Index("ix_onlineinterval_device_end", "device_id", "end_ms"),
    )

    id: int | None = Field(default=None, primary_key=True)
    device_id: str
    village_id: str
    township_id: str
    start_ms: int = _ms(index=True)
    end_ms: int | None = _ms(nullable=True, index=True)
    # How it ended: "status" (said goodbye), "will" (the broker saw it die), "silent"
    # (three telemetry intervals without a word), "controller" (closed at a restart).
    end_reason: str | None = None


class FaultEpisode(SQLModel, table=True):
    """One fault on one terminal from the moment it was raised until it cleared."""

    __table_args__ = (Index("ix_faultepisode_device_fault", "device_id", "fault"),)

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(index=True)
    village_id: str = Field(index=True)
    township_id: str = Field(index=True)
    fault: str  # protocol Fault value: amplifier, speaker_line, on_battery, clock, ...
    start_ms: int = _ms(index=True)
    end_ms: int | None = _ms(nullable=True, index=True)
    # The terminal's event detail, plus who opened and closed it: "opened_by" and
    # "closed_by" are "event", "telemetry" or "controller" (see `FaultBook`).
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class WorkOrder(SQLModel, table=True):
    """A fault that outlasted `work_order_after_s` becomes a technician's job. It is
    `open` until the fault clears (`fault_cleared`), then `closed` when a technician
    confirms the repair; a fault that returns before that reopens the same order."""

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(index=True)
    village_id: str = Field(index=True)
    township_id: str = Field(index=True)
    fault: str
    episode_id: int | None = Field(default=None, index=True)
    status: str = Field(default="open", index=True)  # open | fault_cleared | closed
    opened_ms: int = _ms(index=True)
    assigned_to: str | None = None
    # [{"at": ms, "by": user, "text": str}]
    notes: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    fault_cleared_ms: int | None = _ms(nullable=True)
    closed_ms: int | None = _ms(nullable=True)
    closed_by: str | None = None


class TelemetryRollup(SQLModel, table=True):
    """Telemetry samples of one terminal summarised over an hour or a day, once the raw
    samples are older than the retention policy keeps them."""

    # Unique: a (terminal, period, start) is rolled up once. Retention relies on it: a
    # second controller running the same job at the same time fails its insert instead
    # of counting the samples twice.
    __table_args__ = (
        Index("ix_telemetryrollup_device_period", "device_id", "period", "start_ms", unique=True),
        # Retention walks one period's rows by time.
        Index("ix_telemetryrollup_period_start", "period", "start_ms"),
    )

    id: int | None = Field(default=None, primary_key=True)
    device_id: str
    period: str  # "hour" | "day" (hours and days of the county's local time)
    start_ms: int = _ms()
    samples: int = 0
    # {"temperature_c": {"min", "max", "avg"}, "signal_dbm": {...}, "battery_pct": {...},
    #  "volume": {...}, "faults": [...every fault seen...], "firmware": the latest};
    # a field's "n" (how many samples had it) is there only when it is not `samples`,
    # and a field no sample had is absent.
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


# ------------------------------------------------------------------ writing intervals

# Why a terminal went offline, as `OnlineInterval.end_reason`.
END_STATUS, END_WILL, END_SILENT, END_CONTROLLER = "status", "will", "silent", "controller"
# Telemetry lists only these; a fault named by an event outside them (a newer
# terminal's) is opened and closed by events alone.
PROTOCOL_FAULTS = frozenset(f.value for f in p.Fault)
# A terminal's time for a fault event is believed unless it is in the future or this
# much older than its arrival: a terminal whose clock is wrong (the `clock` fault)
# must not date an episode in 1970 or next year.
_BELIEVED_AGE_MS = 24 * 3600 * 1000


class _OpenRows(Generic[K, R]):
    """The open rows (no `end_ms`) of a history table for the terminals of one
    transaction, by key. Those named at construction are loaded with one query the
    first time one is needed (a batch of ten thousand reports costs one query, not ten
    thousand); another terminal adds a query of its own. Queries are autoflushed, so
    what another book of the same transaction wrote is seen."""

    model: Any  # OnlineInterval | FaultEpisode: device_id, start_ms, end_ms

    def __init__(self, session: Session, device_ids: Collection[str] = ()) -> None:
        self._session = session
        self._ids = set(device_ids)
        self._open: dict[K, R] | None = None

    def _key(self, row: R) -> K:
        raise NotImplementedError

    def _book(self, device_id: str) -> dict[K, R]:
        if self._open is None:
            self._open = {}
            self._load(self._ids | {device_id})
        elif device_id not in self._ids:
            self._load({device_id})
        return self._open

    def _load(self, ids: set[str]) -> None:
        assert self._open is not None
        self._ids |= ids
        rows = self._session.exec(
            select(self.model)
            .where(col(self.model.device_id).in_(ids))
            .where(col(self.model.end_ms).is_(None))
            .order_by(col(self.model.start_ms))
        ).all()
        for row in rows:
            # The earliest, should there ever be two (`repair` closes the others).
            self._open.setdefault(self._key(row), row)


class IntervalBook(_OpenRows[str, OnlineInterval]):
    """Online intervals written inside one transaction. The open intervals of the
    terminals named at construction are loaded with one query the first time one is
    needed (a batch of ten thousand reports costs one query, not ten thousand)."""

    model = OnlineInterval

    def _key(self, row: OnlineInterval) -> str:
        return row.device_id

    def opened(self, device: Device, at_ms: int) -> None:
        """`device` was just shown online at `at_ms`."""
        book = self._book(device.id)
        if device.id in book and book[device.id].end_ms is None:
            return  # already open: one interval per stretch online
        row = OnlineInterval(
            device_id=device.id,
            village_id=device.village_id,
            township_id=device.township_id,
            start_ms=at_ms,
        )
        self._session.add(row)
        book[device.id] = row

    def closed(self, device: Device, at_ms: int, reason: str) -> None:
        """`device` was just shown offline; it was last online at `at_ms`."""
        row = self._book(device.id).pop(device.id, None)
        if row is None or row.end_ms is not None:
            return
        # A clock stepped back between the two must not make a negative interval.
        row.end_ms = max(at_ms, row.start_ms)
        row.end_reason = reason


# ------------------------------------------------------------------ writing fault episodes


class FaultBook(_OpenRows[tuple[str, str], FaultEpisode]):
    """Fault episodes written inside one transaction, kept in step with `Device.faults`.

    Events open and close episodes (`raised`, `cleared`). Telemetry's `faults` list is
    the safety net for events that were lost (a terminal offline for long drops its
    queued fault events first when its outbox fills) and is reconciled by `telemetry`:

    - a protocol fault in a telemetry with no open episode opens one at the
      telemetry's time, unless an episode of that fault ended at or after it (a
      telemetry composed before the terminal's "cleared" event and delivered after it);
    - an open episode whose fault is missing from two telemetries in a row, both sent
      after the episode started, closes at the time of the first of them. One missing
      is not enough: a telemetry composed just before the "raised" event and delivered
      after it would close a fault that is there.
    """

    model = FaultEpisode

    def _key(self, row: FaultEpisode) -> tuple[str, str]:
        return (row.device_id, row.fault)

    def raised(
        self,
        device: Device,
        fault: str,
        at_ms: int,
        rx_ms: int,
        detail: dict[str, Any] | None = None,
        by: str = "event",
    ) -> FaultEpisode | None:
        """A fault was raised on `device` at `at_ms` (its clock); None if it was open."""
        book = self._book(device.id)
        start = believed_time(at_ms, rx_ms)
        if fault not in device.faults or start < device.faults[fault]:
            device.faults = {**device.faults, fault: start}
        existing = book.get((device.id, fault))
        if existing is not None and existing.end_ms is None:
            # Seen first in telemetry, its event delivered later from the terminal's
            # outbox: the event knows when it began.
            existing.start_ms = min(existing.start_ms, start)
            return None
        row = FaultEpisode(
            device_id=device.id,
            village_id=device.village_id,
            township_id=device.township_id,
            fault=fault,
            start_ms=device.faults[fault],
            detail={**(detail or {}), "opened_by": by},
        )
        self._session.add(row)
        book[(device.id, fault)] = row
        return row

    def cleared(
        self, device: Device, fault: str, at_ms: int, rx_ms: int, by: str = "event"
    ) -> FaultEpisode | None:
        """A fault cleared on `device` at `at_ms` (its clock); None if none was open."""
        if fault in device.faults:
            device.faults = {k: v for k, v in device.faults.items() if k != fault}
        row = self._book(device.id).pop((device.id, fault), None)
        if row is None or row.end_ms is not None:  # (closed by another book)
            return None
        row.end_ms = max(row.start_ms, believed_time(at_ms, rx_ms))
        row.detail = {**row.detail, "closed_by": by}
        return row

    def telemetry(
        self,
        device: Device,
        faults: Iterable[str],
        at_ms: int,
        rx_ms: int,
        previous: dict[str, Any] | None,
    ) -> None:
        """Reconcile with a telemetry's `faults` (sent at `at_ms`); `previous` is the
        terminal's telemetry before this one (`Device.telemetry` as it was)."""
        now_listed = set(faults)
        shown = {f for f in device.faults if f in PROTOCOL_FAULTS}
        if not now_listed and not shown:
            return  # the common case: nothing to look up
        for fault in sorted(now_listed - shown):
            if not self._ended_since(device.id, fault, at_ms):
                self.raised(device, fault, at_ms, rx_ms, by="telemetry")
        if previous is None:
            return
        before_listed = set(previous.get("faults") or ())
        before_at = previous.get("at")
        if not isinstance(before_at, int):
            return
        for fault in sorted(shown - now_listed - before_listed):
            if before_at >= device.faults[fault]:
                self.cleared(device, fault, before_at, rx_ms, by="telemetry")

    def _ended_since(self, device_id: str, fault: str, at_ms: int) -> bool:
        last_end = self._session.exec(
            select(func.max(FaultEpisode.end_ms))
            .where(FaultEpisode.device_id == device_id)
            .where(FaultEpisode.fault == fault)
        ).one()
        return last_end is not None and last_end >= at_ms


def believed_time(at_ms: int, rx_ms: int) -> int:
    """The terminal's time of an event, where it can be believed; else its arrival."""
    if at_ms > rx_ms or at_ms < rx_ms - _BELIEVED_AGE_MS:
        return rx_ms
    return at_ms


# ------------------------------------------------------------------ repair at start


def repair(session: Session, now_ms: int) -> dict[str, int]:
    """Restore the invariants (module docstring) without closing anything a restart
    does not explain: a controller restart is not the terminal's fault, so a terminal
    shown online keeps its open interval. Only what disagrees with `Device` changes:
    end_reason "controller" (and closed_by "controller") mark what was mended.

    Also what a database upgraded from before this history meets once: terminals
    online with no interval, faults with no episode. Returns counts of what changed."""
    counts: dict[str, int] = defaultdict(int)
    devices = {d.id: d for d in session.exec(select(Device))}

    open_rows: dict[str, list[OnlineInterval]] = defaultdict(list)
    for row in session.exec(
        select(OnlineInterval)
        .where(col(OnlineInterval.end_ms).is_(None))
        .order_by(col(OnlineInterval.start_ms))
    ):
        open_rows[row.device_id].append(row)
    for device_id, rows in open_rows.items():
        device = devices.get(device_id)
        keep = rows[:1] if device is not None and device.online else []
        for row in rows[len(keep) :]:
            if keep:
                row.end_ms = row.start_ms  # a duplicate: it never counted
            else:
                # Shown offline (or gone): the interval ended when it went offline.
                changed = device.status_changed_ms if device is not None else None
                row.end_ms = max(row.start_ms, min(changed or now_ms, now_ms))
            row.end_reason = END_CONTROLLER
            counts["intervals_closed"] += 1
    missing = [d for d in devices.values() if d.online and d.id not in open_rows]
    if missing:
        last_end = dict(
            session.exec(
                select(OnlineInterval.device_id, func.max(OnlineInterval.end_ms))
                .where(col(OnlineInterval.device_id).in_([d.id for d in missing]))
                .group_by(col(OnlineInterval.device_id))
            ).all()
        )
        for device in missing:
            since = device.status_changed_ms or device.last_seen_ms or now_ms
            start = min(max(since, last_end.get(device.id) or since), now_ms)
            session.add(
                OnlineInterval(
                    device_id=device.id,
                    village_id=device.village_id,
                    township_id=device.township_id,
                    start_ms=start,
                )
            )
            counts["intervals_opened"] += 1

    open_episodes: dict[tuple[str, str], list[FaultEpisode]] = defaultdict(list)
    for episode in session.exec(
        select(FaultEpisode)
        .where(col(FaultEpisode.end_ms).is_(None))
        .order_by(col(FaultEpisode.start_ms))
    ):
        open_episodes[(episode.device_id, episode.fault)].append(episode)
    for (device_id, fault), episodes in open_episodes.items():
        device = devices.get(device_id)
        kept = episodes[:1] if device is not None and fault in device.faults else []
        for episode in episodes[len(kept) :]:
            episode.end_ms = episode.start_ms if kept else max(episode.start_ms, now_ms)
            episode.detail = {**episode.detail, "closed_by": END_CONTROLLER}
            counts["episodes_closed"] += 1
    for device in devices.values():
        for fault, since in device.faults.items():
            if (device.id, fault) in open_episodes:
                continue
            session.add(
                FaultEpisode(
                    device_id=device.id,
                    village_id=device.village_id,
                    township_id=device.township_id,
                    fault=fault,
                    start_ms=min(since, now_ms) if isinstance(since, int) else now_ms,
                    detail={"opened_by": END_CONTROLLER},
                )
            )
            counts["episodes_opened"] += 1
    return dict(counts)


# ------------------------------------------------------------------ online rate


def _scoped(
    query: Any,
    township: str | None,
    village: str | None,
    devices: Collection[str] | None,
) -> Any:
    # Terminals as they are now: an interval of a terminal since removed counts for
    # nothing, so the rate can never pass 1.
    query = query.join(Device, col(Device.id) == col(OnlineInterval.device_id))
    return _device_filter(query, township, village, devices)


def _device_filter(
    query: Any,
    township: str | None,
    village: str | None,
    devices: Collection[str] | None,
) -> Any:
    if township is not None:
        query = query.where(Device.township_id == township)
    if village is not None:
        query = query.where(Device.village_id == village)
    if devices is not None:
        query = query.where(col(Device.id).in_(list(devices)))
    return query


def terminals(
    session: Session,
    township: str | None = None,
    village: str | None = None,
    devices: Collection[str] | None = None,
) -> int:
    """How many terminals the online rate of this scope is over (the denominator)."""
    query = _device_filter(select(func.count()).select_from(Device), township, village, devices)
    return int(session.exec(query).one())


def online_series(
    session: Session,
    edges: Sequence[int],
    township: str | None = None,
    village: str | None = None,
    devices: Collection[str] | None = None,
    *,
    now_ms: int | None = None,
) -> list[float | None]:
    """The online rate in each bucket [edges[i], edges[i+1]) (increasing epoch ms):
    the terminal-time online over the terminal-time in the bucket, exactly.

    The terminals are those in scope now (`terminals`); the part of a bucket after
    `now_ms` does not count, and a bucket wholly after it (or an empty scope) is None.

    Cost: a few indexed range queries per bucket, whatever the length of the history.
    With times relative to the first edge T0, the online time before t is

        F(t) = sum over intervals of max(0, min(end, t) - max(start, T0))
             = t * (A + Ns(<t)) - Ss(<t) - t * Ne(<t) + Se(<t)

    where A counts intervals open across T0, Ns/Ss count and sum the starts at or after
    T0 and before t, Ne/Se the ends; a bucket's online time is F(end) - F(start).
    """
    now = p.now_ms() if now_ms is None else now_ms
    buckets = len(edges) - 1
    if buckets < 1:
        return []
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError("edges must increase")
    count = terminals(session, township, village, devices)
    t0, t_end = edges[0], min(edges[-1], now)
    if count == 0 or t_end <= t0:
        return [None] * buckets

    def scoped(query: Any) -> Any:
        return _scoped(query, township, village, devices)

    start, end = col(OnlineInterval.start_ms), col(OnlineInterval.end_ms)
    across = 0
    for condition in (end >= t0, end.is_(None)):
        across += int(
            session.exec(
                scoped(select(func.count()).select_from(OnlineInterval))
                .where(start < t0)
                .where(condition)
            ).one()
        )

    def prefix(column: Any, lo: int, hi: int) -> tuple[int, int]:
        n, total = session.exec(
            scoped(select(func.count(), func.sum(column - t0)).select_from(OnlineInterval))
            .where(column >= lo)
            .where(column < hi)
        ).one()
        return int(n), int(total or 0)

    ns = ss = ne = se = 0

    def f(t: int) -> int:
        r = t - t0
        return r * (across + ns) - ss - r * ne + se

    rates: list[float | None] = []
    for lo, hi in itertools.pairwise(edges):
        lo, hi = max(lo, t0), min(hi, t_end)
        if hi <= lo:
            rates.append(None)
            continue
        before = f(lo)
        n, total = prefix(start, lo, hi)
        ns, ss = ns + n, ss + total
        n, total = prefix(end, lo, hi)
        ne, se = ne + n, se + total
        rates.append((f(hi) - before) / (count * (hi - lo)))
    return rates


def online_rate(
    session: Session,
    start_ms: int,
    end_ms: int,
    township: str | None = None,
    village: str | None = None,
    devices: Collection[str] | None = None,
    *,
    now_ms: int | None = None,
) -> float | None:
    """The online rate of the terminals in scope over [start_ms, end_ms): online
    terminal-time over terminal-time, computed from the intervals exactly. None for an
    empty scope or a period that has not begun; a period reaching past now counts up
    to now."""
    if end_ms <= start_ms:
        return None
    return online_series(session, [start_ms, end_ms], township, village, devices, now_ms=now_ms)[0]


# ------------------------------------------------------------------ local hours and days


def local_hour_start(ms: int, zone: ZoneInfo) -> int:
    """The start of the county's local hour that `ms` falls in."""
    local = dt.datetime.fromtimestamp(ms / 1000, zone)
    return int(local.replace(minute=0, second=0, microsecond=0).timestamp() * 1000)


def local_day_start(ms: int, zone: ZoneInfo) -> int:
    """The start (local midnight) of the county's local day that `ms` falls in."""
    day = dt.datetime.fromtimestamp(ms / 1000, zone).date()
    return int(dt.datetime.combine(day, dt.time(), zone).timestamp() * 1000)


def next_local_day(ms: int, zone: ZoneInfo) -> int:
    """The start of the local day after the one `ms` falls in (23 or 25 h with DST)."""
    day = dt.datetime.fromtimestamp(ms / 1000, zone).date() + dt.timedelta(days=1)
    return int(dt.datetime.combine(day, dt.time(), zone).timestamp() * 1000)
