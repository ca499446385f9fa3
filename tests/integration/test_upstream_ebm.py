"""The upper-level platform's link with a real broker, controller and fleet, and a
stand-in of the platform (tests/upstream_standin.py): an EBM package in is played on the
terminals of its area code, the state request is answered with the state and coverage,
the broadcast log goes up; refused packages get their result code and store nothing."""

from __future__ import annotations

import io
import json
import math
import struct
import tarfile
import wave
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import func, select

from controller.api import keys
from controller.api.ebd import LINK
from controller.auth import Role, create_user_and_token
from controller.models import Broadcast, Device, Media, Township
from controller.upstream import fields as f
from controller.upstream.package import tar_of, text_of
from controller.upstream.signature import PackageSigner
from controller.warnings.models import UpstreamMessage, UpstreamSource
from dalaba.protocol import now_ms
from tests.upstream_standin import PlatformStandIn, ebm_id, members_of, with_odd_member

pytestmark = [pytest.mark.broker, pytest.mark.slow]

COUNTY_ID = "030000000000000001"  # this county platform's resource code


@pytest.fixture
async def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    key_dir = tmp_path / "platform"
    key_dir.mkdir()
    standin = PlatformStandIn(key_dir, COUNTY_ID)
    await standin.start()
    # The county's settings come from the environment like any install's.
    monkeypatch.setenv("DALABA_UPSTREAM_TRUSTED_KEYS", json.dumps([str(standin.public_key_file)]))
    monkeypatch.setenv("DALABA_UPSTREAM_RESOURCE_CODE", COUNTY_ID)
    monkeypatch.setenv("DALABA_UPSTREAM_PLATFORM_RESOURCE_CODE", "010000000000000001")
    monkeypatch.setenv("DALABA_UPSTREAM_URL", standin.url)
    monkeypatch.setenv("DALABA_UPSTREAM_REPORT_INTERVAL_S", "0")
    try:
        yield standin
    finally:
        await standin.stop()


async def post_package(county: Any, token: str, data: bytes) -> tuple[int, bytes, str]:
    async with county.http.post(
        county.url + "/api/ebd",
        data=data,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-tar"},
    ) as resp:
        return resp.status, await resp.read(), resp.headers.get("X-EBD-Result-Code", "")


async def upstream_messages(county: Any) -> int:
    db = county.controller.app[keys.DB]
    return int(
        await db.run(lambda s: s.exec(select(func.count()).select_from(UpstreamMessage)).one())
    )


