"""Content-addressed media: every announcement's audio is stored once under its sha256,
served to terminals at /media/<sha256>, and verified by them before playing."""

from __future__ import annotations

import asyncio
import base64
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
        # GET /media/<sha256> answered by this process: how many terminals fetched
        # rather than held the audio (inline delivery and staging should keep it flat).
        self.requests = 0

    def path_for(self, sha256: str) -> Path:
        return self.directory / sha256[:2] / f"{sha256}.ogg"

    def serving(self, sha256: str) -> Path:
        """The file to answer a terminal's GET /media/<sha256> with (counted)."""
        self.requests += 1
        return self.path_for(sha256)

    async def read_small(self, media: Media, max_bytes: int) -> bytes | None:
        """The stored bytes of `media` if it is at most `max_bytes` long (for inline
        delivery), else None; None too if the file is missing or no longer hashes to
        its name, so a damaged file is fetched (and refused) rather than inlined."""
        if media.size > max_bytes:
            return None
        path = self.path_for(media.sha256)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError:
            return None
        if len(data) > max_bytes or hashlib.sha256(data).hexdigest() != media.sha256:
            return None
        return data

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


def with_inline(ref: p.MediaRef, data: bytes) -> p.MediaRef:
    """`ref` carrying its audio in the command (see `Settings.inline_media_max_bytes`)."""
    return ref.model_copy(update={"inline": base64.b64encode(data).decode()})


def fits_inline(ref: p.MediaRef, target: p.Target) -> bool:
    """Whether a play command carrying `ref` (with its inline audio) to `target` stays
    within the terminals' envelope limit. The envelope base64-encodes the command JSON;
    besides the media and the target, a play command's fields (ids, title, category)
    and the signature take well under 2 KiB. A command that would not fit goes without
    its inline audio, and terminals fetch it."""
    command_bytes = len(ref.to_bytes()) + len(target.to_bytes()) + 2048
    return 4 * -(-command_bytes // 3) <= p.MAX_COMMAND_BYTES
