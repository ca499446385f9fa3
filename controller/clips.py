"""Hear a pole from the duty room: a terminal's clip of what it last played.

A technician (terminal control) asks; the controller sends the terminal a signed
`ClipRequestBody` on its own topic carrying a one-time upload token, and keeps only
the token's SHA-256 here. The terminal uploads the first seconds of its loopback
capture (a 16 kHz mono WAV) to `/device-clips/<request id>` with that token; the
controller checks the token, its age and the WAV's shape and size, and keeps the clip
as media the console plays.
"""

from __future__ import annotations

import hashlib
import io
import wave

from sqlalchemy import BigInteger, Column
from sqlmodel import Field, SQLModel

from dalaba import protocol as p

# A request unanswered this long is over (the terminal was offline, say).
CLIP_REQUEST_VALID_MS = 5 * 60_000
# The largest upload accepted: the longest clip as 16 kHz mono 16-bit WAV, and its header.
CLIP_MAX_BYTES = p.MAX_CLIP_MS * 32 + 1024


class ClipRequest(SQLModel, table=True):
    id: str = Field(primary_key=True)
    device_id: str = Field(index=True)
    township_id: str = Field(index=True)
    requested_by: str
    requested_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    max_ms: int
    token_sha256: str
    status: str = "pending"  # pending | uploaded | empty (nothing played since power-on)
    media_sha256: str | None = None
    duration_ms: int | None = None
    received_ms: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_clip(data: bytes, max_ms: int) -> int:
    """The clip's duration in ms if `data` is the WAV a terminal sends (16 kHz mono
    16-bit PCM, no longer than asked); raises ValueError saying what is wrong. Read with
    the standard library's WAV reader, which parses only the RIFF header and chunks."""
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            shape = (w.getnchannels(), w.getsampwidth(), w.getframerate())
            frames = w.getnframes()
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"not a WAV file: {exc}") from None
    if shape != (1, 2, 16_000):
        raise ValueError("expected 16 kHz mono 16-bit PCM")
    duration_ms = frames * 1000 // 16_000
    if duration_ms > max_ms + 100:
        raise ValueError(f"longer than the {max_ms} ms asked for")
    return duration_ms