async def test_ebm_in_played_state_answered_log_reported_and_bad_packages_refused(
    make_county: Any, platform: PlatformStandIn
) -> None:
    county = await make_county(villages=4)
    db = county.controller.app[keys.DB]
    platform.trust_county(county.controller.app[LINK].public_pem())

    def provision(session: Any) -> tuple[str, str, list[str]]:
        token = create_user_and_token(session, "province-ebm", Role.UPSTREAM, None)
        session.add(
            UpstreamSource(
                id="province-ebm",
                name="省平台",
                mode="automatic",
                created_ms=now_ms(),
                updated_ms=now_ms(),
            )
        )
        township = session.exec(select(Township).order_by(Township.id)).first()
        devices = session.exec(select(Device.id).where(Device.township_id == township.id)).all()
        return token, township.code, sorted(devices)

    token, township_code, township_devices = await db.run(provision)
    assert township_code and len(township_code) == 9
    assert township_devices

    # --- an EBM in: received, parsed (result code 1) and played where its area code says.
    the_id = ebm_id(1)
    status, body, code = await post_package(
        county, token, platform.ebm(the_id, area_codes=township_code)
    )
    assert (status, code) == (200, "1"), body[:200]
    receipt = platform.open(body)  # signed by the county's key
    assert receipt.ebd_type is f.EbdType.EBD_RESPONSE
    assert text_of(receipt.body, f.RESULT_CODE) == "1"

    def played(session: Any) -> UpstreamMessage:
        return session.exec(
            select(UpstreamMessage).where(UpstreamMessage.identifier == the_id)
        ).one()

    message = await db.run(played)
    assert message.outcome == "played", (message.outcome, message.reason)
    assert message.broadcast_id
    await county.wait_states(message.broadcast_id, {d: "done" for d in township_devices}, 90)
    assert set(county.all_plays(message.broadcast_id)) == set(township_devices)

    # --- the state request: succeeded (3), coverage 1.0 over the township's terminals.
    status, body, _ = await post_package(county, token, platform.state_request(the_id))
    assert status == 200
    state = platform.open(body)
    assert state.ebd_type is f.EbdType.EBM_STATE_RESPONSE
    assert text_of(state.body, f.STATE_CODE) == str(int(f.BroadcastState.SUCCEEDED))
    assert text_of(state.body, f"{f.COVERAGE}/{f.COVERAGE_RATE}") == "1.0000"
    assert text_of(state.body, f"{f.COVERAGE}/{f.TARGETED}") == str(len(township_devices))

    # --- reporting up on request: the log names the EBM for every terminal that played.
    _, sent = await county.api("POST", "/api/upstream/reports", json_body={}, expect=200)
    types = sorted(r["type"] for r in sent["reports"])
    assert types == ["EBMBrdLog", "EBRDTState", "EBRPSState"]
    assert all(r["status"] == "sent" and r["result_code"] == 1 for r in sent["reports"])
    by_type = {p.ebd_type: p for p in platform.received}
    log_items = by_type[f.EbdType.BROADCAST_LOG].body.findall(f.LOG_ITEM)
    ours = [i for i in log_items if text_of(i, f.EBM_ID) == the_id]
    assert len(ours) == len(township_devices)
    assert {text_of(i, f.LOG_RESULT) for i in ours} == {"1"}
    platform_state = by_type[f.EbdType.PLATFORM_STATE].body.find(f.PLATFORM_ITEM)
    assert platform_state is not None
    assert text_of(platform_state, f.TERMINALS_TOTAL) == str(len(county.fleet.agents))
    assert 0.0 < float(text_of(platform_state, f.ONLINE_RATE)) <= 1.0
    _, listed = await county.api("GET", "/api/upstream/reports", expect=200)
    assert len(listed["reports"]) == 3

    # --- the platform asks for a Full broadcast log of the last hour: sent up at once.
    platform.received.clear()
    omd = platform.omd_request(now_ms() - 3_600_000, now_ms() + 1000, "Full", "EBMBrdLog")
    status, body, code = await post_package(county, token, omd)
    assert (status, code) == (200, "1")

    async def omd_report_arrived() -> bool:
        return bool(platform.received)

    await county.wait_for(omd_report_arrived, 30, "the requested report")
    (asked,) = platform.received
    assert asked.ebd_type is f.EbdType.BROADCAST_LOG
    assert text_of(asked.body, f.REPORT_TYPE) == "Full"
    full_items = [i for i in asked.body.findall(f.LOG_ITEM) if text_of(i, f.EBM_ID) == the_id]
    assert len(full_items) == len(township_devices)

    # --- the EBM's own recording: in the package, or by URL from the platform only.
    tone = _tone_wav()
    platform.audio["alarm.wav"] = tone
    with_file = platform.ebm(
        ebm_id(5), area_codes=township_code, aux=(2, "alarm.wav"), files={"alarm.wav": tone}
    )
    by_url = platform.ebm(
        ebm_id(6), area_codes=township_code, aux=(61, platform.audio_url("alarm.wav"))
    )
    for data, the_audio_id in ((with_file, ebm_id(5)), (by_url, ebm_id(6))):
        status, body, code = await post_package(county, token, data)
        assert (status, code) == (200, "1"), body[:300]
        media = await db.run(lambda s, i=the_audio_id: _media_of(s, i))
        assert media.source == "upstream" and media.mime.startswith("audio/ogg")
        assert 1000 <= media.duration_ms <= 2500  # the 1.5 s tone, normalised
    elsewhere = platform.ebm(
        ebm_id(7), area_codes=township_code, aux=(61, "http://127.0.0.1:9/a.wav")
    )
    status, _, code = await post_package(county, token, elsewhere)
    assert (status, code) == (400, "5")
    not_audio = platform.ebm(
        ebm_id(8),
        area_codes=township_code,
        aux=(2, "alarm.wav"),
        files={"alarm.wav": b"#EXTM3U\nhttp://x/y\n" * 20},
    )
    status, _, code = await post_package(county, token, not_audio)
    assert (status, code) == (400, "2")

    # --- refusals: each answered with its result code, nothing stored.
    before = await upstream_messages(county)
    stranger = PackageSigner.load_or_create("ed25519", county.data_dir / "stranger.pem")
    good = platform.ebm(ebm_id(2), area_codes=township_code)
    members = members_of(good)
    message_name = next(n for n in members if n.startswith("EBDB_"))
    traversal = dict(members)
    traversal["../" + message_name] = traversal.pop(message_name)
    cases = {
        "bad signature": (platform.ebm(ebm_id(3), area_codes=township_code, signer=stranger), 4),
        "content missing": (platform.ebm(ebm_id(4), area_codes=""), 3),
        "malformed tar": (b"this is not a tar" * 40, 2),
        "malformed xml": (_replace(members, message_name, b"<EBD><EBDID>"), 2),
        "xml bomb": (_replace(members, message_name, BOMB), 2),
        "path traversal": (tar_of(traversal, now_ms()), 2),
        "symlink": (with_odd_member(good, tarfile.SYMTYPE, "EBDB_link.xml"), 2),
    }
    for name, (data, expected) in cases.items():
        status, body, code = await post_package(county, token, data)
        assert (status, code) == (400, str(expected)), (name, status, code)
        assert text_of(platform.open(body).body, f.RESULT_CODE) == str(expected), name
    assert await upstream_messages(county) == before

    # --- a source in review mode: waiting (1) until an officer acts; its cancel: 5.
    def review_source(session: Any) -> str:
        session.add(
            UpstreamSource(id="city-ebm", mode="review", created_ms=now_ms(), updated_ms=now_ms())
        )
        return create_user_and_token(session, "city-ebm", Role.UPSTREAM, None)

    city = await db.run(review_source)
    held = ebm_id(9)

    async def state_of(identifier: str) -> str:
        _, answer, _ = await post_package(county, city, platform.state_request(identifier))
        return text_of(platform.open(answer).body, f.STATE_CODE)

    status, _, code = await post_package(county, city, platform.ebm(held, area_codes=township_code))
    assert (status, code) == (200, "1")
    assert await state_of(held) == str(int(f.BroadcastState.WAITING))
    cancel = platform.ebm(held, msg_type=2, area_codes="", desc="")
    status, _, code = await post_package(county, city, cancel)
    assert (status, code) == (200, "1")
    assert await state_of(held) == str(int(f.BroadcastState.CANCELLED))
    assert await state_of(ebm_id(99)) == str(int(f.BroadcastState.NOT_PROCESSED))
    # Another source's EBM is not this source's to know of.
    assert await state_of(the_id) == str(int(f.BroadcastState.NOT_PROCESSED))

    # --- only a warning source may post packages; a source may not read reports.
    status, _, _ = await post_package(county, county.prepared.admin_token, good)
    assert status == 403
    async with county.http.get(
        county.url + "/api/upstream/reports", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 403


def _media_of(session: Any, identifier: str) -> Any:
    message = session.exec(
        select(UpstreamMessage).where(UpstreamMessage.identifier == identifier)
    ).one()
    assert message.outcome == "played", (message.outcome, message.reason, message.detail)
    broadcast = session.get(Broadcast, message.broadcast_id)
    return session.get(Media, broadcast.media_sha256)


def _tone_wav() -> bytes:
    """1.5 s of a 440 Hz tone, 16 kHz mono: audio a platform might send."""
    rate = 16000
    frames = b"".join(
        struct.pack("<h", int(12000 * math.sin(2 * math.pi * 440 * n / rate)))
        for n in range(int(rate * 1.5))
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return out.getvalue()


BOMB = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><EBD>&lol2;</EBD>'
)


def _replace(members: dict[str, bytes], name: str, data: bytes) -> bytes:
    return tar_of({**members, name: data}, now_ms())


async def test_reports_go_up_on_schedule_signed_sm2_and_refusals_are_logged(
    make_county: Any, platform: PlatformStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DALABA_UPSTREAM_REPORT_INTERVAL_S", "1")
    monkeypatch.setenv("DALABA_UPSTREAM_PACKAGE_MAX_BYTES", "20000")
    # The county signs with SM2/SM3 as the standards ask (the platform's key stays Ed25519).
    pytest.importorskip("tongsuopy", reason="SM2 needs the sm2 extra (tongsuopy)")
    monkeypatch.setenv("DALABA_UPSTREAM_SIGNING_SCHEME", "sm2")
    platform.answer_code = f.ResultCode.OTHER  # the platform refuses what it gets
    county = await make_county(villages=2)
    platform.trust_county(county.controller.app[LINK].public_pem())

    # A package over the limit is refused unread (413, result code 5).
    token = await county.controller.app[keys.DB].run(
        lambda s: create_user_and_token(s, "province-big", Role.UPSTREAM, None)
    )
    status, body, code = await post_package(county, token, b"\0" * 300_000)
    assert (status, code) == (413, "5")
    assert text_of(platform.open(body).body, f.RESULT_CODE) == "5"
    # A token whose source is not (or no longer) configured: the intake refuses, code 5.
    code_of_county = await county.controller.app[keys.DB].run(
        lambda s: s.exec(select(Township.code)).first()
    )
    unknown = platform.ebm(ebm_id(20), area_codes=code_of_county)
    status, body, code = await post_package(county, token, unknown)
    assert (status, code) == (400, "5")
    assert b"source_unknown" in text_of(platform.open(body).body, f.RESULT_DESC).encode()

    async def logged() -> bool:
        _, listed = await county.api("GET", "/api/upstream/reports", expect=200)
        return len(listed["reports"]) >= 6  # two rounds of three

    await county.wait_for(logged, 60, "two scheduled rounds")
    _, listed = await county.api("GET", "/api/upstream/reports", expect=200)
    rows = listed["reports"]
    assert {r["trigger"] for r in rows} == {"schedule"}
    assert {r["status"] for r in rows} == {"refused"}
    assert {r["result_code"] for r in rows} == {5}
    # Each round starts where the last scheduled one ended: no gap, no overlap.
    ends = sorted({r["period"]["end"] for r in rows})
    starts = {r["period"]["start"] for r in rows}
    assert set(ends[:-1]) <= starts
    assert (county.data_dir / "keys" / "upstream-sm2.pem").exists()
    states = [p for p in platform.received if p.ebd_type is f.EbdType.TERMINAL_STATE]
    assert len(states[0].body.findall(f.DEVICE_ITEM)) == len(county.fleet.agents)
