"""/api/updates: agent releases and their rollouts in waves (controller/updates.py).

Only the `updates` permission uploads a release or starts, halts or resumes a rollout
(admins; a release runs on every pole of the county); anyone logged in may read them.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from controller import schemas as s
from controller.auth import Permission, principal_of
from controller.errors import bad_request, forbidden, parse_body, read_json
from controller.openapi import Content, Param, describe
from controller.targets import TargetsIn
from controller.updates import UpdateService
from dalaba import protocol as p

routes = web.RouteTableDef()

# Put on the app by controller/app.py.
SERVICE: web.AppKey[UpdateService] = web.AppKey("updates", UpdateService)

MAX_NOTES_CHARS = 2000


class RolloutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    release_id: str = Field(min_length=1, max_length=64)
    targets: TargetsIn
    first_wave_percent: int = Field(default=10, ge=1, le=100)
    halt_failure_percent: int = Field(
        default=20, ge=1, le=100, description="halt when this share of the first wave fails"
    )
    self_test_s: int = Field(default=120, ge=10, le=3600)
    wave_timeout_s: int = Field(default=3600, ge=30, le=7 * 24 * 3600)


class ReleaseOut(s.ApiModel):
    id: str
    version: str
    min_version: str
    sha256: str
    size: int
    filename: str
    notes: str
    uploaded_by: str
    created_at: s.Instant


class ReleaseList(s.ApiModel):
    releases: list[ReleaseOut] = Field(description="newest first")


class RolloutTerminalOut(s.ApiModel):
    device_id: str
    village_id: str | None
    wave: int
    state: Literal[
        "waiting", "offered", "downloading", "installed", "done", "rolled_back", "failed"
    ]
    reason: str | None
    running: str | None = Field(description="the agent version it said it runs")
    updated_at: s.Instant | None


class RolloutOut(s.ApiModel):
    id: str
    release_id: str
    version: str
    target: dict[str, Any]
    state: Literal["first_wave", "second_wave", "halted", "finished"]
    halt: dict[str, Any] | None = Field(
        description='why it halted: {"code": "first_wave_failed", "failed", "of", "percent"} '
        'or {"code": "operator", "by"}'
    )
    halt_reason: str | None = Field(description="the same in English words")
    first_wave_percent: int
    halt_failure_percent: int
    self_test_s: int
    wave_timeout_s: int
    created_by: str
    created_at: s.Instant
    finished_at: s.Instant | None
    counts: dict[str, int] = Field(description="terminals per state (`waiting`: wave not sent)")
    terminals: list[RolloutTerminalOut] | None = None


class RolloutList(s.ApiModel):
    rollouts: list[RolloutOut] = Field(description="newest first")


def _require_updates(request: web.Request) -> Any:
    principal = principal_of(request)
    if not principal.can(Permission.UPDATES):
        raise forbidden(f"role {principal.role.value} may not update terminals")
    return principal


def _version(request: web.Request, name: str) -> str:
    value = request.query.get(name, "")
    if not re.fullmatch(p.AGENT_VERSION_PATTERN, value):
        raise bad_request(name, "a version like 0.2.1 (numbers and dots)")
    return value


async def _read_body(request: web.Request) -> bytes:
    limit = p.MAX_RELEASE_BYTES
    if request.content_length is not None and request.content_length > limit:
        raise bad_request("file", f"larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise bad_request("file", f"larger than {limit} bytes")
        chunks.append(chunk)
    if not size:
        raise bad_request("file", "empty: send the wheel as the request body")
    return b"".join(chunks)


@routes.post("/api/updates/releases")
@describe(
    "Upload an agent release (the wheel, or a zip bundle of the agent's packages) as the "
    "request body (admins)",
    tag="updates",
    body=Content("application/octet-stream", {"type": "string", "format": "binary"}),
    query=(
        Param("version", "the release's version; must match the package's"),
        Param("min_version", "terminals below this refuse the update"),
        Param("filename", "shown in the console"),
        Param("notes", "what changed"),
    ),
    responses={201: ReleaseOut},
)
async def upload_release(request: web.Request) -> web.Response:
    principal = _require_updates(request)
    version = _version(request, "version")
    min_version = _version(request, "min_version")
    filename = request.query.get("filename", "")[:200]
    notes = request.query.get("notes", "")[:MAX_NOTES_CHARS]
    data = await _read_body(request)
    view = await request.app[SERVICE].add_release(
        principal, data, version=version, min_version=min_version, filename=filename, notes=notes
    )
    return s.respond(ReleaseOut, view, status=201)


@routes.get("/api/updates/releases")
@describe("Agent releases", tag="updates", responses={200: ReleaseList})
async def list_releases(request: web.Request) -> web.Response:
    principal_of(request)
    return s.respond(ReleaseList, {"releases": await request.app[SERVICE].releases()})


@routes.post("/api/updates/rollouts")
@describe(
    "Roll a release out to the terminals a target names, in two waves (admins)",
    tag="updates",
    body=RolloutIn,
    responses={201: RolloutOut},
)
async def create_rollout(request: web.Request) -> web.Response:
    principal = _require_updates(request)
    body = parse_body(RolloutIn, await read_json(request, max_bytes=256 * 1024))
    view = await request.app[SERVICE].create_rollout(
        principal,
        release_id=body.release_id,
        targets=body.targets,
        first_wave_percent=body.first_wave_percent,
        halt_failure_percent=body.halt_failure_percent,
        self_test_s=body.self_test_s,
        wave_timeout_s=body.wave_timeout_s,
    )
    return s.respond(RolloutOut, view, status=201, location=f"/api/updates/rollouts/{view['id']}")


@routes.get("/api/updates/rollouts")
@describe("Rollouts, with terminals per state", tag="updates", responses={200: RolloutList})
async def list_rollouts(request: web.Request) -> web.Response:
    principal_of(request)
    return s.respond(RolloutList, {"rollouts": await request.app[SERVICE].rollouts()})


@routes.get("/api/updates/rollouts/{id}")
@describe(
    "One rollout and where it stands on each terminal", tag="updates", responses={200: RolloutOut}
)
async def get_rollout(request: web.Request) -> web.Response:
    principal_of(request)
    return s.respond(RolloutOut, await request.app[SERVICE].rollout(request.match_info["id"]))


@routes.post("/api/updates/rollouts/{id}/halt")
@describe(
    "Halt a rollout: no further wave is sent (admins)",
    tag="updates",
    body_required=False,
    responses={200: RolloutOut},
)
async def halt_rollout(request: web.Request) -> web.Response:
    principal = _require_updates(request)
    view = await request.app[SERVICE].halt(principal, request.match_info["id"])
    return s.respond(RolloutOut, view)


@routes.post("/api/updates/rollouts/{id}/resume")
@describe(
    "Send the rest of a halted rollout (admins; 409 not_halted otherwise)",
    tag="updates",
    body_required=False,
    responses={200: RolloutOut},
)
async def resume_rollout(request: web.Request) -> web.Response:
    principal = _require_updates(request)
    view = await request.app[SERVICE].resume(principal, request.match_info["id"])
    return s.respond(RolloutOut, view)
