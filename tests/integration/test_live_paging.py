"""Live paging end to end: the API, a WebSocket client speaking as the browser does, the
private broker, and simulated terminals whose speakers record what they output.

What is checked comes from the speakers' own recordings (plays.jsonl and their WAV
files), never from what the agents report: the genuine voice is heard after the chime,
a frame forged by someone holding a broker account is never heard, and an emergency
cuts the live voice off.
"""

from __future__ import annotations

import asyncio
import math
import struct
import wave
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.paging_live import FRAME_MS
from dalaba import protocol as p
from firmware_sim.fleet import device_dir

pytestmark = [pytest.mark.broker, pytest.mark.slow]

RATE = 16_000
VOICE_HZ = 1000.0  # what the officer "says"
FORGED_HZ = 3000.0  # what an attacker on the broker tries to make the poles say
CHUNK_MS = 40


def tone(hz: float, ms: int, amplitude: float = 0.4) -> bytes:
    n = RATE * ms // 1000
    return b"".join(
        struct.pack("<h", int(amplitude * 32767 * math.sin(2 * math.pi * hz * i / RATE)))
        for i in range(n)
    )


def band_energy(pcm: bytes, hz: float) -> float:
    """Share of the signal's energy within 50 Hz of `hz`."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    if samples.size == 0:
        return 0.0
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(samples.size, 1 / RATE)
    total = spectrum.sum() or 1.0
    return float(spectrum[(freqs > hz - 50) & (freqs < hz + 50)].sum() / total)


def live_recordings(data_dir: Path, device_id: str, broadcast_id: str) -> list[dict[str, Any]]:
    """The speaker's entries for the live part (the chime is the play before it)."""
    path = device_dir(data_dir, device_id) / "plays.jsonl"
    import json

    entries = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [e for e in entries if e["broadcast_id"] == broadcast_id and e["media_sha256"] == "live"]


def wav_pcm(data_dir: Path, device_id: str, entry: dict[str, Any]) -> bytes:
    with wave.open(str(device_dir(data_dir, device_id) / entry["wav"]), "rb") as w:
        return w.readframes(w.getnframes())


async def start_session(county: Any, targets: dict[str, Any]) -> dict[str, Any]:
    _, view = await county.api(
        "POST", "/api/live-paging", json_body={"targets": targets}, expect=201
    )
    county.targeted[view["id"]] = county.terminals_in(targets)
    return dict(view)


async def audio_socket(county: Any, bid: str) -> aiohttp.ClientWebSocketResponse:
    """The session's audio WebSocket, as the officer's browser opens it."""
    return await county.http.ws_connect(
        f"{county.url}/api/live-paging/{bid}/audio", headers=county.headers()
    )


async def speak(ws: aiohttp.ClientWebSocketResponse, pcm: bytes) -> None:
    """Send PCM at the pace a microphone produces it."""
    step = RATE * CHUNK_MS // 1000 * 2
    for i in range(0, len(pcm), step):
        await ws.send_bytes(pcm[i : i + step])
        await asyncio.sleep(CHUNK_MS / 1000)


async def wait_until(epoch_ms: int) -> None:
    await asyncio.sleep(max(0.0, (epoch_ms - p.now_ms()) / 1000) + 0.05)


