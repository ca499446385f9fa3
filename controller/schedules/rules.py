"""Pure expansion of township broadcast schedules into the instants they fire.

Nothing here reads the clock, the database or the scheduler: given a rule and a window
it answers "when does this fire", so the controller (scheduler jobs, the console's
preview) and the edge agent (its offline local schedule) compute the very same
instants from the very same stored JSON.

Rules are written in local wall-clock time because that is how township staff think
("07:00 every morning"); results are always UTC so they compare and sort without
ambiguity and can go straight into a signed command's start instant.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Kind = Literal["once", "daily", "weekly", "every_n_days", "monthly"]
KINDS: tuple[str, ...] = get_args(Kind)

DEFAULT_TIMEZONE = "Asia/Shanghai"

# Live paging is a person speaking now; holding it back for quiet hours would make the
# duty officer think the villages heard it. Emergencies wake people on purpose.
NEVER_SUPPRESSED: frozenset[str] = frozenset({"emergency", "paging"})
SUPPRESSIBLE: frozenset[str] = frozenset({"notice", "routine"})
PRIORITIES: tuple[str, ...] = ("emergency", "paging", "notice", "routine")

# Long enough for any rule a clerk can write (a yearly season, the 29th of February)
# to show up, short enough that a rule which never fires costs milliseconds, not a hang.
SEARCH_HORIZON = datetime.timedelta(days=5 * 366)

# Month lengths in a leap year: a season may legitimately start or end on 29 February.
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_MAX_ORDINAL = datetime.date.max.toordinal()

# re.ASCII because \d would otherwise accept other scripts' digits, which int() reads
# happily and which no console or API client sends on purpose.
_TIME_RE = re.compile(r"([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?", re.ASCII)
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_MONTH_DAY_RE = re.compile(r"(\d{2})-(\d{2})", re.ASCII)

_DICT_FIELDS = (
    "kind",
    "times",
    "start_date",
    "end_date",
    "weekdays",
    "interval_days",
    "month_days",
    "season",
    "skip_dates",
    "timezone",
)


# --------------------------------------------------------------------------- helpers


def _is_int(value: object) -> bool:
    # bool is an int subclass; True as a weekday is a bug in the caller, not Tuesday.
    return isinstance(value, int) and not isinstance(value, bool)


def _zone(key: object, field_name: str = "timezone") -> ZoneInfo:
    if not isinstance(key, str) or not key:
        raise ValueError(f"{field_name}: must be an IANA time zone name such as 'Asia/Shanghai'")
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: a key naming a tzdata directory ("Europe") fails as IsADirectoryError.
        raise ValueError(f"{field_name}: {key!r} is not a known IANA time zone") from None


def _require_aware(value: object, field_name: str) -> datetime.datetime:
    # A naive datetime would be read in the server's local zone, which is exactly the
    # silent eight-hour error this module exists to prevent.
    if not isinstance(value, datetime.datetime) or value.utcoffset() is None:
        raise ValueError(f"{field_name}: must be a timezone-aware datetime, got {value!r}")
    return value


def _check_date(value: object, field_name: str) -> None:
    # datetime is a date subclass, but comparing one with a date raises TypeError later.
    if not isinstance(value, datetime.date) or isinstance(value, datetime.datetime):
        raise ValueError(f"{field_name}: {value!r} is not a calendar date")


def _as_tuple(value: object, field_name: str) -> tuple[Any, ...]:
    if isinstance(value, tuple):
        return value
    if isinstance(value, list):
        return tuple(value)
    raise ValueError(f"{field_name}: must be a tuple, got {type(value).__name__}")


def _check_wall_time(value: object, field_name: str) -> datetime.time:
    if not isinstance(value, datetime.time):
        raise ValueError(f"{field_name}: {value!r} is not a datetime.time")
    if value.tzinfo is not None:
        raise ValueError(
            f"{field_name}: {value} carries a tzinfo; give the local time of day "
            "and name the zone separately"
        )
    return value


# ---------------------------------------------------------------------- value types


@dataclass(frozen=True)
class Season:
    """A yearly window by month/day, both ends inclusive; may wrap the year end."""

    start_month: int
    start_day: int
    end_month: int
    end_day: int

    def __post_init__(self) -> None:
        for prefix in ("start", "end"):
            month = getattr(self, f"{prefix}_month")
            day = getattr(self, f"{prefix}_day")
            if not _is_int(month) or not 1 <= month <= 12:
                raise ValueError(f"{prefix}_month: {month!r} is not a month (1..12)")
            if not _is_int(day) or not 1 <= day <= _DAYS_IN_MONTH[month - 1]:
                raise ValueError(f"{prefix}_day: {day!r} is not a day of month {month}")

    def contains(self, day: datetime.date) -> bool:
        month_day = (day.month, day.day)
        first = (self.start_month, self.start_day)
        last = (self.end_month, self.end_day)
        if first <= last:
            return first <= month_day <= last
        # Wraps the new year (dry season October..March): inside if after the start
        # in the autumn or before the end in the spring.
        return month_day >= first or month_day <= last


@dataclass(frozen=True)
class QuietHours:
    """A local wall-clock window, start inclusive, end exclusive; may wrap midnight.

    start == end means no quiet hours at all: a township that wants silence all day
    should stop scheduling, not configure a 24-hour window that also hides mistakes.
    """

    start: datetime.time
    end: datetime.time

    def __post_init__(self) -> None:
        _check_wall_time(self.start, "start")
        _check_wall_time(self.end, "end")

    def contains(self, local_time: datetime.time) -> bool:
        _check_wall_time(local_time, "local_time")
        if self.start == self.end:
            return False
        if self.start < self.end:
            return self.start <= local_time < self.end
        return local_time >= self.start or local_time < self.end


@dataclass(frozen=True)
class Recurrence:
    """When a scheduled broadcast fires, in the township's local wall-clock time."""

    kind: Kind
    times: tuple[datetime.time, ...]
    start_date: datetime.date
    end_date: datetime.date | None = None
    weekdays: tuple[int, ...] = ()
    interval_days: int = 1
    month_days: tuple[int, ...] = ()
    season: Season | None = None
    skip_dates: frozenset[datetime.date] = frozenset()
    timezone: str = DEFAULT_TIMEZONE

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"kind: {self.kind!r} is not one of {', '.join(repr(k) for k in KINDS)}"
            )

        times = _as_tuple(self.times, "times")
        if not times:
            raise ValueError("times: must not be empty")
        for value in times:
            _check_wall_time(value, "times")
            if value.microsecond:
                # The stored form is HH:MM[:SS]; a fraction would not survive a round trip.
                raise ValueError(f"times: {value} has a fraction of a second")
        if self.kind == "once" and len(times) != 1:
            raise ValueError(f"times: kind 'once' takes exactly one time, got {len(times)}")
        # fold=1 would pick the second of an ambiguous hour; the rule is fold=0 always,
        # and time equality ignores fold so this does not change what the rule equals.
        object.__setattr__(self, "times", tuple(t.replace(fold=0) for t in times))

        _check_date(self.start_date, "start_date")
        if self.end_date is not None:
            _check_date(self.end_date, "end_date")
            if self.end_date < self.start_date:
                raise ValueError(
                    f"end_date: {self.end_date} is before start_date {self.start_date}"
                )
            if self.kind == "once" and self.end_date != self.start_date:
                raise ValueError("end_date: kind 'once' fires on start_date; leave end_date empty")

        # Fields belonging to another kind are refused rather than ignored: a clerk who
        # sent weekdays with kind "daily" meant something the rule would not do.
        weekdays = _as_tuple(self.weekdays, "weekdays")
        for value in weekdays:
            if not _is_int(value) or not 0 <= value <= 6:
                raise ValueError(f"weekdays: {value!r} is not a weekday (0=Monday..6=Sunday)")
        if self.kind == "weekly" and not weekdays:
            raise ValueError("weekdays: must not be empty for kind 'weekly'")
        if self.kind != "weekly" and weekdays:
            raise ValueError(f"weekdays: only used by kind 'weekly', not {self.kind!r}")
        object.__setattr__(self, "weekdays", weekdays)

        if not _is_int(self.interval_days) or self.interval_days < 1:
            raise ValueError(f"interval_days: {self.interval_days!r} must be a whole number >= 1")
        if self.kind != "every_n_days" and self.interval_days != 1:
            raise ValueError(f"interval_days: only used by kind 'every_n_days', not {self.kind!r}")

        month_days = _as_tuple(self.month_days, "month_days")
        for value in month_days:
            if not _is_int(value) or not 1 <= value <= 31:
                raise ValueError(f"month_days: {value!r} is not a day of the month (1..31)")
        if self.kind == "monthly" and not month_days:
            raise ValueError("month_days: must not be empty for kind 'monthly'")
        if self.kind != "monthly" and month_days:
            raise ValueError(f"month_days: only used by kind 'monthly', not {self.kind!r}")
        object.__setattr__(self, "month_days", month_days)

        if self.season is not None and not isinstance(self.season, Season):
            raise ValueError(f"season: {self.season!r} is not a Season")

        if not isinstance(self.skip_dates, (frozenset, set, list, tuple)):
            raise ValueError(
                f"skip_dates: must be a frozenset of dates, got {type(self.skip_dates).__name__}"
            )
        for value in self.skip_dates:
            _check_date(value, "skip_dates")
        object.__setattr__(self, "skip_dates", frozenset(self.skip_dates))

        _zone(self.timezone)

    def fires_on(self, day: datetime.date) -> bool:
        """Whether the rule fires at its times on this local calendar day."""
        if day < self.start_date or (self.end_date is not None and day > self.end_date):
            return False
        if day in self.skip_dates:
            return False
        if self.season is not None and not self.season.contains(day):
            return False
        kind = self.kind
        if kind == "daily":
            return True
        if kind == "once":
            return day == self.start_date
        if kind == "weekly":
            return day.weekday() in self.weekdays
        if kind == "every_n_days":
            # Anchored on start_date, not on the query window, so every preview and
            # every terminal agrees on which days are "every third day".
            return (day - self.start_date).days % self.interval_days == 0
        # monthly: a listed day the month does not have (31 in April, 30 in February)
        # is skipped for that month, not moved to the month's last day; moving it would
        # make "30th and 31st" fire twice on 30 April and surprise the clerk.
        return day.day in self.month_days

    def last_date(self) -> datetime.date | None:
        """The last local day the rule can fire on, or None when it is open-ended."""
        return self.start_date if self.kind == "once" else self.end_date


