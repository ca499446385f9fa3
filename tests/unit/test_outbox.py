"""The terminal's outbox on flash: order, bounds, and survival across restarts.

(The outbox driven by a real broker, through a power cut, is in test_agent_truth.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.outbox import FinalReports, Outbox

TOPIC = "dalaba/v1/device/d-1/ack"
EVENT = "dalaba/v1/device/d-1/event"


def payload(i: int, pad: int = 0) -> bytes:
    return json.dumps({"seq": i, "pad": "x" * pad}).encode()


def opened(path: Path, **kw: int) -> Outbox:
    box = Outbox(path, **kw)
    box.load()
    return box


def seqs(box: Outbox) -> list[int]:
    return [json.loads(e.payload)["seq"] for e in box.entries()]


def test_entries_come_out_in_the_order_they_went_in(tmp_path: Path) -> None:
    box = opened(tmp_path / "outbox.log")
    for i in range(5):
        box.add(TOPIC, payload(i), keep=True)
    taken = box.take(3)
    assert [json.loads(e.payload)["seq"] for e in taken] == [0, 1, 2]
    assert [json.loads(e.payload)["seq"] for e in box.take(10)] == [3, 4]
    assert box.take(10) == []  # everything handed out
    assert len(box) == 5  # but nothing acknowledged yet
    box.close()


def test_only_acknowledged_entries_leave(tmp_path: Path) -> None:
    box = opened(tmp_path / "outbox.log")
    entries = [box.add(TOPIC, payload(i), keep=True) for i in range(4)]
    box.take(4)
    box.remove(entries[1].n)
    box.remove(entries[3].n)
    box.remove(entries[3].n)  # a duplicate acknowledgement is harmless
    assert seqs(box) == [0, 2]
    box.close()


def test_pending_entries_survive_a_restart_in_order(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.log"
    box = opened(path)
    entries = [box.add(TOPIC if i % 2 else EVENT, payload(i), keep=True) for i in range(6)]
    box.take(6)  # handed to MQTT ...
    box.remove(entries[0].n)  # ... and only the first acknowledged
    box.remove(entries[4].n)
    box.add(TOPIC, payload(6), keep=False)  # flushes the acknowledgements with it
    box.close()

    rebooted = opened(path)
    assert seqs(rebooted) == [1, 2, 3, 5, 6]
    assert [e.topic for e in rebooted.entries()] == [TOPIC, EVENT, TOPIC, TOPIC, TOPIC]
    assert [e.keep for e in rebooted.entries()] == [True, True, True, True, False]
    # After a restart nothing is in flight: all of it is sent again, oldest first.
    assert [json.loads(e.payload)["seq"] for e in rebooted.take(10)] == [1, 2, 3, 5, 6]
    # New entries are numbered after the old ones.
    later = rebooted.add(TOPIC, payload(7), keep=True)
    assert later.n > max(e.n for e in entries)
    rebooted.close()


def test_an_addition_is_on_disk_without_close(tmp_path: Path) -> None:
    # A killed process never closes its files: each addition reaches the OS at once.
    path = tmp_path / "outbox.log"
    running = opened(path)
    running.add(TOPIC, payload(1), keep=True)
    after_crash = opened(path)
    assert seqs(after_crash) == [1]
    running.close()
    after_crash.close()


def test_a_line_cut_by_a_power_loss_and_damaged_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "outbox.log"
    good = f"+ 1 k {TOPIC} ".encode() + payload(1) + b"\n"
    path.write_bytes(
        good
        + b"garbage line\n"
        + b"+ x k topic {}\n"  # no number
        + b"+ 2 z topic {}\n"  # unknown flag
        + b"- notanumber\n"
        + f"+ 3 d {TOPIC} ".encode()
        + payload(3)
        + b"\n"
        + f"+ 4 k {TOPIC} ".encode()
        + payload(4)[:5]  # the write that was under way when the power went
    )
    box = opened(path)
    assert seqs(box) == [1, 3]
    box.close()
    # The load rewrote the file without the damage.
    assert path.read_bytes().count(b"\n") == 2
    assert b"garbage" not in path.read_bytes()


def test_full_by_count_drops_the_oldest_droppable_first(tmp_path: Path) -> None:
    box = opened(tmp_path / "outbox.log", max_entries=4)
    box.add(TOPIC, payload(0), keep=True)  # e.g. done
    box.add(TOPIC, payload(1), keep=False)  # e.g. received
    box.add(TOPIC, payload(2), keep=False)
    box.add(TOPIC, payload(3), keep=True)
    box.add(TOPIC, payload(4), keep=True)
    assert seqs(box) == [0, 2, 3, 4]
    box.add(TOPIC, payload(5), keep=True)
    assert seqs(box) == [0, 3, 4, 5]
    assert box.dropped == 2
    # Nothing droppable left: the oldest of all goes.
    box.add(TOPIC, payload(6), keep=False)
    assert seqs(box) == [3, 4, 5, 6]
    assert box.dropped == 3
    box.close()


def test_full_by_bytes_drops_until_the_new_entry_fits(tmp_path: Path) -> None:
    box = opened(tmp_path / "outbox.log", max_bytes=1000)
    for i in range(4):
        box.add(TOPIC, payload(i, pad=150), keep=True)  # ~200 bytes each with the topic
    assert box.pending_bytes < 1000
    box.add(TOPIC, payload(9, pad=450), keep=True)
    assert box.pending_bytes <= 1000
    assert seqs(box)[-1] == 9
    assert seqs(box) == [2, 3, 9]
    assert box.dropped == 2
    box.close()


def test_dropped_entries_stay_dropped_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.log"
    box = opened(path, max_entries=2)
    for i in range(4):
        box.add(TOPIC, payload(i), keep=True)
    box.close()
    rebooted = opened(path, max_entries=2)
    assert seqs(rebooted) == [2, 3]
    rebooted.close()


def test_bounds_are_applied_at_load_too(tmp_path: Path) -> None:
    path = tmp_path / "outbox.log"
    box = opened(path)
    for i in range(6):
        box.add(TOPIC, payload(i), keep=i % 2 == 0)
    box.close()
    smaller = opened(path, max_entries=3)  # a config that shrank meanwhile
    assert seqs(smaller) == [0, 2, 4]
    assert smaller.dropped == 3
    smaller.close()


def test_unsent_entries_are_handed_out_again_in_their_order(tmp_path: Path) -> None:
    box = opened(tmp_path / "outbox.log")
    entries = [box.add(TOPIC, payload(i), keep=True) for i in range(5)]
    assert len(box.take(3)) == 3
    box.unsend([entries[2].n, entries[0].n])  # their acknowledgements never came
    assert [json.loads(e.payload)["seq"] for e in box.take(10)] == [0, 2, 3, 4]
    box.close()


def test_the_file_is_truncated_when_empty_and_compacted_when_mostly_dead(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.log"
    box = opened(path)
    # Steady state while connected: every entry is acknowledged soon after it is added.
    for i in range(2000):
        entry = box.add(TOPIC, payload(i, pad=40), keep=True)
        box.remove(entry.n)
    box.close()
    assert path.stat().st_size < 64 * 1024 + 200  # truncated along the way, not 2000 lines

    # With something pending for good, dead lines are compacted away instead.
    box = opened(path)
    stuck = box.add(TOPIC, payload(-1), keep=True)
    for i in range(5000):
        entry = box.add(TOPIC, payload(i), keep=True)
        box.remove(entry.n)
    box.close()
    lines = path.read_bytes().count(b"\n")
    assert lines < 2 * 5000 / 2  # compacted at least once
    reloaded = opened(path)
    assert [e.n for e in reloaded.entries()] == [stuck.n]
    reloaded.close()


def test_a_payload_must_be_one_line(tmp_path: Path) -> None:
    box = opened(tmp_path / "outbox.log")
    with pytest.raises(ValueError, match="one line"):
        box.add(TOPIC, b'{"a":\n1}', keep=True)
    with pytest.raises(ValueError):
        box.add("two words", b"{}", keep=True)
    assert len(box) == 0
    box.close()


def test_fsync_mode_keeps_the_same_contents(tmp_path: Path) -> None:
    path = tmp_path / "outbox.log"
    box = Outbox(path, fsync=True)
    box.load()
    first = box.add(TOPIC, payload(1), keep=True)
    box.add(TOPIC, payload(2), keep=True)
    box.remove(first.n)
    box.close()
    reloaded = opened(path)
    assert seqs(reloaded) == [2]
    reloaded.close()


# --------------------------------------------------------------------------- final reports


def test_final_reports_are_kept_after_a_restart_and_found_by_time(tmp_path: Path) -> None:
    path = tmp_path / "state" / "final-reports.log"
    finals = FinalReports(path)
    finals.load()
    for i in range(5):
        finals.remember(1_000 + i, TOPIC, payload(i))
    again = FinalReports(path)  # the terminal restarted
    again.load()
    assert [json.loads(pl)["seq"] for _, pl in again.since(1_002)] == [2, 3, 4]
    assert again.since(2_000) == []
    assert {topic for topic, _ in again.since(0)} == {TOPIC}


def test_final_reports_keep_only_the_newest_and_the_file_stays_small(tmp_path: Path) -> None:
    path = tmp_path / "final-reports.log"
    finals = FinalReports(path, keep=4)
    finals.load()
    for i in range(23):
        finals.remember(i, TOPIC, payload(i))
    assert [json.loads(pl)["seq"] for _, pl in finals.since(0)] == [19, 20, 21, 22]
    assert len(path.read_bytes().splitlines()) < 8  # compacted at twice `keep`


def test_a_final_report_line_torn_by_a_power_cut_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "final-reports.log"
    finals = FinalReports(path)
    finals.load()
    finals.remember(5, TOPIC, payload(1))
    with path.open("ab") as f:
        f.write(b"17 dalaba/v1/dev")  # the write the power cut interrupted
    again = FinalReports(path)
    again.load()
    assert [json.loads(pl)["seq"] for _, pl in again.since(0)] == [1]
    again.remember(6, TOPIC, payload(2))  # not run into the torn line
    assert [json.loads(pl)["seq"] for _, pl in again.since(0)] == [1, 2]
    with pytest.raises(ValueError):
        again.remember(6, TOPIC, b"two\nlines")
