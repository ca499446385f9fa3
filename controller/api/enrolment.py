"""/api/devices/{id}/enrolment-code, /api/enrol and /api/devices/{id}/revoke: a board
enrolled with a one-time code, and a lost one shut out (controller/enrolment.py).

Codes and revocation are terminal control (technicians install and recover boards;
township staff within their township). /api/enrol needs no login (the code is the
credential) and only HTTPS: the answer holds the terminal's broker password.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from controller import schemas as s
from controller.api import keys
from controller.api.device_control import device_in_reach
from controller.api.session import _networks, _within, client_address
from controller.auth import principal_of
from controller.enrolment import ENROL_CODE_TTL_S, EnrolmentService
from controller.errors import ApiError, json_response, parse_body, read_json
from controller.openapi import describe
from controller.timefmt import iso

routes = web.RouteTableDef()

SERVICE: web.AppKey[EnrolmentService] = web.AppKey("enrolment", EnrolmentService)
# What the board must trust: the controller's signing keys (PEM), set by the wiring.
TRUST_PEMS: web.AppKey[list[str]] = web.AppKey("enrol_trust_pems", list)


class EnrolCodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttl_s: int = Field(default=ENROL_CODE_TTL_S, ge=300, le=7 * 24 * 3600)


class EnrolIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=4, max_length=32)


@routes.post("/api/devices/{id}/enrolment-code")
@describe(
    "A one-time enrolment code for this terminal (shown once; a new one voids the old)",
    tag="devices",
    body=EnrolCodeIn,
    body_required=False,
    responses={200: s.EnrolCodeOut},
)
async def new_code(request: web.Request) -> web.Response:
    principal = principal_of(request)
    device = await device_in_reach(request, principal)
    body = parse_body(EnrolCodeIn, await read_json(request) if request.can_read_body else {})
    issued = await request.app[SERVICE].issue_code(device.id, principal.user, body.ttl_s)
    return s.respond(
        s.EnrolCodeOut,
        {"device_id": issued.device_id, "code": issued.code, "expires_at": iso(issued.expires_ms)},
    )


@routes.post("/api/devices/{id}/revoke")
@describe(
    "Revoke a lost terminal: its broker account is removed and its session dropped now",
    tag="devices",
    responses={200: s.RevokedOut},
)
async def revoke(request: web.Request) -> web.Response:
    principal = principal_of(request)
    device = await device_in_reach(request, principal)
    at = await request.app[SERVICE].revoke(device.id, principal.user)
    return s.respond(s.RevokedOut, {"device_id": device.id, "revoked_at": iso(at)})


@routes.post("/api/enrol")
@describe(
    "A board presents its one-time code and receives its identity and broker password",
    tag="devices",
    body=EnrolIn,
    responses={200: s.EnrolledOut},
    description="No login; HTTPS only (outside the demo). Wrong codes from one address "
    "are slowed down like failed logins (429).",
    public=True,
)
async def enrol(request: web.Request) -> web.Response:
    settings = request.app[keys.SETTINGS]
    if not (settings.demo or _over_https(request, settings.trusted_proxies)):
        raise ApiError(403, "https_required", "enrol: only over HTTPS (the answer is a secret)")
    body = parse_body(EnrolIn, await read_json(request, max_bytes=1024))
    client = client_address(request, settings.trusted_proxies)
    enrolled = await request.app[SERVICE].enrol(body.code, client)
    ca_pem = settings.broker_ca_file.read_text() if settings.broker_ca_file else None
    answer = {
        "device_id": enrolled.device_id,
        "village_id": enrolled.village_id,
        "township_id": enrolled.township_id,
        "broker_url": settings.terminal_broker_url or settings.broker_url,
        "mqtt_username": enrolled.device_id,
        "mqtt_password": enrolled.mqtt_password,
        "broker_ca_pem": ca_pem,
        "media_base_url": settings.media_url,
        "controller_public_keys": request.app[TRUST_PEMS],
    }
    response = json_response(s.EnrolledOut.model_validate(answer).model_dump())
    response.headers["Cache-Control"] = "no-store"
    return response


def _over_https(request: web.Request, trusted: tuple[str, ...]) -> bool:
    if request.secure:
        return True
    # A TLS-terminating proxy of ours says so; anyone else's header is ignored.
    networks = _networks(trusted)
    return bool(
        networks
        and _within(request.remote, networks)
        and request.headers.get("X-Forwarded-Proto", "").lower() == "https"
    )
