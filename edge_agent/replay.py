"""Memory of the command ids a terminal has accepted, kept on disk.

A captured command replayed later must be refused even if the terminal rebooted in
between, so ids are remembered until the command itself expires (after that the
validity check refuses it anyway).

The same file format serves other "remember until it expires" sets on the terminal
(claimed broadcasts and occurrences, broadcasts played to the end); an id may carry one
small number with it (the play attempt a claim was made for).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO


class SeenCommands:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen: dict[str, tuple[int, int]] = {}  # id -> (expires_at_ms, value)
        self._file: TextIO | None = None

    def load(self, now_ms: int) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if self._path.exists():
            for line in self._path.read_text().splitlines():
                parsed = _parse(line)
                if parsed is not None and parsed[1] > now_ms:
                    # A later line for the same id (a raised value) replaces the earlier.
                    self._seen[parsed[0]] = (parsed[1], parsed[2])
        # Rewrite without the expired ids so the file stays small.
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text("".join(_line(k, *v) for k, v in self._seen.items()))
        os.replace(tmp, self._path)
        self._file = open(self._path, "a")  # noqa: SIM115 - held open for the agent's life

    def seen(self, command_id: str) -> bool:
        return command_id in self._seen

    def value(self, command_id: str) -> int | None:
        """The number remembered with the id (0 unless given), or None if not seen."""
        entry = self._seen.get(command_id)
        return None if entry is None else entry[1]

    def remember(self, command_id: str, expires_at_ms: int, value: int = 0) -> None:
        self._seen[command_id] = (expires_at_ms, value)
        if self._file is not None:
            self._file.write(_line(command_id, expires_at_ms, value))
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _line(command_id: str, expires_at_ms: int, value: int) -> str:
    # The two-field form when there is no value: files written before values existed
    # read the same, and so do these by an older agent.
    return f"{command_id} {expires_at_ms} {value}\n" if value else f"{command_id} {expires_at_ms}\n"


def _parse(line: str) -> tuple[str, int, int] | None:
    """`id expires [value]`; anything else (a line cut by a power loss) is None."""
    parts = line.split()
    if len(parts) not in (2, 3) or not all(x.isdigit() for x in parts[1:]):
        return None
    return parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else 0
