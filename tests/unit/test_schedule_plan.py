"""Planning occurrences and terminals' local schedules: pure functions, no clock."""

from __future__ import annotations

import datetime
from zoneinfo import ZoneInfo

import pytest

from controller.schedules.plan import (
    ScheduleSpec,
    Slot,
    Topology,
    conflicts,
    fit_items,
    items_by_device,
    items_digest,
    narrow_target,
    occurrence_id,
    parse_quiet,
    plan,
    to_ms,
)
from controller.schedules.rules import QuietHours, Recurrence, Season
from dalaba import protocol as p
from dalaba.signing import Ed25519Signer

SHANGHAI = ZoneInfo("Asia/Shanghai")
TZ = "Asia/Shanghai"
T = datetime.time
D = datetime.date
QUIET = QuietHours(T(22, 0), T(6, 30))


def local_ms(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> int:
    return to_ms(datetime.datetime(y, mo, d, h, mi, tzinfo=SHANGHAI))


def topology(quiet: dict[str, QuietHours] | None = None) -> Topology:
    devices = {
        "d-t01-v01-1": ("t01-v01", "t01"),
        "d-t01-v02-1": ("t01-v02", "t01"),
        "d-t01-v02-2": ("t01-v02", "t01"),
        "d-t02-v01-1": ("t02-v01", "t02"),
        "d-t03-v01-1": ("t03-v01", "t03"),
    }
    return Topology(
        device_village={d: v for d, (v, _) in devices.items()},
        device_township={d: t for d, (_, t) in devices.items()},
        village_township={"t01-v01": "t01", "t01-v02": "t01", "t02-v01": "t02", "t03-v01": "t03"},
        townships=("t01", "t02", "t03"),
        quiet=quiet or {},
    )


def spec(
    sid: str = "sch-1",
    *,
    rule: Recurrence | None = None,
    priority: str = "notice",
    target: p.Target | None = None,
) -> ScheduleSpec:
    return ScheduleSpec(
        id=sid,
        rule=rule or Recurrence("daily", (T(7), T(18)), D(2026, 1, 1)),
        priority=priority,
        target=target or p.Target(all=True),
        expires_in_s=1800,
    )


def item(occ: str, start_at: int, sha: str = "a" * 64) -> p.ScheduledItem:
    return p.ScheduledItem(
        occurrence_id=occ,
        schedule_id="sch-1",
        priority=p.Priority.NOTICE,
        category="fire_prevention",
        title="防火提醒",
        media=p.MediaRef(sha256=sha, url=sha, size=40_000, duration_ms=9000),
        start_at=start_at,
        expires_at=start_at + 1_800_000,
    )


# ----------------------------------------------------------------------- identity


def test_occurrence_ids_are_deterministic_distinct_and_safe_in_topics():
    a = occurrence_id("sch-1", 1_790_000_000_000)
    assert a == occurrence_id("sch-1", 1_790_000_000_000)
    assert a != occurrence_id("sch-1", 1_790_000_000_001)
    assert a != occurrence_id("sch-2", 1_790_000_000_000)
    assert a.startswith("occ-") and len(a) == 28
    assert p.check_id(a) == a


def test_quiet_hours_parse_from_the_township_columns():
    assert parse_quiet("22:00", "06:30") == QUIET
    assert parse_quiet(None, "06:30") is None
    assert parse_quiet(None, None) is None


# ----------------------------------------------------------------------- targets


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (p.Target(all=True), 5),
        (p.Target(townships=("t01",)), 3),
        (p.Target(villages=("t01-v02",)), 2),
        (p.Target(devices=("d-t03-v01-1",), villages=("t01-v01",)), 2),
    ],
)
def test_devices_of_a_target(target: p.Target, expected: int):
    assert len(topology().devices_of(target)) == expected


def test_narrowing_a_target_drops_quiet_townships_only():
    topo = topology()
    assert narrow_target(p.Target(all=True), ["t01"], topo) == p.Target(townships=("t02", "t03"))
    mixed = p.Target(townships=("t01",), villages=("t02-v01",), devices=("d-t03-v01-1",))
    assert narrow_target(mixed, ["t02"], topo) == p.Target(
        townships=("t01",), devices=("d-t03-v01-1",)
    )
    assert narrow_target(mixed, [], topo) is mixed


# ----------------------------------------------------------------------- planning


def test_plan_lists_each_occurrence_with_its_terminals_and_expiry():
    start, end = local_ms(2026, 6, 1), local_ms(2026, 6, 3)
    found = plan([spec(target=p.Target(townships=("t01",)))], topology(), start, end, TZ)
    assert [o.due_ms for o in found] == [
        local_ms(2026, 6, 1, 7),
        local_ms(2026, 6, 1, 18),
        local_ms(2026, 6, 2, 7),
        local_ms(2026, 6, 2, 18),
    ]
    first = found[0]
    assert first.id == occurrence_id("sch-1", first.due_ms)
    assert first.device_ids == ("d-t01-v01-1", "d-t01-v02-1", "d-t01-v02-2")
    assert first.expires_at_ms == first.due_ms + 1_800_000
    assert first.outcome == "scheduled" and first.suppressed == ()


