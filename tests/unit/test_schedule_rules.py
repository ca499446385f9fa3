"""Schedule expansion: when township broadcasts fire, quiet hours, stored JSON form."""

from __future__ import annotations

import datetime
import json
import re
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from controller.schedules.rules import (
    QuietHours,
    Recurrence,
    Season,
    is_quiet,
    next_occurrences,
    occurrences,
    recurrence_from_dict,
    recurrence_to_dict,
    suppressed_by_quiet_hours,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")
UTC = datetime.UTC
DRY_SEASON = Season(10, 1, 3, 31)
QUIET = QuietHours(datetime.time(22, 0), datetime.time(6, 30))

T = datetime.time
D = datetime.date


def local(
    y: int, mo: int, d: int, h: int = 0, mi: int = 0, tz: ZoneInfo = SHANGHAI
) -> datetime.datetime:
    return datetime.datetime(y, mo, d, h, mi, tzinfo=tz)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime.datetime:
    return datetime.datetime(y, mo, d, h, mi, tzinfo=UTC)


def local_days(instants: list[datetime.datetime], tz: ZoneInfo = SHANGHAI) -> list[str]:
    return [i.astimezone(tz).strftime("%Y-%m-%d %H:%M") for i in instants]


def check_well_formed(found: list[datetime.datetime]) -> None:
    assert all(i.tzinfo is UTC for i in found)
    assert found == sorted(set(found))


# ---------------------------------------------------------------------------- kinds


@pytest.mark.parametrize(
    ("rule", "start", "end", "expected"),
    [
        pytest.param(
            Recurrence("once", (T(9),), D(2026, 6, 9)),
            local(2026, 6, 1),
            local(2026, 7, 1),
            ["2026-06-09 09:00"],
            id="once-meeting-call",
        ),
        pytest.param(
            Recurrence("daily", (T(12),), D(2026, 1, 1)),
            local(2026, 6, 1),
            local(2026, 6, 4),
            ["2026-06-01 12:00", "2026-06-02 12:00", "2026-06-03 12:00"],
            id="daily-county-news",
        ),
        pytest.param(
            Recurrence("weekly", (T(10),), D(2026, 1, 1), weekdays=(0,)),
            local(2026, 6, 1),
            local(2026, 6, 15),
            ["2026-06-01 10:00", "2026-06-08 10:00"],
            id="weekly-anti-fraud-monday",
        ),
        pytest.param(
            Recurrence("weekly", (T(10),), D(2026, 1, 1), weekdays=(5, 6)),
            local(2026, 6, 1),
            local(2026, 6, 8),
            ["2026-06-06 10:00", "2026-06-07 10:00"],
            id="weekly-weekend",
        ),
        pytest.param(
            Recurrence("every_n_days", (T(8),), D(2026, 6, 1), interval_days=3),
            local(2026, 5, 1),
            local(2026, 6, 11),
            ["2026-06-01 08:00", "2026-06-04 08:00", "2026-06-07 08:00", "2026-06-10 08:00"],
            id="every-3-days-never-before-start",
        ),
        pytest.param(
            Recurrence("monthly", (T(19),), D(2026, 1, 1), month_days=(1, 15)),
            local(2026, 6, 1),
            local(2026, 7, 2),
            ["2026-06-01 19:00", "2026-06-15 19:00", "2026-07-01 19:00"],
            id="monthly-1st-and-15th",
        ),
    ],
)
def test_each_kind(
    rule: Recurrence,
    start: datetime.datetime,
    end: datetime.datetime,
    expected: list[str],
) -> None:
    found = occurrences(rule, start, end)
    check_well_formed(found)
    assert local_days(found) == expected


def test_results_are_utc_instants_of_local_times() -> None:
    rule = Recurrence("daily", (T(7),), D(2026, 1, 1))
    # 07:00 in Shanghai is 23:00 UTC the previous day: the window is in UTC on purpose.
    found = occurrences(rule, utc(2026, 6, 1), utc(2026, 6, 2))
    assert found == [utc(2026, 6, 1, 23)]


def test_window_in_another_zone_means_the_same_instants() -> None:
    rule = Recurrence("daily", (T(7), T(18)), D(2026, 1, 1))
    start = local(2026, 6, 1, 0)
    in_new_york = start.astimezone(ZoneInfo("America/New_York"))
    delta = datetime.timedelta(hours=36)
    assert occurrences(rule, in_new_york, in_new_york + delta) == occurrences(
        rule, start, start + delta
    )


def test_window_is_half_open() -> None:
    rule = Recurrence("daily", (T(12),), D(2026, 1, 1))
    noon = local(2026, 6, 1, 12)
    assert occurrences(rule, noon, noon + datetime.timedelta(days=1)) == [noon.astimezone(UTC)]
    assert occurrences(rule, noon - datetime.timedelta(days=1), noon) == [
        (noon - datetime.timedelta(days=1)).astimezone(UTC)
    ]
    assert occurrences(rule, noon, noon) == []


def test_48_hour_window_with_several_times_per_day() -> None:
    rule = Recurrence("daily", (T(18), T(7), T(12), T(21, 30)), D(2026, 1, 1))
    found = occurrences(rule, local(2026, 6, 1, 9), local(2026, 6, 3, 9))
    check_well_formed(found)
    assert local_days(found) == [
        "2026-06-01 12:00",
        "2026-06-01 18:00",
        "2026-06-01 21:30",
        "2026-06-02 07:00",
        "2026-06-02 12:00",
        "2026-06-02 18:00",
        "2026-06-02 21:30",
        "2026-06-03 07:00",
    ]


def test_duplicate_times_fire_once() -> None:
    rule = Recurrence("daily", (T(7), T(7)), D(2026, 1, 1))
    assert len(occurrences(rule, local(2026, 6, 1), local(2026, 6, 2))) == 1


# ----------------------------------------------------------------- season, skips, end


@pytest.mark.parametrize(
    ("day", "fires"),
    [
        (D(2026, 10, 1), True),
        (D(2026, 12, 31), True),
        (D(2027, 1, 1), True),
        (D(2027, 3, 31), True),
        (D(2027, 4, 1), False),
        (D(2027, 7, 15), False),
        (D(2026, 9, 30), False),
    ],
)
def test_season_wrapping_the_year(day: datetime.date, fires: bool) -> None:
    fire_prevention = Recurrence("daily", (T(7), T(18)), D(2026, 1, 1), season=DRY_SEASON)
    assert DRY_SEASON.contains(day) is fires
    found = occurrences(
        fire_prevention,
        local(day.year, day.month, day.day),
        local(day.year, day.month, day.day) + datetime.timedelta(days=1),
    )
    expected = [f"{day} 07:00", f"{day} 18:00"] if fires else []
    assert local_days(found) == expected


def test_season_across_new_year_window() -> None:
    rule = Recurrence("daily", (T(7), T(18)), D(2026, 10, 1), season=DRY_SEASON)
    found = occurrences(rule, local(2026, 12, 31), local(2027, 1, 2))
    assert local_days(found) == [
        "2026-12-31 07:00",
        "2026-12-31 18:00",
        "2027-01-01 07:00",
        "2027-01-01 18:00",
    ]
    assert occurrences(rule, local(2027, 7, 1), local(2027, 8, 1)) == []


@pytest.mark.parametrize(
    ("season", "day", "inside"),
    [
        (Season(5, 1, 9, 30), D(2026, 5, 1), True),
        (Season(5, 1, 9, 30), D(2026, 9, 30), True),
        (Season(5, 1, 9, 30), D(2026, 10, 1), False),
        (Season(5, 1, 9, 30), D(2026, 4, 30), False),
        (Season(7, 4, 7, 4), D(2026, 7, 4), True),
        (Season(7, 4, 7, 4), D(2026, 7, 5), False),
        (Season(12, 1, 2, 29), D(2027, 2, 28), True),
        (Season(12, 1, 2, 29), D(2027, 3, 1), False),
        (Season(12, 1, 2, 29), D(2028, 2, 29), True),
    ],
)
def test_season_contains(season: Season, day: datetime.date, inside: bool) -> None:
    assert season.contains(day) is inside


def test_skip_dates() -> None:
    rule = Recurrence(
        "daily", (T(12),), D(2026, 1, 1), skip_dates=frozenset({D(2026, 10, 1), D(2026, 10, 3)})
    )
    found = occurrences(rule, local(2026, 9, 30), local(2026, 10, 5))
    assert local_days(found) == [
        "2026-09-30 12:00",
        "2026-10-02 12:00",
        "2026-10-04 12:00",
    ]


def test_skip_date_of_a_once_rule_cancels_it() -> None:
    rule = Recurrence("once", (T(9),), D(2026, 6, 9), skip_dates=frozenset({D(2026, 6, 9)}))
    assert occurrences(rule, local(2026, 6, 1), local(2026, 7, 1)) == []


def test_end_date_is_inclusive() -> None:
    rule = Recurrence("daily", (T(8), T(20)), D(2026, 6, 1), end_date=D(2026, 6, 3))
    found = occurrences(rule, local(2026, 5, 1), local(2026, 7, 1))
    assert local_days(found)[-2:] == ["2026-06-03 08:00", "2026-06-03 20:00"]
    assert len(found) == 6


@pytest.mark.parametrize(
    ("month", "expected_days"),
    [
        (4, [30]),
        (5, [30, 31]),
        (2, []),  # 2026 is not a leap year: neither the 30th nor the 31st exists
    ],
)
def test_month_days_missing_from_the_month_are_skipped(
    month: int, expected_days: list[int]
) -> None:
    rule = Recurrence("monthly", (T(19),), D(2026, 1, 1), month_days=(30, 31))
    start = local(2026, month, 1)
    end = local(2026, month + 1, 1)
    found = occurrences(rule, start, end)
    assert [i.astimezone(SHANGHAI).day for i in found] == expected_days


def test_monthly_31st_over_half_a_year() -> None:
    rule = Recurrence("monthly", (T(19),), D(2026, 1, 1), month_days=(31,))
    found = occurrences(rule, local(2026, 1, 1), local(2026, 7, 1))
    assert local_days(found) == [
        "2026-01-31 19:00",
        "2026-03-31 19:00",
        "2026-05-31 19:00",
    ]


@pytest.mark.parametrize(
    ("window_start", "expected"),
    [
        (local(2026, 1, 1), ["2026-01-01", "2026-01-04", "2026-01-07", "2026-01-10"]),
        (local(2026, 1, 5), ["2026-01-07", "2026-01-10"]),
        (local(2026, 1, 8), ["2026-01-10"]),
    ],
)
def test_every_n_days_is_anchored_on_start_date(
    window_start: datetime.datetime, expected: list[str]
) -> None:
    rule = Recurrence("every_n_days", (T(8),), D(2026, 1, 1), interval_days=3)
    found = occurrences(rule, window_start, local(2026, 1, 12))
    assert [s[:10] for s in local_days(found)] == expected


def test_every_n_days_anchor_survives_a_year_boundary() -> None:
    rule = Recurrence("every_n_days", (T(8),), D(2025, 12, 30), interval_days=7)
    found = occurrences(rule, local(2026, 1, 1), local(2026, 1, 31))
    assert [s[:10] for s in local_days(found)] == [
        "2026-01-06",
        "2026-01-13",
        "2026-01-20",
        "2026-01-27",
    ]


# --------------------------------------------------------------------- daylight saving


@pytest.mark.parametrize(
    ("times", "day", "expected_utc"),
    [
        # Spring forward 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 does not exist and
        # fires once at the shifted instant, 03:30 CEST.
        ((T(2, 30),), D(2026, 3, 28), [utc(2026, 3, 28, 1, 30)]),
        ((T(2, 30),), D(2026, 3, 29), [utc(2026, 3, 29, 1, 30)]),
        ((T(2, 30),), D(2026, 3, 30), [utc(2026, 3, 30, 0, 30)]),
        # The shifted 02:30 and a real 03:30 meet on one instant: fires once.
        ((T(2, 30), T(3, 30)), D(2026, 3, 29), [utc(2026, 3, 29, 1, 30)]),
        # Fall back 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 happens twice, fires at
        # the first (fold=0, summer time).
        ((T(2, 30),), D(2026, 10, 24), [utc(2026, 10, 24, 0, 30)]),
        ((T(2, 30),), D(2026, 10, 25), [utc(2026, 10, 25, 0, 30)]),
        ((T(2, 30),), D(2026, 10, 26), [utc(2026, 10, 26, 1, 30)]),
        ((T(2, 30, fold=1),), D(2026, 10, 25), [utc(2026, 10, 25, 0, 30)]),
    ],
)
def test_dst_in_berlin(
    times: tuple[datetime.time, ...],
    day: datetime.date,
    expected_utc: list[datetime.datetime],
) -> None:
    rule = Recurrence("daily", times, D(2026, 1, 1), timezone="Europe/Berlin")
    start = datetime.datetime.combine(day, T(0), tzinfo=BERLIN)
    end = datetime.datetime.combine(day + datetime.timedelta(days=1), T(0), tzinfo=BERLIN)
    assert occurrences(rule, start, end) == expected_utc


@pytest.mark.parametrize(
    ("day", "count"),
    [
        (D(2026, 3, 28), 24),
        (D(2026, 3, 29), 23),  # 02:00 is shifted onto 03:00's instant
        (D(2026, 10, 25), 24),  # the repeated hour fires once, not twice
    ],
)
def test_hourly_rule_across_berlin_transitions(day: datetime.date, count: int) -> None:
    rule = Recurrence(
        "daily", tuple(T(h) for h in range(24)), D(2026, 1, 1), timezone="Europe/Berlin"
    )
    start = datetime.datetime.combine(day, T(0), tzinfo=BERLIN)
    end = datetime.datetime.combine(day + datetime.timedelta(days=1), T(0), tzinfo=BERLIN)
    found = occurrences(rule, start, end)
    check_well_formed(found)
    assert len(found) == count


def test_next_occurrences_across_spring_forward() -> None:
    rule = Recurrence("daily", (T(2, 30),), D(2026, 1, 1), timezone="Europe/Berlin")
    found = next_occurrences(rule, utc(2026, 3, 28, 12), 2)
    assert found == [utc(2026, 3, 29, 1, 30), utc(2026, 3, 30, 0, 30)]


# -------------------------------------------------------------------- next occurrences


def test_next_occurrences_of_a_past_once_rule_is_empty() -> None:
    rule = Recurrence("once", (T(9),), D(2026, 6, 9))
    assert next_occurrences(rule, local(2026, 6, 9, 9), 3) == []
    assert next_occurrences(rule, local(2027, 1, 1), 3) == []


def test_next_occurrences_of_a_future_once_rule() -> None:
    rule = Recurrence("once", (T(9),), D(2026, 6, 9))
    assert next_occurrences(rule, local(2026, 6, 9, 8, 59), 3) == [utc(2026, 6, 9, 1)]


def test_next_occurrences_is_strictly_after() -> None:
    rule = Recurrence("daily", (T(7), T(18)), D(2026, 1, 1))
    found = next_occurrences(rule, local(2026, 6, 1, 7), 3)
    assert local_days(found) == ["2026-06-01 18:00", "2026-06-02 07:00", "2026-06-02 18:00"]


@pytest.mark.parametrize("count", [0, 1, 5, 40])
def test_next_occurrences_count(count: int) -> None:
    rule = Recurrence("daily", (T(7), T(18)), D(2026, 1, 1))
    found = next_occurrences(rule, local(2026, 6, 1), count)
    check_well_formed(found)
    assert len(found) == count


def test_next_occurrences_finds_a_sparse_rule_months_ahead() -> None:
    rule = Recurrence(
        "monthly", (T(19),), D(2026, 1, 1), month_days=(29,), season=Season(2, 1, 2, 29)
    )
    # The next 29 February after mid-2026 is in 2028.
    assert local_days(next_occurrences(rule, local(2026, 6, 1), 2)) == ["2028-02-29 19:00"]


def test_next_occurrences_of_a_rule_that_never_fires_returns_nothing() -> None:
    rule = Recurrence(
        "monthly", (T(19),), D(2026, 1, 1), month_days=(31,), season=Season(4, 1, 4, 30)
    )
    assert next_occurrences(rule, local(2026, 1, 1), 5) == []


def test_next_occurrences_returns_fewer_when_the_rule_ends() -> None:
    rule = Recurrence("daily", (T(12),), D(2026, 6, 1), end_date=D(2026, 6, 3))
    assert len(next_occurrences(rule, local(2026, 5, 1), 10)) == 3


def test_next_occurrences_across_the_dry_season_gap() -> None:
    rule = Recurrence("daily", (T(7), T(18)), D(2026, 1, 1), season=DRY_SEASON)
    found = next_occurrences(rule, local(2026, 3, 31, 12), 3)
    assert local_days(found) == ["2026-03-31 18:00", "2026-10-01 07:00", "2026-10-01 18:00"]


# --------------------------------------------------------------------- quiet hours


@pytest.mark.parametrize(
    ("wall", "quiet"),
    [
        (T(23, 0), True),
        (T(5, 0), True),
        (T(22, 0), True),
        (T(0, 0), True),
        (T(6, 29, 59), True),
        (T(6, 30), False),
        (T(12, 0), False),
        (T(21, 59), False),
    ],
)
def test_quiet_hours_wrapping_midnight(wall: datetime.time, quiet: bool) -> None:
    assert QUIET.contains(wall) is quiet


@pytest.mark.parametrize(
    ("hours", "wall", "quiet"),
    [
        (QuietHours(T(12), T(14)), T(12), True),
        (QuietHours(T(12), T(14)), T(13, 59), True),
        (QuietHours(T(12), T(14)), T(14), False),
        (QuietHours(T(12), T(14)), T(11, 59), False),
        (QuietHours(T(22), T(22)), T(22), False),
        (QuietHours(T(22), T(22)), T(3), False),
    ],
)
def test_quiet_hours_same_day_and_empty(
    hours: QuietHours, wall: datetime.time, quiet: bool
) -> None:
    assert hours.contains(wall) is quiet


@pytest.mark.parametrize(
    ("instant", "quiet"),
    [
        (local(2026, 6, 1, 23), True),
        (utc(2026, 6, 1, 15), True),  # 23:00 in Shanghai
        (utc(2026, 6, 1, 23), False),  # 07:00 in Shanghai
        (local(2026, 6, 1, 12), False),
    ],
)
def test_is_quiet_reads_the_township_wall_clock(instant: datetime.datetime, quiet: bool) -> None:
    assert is_quiet(QUIET, instant) is quiet
    assert is_quiet(None, instant) is False


def test_is_quiet_in_another_zone() -> None:
    # 23:00 UTC is 01:00 in Berlin summer time, 07:00 in Shanghai.
    assert is_quiet(QUIET, utc(2026, 6, 1, 23), "Europe/Berlin") is True
    assert is_quiet(QUIET, utc(2026, 6, 1, 23)) is False


@pytest.mark.parametrize(
    ("priority", "instant", "suppressed"),
    [
        ("notice", local(2026, 6, 1, 23), True),
        ("routine", local(2026, 6, 1, 5), True),
        ("notice", local(2026, 6, 1, 12), False),
        ("routine", local(2026, 6, 1, 6, 30), False),
        ("emergency", local(2026, 6, 1, 23), False),
        ("emergency", local(2026, 6, 1, 3), False),
        ("paging", local(2026, 6, 1, 23), False),
        ("emergency", local(2026, 6, 1, 12), False),
    ],
)
def test_suppression_never_for_emergencies(
    priority: str, instant: datetime.datetime, suppressed: bool
) -> None:
    assert suppressed_by_quiet_hours(priority, QUIET, instant) is suppressed


@pytest.mark.parametrize("priority", ["emergency", "paging", "notice", "routine"])
def test_no_quiet_hours_suppresses_nothing(priority: str) -> None:
    assert suppressed_by_quiet_hours(priority, None, local(2026, 6, 1, 23)) is False


# -------------------------------------------------------------------- dict round trip

ROUND_TRIP_RULES = [
    Recurrence("once", (T(9),), D(2026, 6, 9)),
    Recurrence("daily", (T(12),), D(2026, 1, 1), end_date=D(2026, 12, 31)),
    Recurrence(
        "weekly",
        (T(7), T(18)),
        D(2026, 10, 1),
        weekdays=(0,),
        season=DRY_SEASON,
        skip_dates=frozenset({D(2026, 10, 1)}),
    ),
    Recurrence("every_n_days", (T(8, 0, 30),), D(2026, 6, 1), interval_days=3),
    Recurrence(
        "monthly",
        (T(19), T(7, 5)),
        D(2026, 1, 1),
        month_days=(1, 15),
        skip_dates=frozenset({D(2026, 5, 1), D(2026, 10, 1), D(2026, 1, 1)}),
        timezone="Europe/Berlin",
    ),
]


@pytest.mark.parametrize("rule", ROUND_TRIP_RULES, ids=lambda r: r.kind)
def test_round_trip_through_json(rule: Recurrence) -> None:
    stored = json.loads(json.dumps(recurrence_to_dict(rule)))
    assert recurrence_from_dict(stored) == rule
    assert recurrence_to_dict(recurrence_from_dict(stored)) == stored


def example_dict(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "kind": "weekly",
        "times": ["07:00", "18:00"],
        "start_date": "2026-10-01",
        "end_date": None,
        "weekdays": [0],
        "interval_days": 1,
        "month_days": [],
        "season": {"start": "10-01", "end": "03-31"},
        "skip_dates": ["2026-10-01"],
        "timezone": "Asia/Shanghai",
    }
    data.update(changes)
    return data


def test_from_dict_reads_the_stored_form() -> None:
    assert recurrence_from_dict(example_dict()) == ROUND_TRIP_RULES[2]
    assert recurrence_to_dict(ROUND_TRIP_RULES[2]) == example_dict()


def test_from_dict_defaults_optional_fields() -> None:
    rule = recurrence_from_dict({"kind": "daily", "times": ["12:00"], "start_date": "2026-01-01"})
    assert rule == Recurrence("daily", (T(12),), D(2026, 1, 1))


# ----------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"times": ()}, "times: must not be empty"),
        ({"times": ("07:00",)}, "times: '07:00' is not a datetime.time"),
        ({"times": (T(7, tzinfo=UTC),)}, "times: 07:00:00+00:00 carries a tzinfo"),
        ({"times": (T(7, 0, 0, 5),)}, "times: 07:00:00.000005 has a fraction of a second"),
        ({"kind": "hourly"}, "kind: 'hourly' is not one of"),
        ({"kind": "once", "times": (T(7), T(8))}, "times: kind 'once' takes exactly one time"),
        ({"kind": "weekly"}, "weekdays: must not be empty for kind 'weekly'"),
        (
            {"kind": "weekly", "weekdays": (0, 7)},
            "weekdays: 7 is not a weekday (0=Monday..6=Sunday)",
        ),
        ({"kind": "weekly", "weekdays": (True,)}, "weekdays: True is not a weekday"),
        ({"weekdays": (0,)}, "weekdays: only used by kind 'weekly', not 'daily'"),
        ({"kind": "monthly"}, "month_days: must not be empty for kind 'monthly'"),
        ({"kind": "monthly", "month_days": (0,)}, "month_days: 0 is not a day of the month"),
        ({"kind": "monthly", "month_days": (32,)}, "month_days: 32 is not a day of the month"),
        ({"kind": "every_n_days", "interval_days": 0}, "interval_days: 0 must be a whole number"),
        ({"interval_days": 3}, "interval_days: only used by kind 'every_n_days'"),
        ({"start_date": "2026-01-01"}, "start_date: '2026-01-01' is not a calendar date"),
        (
            {"start_date": datetime.datetime(2026, 1, 1)},
            "start_date: datetime.datetime(2026, 1, 1, 0, 0) is not a calendar date",
        ),
        ({"end_date": D(2025, 12, 31)}, "end_date: 2025-12-31 is before start_date 2026-01-01"),
        ({"kind": "once", "end_date": D(2026, 1, 2)}, "end_date: kind 'once' fires on start_date"),
        ({"skip_dates": frozenset({"2026-10-01"})}, "skip_dates: '2026-10-01' is not a calendar"),
        ({"season": "10-01..03-31"}, "season: '10-01..03-31' is not a Season"),
        ({"timezone": "Asia/Beijing"}, "timezone: 'Asia/Beijing' is not a known IANA time zone"),
        ({"timezone": "Asia"}, "timezone: 'Asia' is not a known IANA time zone"),
        ({"timezone": ""}, "timezone: must be an IANA time zone name"),
    ],
)
def test_recurrence_validation_names_the_field(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"kind": "daily", "times": (T(7),), "start_date": D(2026, 1, 1)}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):
        Recurrence(**arguments)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((13, 1, 3, 31), "start_month: 13 is not a month (1..12)"),
        ((10, 1, 0, 31), "end_month: 0 is not a month (1..12)"),
        ((4, 31, 5, 1), "start_day: 31 is not a day of month 4"),
        ((10, 1, 2, 30), "end_day: 30 is not a day of month 2"),
    ],
)
def test_season_validation_names_the_field(args: tuple[int, int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Season(*args)


def test_quiet_hours_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match=re.escape("end: '06:30' is not a datetime.time")):
        QuietHours(T(22), "06:30")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"times": ["07:00", "25:00"]}, "recurrence.times[1]: '25:00' is not a time of day HH:MM"),
        ({"times": ["7am"]}, "recurrence.times[0]: '7am' is not a time of day HH:MM"),
        ({"times": [700]}, "recurrence.times[0]: 700 is not a time of day HH:MM"),
        ({"times": "07:00"}, "recurrence.times: must be a list of times of day HH:MM"),
        ({"times": []}, "recurrence.times: must not be empty"),
        ({"kind": "yearly"}, "recurrence.kind: 'yearly' is not one of"),
        ({"start_date": "2026-02-30"}, "recurrence.start_date: '2026-02-30' is not a date"),
        ({"start_date": "20261001"}, "recurrence.start_date: '20261001' is not a date YYYY-MM-DD"),
        ({"end_date": "2026-09-30"}, "recurrence.end_date: 2026-09-30 is before start_date"),
        ({"weekdays": [0, 7]}, "recurrence.weekdays[1]: 7 is not a weekday (0=Monday..6=Sunday)"),
        ({"weekdays": []}, "recurrence.weekdays: must not be empty for kind 'weekly'"),
        ({"weekdays": "0"}, "recurrence.weekdays: must be a list of whole numbers 0..6, got '0'"),
        ({"month_days": [1]}, "recurrence.month_days: only used by kind 'monthly'"),
        ({"interval_days": "3"}, "recurrence.interval_days: '3' must be a whole number >= 1"),
        ({"season": {"start": "13-01", "end": "03-31"}}, "recurrence.season.start: '13-01'"),
        ({"season": {"start": "10-01", "end": "02-30"}}, "recurrence.season.end: '02-30' is not"),
        ({"season": {"start": "10-01"}}, "recurrence.season: must be null or an object"),
        ({"skip_dates": ["2026-10-01", "soon"]}, "recurrence.skip_dates[1]: 'soon' is not a date"),
        ({"timezone": "Beijing"}, "recurrence.timezone: 'Beijing' is not a known IANA time zone"),
        ({"skip_date": ["2026-10-01"]}, "recurrence.skip_date: unknown field"),
    ],
)
def test_from_dict_errors_name_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        recurrence_from_dict(example_dict(**changes))