async def test_the_voice_reaches_every_pole_after_the_chime_and_a_forged_frame_never_does(
    make_county,
):
    county = await make_county(villages=3)
    # Longer than the chime, shorter than the voice: a live session must not be taken
    # for a play that went silent while it is still being spoken.
    county.controller.settings.unknown_after_s = 1.0
    view = await start_session(county, {"townships": ["t01"]})
    bid = view["id"]
    devices = sorted(county.terminals_in({"townships": ["t01"]}))
    forger = await county.attacker()
    ws = await audio_socket(county, bid)
    try:
        await wait_until(view["speak_from_ms"])
        # Someone with a broker account publishes frames signed by a key of their own,
        # stamped to sound during the genuine voice, on the session's own topic.
        forged_key = Ed25519PrivateKey.generate()
        for seq in range(1000, 1040):
            frame = p.seal_live_frame(
                bid, seq, p.now_ms(), tone(FORGED_HZ, CHUNK_MS)[::2], forged_key.sign
            )
            forger.publish(p.Topics.live(bid), frame, qos=0)
        await speak(ws, tone(VOICE_HZ, 2000))
        _, stopped = await county.api("POST", f"/api/live-paging/{bid}/stop", expect=200)
        assert stopped["ended"] is True and stopped["frames"] >= 2000 // FRAME_MS
    finally:
        await ws.close()
        await forger.stop()

    done = await county.wait_states(bid, {"done"}, timeout_s=40)
    assert done["priority"] == "paging"
    for delivery in done["deliveries"]:
        states = [t["state"] for t in delivery["transitions"]]
        assert "unknown" not in states, states
    for device_id in devices:
        (entry,) = live_recordings(county.data_dir, device_id, bid)
        pcm = wav_pcm(county.data_dir, device_id, entry)
        # Most of the two seconds came out (loss would be silence, not a shorter file).
        assert entry["duration_ms"] >= 1500, entry
        assert band_energy(pcm, VOICE_HZ) > 0.8, device_id
        assert band_energy(pcm, FORGED_HZ) < 0.01, device_id
        # The chime sounded first, as a play of its own that ended before the voice.
        chime = [
            e
            for e in county.plays(device_id)
            if e["broadcast_id"] == bid and e["media_sha256"] != "live"
        ]
        assert len(chime) == 1 and chime[0]["end_ms"] <= entry["start_ms"], chime
        refused = county.fleet.agents[device_id].counters["live_refused_bad_signature"]
        assert refused >= 1, device_id
    # The session is kept as media: chime and voice, what the poles played.
    record = await county.get_broadcast(bid)
    kept = county.media_pcm(record["media_id"])
    assert band_energy(kept, VOICE_HZ) > 0.3
    assert band_energy(kept, FORGED_HZ) < 0.01


async def test_an_emergency_cuts_the_live_voice_and_the_poles_report_preempted(make_county):
    county = await make_county(villages=2)
    view = await start_session(county, {"villages": ["t01-v01"]})
    bid = view["id"]
    (device_id,) = county.terminals_in({"villages": ["t01-v01"]})
    ws = await audio_socket(county, bid)
    speaking = asyncio.create_task(speak(ws, tone(VOICE_HZ, 60_000)))
    try:
        await wait_until(view["speak_from_ms"])
        await county.wait_states(bid, {"playing"}, timeout_s=30)
        emergency = await county.broadcast(
            text="请注意，洪水预警。",
            priority="emergency",
            level=3,
            targets={"villages": ["t01-v01"]},
        )
        await county.wait_states(emergency, {"done"}, timeout_s=60)
        view_live = await county.wait_states(bid, {"preempted"}, timeout_s=10)
        assert "higher priority" in (view_live["deliveries"][0]["reason"] or "")
    finally:
        speaking.cancel()
        await asyncio.gather(speaking, return_exceptions=True)
        await ws.close()
    (entry,) = live_recordings(county.data_dir, device_id, bid)
    assert entry["completed"] is False
    emergency_play = [e for e in county.plays(device_id) if e["broadcast_id"] == emergency]
    assert emergency_play and emergency_play[0]["start_ms"] >= entry["end_ms"]


