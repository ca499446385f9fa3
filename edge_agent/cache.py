"""A bounded, content-addressed media cache on the terminal's flash.

Bytes are verified against their sha256 before they are stored, and a stored file is
verified again before it is first used in each run of the agent (and whenever its size
or modification time changed since), so a file altered or damaged on the flash is found,
deleted and fetched again instead of played.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class MediaCache:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._pinned: set[str] = set()
        # sha256 -> (size, mtime_ns) of the file when its hash was last checked
        self._verified: dict[str, tuple[int, int]] = {}
        self.corrupt_found = 0

    def path_for(self, sha256: str) -> Path:
        return self.directory / f"{sha256}.media"

    def has(self, sha256: str) -> bool:
        return self.lookup(sha256) is not None

    def lookup(self, sha256: str) -> Path | None:
        """The stored file if it is there and its bytes still hash to `sha256` (a file
        that does not is deleted); marks it most recently used."""
        path = self.path_for(sha256)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        if self._verified.get(sha256) != (st.st_size, st.st_mtime_ns):
            actual = _file_sha256(path)
            if actual != sha256:
                self.corrupt_found += 1
                log.warning("cache: %s does not match its hash (got %s): deleted", path, actual)
                path.unlink(missing_ok=True)
                self._verified.pop(sha256, None)
                return None
        os.utime(path)  # most recently used: evicted last
        st = path.stat()
        self._verified[sha256] = (st.st_size, st.st_mtime_ns)
        return path

    def put(self, sha256: str, data: bytes) -> Path:
        """Store `data` if its hash is `sha256`; raise ValueError otherwise."""
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ValueError(f"media hash mismatch: expected {sha256[:12]}, got {actual[:12]}")
        path = self.path_for(sha256)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        st = path.stat()
        self._verified[sha256] = (st.st_size, st.st_mtime_ns)
        self._evict(keep=sha256)
        return path

    def pin(self, sha256: str) -> None:
        """Keep this item (queued, or a pre-positioned emergency template)."""
        self._pinned.add(sha256)

    def unpin(self, sha256: str) -> None:
        self._pinned.discard(sha256)

    def usage(self) -> tuple[int, int]:
        files = list(self.directory.glob("*.media"))
        return sum(f.stat().st_size for f in files), len(files)

    def _evict(self, keep: str) -> None:
        # The item just stored is about to be played: never evict it, even if it alone
        # exceeds the budget (the cache then shrinks back on the next store).
        files = sorted(self.directory.glob("*.media"), key=lambda f: f.stat().st_mtime)
        total = sum(f.stat().st_size for f in files)
        for f in files:
            if total <= self.max_bytes:
                break
            if f.stem in self._pinned or f.stem == keep:
                continue
            total -= f.stat().st_size
            f.unlink(missing_ok=True)
            self._verified.pop(f.stem, None)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()
