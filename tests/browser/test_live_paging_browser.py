"""Live paging in real Chromium: its fake microphone is fed from a WAV file of a 1 kHz
tone; a duty officer picks a township, presses 开始喊话, and the simulated terminals'
speakers record the tone after their chime while the page shows each terminal live,
then ended after 结束喊话. A frame forged on the broker meanwhile is never heard."""

from __future__ import annotations

import asyncio
import json
import math
import os
import struct
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.async_api import async_playwright

from dalaba import protocol as p
from firmware_sim.fleet import device_dir

pytestmark = [pytest.mark.browser, pytest.mark.broker, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
VOICE_HZ = 1000.0
FORGED_HZ = 3000.0


def write_tone_wav(path: Path, hz: float, seconds: float, rate: int = 48_000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(
            b"".join(
                struct.pack("<h", int(0.5 * 32767 * math.sin(2 * math.pi * hz * i / rate)))
                for i in range(int(rate * seconds))
            )
        )


def band_energy(pcm: bytes, hz: float, rate: int = 16_000) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(samples.size, 1 / rate)
    return float(spectrum[(freqs > hz - 50) & (freqs < hz + 50)].sum() / (spectrum.sum() or 1.0))


def live_entries(data_dir: Path, device_id: str, broadcast_id: str) -> list[dict[str, Any]]:
    path = device_dir(data_dir, device_id) / "plays.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [
        e
        for e in map(json.loads, lines)
        if e["broadcast_id"] == broadcast_id and e["media_sha256"] == "live"
    ]


async def test_a_duty_officer_speaks_from_the_browser_to_a_township(
    make_county: Any, tmp_path: Path
) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is required by the browser tests; run `make test`")
    county = await make_county(villages=3)
    devices = sorted(county.terminals_in({"townships": ["t01"]}))
    voice = tmp_path / "voice.wav"
    write_tone_wav(voice, VOICE_HZ, 3.0)
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={voice}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            context = await browser.new_context(
                locale="zh-CN",
                timezone_id="Asia/Shanghai",  # the county's clock, as on the duty-room PC
                permissions=["microphone"],
            )
            page = await context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(county.url + "/")
            await page.fill("input[name=name]", "duty1")
            await page.fill("input[name=password]", county.prepared.console_users["duty1"][2])
            await page.click("button[type=submit]")
            await page.wait_for_selector("#nav a[data-nav=live]")
            assert await page.inner_text("#nav a[data-nav=live]") == "实时喊话"
            await page.click("#nav a[data-nav=live]")
            await page.wait_for_selector("#lp-start")
            await page.select_option("#lp-township", "t01")
            assert await page.inner_text("#lp-start") == "开始喊话"
            await page.click("#lp-start")
            await page.wait_for_selector("#lp-status[data-phase=live]", timeout=90_000)
            bid = await page.evaluate("document.body.dataset.liveSession")
            await page.wait_for_function(
                "n => document.querySelectorAll('#lp-terminals tr[data-state=live]').length === n",
                arg=len(devices),
                timeout=90_000,
            )
            assert "直播中" in await page.inner_text("#lp-terminals")
            # Someone on the broker tries to speak too.
            forger = await county.attacker()
            key = Ed25519PrivateKey.generate()
            loud = bytes([0x80, 0x00] * 320)  # mu-law extremes: a harsh buzz if played
            for seq in range(5000, 5020):
                forger.publish(
                    p.Topics.live(bid), p.seal_live_frame(bid, seq, p.now_ms(), loud, key.sign)
                )
            await forger.stop()
            await asyncio.sleep(2.5)
            assert await page.inner_text("#lp-time") != "0:00"
            await page.click("#lp-stop")
            await page.wait_for_selector("#lp-status[data-phase=ended]", timeout=90_000)
            await page.wait_for_function(
                "n => document.querySelectorAll('#lp-terminals tr[data-state=ended]').length === n",
                arg=len(devices),
                timeout=90_000,
            )
            # The session is on the records page, with its recording to listen to.
            await page.click("#nav a[data-nav=records]")
            await page.click(f"tr[data-broadcast='{bid}']")
            await page.wait_for_selector("audio.live-recording", timeout=60_000)
            src = await page.get_attribute("audio.live-recording", "src")
            recording = await page.request.get(county.url + src)
            assert recording.ok and recording.headers["content-type"].startswith("audio/")
            await context.close()
        finally:
            await browser.close()
    assert not errors, errors
    for device_id in devices:
        (entry,) = live_entries(county.data_dir, device_id, bid)
        with wave.open(str(device_dir(county.data_dir, device_id) / entry["wav"]), "rb") as w:
            pcm = w.readframes(w.getnframes())
        assert entry["duration_ms"] >= 1500, entry
        assert band_energy(pcm, VOICE_HZ) > 0.5, device_id
        assert county.fleet.agents[device_id].counters["live_refused_bad_signature"] >= 1
