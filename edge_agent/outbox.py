"""Reports waiting on flash for the broker: a bounded, persistent, ordered outbox.

Every delivery report and device event the agent publishes is appended here before it
is handed to MQTT, and removed only when the broker has acknowledged it (PUBACK). A
lost link, a crash or a power cut therefore loses nothing that was reported: what is
left is sent after the reconnect or the next start, oldest first. Delivery is at least
once (an entry acknowledged just before a crash may be sent again); the controller
ignores a report whose `seq` it has already passed.

The file (`<state_dir>/outbox.log`) is an append-only log, one record per line:

    + <n> <k|d> <topic> <payload>    entry n added (k: keep, d: may be dropped when full)
    - <n>                            entry n acknowledged (or dropped)

It stays cheap at 10,000 simulated terminals in one process: one appended line per
report and one per acknowledgement, no rewrite per report. An added entry is flushed
to the OS at once (a killed process keeps it); acknowledgements are flushed with the
next addition, since losing one costs at most a duplicate. The file is truncated when
nothing is pending and compacted (rewritten with only the pending entries) when dead
lines dominate. `fsync=True` also forces each addition to the flash, which a real board
without a hold-up capacitor wants: a power cut loses what the kernel had not yet written
(ext4 commits every 5 s). The simulator leaves it off: its "power cut" is a killed
process, whose writes the kernel keeps, and 10,000 fsyncs per broadcast would cost
more than everything else the agents do.

Bounds: when an addition would exceed `max_entries` or `max_bytes`, the oldest entry
marked droppable (progress reports, fault and rejection events: later reports supersede
them) is dropped first, then, if none is left, the oldest entry of all. Every dropped
entry is counted in `dropped`.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES = 5000
DEFAULT_MAX_BYTES = 2 * 1024 * 1024
# Truncate an empty outbox's file only past this size: a few appends are cheaper than
# a truncate per acknowledgement.
_TRUNCATE_AT_BYTES = 64 * 1024
_COMPACT_MIN_LINES = 2048


@dataclass
class Entry:
    n: int  # position in the outbox, increasing
    topic: str
    payload: bytes
    keep: bool  # False: may be dropped first when the outbox is full

    @property
    def size(self) -> int:
        return len(self.topic) + len(self.payload)


class Outbox:
    def __init__(
        self,
        path: Path,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        fsync: bool = False,
    ) -> None:
        self.path = path
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.dropped = 0
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._unsent: deque[int] = deque()  # entries not handed out, oldest first
        self._bytes = 0
        self._next_n = 1
        self._file: BinaryIO | None = None
        self._file_bytes = 0
        self._file_lines = 0

    # ------------------------------------------------------------------ lifecycle

    def load(self) -> None:
        """Read what a previous run left (a line cut by a power loss is skipped), then
        rewrite the file with only the pending entries."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        entries: OrderedDict[int, Entry] = OrderedDict()
        highest = 0
        # The piece after the last newline is an unfinished write: never trusted.
        for line in data.split(b"\n")[:-1]:
            parsed = _parse(line)
            if parsed is None:
                continue
            if isinstance(parsed, Entry):
                entries[parsed.n] = parsed
                highest = max(highest, parsed.n)
            else:
                entries.pop(parsed, None)
        self._entries = entries
        self._bytes = sum(e.size for e in entries.values())
        self._next_n = highest + 1
        self._unsent = deque(entries)
        self._rewrite()
        while self._over_bounds(0, 0):
            self._drop_one()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # ------------------------------------------------------------------ queue

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def add(self, topic: str, payload: bytes, *, keep: bool) -> Entry:
        if b"\n" in payload or " " in topic or not topic:
            raise ValueError("outbox: a payload is one line and a topic has no spaces")
        entry = Entry(self._next_n, topic, payload, keep)
        self._next_n += 1
        while self._entries and self._over_bounds(1, entry.size):
            self._drop_one()
        self._entries[entry.n] = entry
        self._unsent.append(entry.n)
        self._bytes += entry.size
        self._append(
            b"+ %d %s %s %s\n" % (entry.n, b"k" if keep else b"d", topic.encode(), payload)
        )
        assert self._file is not None
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        return entry

    def take(self, limit: int) -> list[Entry]:
        """Up to `limit` of the oldest entries not yet handed out, now handed out."""
        taken: list[Entry] = []
        while self._unsent and len(taken) < limit:
            entry = self._entries.get(self._unsent.popleft())
            if entry is not None:  # dropped or acknowledged meanwhile
                taken.append(entry)
        return taken

    @property
    def unsent(self) -> int:
        return len(self._unsent)

    def unsend(self, ns: Iterable[int]) -> None:
        """Hand these out again (their acknowledgement never came), in their order."""
        again = {n for n in ns if n in self._entries}
        if again:
            self._unsent = deque(sorted(again.union(self._unsent)))

    def remove(self, n: int) -> None:
        """The broker has the entry: forget it."""
        entry = self._entries.pop(n, None)
        if entry is None:
            return
        self._bytes -= entry.size
        # Not flushed: the next addition (or close) carries it. Lost, it costs a duplicate.
        self._append(b"- %d\n" % n)
        self._maybe_compact()

    # ------------------------------------------------------------------ internals

    def _over_bounds(self, extra_entries: int, extra_bytes: int) -> bool:
        return (
            len(self._entries) + extra_entries > self.max_entries
            or self._bytes + extra_bytes > self.max_bytes
        )

    def _drop_one(self) -> None:
        victim = next((e for e in self._entries.values() if not e.keep), None)
        if victim is None:
            victim = next(iter(self._entries.values()))
        self.dropped += 1
        log.warning(
            "%s: outbox full (%d entries, %d bytes): dropped entry %d on %s",
            self.path,
            len(self._entries),
            self._bytes,
            victim.n,
            victim.topic,
        )
        self.remove(victim.n)

    def _append(self, record: bytes) -> None:
        if self._file is None:
            self._file = open(self.path, "ab")  # noqa: SIM115 - held open for the agent's life
        self._file.write(record)
        self._file_bytes += len(record)
        self._file_lines += 1

    def _maybe_compact(self) -> None:
        if not self._entries:
            if self._file_bytes > _TRUNCATE_AT_BYTES and self._file is not None:
                self._file.truncate(0)  # flushes first; O_APPEND writes go on from 0
                self._file_bytes = self._file_lines = 0
        elif self._file_lines > _COMPACT_MIN_LINES + 4 * len(self._entries):
            self._rewrite()

    def _rewrite(self) -> None:
        """Write the pending entries alone to a new file and switch to it atomically."""
        self.close()
        tmp = self.path.with_suffix(".tmp")
        records = [
            b"+ %d %s %s %s\n" % (e.n, b"k" if e.keep else b"d", e.topic.encode(), e.payload)
            for e in self._entries.values()
        ]
        with open(tmp, "wb") as f:
            f.writelines(records)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._file_bytes = sum(len(r) for r in records)
        self._file_lines = len(records)