# ------------------------------------------------------------------------ expansion


def _expand(
    rule: Recurrence, start: datetime.datetime, end: datetime.datetime
) -> list[datetime.datetime]:
    zone = ZoneInfo(rule.timezone)
    # The window is read in the rule's zone, so its local dates bracket every fire time;
    # the extra day each side is for a skipped hour that straddles midnight (a few
    # zones jump at 23:30 or 24:00), whose shifted instant lands on the next local day.
    first = max(start.astimezone(zone).date().toordinal() - 1, rule.start_date.toordinal())
    last = min(end.astimezone(zone).date().toordinal() + 1, _MAX_ORDINAL)
    last_date = rule.last_date()
    if last_date is not None:
        last = min(last, last_date.toordinal())

    utc = datetime.UTC
    combine = datetime.datetime.combine
    fromordinal = datetime.date.fromordinal
    found: set[datetime.datetime] = set()
    for ordinal in range(first, last + 1):
        day = fromordinal(ordinal)
        if not rule.fires_on(day):
            continue
        for wall in rule.times:
            # fold=0 everywhere: an ambiguous time (the repeated hour in autumn) fires
            # once, the first time; a nonexistent one (the skipped hour in spring) is
            # read with the offset before the jump, i.e. it fires at the shifted
            # instant (02:30 -> 03:30 summer time). Two times can therefore meet on one
            # instant on that day, which the set collapses.
            instant = combine(day, wall, tzinfo=zone).astimezone(utc)
            if start <= instant < end:
                found.add(instant)
    return sorted(found)


