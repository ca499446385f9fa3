"""A bounded, content-addressed media cache on the terminal's flash."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


class MediaCache:
    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._pinned: set[str] = set()

    def path_for(self, sha256: str) -> Path:
        return self.directory / f"{sha256}.media"

    def has(self, sha256: str) -> bool:
        path = self.path_for(sha256)
        if not path.exists():
            return False
        os.utime(path)  # most recently used: evicted last
        return True

    def put(self, sha256: str, data: bytes) -> Path:
        """Store `data` if its hash is `sha256`; raise ValueError otherwise."""
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ValueError(f"media hash mismatch: expected {sha256[:12]}, got {actual[:12]}")
        path = self.path_for(sha256)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        os.replace(tmp, path)
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