def test_quiet_hours_suppress_notices_per_township_but_never_emergencies():
    late = Recurrence("daily", (T(23),), D(2026, 1, 1))
    topo = topology({"t01": QUIET})
    window = (local_ms(2026, 6, 1), local_ms(2026, 6, 2))
    (notice,) = plan([spec(rule=late)], topo, *window, TZ)
    # Silent in t01, still plays in t02 and t03.
    assert notice.outcome == "scheduled"
    assert notice.device_ids == ("d-t02-v01-1", "d-t03-v01-1")
    assert notice.suppressed == (("t01", "quiet hours 22:00–06:30 in township t01"),)

    (only_t01,) = plan([spec(rule=late, target=p.Target(villages=("t01-v01",)))], topo, *window, TZ)
    assert only_t01.outcome == "suppressed" and only_t01.device_ids == ()

    (warning,) = plan([spec(rule=late, priority="emergency")], topo, *window, TZ)
    assert warning.suppressed == () and len(warning.device_ids) == 5
    # Outside quiet hours nothing is suppressed.
    noon = Recurrence("daily", (T(12),), D(2026, 1, 1))
    (midday,) = plan([spec(rule=noon)], topo, *window, TZ)
    assert midday.suppressed == ()


def test_the_dry_season_ends_and_skip_dates_skip():
    dry = Recurrence(
        "daily",
        (T(7), T(18)),
        D(2025, 10, 1),
        season=Season(10, 1, 3, 31),
        skip_dates=frozenset({D(2026, 3, 30)}),
    )
    found = plan([spec(rule=dry)], topology(), local_ms(2026, 3, 29), local_ms(2026, 4, 3), TZ)
    days = sorted({datetime.datetime.fromtimestamp(o.due_ms / 1000, SHANGHAI).day for o in found})
    assert days == [29, 31]


def test_two_schedules_at_the_same_instant_both_reach_the_terminal():
    topo = topology()
    specs = [
        spec("sch-a", target=p.Target(villages=("t01-v01",))),
        spec("sch-b", priority="routine", target=p.Target(townships=("t01",))),
    ]
    found = plan(specs, topo, local_ms(2026, 6, 1, 6), local_ms(2026, 6, 1, 8), TZ)
    assert len(found) == 2 and found[0].due_ms == found[1].due_ms
    items = {o.id: item(o.id, o.due_ms) for o in found}
    by_device = items_by_device(found, items)
    assert {i.occurrence_id for i in by_device["d-t01-v01-1"]} == set(items)
    assert [i.occurrence_id for i in by_device["d-t01-v02-1"]] == [found[1].id]
    assert "d-t02-v01-1" not in by_device


# ----------------------------------------------------------------------- pushing


def test_items_digest_changes_with_any_item_change():
    a = [item("occ-1", 1000), item("occ-2", 2000)]
    assert items_digest(a) == items_digest(list(a))
    assert items_digest(a) != items_digest([item("occ-1", 1000), item("occ-2", 2001)])
    assert items_digest(a) != items_digest(a[:1])


def test_a_terminals_schedule_fits_one_signed_command():
    signer = Ed25519Signer.generate()
    start = local_ms(2026, 6, 1)
    horizon = start + 72 * 3600_000
    # Far more than any terminal gets: one item every 10 minutes for three days.
    many = [item(f"occ-{n:04d}", start + n * 600_000, sha=f"{n:064x}") for n in range(432)]
    fitted = fit_items(many, horizon)
    assert 0 < len(fitted.items) < len(many) and fitted.dropped == len(many) - len(fitted.items)
    assert fitted.horizon_until == many[len(fitted.items)].start_at  # where its copy ends
    body = p.ScheduleBody(version=1, horizon_until=fitted.horizon_until, items=fitted.items)
    command = p.Command.new(body, p.Target(devices=("d-t01-v01-1",)), fitted.horizon_until)
    sealed = p.seal(command, signer)
    assert len(sealed) <= p.MAX_COMMAND_BYTES
    assert len(sealed) > p.MAX_COMMAND_BYTES * 0.9  # it uses the room it has
    # Still more than two days ahead of the first item.
    assert fitted.horizon_until - start >= 48 * 3600_000

    few = many[:40]
    assert fit_items(few, horizon) == type(fitted)(tuple(few), horizon, 0)


# ----------------------------------------------------------------------- timeline


def test_conflicts_are_overlapping_plays_on_the_same_loudspeakers():
    slots = [
        Slot("a", 0, 10_000, 20),
        Slot("b", 0, 5_000, 10),
        Slot("c", 9_000, 12_000, 96),
        Slot("d", 12_000, 13_000, 20),
    ]
    found = conflicts(slots)
    assert sorted(found["a"]) == ["b", "c"]
    assert found["b"] == ["a"]
    assert found["c"] == ["a"]
    assert found["d"] == []