@pytest.mark.parametrize("missing", ["kind", "times", "start_date"])
def test_from_dict_missing_required_field(missing: str) -> None:
    data = example_dict()
    del data[missing]
    with pytest.raises(ValueError, match=re.escape(f"recurrence.{missing}: required field")):
        recurrence_from_dict(data)


def test_from_dict_refuses_a_non_object() -> None:
    with pytest.raises(ValueError, match=re.escape("recurrence: must be an object, got list")):
        recurrence_from_dict([])  # type: ignore[arg-type]


def test_from_dict_refuses_non_ascii_digits() -> None:
    with pytest.raises(ValueError, match=re.escape("recurrence.times[0]")):
        recurrence_from_dict(example_dict(times=["٠٧:٠٠"]))


@pytest.mark.parametrize(
    "call",
    [
        lambda r: occurrences(r, datetime.datetime(2026, 6, 1), local(2026, 6, 2)),
        lambda r: occurrences(r, local(2026, 6, 1), datetime.datetime(2026, 6, 2)),
        lambda r: next_occurrences(r, datetime.datetime(2026, 6, 1), 3),
        lambda r: is_quiet(QUIET, datetime.datetime(2026, 6, 1, 23)),
        lambda r: suppressed_by_quiet_hours("emergency", QUIET, datetime.datetime(2026, 6, 1)),
    ],
    ids=["occurrences-start", "occurrences-end", "next-after", "is-quiet", "suppressed"],
)
def test_naive_datetimes_are_refused(call: Any) -> None:
    rule = Recurrence("daily", (T(7),), D(2026, 1, 1))
    with pytest.raises(ValueError, match="must be a timezone-aware datetime"):
        call(rule)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda r: occurrences(r, local(2026, 6, 2), local(2026, 6, 1)),
            "end: 2026-06-01T00:00:00+08:00 is before start",
        ),
        (lambda r: next_occurrences(r, local(2026, 6, 1), -1), "count: -1 must be a whole number"),
        (
            lambda r: suppressed_by_quiet_hours("urgent", QUIET, local(2026, 6, 1)),
            "priority: 'urgent' is not one of",
        ),
        (
            lambda r: is_quiet(QUIET, local(2026, 6, 1), "Shanghai"),
            "timezone: 'Shanghai' is not a known IANA time zone",
        ),
    ],
    ids=["end-before-start", "negative-count", "unknown-priority", "unknown-zone"],
)
def test_bad_arguments_name_the_parameter(call: Any, message: str) -> None:
    rule = Recurrence("daily", (T(7),), D(2026, 1, 1))
    with pytest.raises(ValueError, match=re.escape(message)):
        call(rule)


