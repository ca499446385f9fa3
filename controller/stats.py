"""The figures a county reports: broadcasts, plays, airtime, reach, timeliness, schedule
outcomes and the terminals' online rate, for any period and any township or village.

Definitions (the same in the API, the console and the year-end report):

- **Period**: a local calendar day, ISO week (Monday first), month, quarter, half-year or
  year in the county's timezone (`Settings.timezone`); `[start, end)`.
- **Broadcasts**: `Broadcast` rows that were sent: status active, finished or cancelled,
  and either signed and sent by the controller (`command_id`) or a schedule occurrence
  the terminals played from their local schedule when the controller could not fire it
  (outcome `played_offline`). So neither a coming occurrence (`scheduled`), nor one
  withdrawn, kept silent or missed before anything played, nor an approval request
  (a `PendingBroadcast` until a second officer approves). A broadcast belongs to the
  period its start instant (`start_at_ms`) falls in: for a push that is the API call plus
  the synchronised-start lead, for a schedule occurrence its due time. (`created_ms` would
  put a schedule occurrence on the day it was planned, up to three days earlier.) In a
  township or village scope, a broadcast counts when it had a delivery to a terminal there.
- **Real and drill** are counted apart everywhere: `broadcasts.real`/`drill`, and every
  figure below (plays, airtime, reach, timeliness, townships, schedules) is over real
  broadcasts, with the same figures for drills under `drill`.
- **Targeted**: deliveries of those broadcasts (one per terminal). **Done**: deliveries
  whose state is `done`. **Reach** = done / targeted.
- **Plays**: deliveries the terminal itself said reached `playing` (or `done`): played in
  full or cut off. **Airtime** (seconds played) = for each `done` delivery the media's
  duration (an announcement's repeats are already in its audio), plus for every cut the
  terminal's `offset_ms` (how far it got before it was preempted, failed or cancelled;
  a preempted play that later played in full counts both). A play that was cut without an
  offset (e.g. `unknown`: the terminal fell silent while playing) adds 0 and is counted
  in `plays.cut_without_offset`, so the figure says what it leaves out.
- **Timeliness**: for pushed broadcasts (not schedule occurrences, which start at their
  due time by design), from the API call (`created_ms`) to the controller receiving the
  delivery's first `playing` report (`rx`, the controller's clock, so terminal clocks do
  not enter it). Median and 95th percentile by nearest rank (the value at position
  ceil(p x n) of the sorted times) over the deliveries that played; terminals that were
  offline and played later are included, since that is how late they were.
- **Schedules**: occurrences (controller/schedules/models.py) by outcome, by due time in
  the period, of schedules reaching the scope.
- **Online rate**: `controller.history.online_rate` over the part of the period that has
  passed, from the terminals' online intervals.

Plays, airtime and timeliness need each delivery's transitions (`delivery_transition`,
one row per state). They are read inside the database, only for the deliveries the
terminal answered (`last_seq > 0`), in one statement that
returns a row per broadcast and township plus the few rows that are the percentiles
(window functions), so nothing per delivery crosses to Python whatever the county's size.
The cost grows with the deliveries of the period: a year of 7 million deliveries (10,000
terminals) takes tens of seconds, a county's year about a second (bench/bench_stats.py).
"""

from __future__ import annotations

import calendar
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import case, func, text
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from controller import history
from controller.history import OnlineInterval
from controller.models import Broadcast, Device, Media, Township, Village
from controller.schedules.models import Occurrence, Schedule

PERIODS = ("day", "week", "month", "quarter", "half", "year")
BUCKETS = ("hour", "day", "week", "month")
# The online chart's points when the caller names no bucket.
DEFAULT_BUCKET = {
    "day": "hour",
    "week": "day",
    "month": "day",
    "quarter": "week",
    "half": "month",
    "year": "month",
}
# Each point is one online-rate computation: a year by the hour would be 8,760.
MAX_POINTS = 800
SENT = ("active", "finished", "cancelled")
PLAYED_OFFLINE = "played_offline"
OUTCOMES = ("fired", "played_offline", "suppressed", "missed", "cancelled", "scheduled")


