"""Pure planning of schedule occurrences: who plays what, when, and what each terminal
is told to keep in its local schedule.

Nothing here reads the clock or the database. The service feeds it the schedules, the
county's topology and quiet hours, and a window; it answers with occurrences (each
already split into the terminals that play it and the townships whose quiet hours
suppress it) and, for the push, the items of each terminal's `ScheduleBody` trimmed to
fit one command.
"""

from __future__ import annotations

import datetime
import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from controller.schedules.rules import (
    QuietHours,
    Recurrence,
    occurrences,
    suppressed_by_quiet_hours,
)
from dalaba import protocol as p

OCCURRENCE_PREFIX = "occ-"

# Everything in a sealed envelope but the command JSON itself: the envelope's keys,
# algorithm, key id and a base64 Ed25519 signature (88 characters), with room to spare.
ENVELOPE_OVERHEAD_BYTES = 400
# The command around the items: id, times, target, version, horizon.
COMMAND_OVERHEAD_BYTES = 400


def occurrence_id(schedule_id: str, due_ms: int) -> str:
    """Deterministic, so a restart or a second look at the same instant finds the same
    occurrence; it is also the broadcast id and the id terminals claim once."""
    digest = hashlib.sha256(f"{schedule_id}:{due_ms}".encode()).hexdigest()
    return OCCURRENCE_PREFIX + digest[:24]


def to_ms(instant: datetime.datetime) -> int:
    return int(instant.timestamp() * 1000)


def from_ms(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)


def local_label(ms: int, timezone: str, *, seconds: bool = True) -> str:
    """How a clerk reads an instant: "2026-10-03 07:00:00" in the county's zone."""
    fmt = "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    return from_ms(ms).astimezone(ZoneInfo(timezone)).strftime(fmt)


def parse_quiet(start: str | None, end: str | None) -> QuietHours | None:
    """The township row's "HH:MM" pair; None when unset."""
    if not start or not end:
        return None
    return QuietHours(datetime.time.fromisoformat(start), datetime.time.fromisoformat(end))


def describe_quiet(township_id: str, quiet: QuietHours) -> str:
    return f"quiet hours {quiet.start:%H:%M}–{quiet.end:%H:%M} in township {township_id}"


# ------------------------------------------------------------------------- topology


@dataclass(frozen=True)
class Topology:
    """The county as far as schedules care: where each terminal is, and quiet hours."""

    device_village: Mapping[str, str]
    device_township: Mapping[str, str]
    village_township: Mapping[str, str]
    townships: tuple[str, ...]
    quiet: Mapping[str, QuietHours] = field(default_factory=dict)

    def devices_of(self, target: p.Target) -> tuple[str, ...]:
        if target.all:
            return tuple(sorted(self.device_township))
        townships, villages, devices = (
            set(target.townships),
            set(target.villages),
            set(target.devices),
        )
        return tuple(
            sorted(
                d
                for d, t in self.device_township.items()
                if t in townships or self.device_village[d] in villages or d in devices
            )
        )

    def townships_of(self, target: p.Target) -> tuple[str, ...]:
        return tuple(sorted({self.device_township[d] for d in self.devices_of(target)}))


def narrow_target(target: p.Target, drop: Iterable[str], topology: Topology) -> p.Target:
    """The target without the townships in `drop` (those in quiet hours), so the signed
    play command does not reach terminals that must stay silent."""
    dropped = set(drop)
    if not dropped:
        return target
    if target.all:
        return p.Target(townships=tuple(t for t in topology.townships if t not in dropped))
    return p.Target(
        townships=tuple(t for t in target.townships if t not in dropped),
        villages=tuple(
            v for v in target.villages if topology.village_township.get(v) not in dropped
        ),
        devices=tuple(d for d in target.devices if topology.device_township.get(d) not in dropped),
    )


# ---------------------------------------------------------------------- occurrences


@dataclass(frozen=True)
class ScheduleSpec:
    """What planning needs of one active schedule."""

    id: str
    rule: Recurrence
    priority: str
    target: p.Target
    expires_in_s: int
    version: int = 1


@dataclass(frozen=True)
class PlannedOccurrence:
    id: str
    schedule_id: str
    due_ms: int
    expires_at_ms: int
    schedule_version: int
    device_ids: tuple[str, ...]  # the terminals that play it
    suppressed: tuple[tuple[str, str], ...] = ()  # (township, reason) kept silent

    @property
    def outcome(self) -> str:
        return "suppressed" if not self.device_ids and self.suppressed else "scheduled"

    @property
    def devices_digest(self) -> str:
        return devices_digest(self.device_ids)


def devices_digest(device_ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(device_ids)).encode()).hexdigest()[:32]