def occurrences(
    rule: Recurrence, start: datetime.datetime, end: datetime.datetime
) -> list[datetime.datetime]:
    """Every fire time t with start <= t < end.

    Timezone-aware datetimes in UTC, sorted, no duplicates.
    """
    _require_aware(start, "start")
    _require_aware(end, "end")
    if end < start:
        raise ValueError(f"end: {end.isoformat()} is before start {start.isoformat()}")
    return _expand(rule, start, end)


def next_occurrences(
    rule: Recurrence, after: datetime.datetime, count: int
) -> list[datetime.datetime]:
    """The next `count` fire times strictly after `after` (UTC aware).

    Searches at most SEARCH_HORIZON (about five years) ahead, so a rule that never
    fires again returns fewer than `count`, possibly none.
    """
    _require_aware(after, "after")
    if not _is_int(count) or count < 0:
        raise ValueError(f"count: {count!r} must be a whole number >= 0")
    found: list[datetime.datetime] = []
    if count == 0:
        return found
    last_date = rule.last_date()
    after_day = after.astimezone(ZoneInfo(rule.timezone)).date()
    if last_date is not None and last_date < after_day - datetime.timedelta(days=1):
        # Finished rules (most "once" rules in the database) answer without searching.
        return found

    # Datetimes resolve to the microsecond, so this is the first instant after `after`.
    window_start = after + datetime.timedelta(microseconds=1)
    horizon = after + SEARCH_HORIZON
    # Growing windows: a daily rule is answered from the first week, a sparse one
    # (a season, the 31st) without walking five years one small window at a time.
    span = datetime.timedelta(days=8)
    while len(found) < count and window_start < horizon:
        window_end = min(window_start + span, horizon)
        found.extend(_expand(rule, window_start, window_end))
        window_start = window_end
        span *= 2
    return found[:count]


