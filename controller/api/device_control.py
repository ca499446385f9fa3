"""/api/devices/{id}/volume, /test-tone and /diagnostics: what a technician does to one
terminal from the console (terminal control: technicians, duty officers, admins, and
township staff within their township; never a broadcast right).

Volume goes out as a signed `ConfigBody` on the terminal's own command topic; the
terminal answers with a `config_applied` event and fresh telemetry. The test tone is a
short real broadcast to that one terminal, so it proves the whole path (command, fetch,
amplifier, speaker line) and shows up in its deliveries like anything else. Diagnostics
send an empty signed `ConfigBody` (optionally a new telemetry interval): the terminal
answers with `config_applied` and fresh telemetry at once, instead of at its next interval.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydub.generators import Sine
from sqlmodel import Session, select

from controller import audit
from controller import schemas as s
from controller.api import keys
from controller.auth import Principal, principal_of
from controller.broadcasts import BroadcastIn
from controller.errors import forbidden, not_found, parse_body, read_json, read_optional_json
from controller.models import Delivery, Device, Media
from controller.openapi import describe
from controller.speech import tones
from controller.speech.render import concat, encode_ogg_opus, silence
from dalaba import protocol as p

routes = web.RouteTableDef()

CONFIG_VALID_S = 300  # a terminal offline longer than this gets the change by hand
TEST_TONE_TITLE = "测试音 test tone"
TEST_TONE_HZ = 1000.0
TEST_TONE_EXPIRES_S = 120  # a tone heard later than this proves nothing to who asked


class VolumeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    normal_volume: int | None = Field(default=None, ge=0, le=100)
    emergency_volume: int | None = Field(default=None, ge=0, le=100)

    @model_validator(mode="after")
    def _something(self) -> VolumeIn:
        if self.normal_volume is None and self.emergency_volume is None:
            raise ValueError("give normal_volume, emergency_volume or both")
        return self


async def device_in_reach(request: web.Request, principal: Principal) -> Device:
    """The terminal named in the path, if the caller may control it (also used by the
    clip and enrolment routes)."""
    principal.require_terminal_control()
    device_id = request.match_info["id"]
    scope = principal.township_scope()
    device = await request.app[keys.DB].run(lambda s: s.get(Device, device_id))
    if device is None:
        raise not_found(f"device {device_id}")
    if scope is not None and device.township_id != scope:
        raise forbidden(f"device {device_id} is outside your township")
    return device


@routes.post("/api/devices/{id}/volume")
@describe(
    "Set a terminal's normal and/or emergency volume (a signed config command; the "
    "terminal confirms with a config_applied event)",
    tag="devices",
    body=VolumeIn,
    responses={202: s.VolumeSent},
)
async def set_volume(request: web.Request) -> web.Response:
    principal = principal_of(request)
    device = await device_in_reach(request, principal)
    body = parse_body(VolumeIn, await read_json(request))
    config = p.ConfigBody(normal_volume=body.normal_volume, emergency_volume=body.emergency_volume)
    command = p.Command.new(
        config, p.Target(devices=(device.id,)), p.now_ms() + CONFIG_VALID_S * 1000
    )
    published = await request.app[keys.DISPATCHER].send(
        command, (p.Topics.command_device(device.id),)
    )

    def record(session: Session) -> None:
        audit.record(
            session,
            principal,
            "device.volume",
            device.id,
            command=command.id,
            published=published,
            **body.model_dump(exclude_none=True),
        )

    await request.app[keys.DB].run(record)
    sent = {"command_id": command.id, "published": published, **body.model_dump(exclude_none=True)}
    return s.respond(s.VolumeSent, sent, status=202)


async def _test_tone_media(request: web.Request) -> Media:
    """A chime, then two seconds of a steady 1 kHz tone: easy to hear and to measure."""
    segment = concat(
        [
            tones.chime(),
            silence(300),
            Sine(TEST_TONE_HZ, sample_rate=tones.SAMPLE_RATE)
            .to_audio_segment(duration=2000, volume=-12.0)
            .fade_in(10)
            .fade_out(10),
        ]
    )
    audio = await encode_ogg_opus(segment)
    return await request.app[keys.MEDIA].put(
        audio,
        mime="audio/ogg",
        duration_ms=len(segment),
        source="tone",
        text=TEST_TONE_TITLE,
    )


@routes.post("/api/devices/{id}/test-tone")
@describe(
    "Play a test tone on one terminal: a short real broadcast that proves the whole path",
    tag="devices",
    responses={201: s.TestToneCreated},
)
async def test_tone(request: web.Request) -> web.Response:
    principal = principal_of(request)
    device = await device_in_reach(request, principal)
    media = await _test_tone_media(request)
    body = BroadcastIn(
        media_id=media.sha256,
        title=TEST_TONE_TITLE,
        category="other",
        priority="routine",
        targets={"devices": [device.id]},  # type: ignore[arg-type]
        expires_in_s=TEST_TONE_EXPIRES_S,
    )
    broadcast = await request.app[keys.BROADCASTS].create(principal.for_test_tone(), body)
    # Say honestly what happened: an offline terminal has the tone queued, not played.
    delivery = await request.app[keys.DB].run(
        lambda s: s.exec(
            select(Delivery)
            .where(Delivery.broadcast_id == broadcast.id)
            .where(Delivery.device_id == device.id)
        ).first()
    )
    created = {
        "id": broadcast.id,
        "device_id": device.id,
        "media_id": media.sha256,
        "delivery_state": delivery.state if delivery is not None else None,
        "expires_in_s": TEST_TONE_EXPIRES_S,
    }
    return s.respond(
        s.TestToneCreated, created, status=201, location=f"/api/broadcasts/{broadcast.id}"
    )


class DiagnosticsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Optionally report more often while someone is looking into it (5 s to 1 h).
    telemetry_interval_s: float | None = Field(default=None, ge=5, le=3600)


class DiagnosticsSent(BaseModel):
    command_id: str
    published: bool = Field(description="false: the broker is unreachable; nothing was sent")
    telemetry_interval_s: float | None = None


@routes.post("/api/devices/{id}/diagnostics")
@describe(
    "Ask one terminal for a health report now (a signed config command that changes "
    "nothing, or only its telemetry interval); it answers with config_applied and fresh "
    "telemetry, seen on the terminal's page",
    tag="devices",
    body=DiagnosticsIn,
    body_required=False,
    responses={202: DiagnosticsSent},
)
async def diagnostics(request: web.Request) -> web.Response:
    principal = principal_of(request)
    device = await device_in_reach(request, principal)
    body = parse_body(DiagnosticsIn, await read_optional_json(request, max_bytes=4096))
    config = p.ConfigBody(telemetry_interval_s=body.telemetry_interval_s)
    command = p.Command.new(
        config, p.Target(devices=(device.id,)), p.now_ms() + CONFIG_VALID_S * 1000
    )
    published = await request.app[keys.DISPATCHER].send(
        command, (p.Topics.command_device(device.id),)
    )

    def record(session: Session) -> None:
        audit.record(
            session,
            principal,
            "device.diagnostics",
            device.id,
            command=command.id,
            published=published,
            **body.model_dump(exclude_none=True),
        )

    await request.app[keys.DB].run(record)
    sent = {"command_id": command.id, "published": published, **body.model_dump()}
    return s.respond(DiagnosticsSent, sent, status=202)