def test_rules_are_frozen_and_hashable() -> None:
    rule = Recurrence("weekly", [T(7)], D(2026, 1, 1), weekdays=[0])  # type: ignore[arg-type]
    assert rule.times == (T(7),)
    assert rule.weekdays == (0,)
    assert hash(rule) == hash(Recurrence("weekly", (T(7),), D(2026, 1, 1), weekdays=(0,)))
    with pytest.raises(AttributeError):
        rule.kind = "daily"  # type: ignore[misc]


# --------------------------------------------------------------------------- batch


def test_batch_of_1000_rules_over_48_hours() -> None:
    """Every township's schedule previewed at once; checks counts, not time."""
    rules: list[tuple[Recurrence, int]] = []
    for index in range(1000):
        per_day = 1 + index % 4
        minute = index % 60
        times = tuple(T(6 + 4 * k, minute) for k in range(per_day))
        variant = index % 4
        if variant == 0:
            # In any 48-hour window a daily time of day occurs exactly twice (no DST).
            rules.append((Recurrence("daily", times, D(2026, 1, 1)), 2 * per_day))
        elif variant == 1:
            every_day = tuple(range(7))
            rules.append(
                (Recurrence("weekly", times, D(2026, 1, 1), weekdays=every_day), 2 * per_day)
            )
        elif variant == 2:
            # Every other day: exactly once per time of day in any 48 hours.
            rules.append(
                (
                    Recurrence("every_n_days", times, D(2026, 1, 1), interval_days=2),
                    per_day,
                )
            )
        else:
            # Outside its season (it is June): never.
            rules.append((Recurrence("daily", times, D(2026, 1, 1), season=DRY_SEASON), 0))

    start = local(2026, 6, 1, 9, 17)
    end = start + datetime.timedelta(hours=48)
    total = 0
    for rule, expected in rules:
        found = occurrences(rule, start, end)
        assert len(found) == expected
        assert all(start <= i < end for i in found)
        total += len(found)
    assert total == sum(expected for _, expected in rules)
