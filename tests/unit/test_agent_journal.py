"""The plays a terminal owes, on flash (edge_agent/journal.py), and the late-start grid."""

from __future__ import annotations

import os
from pathlib import Path

from dalaba import protocol as p
from edge_agent.agent import LATE_STEP_MS, late_slot
from edge_agent.journal import PlayJournal

NOW = 1_760_000_000_000
WALL = 1_700_000_000_000


def body(bid: str, priority: p.Priority = p.Priority.NOTICE, attempt: int = 0) -> p.PlayBody:
    return p.PlayBody(
        broadcast_id=bid,
        priority=priority,
        level=2 if priority is p.Priority.EMERGENCY else None,
        category="flood",
        title="河水上涨",
        media=p.MediaRef(sha256="a" * 64, url="a" * 64, size=1, duration_ms=30_000),
        start_at=NOW + 1_000,
        attempt=attempt,
    )


class FakeWall:
    """The board's system clock, set by the test (file times are set to match)."""

    def __init__(self) -> None:
        self.ms = WALL

    def __call__(self) -> int:
        return self.ms


def set_mtime(path: Path, wall_ms: int) -> None:
    os.utime(path, ns=(wall_ms * 1_000_000, wall_ms * 1_000_000))


def test_nothing_owed_on_a_fresh_terminal(tmp_path: Path) -> None:
    journal = PlayJournal(tmp_path / "state" / "owed.log")
    assert journal.load() == []
    journal.close()


def test_an_accepted_play_is_owed_after_a_crash_with_its_command(tmp_path: Path) -> None:
    path = tmp_path / "owed.log"
    journal = PlayJournal(path)
    journal.load()
    journal.accepted("cmd-1", NOW + 60_000, False, body("b-1", attempt=2), NOW)
    journal.accepted("schedule-v3", NOW + 90_000, True, body("occ-1"), NOW + 5)
    # no close: a crash

    owed = PlayJournal(path).load()
    assert [o.broadcast_id for o in owed] == ["b-1", "occ-1"]
    first, second = owed
    assert (first.command_id, first.expires_at, first.local) == ("cmd-1", NOW + 60_000, False)
    assert first.body == body("b-1", attempt=2)  # everything needed to play it again
    assert first.started_at is None and first.offset_ms == 0
    assert second.local and second.command_id == "schedule-v3"
    journal.close()


def test_a_sounding_play_reports_the_offset_of_its_last_progress_mark(tmp_path: Path) -> None:
    path = tmp_path / "owed.log"
    wall = FakeWall()
    journal = PlayJournal(path, wall_clock=wall)
    journal.load()
    journal.accepted("cmd-1", NOW + 60_000, False, body("b-1"), NOW)
    journal.started("b-1", NOW + 1_000, duration_ms=30_000)  # at wall time WALL
    journal.touch()
    set_mtime(path, WALL + 12_000)  # the last progress mark before the power went
    journal.close()

    (owed,) = PlayJournal(path).load()
    assert owed.started_at == NOW + 1_000
    assert owed.duration_ms == 30_000
    assert owed.offset_ms == 12_000

    set_mtime(path, WALL + 90_000)  # alive long after: the offset stops at the end
    (owed,) = PlayJournal(path).load()
    assert owed.offset_ms == 30_000
    set_mtime(path, WALL - 5_000)  # a clock step backwards: never negative
    (owed,) = PlayJournal(path).load()
    assert owed.offset_ms == 0


def test_ended_and_requeued_plays(tmp_path: Path) -> None:
    path = tmp_path / "owed.log"
    journal = PlayJournal(path)
    journal.load()
    for bid in ("done", "preempted", "never-started"):
        journal.accepted(f"cmd-{bid}", NOW + 60_000, False, body(bid), NOW)
    journal.started("done", NOW, 1_000)
    journal.ended("done")
    journal.started("preempted", NOW, 1_000)
    journal.stopped("preempted")  # back in the queue: owed, but not sounding
    journal.ended("unknown-id")  # harmless
    journal.close()

    owed = {o.broadcast_id: o for o in PlayJournal(path).load()}
    assert set(owed) == {"preempted", "never-started"}
    assert owed["preempted"].started_at is None


def test_compaction_keeps_what_is_owed_and_a_cut_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "owed.log"
    journal = PlayJournal(path)
    journal.load()
    journal.accepted("cmd-1", NOW + 60_000, False, body("kept"), NOW)
    journal.started("kept", NOW + 1_000, 30_000)
    journal.accepted("cmd-2", NOW + 60_000, False, body("gone"), NOW)
    journal.ended("gone")
    journal.compact()
    journal.close()
    assert len(path.read_text().splitlines()) == 2  # A and S of "kept"
    with path.open("a") as f:
        f.write('A {"command_id":"cmd-3","expi')  # the power went mid-write
    (owed,) = PlayJournal(path).load()
    assert owed.broadcast_id == "kept" and owed.started_at == NOW + 1_000


def test_a_replayed_accept_replaces_the_earlier_one(tmp_path: Path) -> None:
    # A resend (higher attempt) of a broadcast whose first attempt ended.
    path = tmp_path / "owed.log"
    journal = PlayJournal(path)
    journal.load()
    journal.accepted("cmd-1", NOW + 60_000, False, body("b-1"), NOW)
    journal.ended("b-1")
    journal.accepted("cmd-2", NOW + 60_000, False, body("b-1", attempt=1), NOW + 10)
    journal.close()
    (owed,) = PlayJournal(path).load()
    assert owed.command_id == "cmd-2" and owed.body.attempt == 1


def test_the_file_is_emptied_once_nothing_is_owed(tmp_path: Path) -> None:
    path = tmp_path / "owed.log"
    journal = PlayJournal(path)
    journal.load()
    for i in range(400):  # a busy terminal: ~200 bytes per accepted play
        journal.accepted(f"cmd-{i}", NOW + 60_000, False, body(f"b-{i}"), NOW)
        journal.started(f"b-{i}", NOW, 1_000)
        journal.ended(f"b-{i}")
    journal.close()
    assert path.stat().st_size < 70 * 1024
    assert PlayJournal(path).load() == []


# --------------------------------------------------------------------------- late grid


def test_a_start_in_time_is_kept() -> None:
    assert late_slot(NOW, NOW - 1) == NOW
    assert late_slot(NOW, NOW) == NOW


def test_a_late_start_moves_to_the_next_step_of_the_grid() -> None:
    assert late_slot(NOW, NOW + 1) == NOW + LATE_STEP_MS
    assert late_slot(NOW, NOW + LATE_STEP_MS) == NOW + LATE_STEP_MS
    assert late_slot(NOW, NOW + LATE_STEP_MS + 1) == NOW + 2 * LATE_STEP_MS
    assert late_slot(NOW, NOW + 61_234) == NOW + 62_000


def test_terminals_late_by_different_amounts_in_one_step_start_together() -> None:
    # Each terminal asks for "no earlier than now + warm-up"; their fetches ended at
    # different moments within one step of the grid.
    ready = [NOW + 2_100, NOW + 2_700, NOW + 3_999, NOW + 4_000]
    assert {late_slot(NOW, r) for r in ready} == {NOW + 2 * LATE_STEP_MS}
