"""/media/<sha256>: the audio terminals fetch.

Public by design: the URL is the content's hash (unguessable before the command names
it), announcements are broadcast to everyone anyway, and a terminal verifies the hash
before it plays. Immutable, so any cache or CDN in front may keep it forever.
"""

from __future__ import annotations

import re

from aiohttp import web

from controller.api import keys
from controller.errors import bad_request, not_found
from controller.openapi import Content, describe

routes = web.RouteTableDef()

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@routes.get("/media/{sha256}")
@describe(
    "The audio terminals fetch: content-addressed, immutable, public",
    tag="media",
    responses={200: Content("audio/ogg", {"type": "string", "format": "binary"})},
    public=True,
)
async def get_media(request: web.Request) -> web.StreamResponse:
    sha256 = request.match_info["sha256"]
    if not _SHA256.match(sha256):
        raise bad_request("sha256", "must be 64 lowercase hex characters")
    path = request.app[keys.MEDIA].serving(sha256)
    if not path.exists():
        raise not_found(f"media {sha256}")
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "audio/ogg",
            "Cache-Control": "public, max-age=31536000, immutable",
        },
    )