# ----------------------------------------------------------------------- quiet hours


def is_quiet(
    quiet: QuietHours | None, instant: datetime.datetime, timezone: str = DEFAULT_TIMEZONE
) -> bool:
    """Whether `instant` falls inside the township's quiet hours, read in `timezone`."""
    _require_aware(instant, "instant")
    zone = _zone(timezone)
    if quiet is None:
        return False
    return quiet.contains(instant.astimezone(zone).time())


def suppressed_by_quiet_hours(
    priority: str,
    quiet: QuietHours | None,
    instant: datetime.datetime,
    timezone: str = DEFAULT_TIMEZONE,
) -> bool:
    """True when a non-emergency ("notice", "routine") occurrence falls in quiet hours.

    Emergencies ("emergency", and live "paging") are never suppressed.
    """
    if priority not in PRIORITIES:
        # Unknown priorities are refused rather than guessed: guessing "suppressible"
        # could silence a warning, guessing "never" would wake a village at 3 a.m.
        raise ValueError(
            f"priority: {priority!r} is not one of {', '.join(repr(p) for p in PRIORITIES)}"
        )
    quiet_now = is_quiet(quiet, instant, timezone)
    return priority in SUPPRESSIBLE and quiet_now


# ------------------------------------------------------------------- JSON round trip


def _format_time(value: datetime.time) -> str:
    return value.isoformat(timespec="seconds" if value.second else "minutes")


def _parse_time(value: object, field_name: str) -> datetime.time:
    match = _TIME_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{field_name}: {value!r} is not a time of day HH:MM")
    hour, minute, second = match.groups()
    return datetime.time(int(hour), int(minute), int(second or 0))


def _parse_date(value: object, field_name: str) -> datetime.date:
    if isinstance(value, str) and _DATE_RE.fullmatch(value):
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"{field_name}: {value!r} is not a date YYYY-MM-DD")


def _parse_month_day(value: object, field_name: str) -> tuple[int, int]:
    match = _MONTH_DAY_RE.fullmatch(value) if isinstance(value, str) else None
    if match is not None:
        month, day = int(match.group(1)), int(match.group(2))
        if 1 <= month <= 12 and 1 <= day <= _DAYS_IN_MONTH[month - 1]:
            return month, day
    raise ValueError(f"{field_name}: {value!r} is not a day of the year MM-DD")