async def test_who_may_speak_and_from_where(make_county, console_login):
    county = await make_county(villages=20)  # t01 (16 villages) and t02 (4)
    clerk = await console_login(county, "clerk-t01")
    tech = await console_login(county, "tech1")
    duty = await console_login(county, "duty1")
    body = {"targets": {"townships": ["t02"]}}
    # A technician never speaks; township staff only within their township.
    status, err = await tech.api("POST", "/api/live-paging", json_body=body)
    assert status == 403, err
    status, err = await clerk.api("POST", "/api/live-paging", json_body=body)
    assert status == 403 and "t02" in err["error"]["message"], err
    status, err = await clerk.api("POST", "/api/live-paging", json_body={"targets": {"all": True}})
    assert status == 403, err
    _, view = await clerk.api(
        "POST", "/api/live-paging", json_body={"targets": {"villages": ["t01-v01"]}}, expect=201
    )
    # Nobody else may speak in or stop the clerk's session.
    status, err = await duty.api("POST", f"/api/live-paging/{view['id']}/stop")
    assert status == 403, err
    # Another site cannot open the audio socket with the clerk's cookie.
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    audio = f"{county.url}/api/live-paging/{view['id']}/audio"
    async with clerk.http.get(audio, headers={**upgrade, "Origin": "https://evil.example"}) as r:
        assert r.status == 403
    # From the console's own origin it opens.
    ws = await clerk.http.ws_connect(audio, headers={"Origin": county.url})
    await ws.close()
    await clerk.api("POST", f"/api/live-paging/{view['id']}/stop", expect=200)
    _, audit = await county.api("GET", "/api/audit?action=live_paging", expect=200)
    actions = {(e["action"], e["actor"]) for e in audit["entries"]}
    assert {("live_paging.start", "clerk-t01"), ("live_paging.end", "clerk-t01")} <= actions
    # Bad input names the field.
    status, body = await county.api("POST", "/api/live-paging", json_body={"targets": {}})
    assert status == 400 and "targets" in body["error"]["field"], body


async def test_live_paging_interrupts_a_notice_which_plays_again_afterwards(make_county):
    county = await make_county(villages=1)
    (device_id,) = county.terminals_in({"villages": ["t01-v01"]})
    notice = await county.broadcast(
        text="各位村民请注意，" + "近期电信诈骗案件多发，请提高警惕。" * 4,
        targets={"villages": ["t01-v01"]},
    )
    await county.wait_started(notice, [device_id], timeout_s=40)
    view = await start_session(county, {"villages": ["t01-v01"]})
    bid = view["id"]
    ws = await audio_socket(county, bid)
    try:
        await wait_until(view["speak_from_ms"])
        await speak(ws, tone(VOICE_HZ, 1000))
        await county.api("POST", f"/api/live-paging/{bid}/stop", expect=200)
    finally:
        await ws.close()
    await county.wait_states(bid, {"done"}, timeout_s=30)
    final = await county.wait_states(notice, {"done"}, timeout_s=90)
    states = [t["state"] for t in final["deliveries"][0]["transitions"]]
    assert "preempted" in states and states[-2:] == ["playing", "done"], states
    plays = county.plays(device_id)
    order = [(e["broadcast_id"], e["completed"]) for e in plays]
    # The notice cut, the chime and the voice, then the notice again from its start.
    assert order[0] == (notice, False) and order[-1] == (notice, True), order
    assert [b for b, _ in order[1:3]] == [bid, bid], order


async def test_a_terminal_that_loses_the_stream_falls_silent_and_reports_it(make_county):
    county = await make_county(villages=2)
    lost, kept = "d-t01-v01-1", "d-t01-v02-1"
    view = await start_session(county, {"villages": ["t01-v01", "t01-v02"]})
    bid = view["id"]
    ws = await audio_socket(county, bid)
    try:
        await wait_until(view["speak_from_ms"])
        await speak(ws, tone(VOICE_HZ, 1000))
        county.fleet.network_down(lost)
        # Longer than the loss timeout (5 s): the terminal gives the session up.
        await speak(ws, tone(VOICE_HZ, 7000))
        county.fleet.network_up(lost)
        await county.api("POST", f"/api/live-paging/{bid}/stop", expect=200)
    finally:
        await ws.close()
    final = await county.wait_states(bid, {lost: "failed", kept: "done"}, timeout_s=60)
    (delivery,) = [d for d in final["deliveries"] if d["device_id"] == lost]
    assert "live: no verified frame" in delivery["reason"], delivery
    (cut,) = live_recordings(county.data_dir, lost, bid)
    (whole,) = live_recordings(county.data_dir, kept, bid)
    assert cut["completed"] is False and whole["completed"] is True
    # What went out before the loss was the voice, and nothing after it: silence.
    assert cut["duration_ms"] < whole["duration_ms"] - 5000, (cut, whole)
    assert band_energy(wav_pcm(county.data_dir, lost, cut), VOICE_HZ) > 0.8
