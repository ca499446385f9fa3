"""/api/preview: hear exactly what the villages will hear, without broadcasting.

The body is a broadcast's (text, media_id or template + params, and the same optional
fields). `targets` may be left out; when given, it is checked against the caller's reach
and decides the languages, as it would for the broadcast. The audio is stored
content-addressed, so broadcasting the same content afterwards sends this very file.
`?format=audio` answers with the Ogg/Opus audio itself instead of its description.
"""

from __future__ import annotations

import logging

from aiohttp import web

from controller import schemas as s
from controller.api import keys
from controller.auth import principal_of
from controller.broadcasts import BroadcastIn
from controller.errors import bad_request, parse_body, read_json
from controller.openapi import Content, Param, describe
from controller.speech.service import spoken_text
from controller.targets import resolve

log = logging.getLogger(__name__)

routes = web.RouteTableDef()


@routes.post("/api/preview")
@describe(
    "Render without broadcasting: what the villages would hear (`targets` optional)",
    tag="broadcasts",
    body=BroadcastIn,
    responses={
        200: (s.PreviewOut, Content("audio/ogg", {"type": "string", "format": "binary"})),
    },
    query=(
        Param(
            "format",
            "json (default): the description; audio: the Ogg/Opus audio itself",
            {"type": "string", "enum": ["json", "audio"], "default": "json"},
        ),
    ),
)
async def preview(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    principal.require_broadcast()
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "audio"):
        raise bad_request("format", "json or audio")
    data = await read_json(request)
    targets_given = data.get("targets") is not None
    if not targets_given:
        data["targets"] = {"all": True}  # only to satisfy the model; nothing is sent
    body = parse_body(BroadcastIn, data)
    target = None
    if targets_given:
        resolved = await request.app[keys.DB].run(lambda s: resolve(s, body.targets, principal))
        target = resolved.target
    filled, media, voices = await request.app[keys.BROADCASTS].preview(body, target, principal)
    log.info("preview by %s: %s (%d ms)", principal.user, media.sha256[:12], media.duration_ms)
    if fmt == "audio":
        path = request.app[keys.MEDIA].path_for(media.sha256)
        return web.FileResponse(
            path,
            headers={
                "Content-Type": media.mime,
                "X-Media-Id": media.sha256,
                "X-Duration-Ms": str(media.duration_ms),
                "Cache-Control": "no-store",
            },
        )
    return s.respond(
        s.PreviewOut,
        {
            "media_id": media.sha256,
            "url": f"/media/{media.sha256}",
            "mime": media.mime,
            "size": media.size,
            "duration_ms": media.duration_ms,
            "voices": voices.split(",") if voices else [],
            "text": filled.text,
            "spoken": spoken_text(filled.text, drill=filled.drill),
            "title": filled.title or (filled.text or "")[:40],
            "category": filled.category,
            "priority": filled.priority,
            "level": filled.level,
            "drill": filled.drill,
            "languages": filled.languages if filled.media_id is None else [],
            "repeat": filled.repeat,
            "template": body.template,
        },
    )
