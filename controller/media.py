"""Content-addressed media: every announcement's audio is stored once under its sha256,
served to terminals at /media/<sha256>, and verified by them before playing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sqlmodel import Session

from controller.db import Database
from controller.models import Media
from dalaba import protocol as p
from dalaba.protocol import now_ms


class MediaStore:
    def __init__(self, directory: Path, db: Database) -> None:
        self.directory = directory
        self._db = db

    def path_for(self, sha256: str) -> Path:
        return self.directory / sha256[:2] / f"{sha256}.ogg"

    async def put(
        self,
        data: bytes,
        *,
        mime: str,
        duration_ms: int,
        source: str,
        voices: str = "",
        text: str = "",
    ) -> Media:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.path_for(sha256)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.part")
            tmp.write_bytes(data)
            os.replace(tmp, path)

        def upsert(session: Session) -> Media:
            row = session.get(Media, sha256)
            if row is None:
                row = Media(
                    sha256=sha256,
                    mime=mime,
                    size=len(data),
                    duration_ms=duration_ms,
                    source=source,
                    voices=voices,
                    text=text[:2000],
                    created_ms=now_ms(),
                )
                session.add(row)
            return row

        return await self._db.run(upsert)


def media_ref(media: Media, mirrors: tuple[str, ...] = ()) -> p.MediaRef:
    """How a command names stored media: by hash, fetched relative to the terminal's
    media base URL, and from each mirror base URL in turn if that fails."""
    return p.MediaRef(
        sha256=media.sha256,
        url=media.sha256,
        size=media.size,
        duration_ms=media.duration_ms,
        mime=media.mime,
        mirrors=mirror_urls(media.sha256, mirrors),
    )


def mirror_urls(sha256: str, mirrors: tuple[str, ...]) -> tuple[str, ...]:
    """Where else a terminal may fetch the same bytes: each mirror's base URL + hash."""
    return tuple(base.rstrip("/") + "/" + sha256 for base in mirrors[:4])