def _parse(line: bytes) -> Entry | int | None:
    """An added entry, the number of a removed one, or None for a damaged line."""
    if line.startswith(b"- "):
        n = line[2:]
        return int(n) if n.isdigit() else None
    if not line.startswith(b"+ "):
        return None
    parts = line.split(b" ", 4)
    if len(parts) != 5 or not parts[1].isdigit() or parts[2] not in (b"k", b"d"):
        return None
    try:
        topic = parts[3].decode()
    except UnicodeDecodeError:
        return None
    return Entry(int(parts[1]), topic, parts[4], parts[2] == b"k")


class FinalReports:
    """The latest final delivery reports, kept on flash after the broker acknowledged
    them, so they can be published again when the controller asks (`ReportAgainBody`).

    The broker's PUBACK proves the broker has a report, not that the controller got it:
    a broker that restarted without its saved sessions acknowledges and drops whatever
    arrives before the controller has subscribed again. Such a controller asks every
    terminal for what it reported since the link was lost, and this is where the
    terminal finds it.

    `<state_dir>/final-reports.log`, one `<at> <topic> <payload>` line per report,
    appended (opened per write: one line per finished broadcast, and a fleet of
    thousands of simulated terminals should not hold one more file open each), and
    rewritten with the newest `keep` lines once it holds twice as many.
    """

    def __init__(self, path: Path, *, keep: int = 64) -> None:
        self.path = path
        self.keep = keep
        self._lines = 0

    def load(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        raw = self._raw()
        self._lines = len(self._parse(raw))
        torn = bool(raw) and not raw.endswith(b"\n")
        # A line torn by a power cut would run into the next one appended: drop it now.
        if torn or self._lines > self.keep:
            self._compact()

    def remember(self, at_ms: int, topic: str, payload: bytes) -> None:
        if b"\n" in payload or " " in topic or not topic:
            raise ValueError("final reports: a payload is one line and a topic has no spaces")
        with self.path.open("ab") as f:
            f.write(b"%d %s %s\n" % (at_ms, topic.encode(), payload))
        self._lines += 1
        if self._lines >= 2 * self.keep:
            self._compact()

    def since(self, since_ms: int) -> list[tuple[str, bytes]]:
        """(topic, payload) of the kept reports made at or after `since_ms`, oldest first."""
        kept = self._read()[-self.keep :]
        return [(topic, payload) for at, topic, payload in kept if at >= since_ms]

    def _read(self) -> list[tuple[int, str, bytes]]:
        return self._parse(self._raw())

    def _raw(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""

    @staticmethod
    def _parse(raw: bytes) -> list[tuple[int, str, bytes]]:
        out: list[tuple[int, str, bytes]] = []
        for line in raw.splitlines():
            parts = line.split(b" ", 2)
            if len(parts) != 3 or not parts[0].isdigit() or not parts[2]:
                continue  # a line torn by a power cut mid-write
            out.append((int(parts[0]), parts[1].decode(errors="replace"), parts[2]))
        return out

    def _compact(self) -> None:
        kept = self._read()[-self.keep :]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(b"%d %s %s\n" % (a, t.encode(), pl) for a, t, pl in kept))
        os.replace(tmp, self.path)
        self._lines = len(kept)