def plan(
    specs: Iterable[ScheduleSpec],
    topology: Topology,
    start_ms: int,
    end_ms: int,
    timezone: str,
) -> list[PlannedOccurrence]:
    """Every occurrence of every schedule with start_ms <= due < end_ms, each split by
    township into the terminals that play it and the townships kept quiet."""
    start, end = from_ms(start_ms), from_ms(end_ms)
    planned: list[PlannedOccurrence] = []
    for spec in specs:
        by_township: dict[str, list[str]] = defaultdict(list)
        for d in topology.devices_of(spec.target):
            by_township[topology.device_township[d]].append(d)
        for instant in occurrences(spec.rule, start, end):
            due = to_ms(instant)
            playing: list[str] = []
            suppressed: list[tuple[str, str]] = []
            for township, devices in sorted(by_township.items()):
                quiet = topology.quiet.get(township)
                if quiet is not None and suppressed_by_quiet_hours(
                    spec.priority, quiet, instant, timezone
                ):
                    suppressed.append((township, describe_quiet(township, quiet)))
                else:
                    playing.extend(devices)
            planned.append(
                PlannedOccurrence(
                    id=occurrence_id(spec.id, due),
                    schedule_id=spec.id,
                    due_ms=due,
                    expires_at_ms=due + spec.expires_in_s * 1000,
                    schedule_version=spec.version,
                    device_ids=tuple(sorted(playing)),
                    suppressed=tuple(suppressed),
                )
            )
    planned.sort(key=lambda o: (o.due_ms, o.schedule_id))
    return planned


def items_by_device(
    planned: Iterable[PlannedOccurrence], make_item: Mapping[str, p.ScheduledItem]
) -> dict[str, list[p.ScheduledItem]]:
    """Group items per terminal. `make_item` maps occurrence id to its item (the content
    is per occurrence, the same for every terminal that plays it)."""
    result: dict[str, list[p.ScheduledItem]] = defaultdict(list)
    for occ in planned:
        item = make_item.get(occ.id)
        if item is None:
            continue
        for d in occ.device_ids:
            result[d].append(item)
    for items in result.values():
        items.sort(key=lambda i: (i.start_at, i.occurrence_id))
    return dict(result)


# --------------------------------------------------------------------------- pushing


def encode_items(items: Iterable[p.ScheduledItem]) -> dict[str, bytes]:
    """Each item's JSON once: many terminals share an occurrence, and its size and
    digest are needed for every one of them."""
    return {i.occurrence_id: i.to_bytes() for i in items}


def items_digest(
    items: Sequence[p.ScheduledItem], encoded: Mapping[str, bytes] | None = None
) -> str:
    """Same items, same digest: a terminal already holding them need not be told again."""
    h = hashlib.sha256()
    for i in items:
        h.update(encoded[i.occurrence_id] if encoded is not None else i.to_bytes())
        h.update(b"\n")
    return h.hexdigest()[:32]


def sealed_size_estimate(command_json_bytes: int) -> int:
    """Size of the envelope around a command of this many bytes (base64 grows 4/3)."""
    return (command_json_bytes + 2) // 3 * 4 + ENVELOPE_OVERHEAD_BYTES


@dataclass(frozen=True)
class FittedItems:
    items: tuple[p.ScheduledItem, ...]
    horizon_until: int
    dropped: int  # items beyond what one command can carry


def fit_items(
    items: Sequence[p.ScheduledItem],
    horizon_until: int,
    max_bytes: int = p.MAX_COMMAND_BYTES,
    encoded: Mapping[str, bytes] | None = None,
) -> FittedItems:
    """Keep the earliest items that fit in one command. When some must go, the horizon
    is pulled in to the first one left out, so the terminal knows where its copy ends
    (the next push, an hour later, carries them)."""
    ordered = sorted(items, key=lambda i: (i.start_at, i.occurrence_id))
    total = COMMAND_OVERHEAD_BYTES
    for index, item in enumerate(ordered):
        size = len(encoded[item.occurrence_id]) if encoded is not None else len(item.to_bytes())
        total += size + 1
        if sealed_size_estimate(total) > max_bytes:
            return FittedItems(tuple(ordered[:index]), item.start_at, len(ordered) - index)
    return FittedItems(tuple(ordered), horizon_until, 0)


# -------------------------------------------------------------------------- timeline


@dataclass(frozen=True)
class Slot:
    """One occurrence on a township's timeline, for conflict marking."""

    key: str
    start_ms: int
    end_ms: int
    rank: int


def conflicts(slots: Sequence[Slot]) -> dict[str, list[str]]:
    """For each slot, the others whose play time overlaps it on the same loudspeakers:
    these queue on the terminal, highest rank first."""
    ordered = sorted(slots, key=lambda s: (s.start_ms, -s.rank, s.key))
    result: dict[str, list[str]] = {s.key: [] for s in slots}
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if b.start_ms >= a.end_ms:
                break
            result[a.key].append(b.key)
            result[b.key].append(a.key)
    return result
