"""/api/devices/{id}/clip and /device-clips/{request id}: hear a pole from the duty room
(controller/clips.py). Asking is terminal control (within reach, as for volume); the
upload is the terminal's, authorised by the one-time token its signed request carried,
and is outside /api/ because no console session or bearer token is involved."""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from controller import audit
from controller import schemas as s
from controller.api import keys
from controller.api.device_control import device_in_reach
from controller.auth import principal_of
from controller.clips import (
    CLIP_MAX_BYTES,
    CLIP_REQUEST_VALID_MS,
    ClipRequest,
    check_clip,
    token_digest,
)
from controller.errors import (
    ApiError,
    bad_request,
    forbidden,
    not_found,
    parse_body,
    read_optional_json,
)
from controller.openapi import describe
from dalaba import protocol as p

routes = web.RouteTableDef()

TOKEN_HEADER = "X-Dalaba-Clip-Token"


class ClipIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: int = Field(default=10, ge=1, le=p.MAX_CLIP_MS // 1000)


class ClipOut(BaseModel):
    request_id: str
    device_id: str
    status: str
    requested_ms: int
    max_ms: int
    media_sha256: str | None = None
    media_url: str | None = None
    duration_ms: int | None = None
    received_ms: int | None = None
    published: bool | None = None


def _view(row: ClipRequest) -> dict[str, Any]:
    return {
        "request_id": row.id,
        "device_id": row.device_id,
        "status": row.status,
        "requested_ms": row.requested_ms,
        "max_ms": row.max_ms,
        "media_sha256": row.media_sha256,
        "media_url": f"/media/{row.media_sha256}" if row.media_sha256 else None,
        "duration_ms": row.duration_ms,
        "received_ms": row.received_ms,
    }


@routes.post("/api/devices/{id}/clip")
@describe(
    "Ask a terminal for the first seconds of what it last played (a signed request; "
    "it uploads the clip, then GET the request for it)",
    tag="devices",
    body=ClipIn,
    body_required=False,
    responses={202: ClipOut},
)
async def request_clip(request: web.Request) -> web.Response:
    principal = principal_of(request)
    device = await device_in_reach(request, principal)
    body = parse_body(ClipIn, await read_optional_json(request) or {})
    request_id, token = secrets.token_urlsafe(12), secrets.token_urlsafe(32)
    now = p.now_ms()
    row = ClipRequest(
        id=request_id,
        device_id=device.id,
        township_id=device.township_id,
        requested_by=principal.user,
        requested_ms=now,
        max_ms=body.seconds * 1000,
        token_sha256=token_digest(token),
    )

    def store(session: Session) -> dict[str, Any]:
        session.add(row)
        audit.record(session, principal, "device.clip", device.id, seconds=body.seconds)
        return _view(row)

    view = await request.app[keys.DB].run(store)
    command = p.Command.new(
        p.ClipRequestBody(
            request_id=request_id,
            upload_path=f"/device-clips/{request_id}",
            token=token,
            max_ms=row.max_ms,
        ),
        p.Target(devices=(device.id,)),
        now + CLIP_REQUEST_VALID_MS,
    )
    published = await request.app[keys.DISPATCHER].send(
        command, (p.Topics.command_device(device.id),)
    )
    return s.respond(ClipOut, {**view, "published": published}, status=202)


@routes.get("/api/devices/{id}/clip/{request_id}")
@describe(
    "A clip request: pending, uploaded (with its media) or empty",
    tag="devices",
    responses={200: ClipOut},
)
async def get_clip(request: web.Request) -> web.Response:
    principal = principal_of(request)
    scope = principal.township_scope()
    device_id, request_id = request.match_info["id"], request.match_info["request_id"]
    row = await request.app[keys.DB].run(lambda s_: s_.get(ClipRequest, request_id))
    if row is None or row.device_id != device_id:
        raise not_found(f"clip request {request_id}")
    if scope is not None and row.township_id != scope:
        raise forbidden(f"device {device_id} is outside your township")
    return s.respond(ClipOut, _view(row))


@routes.put("/device-clips/{request_id}")
@describe(
    "A terminal's upload of the clip it was asked for (WAV, 16 kHz mono; the request's "
    f"one-time token in {TOKEN_HEADER}; empty body: nothing played since power-on)",
    tag="devices",
    responses={201: ClipOut},
    public=True,
)
async def upload_clip(request: web.Request) -> web.Response:
    request_id = request.match_info["request_id"]
    token = request.headers.get(TOKEN_HEADER, "")
    if request.content_length is not None and request.content_length > CLIP_MAX_BYTES:
        raise ApiError(413, "too_large", f"body: larger than {CLIP_MAX_BYTES} bytes", "body")
    data = await request.content.read(CLIP_MAX_BYTES + 1)
    if len(data) > CLIP_MAX_BYTES:
        raise ApiError(413, "too_large", f"body: larger than {CLIP_MAX_BYTES} bytes", "body")
    db = request.app[keys.DB]
    row = await db.run(lambda s_: s_.get(ClipRequest, request_id))
    # One answer for every way the token can be wrong: nothing to learn by probing.
    if (
        row is None
        or not token
        or not hmac.compare_digest(token_digest(token), row.token_sha256)
        or row.status != "pending"
        or p.now_ms() - row.requested_ms > CLIP_REQUEST_VALID_MS
    ):
        raise forbidden("no pending clip request for this token")
    duration_ms = 0
    media_sha256 = None
    if data:
        try:
            duration_ms = check_clip(data, row.max_ms)
        except ValueError as exc:
            raise bad_request("body", str(exc)) from None
        media = await request.app[keys.MEDIA].put(
            data,
            mime="audio/wav",
            duration_ms=duration_ms,
            source="clip",
            text=f"clip of {row.device_id}",
        )
        media_sha256 = media.sha256

    def finish(session: Session) -> dict[str, Any] | None:
        stored = session.get(ClipRequest, request_id)
        if stored is None or stored.status != "pending":
            return None  # a second upload raced the first: the first stands
        stored.status = "uploaded" if media_sha256 else "empty"
        stored.media_sha256, stored.duration_ms = media_sha256, duration_ms
        stored.received_ms = p.now_ms()
        session.add(stored)
        return _view(stored)

    view = await db.run(finish)
    if view is None:
        raise forbidden("no pending clip request for this token")
    return s.respond(ClipOut, view, status=201)