def _list(value: object, field_name: str, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{field_name}: must be a list of {what}, got {value!r}")
    return value


def _int_list(value: object, field_name: str, low: int, high: int, what: str) -> tuple[int, ...]:
    items = _list(value, field_name, f"whole numbers {low}..{high}")
    for index, item in enumerate(items):
        if not _is_int(item) or not low <= item <= high:
            raise ValueError(f"{field_name}[{index}]: {item!r} is not {what}")
    return tuple(items)


def recurrence_from_dict(data: dict[str, Any]) -> Recurrence:
    """Build a rule from the JSON the API stores; errors name the field, e.g.
    "recurrence.times[1]: '25:00' is not a time of day HH:MM"."""
    p = "recurrence"
    if not isinstance(data, dict):
        raise ValueError(f"{p}: must be an object, got {type(data).__name__}")
    # Unknown keys are refused: a misspelt "skip_date" silently ignored would play the
    # notice on the holiday the clerk meant to skip.
    for key in data:
        if key not in _DICT_FIELDS:
            raise ValueError(
                f"{p}.{key}: unknown field (expected one of {', '.join(_DICT_FIELDS)})"
            )
    for key in ("kind", "times", "start_date"):
        if key not in data:
            raise ValueError(f"{p}.{key}: required field is missing")

    kind = data["kind"]
    if kind not in KINDS:
        raise ValueError(f"{p}.kind: {kind!r} is not one of {', '.join(repr(k) for k in KINDS)}")

    raw_times = _list(data["times"], f"{p}.times", "times of day HH:MM")
    times = tuple(_parse_time(item, f"{p}.times[{index}]") for index, item in enumerate(raw_times))
    start_date = _parse_date(data["start_date"], f"{p}.start_date")
    raw_end = data.get("end_date")
    end_date = None if raw_end is None else _parse_date(raw_end, f"{p}.end_date")

    weekdays = _int_list(
        data.get("weekdays", []), f"{p}.weekdays", 0, 6, "a weekday (0=Monday..6=Sunday)"
    )
    month_days = _int_list(
        data.get("month_days", []), f"{p}.month_days", 1, 31, "a day of the month (1..31)"
    )
    interval_days = data.get("interval_days", 1)
    if not _is_int(interval_days) or interval_days < 1:
        raise ValueError(f"{p}.interval_days: {interval_days!r} must be a whole number >= 1")

    season = None
    raw_season = data.get("season")
    if raw_season is not None:
        if not isinstance(raw_season, dict) or set(raw_season) != {"start", "end"}:
            raise ValueError(
                f'{p}.season: must be null or an object {{"start": "MM-DD", "end": '
                f'"MM-DD"}}, got {raw_season!r}'
            )
        start_month, start_day = _parse_month_day(raw_season["start"], f"{p}.season.start")
        end_month, end_day = _parse_month_day(raw_season["end"], f"{p}.season.end")
        season = Season(start_month, start_day, end_month, end_day)

    raw_skips = _list(data.get("skip_dates", []), f"{p}.skip_dates", "dates YYYY-MM-DD")
    skip_dates = frozenset(
        _parse_date(item, f"{p}.skip_dates[{index}]") for index, item in enumerate(raw_skips)
    )

    timezone = data.get("timezone", DEFAULT_TIMEZONE)
    _zone(timezone, f"{p}.timezone")

    try:
        return Recurrence(
            kind=cast(Kind, kind),
            times=times,
            start_date=start_date,
            end_date=end_date,
            weekdays=weekdays,
            interval_days=interval_days,
            month_days=month_days,
            season=season,
            skip_dates=skip_dates,
            timezone=timezone,
        )
    except ValueError as exc:
        # The remaining checks are cross-field ones made by the dataclass, whose
        # messages start with the field name; give them the same JSON path.
        raise ValueError(f"{p}.{exc}") from None


def recurrence_to_dict(rule: Recurrence) -> dict[str, Any]:
    """The stored JSON form; recurrence_from_dict(recurrence_to_dict(r)) == r."""
    season = rule.season
    return {
        "kind": rule.kind,
        "times": [_format_time(t) for t in rule.times],
        "start_date": rule.start_date.isoformat(),
        "end_date": None if rule.end_date is None else rule.end_date.isoformat(),
        "weekdays": list(rule.weekdays),
        "interval_days": rule.interval_days,
        "month_days": list(rule.month_days),
        "season": None
        if season is None
        else {
            "start": f"{season.start_month:02d}-{season.start_day:02d}",
            "end": f"{season.end_month:02d}-{season.end_day:02d}",
        },
        "skip_dates": sorted(d.isoformat() for d in rule.skip_dates),
        "timezone": rule.timezone,
    }
