"""/api/devices/{id}/volume and /api/devices/{id}/test-tone: what a technician does to
one terminal from the console.

Volume goes out as a signed `ConfigBody` on the terminal's own command topic; the
terminal answers with a `config_applied` event and fresh telemetry. The test tone is a
short real broadcast to that one terminal, so it proves the whole path (command, fetch,
amplifier, speaker line) and shows up in its deliveries like anything else.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydub.generators import Sine
from sqlmodel import Session

from controller import audit
from controller.api import keys
from controller.auth import Principal, principal_of
from controller.broadcasts import BroadcastIn
from controller.errors import forbidden, not_found, parse_body, read_json
from controller.models import Device, Media
from controller.speech import tones
from controller.speech.render import concat, encode_ogg_opus, silence
from dalaba import protocol as p

routes = web.RouteTableDef()

CONFIG_VALID_S = 300  # a terminal offline longer than this gets the change by hand
TEST_TONE_TITLE = "测试音 test tone"
TEST_TONE_HZ = 1000.0


class VolumeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    normal_volume: int | None = Field(default=None, ge=0, le=100)
    emergency_volume: int | None = Field(default=None, ge=0, le=100)

    @model_validator(mode="after")
    def _something(self) -> VolumeIn:
        if self.normal_volume is None and self.emergency_volume is None:
            raise ValueError("give normal_volume, emergency_volume or both")
        return self


async def _device_in_reach(request: web.Request, principal: Principal) -> Device:
    principal.require_broadcast()
    device_id = request.match_info["id"]
    scope = principal.township_scope()
    device = await request.app[keys.DB].run(lambda s: s.get(Device, device_id))
    if device is None:
        raise not_found(f"device {device_id}")
    if scope is not None and device.township_id != scope:
        raise forbidden(f"device {device_id} is outside your township")
    return device


@routes.post("/api/devices/{id}/volume")
async def set_volume(request: web.Request) -> web.Response:
    principal = principal_of(request)
    device = await _device_in_reach(request, principal)
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
    return web.json_response(
        {"command_id": command.id, "published": published, **body.model_dump(exclude_none=True)},
        status=202,
    )


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
async def test_tone(request: web.Request) -> web.Response:
    principal = principal_of(request)
    device = await _device_in_reach(request, principal)
    media = await _test_tone_media(request)
    body = BroadcastIn(
        media_id=media.sha256,
        title=TEST_TONE_TITLE,
        category="other",
        priority="routine",
        targets={"devices": [device.id]},  # type: ignore[arg-type]
        expires_in_s=120,
    )
    broadcast = await request.app[keys.BROADCASTS].create(principal, body)
    return web.json_response(
        {"id": broadcast.id, "device_id": device.id, "media_id": media.sha256}, status=201
    )
