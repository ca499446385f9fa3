"""/api/media: recorded announcements uploaded from a phone or a PC, and media metadata.

The format is told from the content, never from the file name; the recording is checked
(corrupt, truncated, silent, too long, too big) and brought to the announcement format
(`controller.speech.normalise_upload`) before anything is stored, so a refused upload
leaves nothing behind. Anything that is not plain audio of a known container (a playlist,
a concat script, an SDP file, a URL) is refused before ffmpeg sees it, and ffmpeg only
ever reads the upload from a pipe (`controller.speech.sniff`), so an upload cannot make
the server read another file or fetch a URL. The audio itself is served to terminals at
/media/<sha256>.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import BodyPartReader, web
from sqlmodel import Session, col, select

from controller import audit
from controller.api import keys
from controller.auth import principal_of
from controller.broadcasts import recording_usable_by
from controller.errors import bad_request, json_response, not_found
from controller.models import Media
from controller.speech import NotPlainAudio, UnsupportedAudio, normalise_upload
from controller.timefmt import iso

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

CHUNK = 64 * 1024
MAX_TITLE_CHARS = 100
# A client still sending after we refused is drained up to this much, so it reads our
# 400 instead of a reset connection; beyond it the connection is simply closed.
DRAIN_LIMIT = 64 * 1024 * 1024


def media_view(m: Media) -> dict[str, Any]:
    return {
        "media_id": m.sha256,
        "url": f"/media/{m.sha256}",
        "mime": m.mime,
        "size": m.size,
        "duration_ms": m.duration_ms,
        "source": m.source,
        "voices": m.voices.split(",") if m.voices else [],
        "text": m.text,
        "created_at": iso(m.created_ms),
    }


class _TooBig(Exception):
    pass


async def _read_limited(reader: Any, limit: int) -> bytes:
    """Read a stream (request content or a multipart part) up to `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await (
            reader.read_chunk(CHUNK) if isinstance(reader, BodyPartReader) else reader.read(CHUNK)
        )
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise _TooBig
        chunks.append(chunk)


async def _drain(request: web.Request) -> None:
    drained = 0
    while drained < DRAIN_LIMIT:
        chunk = await request.content.read(CHUNK)
        if not chunk:
            return
        drained += len(chunk)


async def _read_upload(request: web.Request, limit: int) -> tuple[bytes, str, str]:
    """(data, file name, title) from a multipart form (fields `file`, `title`) or a raw
    body (title from `?title=`)."""
    too_big = bad_request(
        "file", f"larger than the limit of {limit / 1e6:.1f} MB", code="too_large"
    )
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        await _drain(request)
        raise too_big
    if request.content_type != "multipart/form-data":
        try:
            raw = await _read_limited(request.content, limit)
        except _TooBig:
            await _drain(request)
            raise too_big from None
        return raw, "", request.query.get("title", "")
    data: bytes | None = None
    filename = ""
    title = request.query.get("title", "")
    try:
        reader = await request.multipart()
    except ValueError as exc:  # e.g. "boundary missed": a multipart type with no boundary
        raise bad_request("body", f"malformed multipart form ({exc})") from None
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise bad_request("body", "nested multipart is not accepted")
        if part.name == "file":
            if data is not None:
                raise bad_request("file", "give one file per upload")
            filename = part.filename or ""
            try:
                data = await _read_limited(part, limit)
            except _TooBig:
                await _drain(request)
                raise too_big from None
        elif part.name == "title":
            title = (await part.text())[: MAX_TITLE_CHARS * 4]
        else:
            raise bad_request(str(part.name), "unknown form field (use file and title)")
    if data is None:
        raise bad_request("file", "required: a form field named file holding the recording")
    return data, filename, title


@routes.post("/api/media")
async def upload(request: web.Request) -> web.Response:
    principal = principal_of(request)
    principal.require_broadcast()
    settings = request.app[keys.SETTINGS]
    limit = settings.upload_max_bytes
    data, filename, title = await _read_upload(request, limit)
    title = title.strip()
    if len(title) > MAX_TITLE_CHARS:
        raise bad_request(
            "title",
            f"longer than {MAX_TITLE_CHARS} characters",
            "title_too_long",
            {"max": MAX_TITLE_CHARS},
        )
    try:
        rendered = await normalise_upload(
            data, max_duration_s=settings.upload_max_duration_s, max_bytes=limit
        )
    except UnsupportedAudio as exc:
        # A playlist or a URL is no mis-tap on a phone: someone probing the server.
        log.log(
            logging.WARNING if isinstance(exc, NotPlainAudio) else logging.INFO,
            "upload by %s refused (%d bytes, %r): %s",
            principal.user,
            len(data),
            filename,
            exc.reason,
        )
        # `not_plain_audio` (a playlist, a URL...) or `unsupported_audio`.
        raise bad_request("file", exc.reason, code=exc.code) from None
    media = request.app[keys.MEDIA]
    row = await media.put(
        rendered.audio,
        mime=rendered.mime,
        duration_ms=rendered.duration_ms,
        source="upload",
        voices=",".join(rendered.voices),
        text=title,
    )

    def record(session: Session) -> None:
        audit.record(
            session,
            principal,
            "media.upload",
            row.sha256,
            filename=filename[:200],
            title=title,
            original_bytes=len(data),
            size=row.size,
            duration_ms=row.duration_ms,
        )

    await request.app[keys.DB].run(record)
    return json_response(media_view(row), status=201, location=f"/api/media/{row.sha256}")


@routes.get("/api/media")
async def list_media(request: web.Request) -> web.Response:
    source = request.query.get("source", "upload")
    try:
        limit = min(500, max(1, int(request.query.get("limit", "100"))))
    except ValueError:
        raise bad_request("limit", "must be a number") from None

    # ?usable=1: only what the caller may send as an emergency (the emergency page's
    # list; a township clerk is not offered another township's recordings).
    usable = request.query.get("usable") == "1"
    principal = principal_of(request)

    def load(session: Session) -> list[dict[str, Any]]:
        query = select(Media).order_by(col(Media.created_ms).desc()).limit(limit)
        if source != "all":
            query = query.where(Media.source == source)
        rows = session.exec(query).all()
        if usable:
            rows = [m for m in rows if recording_usable_by(session, m.sha256, principal)]
        return [media_view(m) for m in rows]

    return json_response({"media": await request.app[keys.DB].run(load)})


@routes.get("/api/media/{id}")
async def get_media_info(request: web.Request) -> web.Response:
    media_id = request.match_info["id"]

    def load(session: Session) -> dict[str, Any]:
        row = session.get(Media, media_id)
        if row is None:
            raise not_found(f"media {media_id}")
        return media_view(row)

    return json_response(await request.app[keys.DB].run(load))
