"""The plays a terminal owes, kept on flash: accepted and not yet finished.

Without it, a crash or a power cut mid-play leaves the controller with a delivery that
says `playing` for ever, and a broadcast waiting in the queue at that moment is simply
forgotten. With it, the next start knows what it owed and reports or resumes each one
(`EdgeAgent._recover`).

Records (`<state_dir>/owed-plays.log`), appended, one per line:

    A <json>                                   accepted: command id, expiry, the PlayBody
    S <broadcast_id> <at_ms> <wall_ms> <dur_ms> its first sample went out
    Q <broadcast_id>                           stopped, back in the queue (preempted)
    E <broadcast_id>                           finished (a final report was made)

Progress mark: while a play sounds, the agent touches the file every few seconds (a
metadata update, nothing written). A play's stop is always written (Q or E), so at the
next start a play still open was sounding until at least the file's last modification:
the offset it reached is at least that time minus its start. Like the outbox, records
are flushed to the OS at once and fsynced only when asked.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from dalaba import protocol as p

_TRUNCATE_AT_BYTES = 64 * 1024
_COMPACT_MIN_LINES = 1024


def wall_ms() -> int:
    """The board's system clock (what file times use), epoch ms."""
    return time.time_ns() // 1_000_000


@dataclass
class OwedPlay:
    command_id: str
    expires_at: int
    local: bool  # from the terminal's own schedule
    body: p.PlayBody
    accepted_at: int  # terminal clock
    started_at: int | None = None  # terminal clock at the first sample, if it sounded
    started_wall_ms: int = 0
    duration_ms: int = 0
    alive_wall_ms: int = 0  # the last sign of life before the restart (set by load)

    @property
    def broadcast_id(self) -> str:
        return self.body.broadcast_id

    @property
    def offset_ms(self) -> int:
        """How far into the audio it is known to have got (0 if it never sounded)."""
        if self.started_at is None:
            return 0
        return max(0, min(self.duration_ms, self.alive_wall_ms - self.started_wall_ms))


class PlayJournal:
    def __init__(
        self, path: Path, *, fsync: bool = False, wall_clock: Callable[[], int] = wall_ms
    ) -> None:
        self.path = path
        self.fsync = fsync
        self._wall = wall_clock
        self._owed: dict[str, OwedPlay] = {}
        self._file: TextIO | None = None
        self._file_bytes = 0
        self._file_lines = 0

    def load(self) -> list[OwedPlay]:
        """What the previous run left open, in the order it was accepted. The file is
        left as it is until `compact` (after the caller has recorded its decisions)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            text = self.path.read_text()
            alive = self.path.stat().st_mtime_ns // 1_000_000
        except (FileNotFoundError, UnicodeDecodeError):
            text, alive = "", 0
        owed: dict[str, OwedPlay] = {}
        for line in text.split("\n")[:-1]:  # after the last newline: an unfinished write
            _apply(owed, line)
        for play in owed.values():
            play.alive_wall_ms = alive
        self._owed = owed
        self._file_bytes = len(text.encode())
        self._file_lines = text.count("\n")
        return list(owed.values())

    def owed(self) -> list[OwedPlay]:
        return list(self._owed.values())

    def accepted(
        self, command_id: str, expires_at: int, local: bool, body: p.PlayBody, at: int
    ) -> None:
        play = OwedPlay(command_id, expires_at, local, body, at)
        self._owed[body.broadcast_id] = play
        self._write(_accept_record(play))

    def started(self, broadcast_id: str, at_ms: int, duration_ms: int) -> None:
        play = self._owed.get(broadcast_id)
        if play is None:
            return
        play.started_at, play.started_wall_ms, play.duration_ms = at_ms, self._wall(), duration_ms
        self._write(f"S {broadcast_id} {at_ms} {play.started_wall_ms} {duration_ms}\n")

    def stopped(self, broadcast_id: str) -> None:
        """No longer sounding, but still owed (preempted and queued again)."""
        play = self._owed.get(broadcast_id)
        if play is None or play.started_at is None:
            return
        play.started_at = None
        self._write(f"Q {broadcast_id}\n")

    def ended(self, broadcast_id: str) -> None:
        if self._owed.pop(broadcast_id, None) is None:
            return
        self._write(f"E {broadcast_id}\n")
        if not self._owed and self._file_bytes > _TRUNCATE_AT_BYTES and self._file is not None:
            self._file.truncate(0)
            self._file_bytes = self._file_lines = 0
        elif self._file_lines > _COMPACT_MIN_LINES + 4 * len(self._owed):
            self.compact()

    def touch(self) -> None:
        """The progress mark: "still alive, still playing", without writing a byte."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path)

    def compact(self) -> None:
        """Rewrite the file with only what is owed now."""
        self.close()
        records = []
        for play in self._owed.values():
            records.append(_accept_record(play))
            if play.started_at is not None:
                records.append(
                    f"S {play.broadcast_id} {play.started_at} {play.started_wall_ms} "
                    f"{play.duration_ms}\n"
                )
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.writelines(records)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._file_bytes = sum(len(r.encode()) for r in records)
        self._file_lines = len(records)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, record: str) -> None:
        if self._file is None:
            self._file = open(self.path, "a")  # noqa: SIM115 - held open for the agent's life
        self._file.write(record)
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self._file_bytes += len(record.encode())
        self._file_lines += 1


def _accept_record(play: OwedPlay) -> str:
    data = {
        "command_id": play.command_id,
        "expires_at": play.expires_at,
        "local": play.local,
        "accepted_at": play.accepted_at,
        "body": play.body.model_dump(mode="json", exclude_none=True),
    }
    return "A " + json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n"


def _apply(owed: dict[str, OwedPlay], line: str) -> None:
    kind, _, rest = line.partition(" ")
    if kind == "A":
        try:
            data = json.loads(rest)
            body = p.PlayBody.model_validate(data["body"])
            play = OwedPlay(
                command_id=str(data["command_id"]),
                expires_at=int(data["expires_at"]),
                local=bool(data["local"]),
                body=body,
                accepted_at=int(data["accepted_at"]),
            )
        except (ValueError, KeyError, TypeError, ValidationError):
            return
        owed[body.broadcast_id] = play
        return
    parts = rest.split(" ")
    found = owed.get(parts[0])
    if found is None:
        return
    play = found
    if kind == "S" and len(parts) == 4 and all(x.isdigit() for x in parts[1:]):
        play.started_at, play.started_wall_ms, play.duration_ms = map(int, parts[1:])
    elif kind == "Q" and len(parts) == 1:
        play.started_at = None
    elif kind == "E" and len(parts) == 1:
        del owed[parts[0]]
