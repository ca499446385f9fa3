"""What the simulated speakers played, and when each terminal held a verified command.

Two layouts on disk, one reader for both:

- per device (the default for small fleets, what the tests read):
    DATA_DIR/sim/<device_id>/plays-started.jsonl   one line at each play's first sample
    DATA_DIR/sim/<device_id>/plays.jsonl           one line at each play's end
- batched (large fleets and benchmarks): one append-only file of each kind per simulator
  process, written every `FLUSH_INTERVAL_S` instead of one file write per play per
  terminal; every line carries `device_id` and otherwise the same fields:
    DATA_DIR/sim/_records/<process>-plays-started.jsonl
    DATA_DIR/sim/_records/<process>-plays.jsonl
    DATA_DIR/sim/_records/<process>-verified.jsonl  a command passed verification
  A simulator killed with SIGKILL loses at most the last interval's lines (the per-device
  layout loses none: use it where that matters).

`verified` lines: device_id, command_id, kind (the body type), broadcast_id (plays and
cancels), issued_at_ms (the controller's stamp) and verified_at_ms (the machine's true
wall clock, not the terminal's simulated one, so lines compare across processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dalaba import protocol as p

RECORDS_DIR = "_records"
FLUSH_INTERVAL_S = 0.1
PLAYS_STARTED = "plays-started"
PLAYS = "plays"
VERIFIED = "verified"
KINDS = (PLAYS_STARTED, PLAYS, VERIFIED)

Record = dict[str, Any]
RecordSink = Callable[[str, Record], None]  # (kind, entry) for one device


def records_dir(data_dir: Path) -> Path:
    return data_dir / "sim" / RECORDS_DIR


class BatchedRecords:
    """One simulator process's batched record files (see the module doc)."""

    def __init__(self, data_dir: Path, process: str) -> None:
        self.directory = records_dir(data_dir)
        self.process = process
        self._pending: dict[str, list[str]] = {kind: [] for kind in KINDS}
        self._task: asyncio.Task[None] | None = None

    def path(self, kind: str) -> Path:
        return self.directory / f"{self.process}-{kind}.jsonl"

    def sink(self, device_id: str) -> RecordSink:
        pending = self._pending

        def add(kind: str, entry: Record) -> None:
            pending[kind].append(json.dumps({"device_id": device_id, **entry}))

        return add

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._flush_loop(), name="records-flush")

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.flush()

    def flush(self) -> None:
        for kind, lines in self._pending.items():
            if not lines:
                continue
            text = "\n".join(lines) + "\n"
            lines.clear()
            # One write call per kind and interval; O_APPEND so a restarted simulator
            # of the same name adds to, never overwrites, what the last one wrote.
            fd = os.open(self.path(kind), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.flush()


def verified_entry(command: p.Command) -> Record:
    body = command.body
    return {
        "command_id": command.id,
        "kind": type(body).__name__,
        "broadcast_id": getattr(body, "broadcast_id", None),
        "issued_at_ms": command.issued_at,
        "verified_at_ms": time.time_ns() // 1_000_000,
    }


# ---------------------------------------------------------------------- reading


def _read_lines(path: Path, device_id: str | None = None) -> list[Record]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill in mid-write
        if device_id is not None:
            entry.setdefault("device_id", device_id)
        out.append(entry)
    return out


def read_records(data_dir: Path, kind: str, device_id: str | None = None) -> list[Record]:
    """Every `kind` record of the fleet under DATA_DIR (both layouts), or of one device;
    each entry has `device_id`."""
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} (one of {', '.join(KINDS)})")
    sim = data_dir / "sim"
    entries: list[Record] = []
    if device_id is not None:
        entries += _read_lines(sim / device_id / f"{kind}.jsonl", device_id)
    else:
        for path in sorted(sim.glob(f"*/{kind}.jsonl")):
            if path.parent.name != RECORDS_DIR:
                entries += _read_lines(path, path.parent.name)
    for path in sorted(records_dir(data_dir).glob(f"*-{kind}.jsonl")):
        batched = _read_lines(path)
        if device_id is not None:
            batched = [e for e in batched if e.get("device_id") == device_id]
        entries += batched
    return entries


def read_plays_started(data_dir: Path, device_id: str | None = None) -> list[Record]:
    return read_records(data_dir, PLAYS_STARTED, device_id)


def read_plays(data_dir: Path, device_id: str | None = None) -> list[Record]:
    return read_records(data_dir, PLAYS, device_id)


def read_verified(data_dir: Path, device_id: str | None = None) -> list[Record]:
    return read_records(data_dir, VERIFIED, device_id)
