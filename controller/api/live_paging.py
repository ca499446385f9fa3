"""/api/live-paging: speak live through the chosen terminals (实时喊话).

`POST /api/live-paging` starts a session (targets as for broadcasts; township staff only
within their township) and answers with its id, the broadcast that tracks each
terminal's state, and `speak_from_ms` (when the chime has ended). The browser then opens
`GET /api/live-paging/{id}/audio` as a WebSocket and sends binary messages of 16 kHz mono
16-bit little-endian PCM. `POST /api/live-paging/{id}/stop` (or closing the socket)
ends it. Only the person who started a session may feed or stop it.

The WebSocket upgrade is a GET, which the CSRF check does not cover, so the handler
refuses any Origin other than the console's own: another site cannot open a socket with
the officer's cookie and speak through the county's loudspeakers.
"""

from __future__ import annotations

import contextlib
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field

from controller.auth import principal_of
from controller.errors import ApiError, parse_body, read_json
from controller.openapi import Content, describe
from controller.paging_live import LivePagingService
from controller.schemas import respond
from controller.targets import TargetsIn

routes = web.RouteTableDef()

SERVICE: web.AppKey[LivePagingService] = web.AppKey("live_paging", LivePagingService)
MAX_AUDIO_MESSAGE_BYTES = 64 * 1024  # two seconds of PCM: a browser sends ~64 ms


class LivePagingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    targets: TargetsIn


class LivePagingView(BaseModel):
    id: str = Field(description="the session's broadcast id: deliveries hold per-terminal state")
    started_by: str
    speak_from_ms: int = Field(description="epoch ms: the chime has ended, speak from here")
    device_count: int
    frames: int
    spoken_ms: int
    ended: bool


@routes.post("/api/live-paging")
@describe(
    "Start live paging to an area: the terminals play the paging chime, then what the "
    "browser sends on the session's audio WebSocket",
    tag="broadcasts",
    body=LivePagingIn,
    responses={201: LivePagingView},
)
async def start(request: web.Request) -> web.Response:
    principal = principal_of(request)
    principal.require_live_paging()
    body = parse_body(LivePagingIn, await read_json(request))
    live = await request.app[SERVICE].start(principal, body.targets)
    return respond(
        LivePagingView, live.view(), status=201, location=f"/api/broadcasts/{live.broadcast_id}"
    )


@routes.post("/api/live-paging/{id}/stop")
@describe(
    "End a live paging session (the terminals finish with the audio already sent)",
    tag="broadcasts",
    responses={200: LivePagingView},
)
async def stop(request: web.Request) -> web.Response:
    live = await request.app[SERVICE].stop(principal_of(request), request.match_info["id"])
    return respond(LivePagingView, live.view())


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser: a bearer-token client, which no site can borrow
    parts = urlsplit(origin)
    return parts.netloc == request.host and parts.scheme in {"http", "https"}


@routes.get("/api/live-paging/{id}/audio")
@describe(
    "WebSocket: binary messages of 16 kHz mono 16-bit little-endian PCM for the session",
    tag="broadcasts",
    responses={101: Content("application/octet-stream", {"type": "string", "format": "binary"})},
)
async def audio(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    service = request.app[SERVICE]
    live = service.get(principal, request.match_info["id"])
    if not _same_origin(request):
        raise ApiError(403, "forbidden", "Origin: not this console", "Origin")
    ws = web.WebSocketResponse(max_msg_size=MAX_AUDIO_MESSAGE_BYTES, heartbeat=20)
    await ws.prepare(request)
    try:
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                service.feed(live, msg.data)
            elif msg.type is WSMsgType.TEXT and msg.data == "stop":
                break
    finally:
        # A closed tab or a lost network ends the session: an open microphone must
        # never keep the poles in paging with nobody speaking.
        await service.end(live)
        with contextlib.suppress(Exception):
            await ws.close()
    return ws