# --------------------------------------------------------------------------- periods


@dataclass(frozen=True)
class Period:
    kind: str
    start: datetime  # local, aware
    end: datetime  # exclusive

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return int(self.end.timestamp() * 1000)

    def view(self) -> dict[str, str]:
        return {"kind": self.kind, "start": self.start.isoformat(), "end": self.end.isoformat()}


def _local(day: date, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def period_of(kind: str, day: date, tz: ZoneInfo) -> Period:
    """The period of `kind` that contains the local day `day`."""
    if kind == "day":
        first, after = day, day + timedelta(days=1)
    elif kind == "week":
        first = day - timedelta(days=day.weekday())
        after = first + timedelta(days=7)
    elif kind in ("month", "quarter", "half", "year"):
        months = {"month": 1, "quarter": 3, "half": 6, "year": 12}[kind]
        first = date(day.year, (day.month - 1) // months * months + 1, 1)
        after = _add_months(first, months)
    else:
        raise ValueError(f"period: one of {', '.join(PERIODS)}")
    return Period(kind, _local(first, tz), _local(after, tz))


def buckets(period: Period, bucket: str) -> list[Period]:
    """The period cut into `bucket`s (the first and last clipped to the period)."""
    if bucket not in BUCKETS:
        raise ValueError(f"bucket: one of {', '.join(BUCKETS)}")
    tz = period.start.tzinfo
    assert isinstance(tz, ZoneInfo)
    out: list[Period] = []
    if bucket == "hour":
        # Absolute hours (UTC arithmetic): a DST change makes a 23- or 25-hour day.
        at = period.start.astimezone(UTC)
        end = period.end.astimezone(UTC)
        while at < end:
            nxt = at + timedelta(hours=1)
            out.append(Period("hour", at.astimezone(tz), min(nxt, end).astimezone(tz)))
            at = nxt
            if len(out) > MAX_POINTS:
                break
        return out
    day = period.start.date()
    while _local(day, tz) < period.end and len(out) <= MAX_POINTS:
        if bucket == "day":
            following = day + timedelta(days=1)
        elif bucket == "week":
            following = day - timedelta(days=day.weekday()) + timedelta(days=7)
        else:
            following = _add_months(date(day.year, day.month, 1), 1)
        first = max(_local(day, tz), period.start)
        out.append(Period(bucket, first, min(_local(following, tz), period.end)))
        day = following
    return out


# --------------------------------------------------------------------------- scope


@dataclass(frozen=True)
class Scope:
    """Where the figures are counted: the county (both None), a township or a village."""

    township: str | None = None
    village: str | None = None

    def view(self) -> dict[str, str | None]:
        return {"township": self.township, "village": self.village}


def resolve_scope(session: Session, township: str | None, village: str | None) -> Scope:
    """Check the ids exist and agree; ValueError("field: why") where not."""
    if township is not None and session.get(Township, township) is None:
        raise ValueError(f"township: unknown township {township!r}")
    if village is not None:
        row = session.get(Village, village)
        if row is None:
            raise ValueError(f"village: unknown village {village!r}")
        if township is not None and row.township_id != township:
            raise ValueError(f"village: {village} is not in township {township}")
        township = row.township_id
    return Scope(township, village)


# --------------------------------------------------------------------------- SQL

# `facts`: one row per delivery, with what its transitions (the append-only
# `delivery_transition`, found through its (broadcast, device) index) say where they can
# matter: whether the terminal ever said playing or done, when the controller first
# heard `playing` (pushed deliveries only), and the milliseconds skipped by cuts.
# Then, in one answer:
#   'a' rows: per broadcast and township, targeted / done / plays / cut ms / cuts without
#       an offset;
#   'p' rows: the deliveries whose API-to-playing time sits at the median or the 95th
#       percentile rank, per township and over the whole scope (window functions);
#   'c' rows (coverage, for the report): each category and village where something
#       played (counted per category, township and scope in Python: one sort instead of
#       three COUNT(DISTINCT)s).
_STATEMENT = """
WITH facts AS MATERIALIZED (
  SELECT d.broadcast_id AS bid, dev.township_id AS tid, dev.village_id AS vid,
         b.category AS cat, b.drill AS drill,
         CASE WHEN o.id IS NULL THEN b.created_ms END AS pushed_ms,
         CASE WHEN d.state = 'done' THEN 1 ELSE 0 END AS done,
         CASE WHEN d.state = 'done' THEN 1
              WHEN d.last_seq > 0 AND EXISTS (
                SELECT 1 FROM delivery_transition AS t {own}
                AND t.state IN ('playing', 'done')) THEN 1
              ELSE 0 END AS played,
         CASE WHEN o.id IS NULL AND d.last_seq > 0 THEN (
                SELECT MIN(t.rx_ms) FROM delivery_transition AS t {own}
                AND t.state = 'playing') END AS play_rx,
         CASE WHEN d.last_seq > 0 THEN (
                SELECT SUM(t.offset_ms) FROM delivery_transition AS t {own}
                AND t.offset_ms IS NOT NULL) END AS cut_ms
  FROM delivery AS d
  JOIN broadcast AS b ON b.id = d.broadcast_id
  JOIN device AS dev ON dev.id = d.device_id
  LEFT JOIN occurrence AS o ON o.id = b.id
  WHERE b.status IN ('active', 'finished', 'cancelled')
    AND (b.command_id <> '' OR o.outcome = 'played_offline')
    AND b.start_at_ms >= :start AND b.start_at_ms < :end {scope}
),
ranked AS (
  SELECT tid, drill, play_rx - pushed_ms AS ms,
         ROW_NUMBER() OVER (PARTITION BY tid, drill ORDER BY play_rx - pushed_ms) AS rt,
         COUNT(*) OVER (PARTITION BY tid, drill) AS nt,
         ROW_NUMBER() OVER (PARTITION BY drill ORDER BY play_rx - pushed_ms) AS ra,
         COUNT(*) OVER (PARTITION BY drill) AS na
  FROM facts WHERE pushed_ms IS NOT NULL AND play_rx IS NOT NULL
)
SELECT 'a' AS kind, bid AS k, tid, drill, COUNT(*) AS n1, SUM(done) AS n2, SUM(played) AS n3,
       SUM(CASE WHEN played = 1 THEN COALESCE(cut_ms, 0) ELSE 0 END) AS n4,
       SUM(CASE WHEN played = 1 AND done = 0 AND cut_ms IS NULL THEN 1 ELSE 0 END) AS n5
FROM facts GROUP BY bid, tid, drill
UNION ALL
SELECT 'p', NULL, tid, drill, ms, rt, nt, ra, na FROM ranked
WHERE rt = (nt + 1) / 2 OR rt = (95 * nt + 99) / 100
   OR ra = (na + 1) / 2 OR ra = (95 * na + 99) / 100
{coverage}
"""

_COVERAGE = """
UNION ALL
SELECT 'c', cat || '|' || vid, tid, drill, 0, 0, 0, 0, 0
FROM facts WHERE played = 1 GROUP BY cat, vid, tid, drill
"""


_OWN = "WHERE t.broadcast_id = d.broadcast_id AND t.device_id = d.device_id"


def _statement(dialect: str, scope: Scope, coverage: bool) -> Any:
    """The same SQL on SQLite and PostgreSQL (`dialect` kept for the call's shape)."""
    where = ""
    if scope.township is not None:
        where += " AND dev.township_id = :township"
    if scope.village is not None:
        where += " AND dev.village_id = :village"
    return text(_STATEMENT.format(own=_OWN, scope=where, coverage=_COVERAGE if coverage else ""))


def _rank(n: int, pct: int) -> int:
    """Nearest rank: the position (1-based) of the pct-th percentile among n sorted."""
    return (pct * n + 99) // 100


# --------------------------------------------------------------------------- figures


@dataclass
class _Tally:
    """Deliveries of one side (real or drill) within one township or the whole scope."""

    broadcasts: set[str] = field(default_factory=set)
    targeted: int = 0
    done: int = 0
    plays: int = 0
    airtime_ms: int = 0
    cut_without_offset: int = 0
    median_ms: int | None = None
    p95_ms: int | None = None
    samples: int = 0
    townships: int = 0  # coverage: where something played
    villages: int = 0
    covered: set[str] = field(default_factory=set)  # the villages, while counting

    def reach(self) -> dict[str, Any]:
        rate = round(self.done / self.targeted, 4) if self.targeted else None
        return {"targeted": self.targeted, "done": self.done, "rate": rate}

    def plays_view(self) -> dict[str, Any]:
        return {
            "total": self.plays,
            "airtime_s": round(self.airtime_ms / 1000),
            "cut_without_offset": self.cut_without_offset,
        }

    def timeliness(self) -> dict[str, Any]:
        return {"median_ms": self.median_ms, "p95_ms": self.p95_ms, "samples": self.samples}


@dataclass(frozen=True)
class _Sent:
    id: str
    category: str
    priority: str
    drill: bool
    start_at_ms: int
    duration_ms: int


@dataclass
class Figures:
    """Everything one statement and the broadcast list give, before it is shaped."""

    sent: dict[str, _Sent]
    in_scope: set[str]  # broadcasts with a delivery in the scope
    sides: dict[bool, _Tally]  # drill -> whole scope
    by_township: dict[tuple[str, bool], _Tally]
    per_broadcast: dict[str, tuple[int, int]]  # id -> (plays, airtime ms)
    coverage: dict[tuple[str, bool], tuple[int, int]]  # (category, drill) -> (tships, vills)


def _sent(session: Session, start_ms: int, end_ms: int) -> dict[str, _Sent]:
    rows = session.execute(
        sa_select(
            col(Broadcast.id),
            col(Broadcast.category),
            col(Broadcast.priority),
            col(Broadcast.drill),
            col(Broadcast.start_at_ms),
            col(Media.duration_ms),
        )
        .outerjoin(Occurrence, col(Occurrence.id) == col(Broadcast.id))
        .where(col(Broadcast.media_sha256) == col(Media.sha256))
        .where(col(Broadcast.status).in_(SENT))
        .where((col(Broadcast.command_id) != "") | (col(Occurrence.outcome) == PLAYED_OFFLINE))
        .where(col(Broadcast.start_at_ms) >= start_ms)
        .where(col(Broadcast.start_at_ms) < end_ms)
    ).all()
    return {r[0]: _Sent(r[0], r[1], r[2], bool(r[3]), r[4], r[5]) for r in rows}


def figures(session: Session, period: Period, scope: Scope, *, coverage: bool = False) -> Figures:
    sent = _sent(session, period.start_ms, period.end_ms)
    bind = session.get_bind()
    params: dict[str, Any] = {"start": period.start_ms, "end": period.end_ms}
    if scope.township is not None:
        params["township"] = scope.township
    if scope.village is not None:
        params["village"] = scope.village
    rows = (
        session.connection().execute(_statement(bind.dialect.name, scope, coverage), params).all()
    )

    sides = {False: _Tally(), True: _Tally()}
    by_township: dict[tuple[str, bool], _Tally] = defaultdict(_Tally)
    per_broadcast: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    # (townships, villages) where something played: per category, and over the scope.
    by_category: dict[tuple[str, bool], tuple[set[str], set[str]]] = defaultdict(
        lambda: (set(), set())
    )
    everywhere: dict[bool, tuple[set[str], set[str]]] = {
        False: (set(), set()),
        True: (set(), set()),
    }
    in_scope: set[str] = set()
    for kind, key, tid, drill_raw, n1, n2, n3, n4, n5 in rows:
        drill = bool(drill_raw)
        if kind == "a":
            b = sent.get(key)
            if b is None:
                continue  # changed between the two reads; the next request has it
            targeted, done, plays, cut_ms, no_offset = (int(x or 0) for x in (n1, n2, n3, n4, n5))
            airtime = done * b.duration_ms + cut_ms
            in_scope.add(key)
            per = per_broadcast[key]
            per[0] += plays
            per[1] += airtime
            for tally in (sides[drill], by_township[(tid, drill)]):
                tally.broadcasts.add(key)
                tally.targeted += targeted
                tally.done += done
                tally.plays += plays
                tally.airtime_ms += airtime
                tally.cut_without_offset += no_offset
        elif kind == "p":
            ms, rt, nt, ra, na = (int(x) for x in (n1, n2, n3, n4, n5))
            for tally, rank, n in ((by_township[(tid, drill)], rt, nt), (sides[drill], ra, na)):
                tally.samples = n
                if rank == (n + 1) // 2:
                    tally.median_ms = ms
                if rank == _rank(n, 95):
                    tally.p95_ms = ms
        elif kind == "c":
            category, village = key.split("|", 1)
            for where in (by_category[(category, drill)], everywhere[drill]):
                where[0].add(tid)
                where[1].add(village)
            by_township[(tid, drill)].covered.add(village)
    for drill, (townships, villages) in everywhere.items():
        sides[drill].townships, sides[drill].villages = len(townships), len(villages)
    for tally in by_township.values():
        tally.villages = len(tally.covered)
    if scope.township is None and scope.village is None:
        # The whole county: a sent broadcast counts even if it reached no terminal.
        in_scope |= set(sent)
    return Figures(
        sent,
        in_scope,
        sides,
        dict(by_township),
        {k: (v[0], v[1]) for k, v in per_broadcast.items()},
        {k: (len(t), len(v)) for k, (t, v) in by_category.items()},
    )


# --------------------------------------------------------------------------- schedules


def _schedule_reaches(s: Schedule, scope: Scope, village_devices: set[str]) -> bool:
    if scope.township is None:
        return True
    if scope.village is None:
        return scope.township in (s.township_ids or [])
    target = s.target or {}
    return bool(
        target.get("all")
        or scope.township in target.get("townships", [])
        or scope.village in target.get("villages", [])
        or village_devices & set(target.get("devices", []))
    )


def schedule_outcomes(session: Session, period: Period, scope: Scope) -> dict[bool, dict[str, int]]:
    """drill -> {outcome: occurrences due in the period}."""
    village_devices: set[str] = set()
    if scope.village is not None:
        village_devices = set(
            session.exec(select(Device.id).where(Device.village_id == scope.village)).all()
        )
    reaching = {
        s.id: s.drill
        for s in session.exec(select(Schedule))
        if _schedule_reaches(s, scope, village_devices)
    }
    out: dict[bool, Counter[str]] = {False: Counter(), True: Counter()}
    rows = session.exec(
        select(Occurrence.schedule_id, Occurrence.outcome)
        .where(col(Occurrence.due_ms) >= period.start_ms)
        .where(col(Occurrence.due_ms) < period.end_ms)
    ).all()
    for schedule_id, outcome in rows:
        if schedule_id in reaching:
            out[bool(reaching[schedule_id])][outcome] += 1
    # Every outcome named (0 where none), then any outcome a later release adds.
    return {
        drill: {o: counts.get(o, 0) for o in OUTCOMES} | dict(counts)
        for drill, counts in out.items()
    }


# --------------------------------------------------------------------------- online


def online_rate_of(
    session: Session, start_ms: int, end_ms: int, scope: Scope, now_ms: int
) -> float | None:
    """The online rate over the part of [start, end) that has passed; None if none has."""
    rate = history.online_rate(
        session, start_ms, end_ms, scope.township, scope.village, now_ms=now_ms
    )
    return None if rate is None else round(rate, 4)


def online_by_township(
    session: Session, start_ms: int, end_ms: int, scope: Scope, now_ms: int
) -> dict[str, float | None]:
    """`online_rate_of` for every township at once (one grouped query instead of one per
    township: a province has hundreds). The same definition as `history.online_rate`:
    terminals as they are now, online time over terminal time up to now."""
    end_ms = min(end_ms, now_ms)
    if end_ms <= start_ms:
        return {}
    start, end = col(OnlineInterval.start_ms), col(OnlineInterval.end_ms)
    stop = func.coalesce(end, end_ms)
    overlap = case((stop < end_ms, stop), else_=end_ms) - case(
        (start > start_ms, start), else_=start_ms
    )
    query = (
        sa_select(col(Device.township_id), func.sum(overlap))
        .join(Device, col(Device.id) == col(OnlineInterval.device_id))
        .where(start < end_ms)
        .where(end.is_(None) | (end > start_ms))
        .group_by(col(Device.township_id))
    )
    count = sa_select(col(Device.township_id), func.count()).group_by(col(Device.township_id))
    if scope.township is not None:
        query = query.where(col(Device.township_id) == scope.township)
        count = count.where(col(Device.township_id) == scope.township)
    if scope.village is not None:
        query = query.where(col(Device.village_id) == scope.village)
        count = count.where(col(Device.village_id) == scope.village)
    online = {tid: int(ms or 0) for tid, ms in session.execute(query).all()}
    span = end_ms - start_ms
    return {
        tid: round(online.get(tid, 0) / (n * span), 4)
        for tid, n in session.execute(count).all()
        if n
    }


def terminals(session: Session, scope: Scope) -> int:
    return history.terminals(session, scope.township, scope.village)


def online_series(
    session: Session, period: Period, scope: Scope, bucket: str, now_ms: int
) -> dict[str, Any]:
    points = buckets(period, bucket)
    if len(points) > MAX_POINTS:
        raise ValueError(f"bucket: a {period.kind} has more than {MAX_POINTS} {bucket}s")
    edges = [p.start_ms for p in points] + [points[-1].end_ms]
    rates = history.online_series(session, edges, scope.township, scope.village, now_ms=now_ms)
    return {
        "period": period.view(),
        "scope": scope.view(),
        "bucket": bucket,
        "terminals": terminals(session, scope),
        "points": [
            {
                "start": p.start.isoformat(),
                "end": p.end.isoformat(),
                "online_rate": None if rate is None else round(rate, 4),
            }
            for p, rate in zip(points, rates, strict=True)
        ],
    }


# --------------------------------------------------------------------------- summary


def _counts(items: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(items).items()))


def _townships(session: Session, scope: Scope) -> list[Township]:
    query = select(Township).order_by(col(Township.id))
    if scope.township is not None:
        query = query.where(Township.id == scope.township)
    return list(session.exec(query).all())


def summary(session: Session, period: Period, scope: Scope, now_ms: int) -> dict[str, Any]:
    """GET /api/stats/summary: the figures of one period in one scope."""
    return _summary(session, period, scope, now_ms, coverage=False)[0]


def _summary(
    session: Session, period: Period, scope: Scope, now_ms: int, *, coverage: bool
) -> tuple[dict[str, Any], Figures]:
    f = figures(session, period, scope, coverage=coverage)
    real = [f.sent[i] for i in f.in_scope if not f.sent[i].drill]
    drills = [f.sent[i] for i in f.in_scope if f.sent[i].drill]
    outcomes = schedule_outcomes(session, period, scope)
    online = online_by_township(session, period.start_ms, period.end_ms, scope, now_ms)
    townships = []
    for t in _townships(session, scope):
        tally = f.by_township.get((t.id, False), _Tally())
        drill = f.by_township.get((t.id, True), _Tally())
        row = {
            "id": t.id,
            "name": t.name,
            "name_en": t.name_en,
            "broadcasts": len(tally.broadcasts),
            "drills": len(drill.broadcasts),
            "plays": tally.plays,
            "airtime_s": round(tally.airtime_ms / 1000),
            "targeted": tally.targeted,
            "done": tally.done,
            "reach_rate": tally.reach()["rate"],
            "median_ms": tally.median_ms,
            "p95_ms": tally.p95_ms,
            "samples": tally.samples,
            "online_rate": online.get(t.id),
        }
        if coverage:
            row["villages_covered"] = tally.villages
        townships.append(row)
    real_side, drill_side = f.sides[False], f.sides[True]
    out: dict[str, Any] = {
        "period": period.view(),
        "scope": scope.view(),
        "broadcasts": {
            "total": len(real) + len(drills),
            "real": len(real),
            "drill": len(drills),
            "by_category": _counts(b.category for b in real),
            "by_priority": _counts(b.priority for b in real),
            "drill_by_category": _counts(b.category for b in drills),
            "drill_by_priority": _counts(b.priority for b in drills),
        },
        "plays": real_side.plays_view(),
        "reach": real_side.reach(),
        "timeliness": real_side.timeliness(),
        "schedules": outcomes[False],
        "online_rate": online_rate_of(session, period.start_ms, period.end_ms, scope, now_ms),
        "terminals": terminals(session, scope),
        "townships": townships,
        "drill": {
            "broadcasts": len(drills),
            "plays": drill_side.plays_view(),
            "reach": drill_side.reach(),
            "timeliness": drill_side.timeliness(),
            "schedules": outcomes[True],
        },
    }
    return out, f


# --------------------------------------------------------------------------- year report


def _months(year: int, tz: ZoneInfo) -> Iterator[Period]:
    for month in range(1, 13):
        first = date(year, month, 1)
        last = date(year, month, calendar.monthrange(year, month)[1])
        yield Period("month", _local(first, tz), _local(last + timedelta(days=1), tz))


def year_report(
    session: Session, year: int, tz: ZoneInfo, scope: Scope, now_ms: int
) -> dict[str, Any]:
    """The figures of the year-end report (controller/report.py writes them out)."""
    period = period_of("year", date(year, 1, 1), tz)
    data, f = _summary(session, period, scope, now_ms, coverage=True)
    month_periods = list(_months(year, tz))
    starts = [m.start_ms for m in month_periods]
    # One pass over the year's broadcasts (a province sends hundreds of thousands):
    # [broadcasts, plays, airtime ms] per category and side, per month and side.
    by_category: dict[tuple[str, bool], list[int]] = defaultdict(lambda: [0, 0, 0])
    by_month: dict[tuple[int, bool], list[int]] = defaultdict(lambda: [0, 0, 0])
    for i in f.in_scope:
        b = f.sent[i]
        plays, airtime = f.per_broadcast.get(i, (0, 0))
        month = bisect_right(starts, b.start_at_ms) - 1
        for tally in (by_category[(b.category, b.drill)], by_month[(month, b.drill)]):
            tally[0] += 1
            tally[1] += plays
            tally[2] += airtime
    categories: list[dict[str, Any]] = [
        {
            "category": category,
            "drill": drill,
            "broadcasts": n,
            "plays": plays,
            "airtime_s": round(airtime / 1000),
            "townships": f.coverage.get((category, drill), (0, 0))[0],
            "villages": f.coverage.get((category, drill), (0, 0))[1],
        }
        for (category, drill), (n, plays, airtime) in by_category.items()
    ]
    categories.sort(key=lambda c: (bool(c["drill"]), -int(c["broadcasts"]), str(c["category"])))
    edges = [*starts, month_periods[-1].end_ms]
    month_rates = history.online_series(
        session, edges, scope.township, scope.village, now_ms=now_ms
    )
    months = [
        {
            "month": m.start.month,
            "start": m.start.isoformat(),
            "broadcasts": by_month[(index, False)][0],
            "drills": by_month[(index, True)][0],
            "plays": by_month[(index, False)][1],
            "online_rate": None if rate is None else round(rate, 4),
        }
        for index, (m, rate) in enumerate(zip(month_periods, month_rates, strict=True))
    ]
    area = {
        "townships": len(_townships(session, scope)),
        "villages": _village_count(session, scope),
        "terminals": data["terminals"],
    }
    return {
        **data,
        "year": year,
        "categories": categories,
        "months": months,
        "area": area,
        "coverage": {
            "townships": f.sides[False].townships,
            "villages": f.sides[False].villages,
            "drill_townships": f.sides[True].townships,
            "drill_villages": f.sides[True].villages,
        },
    }


def _village_count(session: Session, scope: Scope) -> int:
    if scope.village is not None:
        return 1
    query = select(Village.id)
    if scope.township is not None:
        query = query.where(Village.township_id == scope.township)
    return len(session.exec(query).all())
