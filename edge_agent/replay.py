"""Memory of the command ids a terminal has accepted, kept on disk.

A captured command replayed later must be refused even if the terminal rebooted in
between, so ids are remembered until the command itself expires (after that the
validity check refuses it anyway).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO


class SeenCommands:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen: dict[str, int] = {}
        self._file: TextIO | None = None

    def load(self, now_ms: int) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if self._path.exists():
            for line in self._path.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1].isdigit() and int(parts[1]) > now_ms:
                    self._seen[parts[0]] = int(parts[1])
        # Rewrite without the expired ids so the file stays small.
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text("".join(f"{k} {v}\n" for k, v in self._seen.items()))
        os.replace(tmp, self._path)
        self._file = open(self._path, "a")  # noqa: SIM115 - held open for the agent's life

    def seen(self, command_id: str) -> bool:
        return command_id in self._seen

    def remember(self, command_id: str, expires_at_ms: int) -> None:
        self._seen[command_id] = expires_at_ms
        if self._file is not None:
            self._file.write(f"{command_id} {expires_at_ms}\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
