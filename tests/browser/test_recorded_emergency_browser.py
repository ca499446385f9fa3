"""Emergencies in a recorded voice from the console, in real Chromium whose microphone is
its fake capture device fed from a WAV that espeak-ng writes: a duty officer records in
the browser, listens back, previews the drill (framed as heard) and sends it, and the
simulated terminals play the composed announcement with the recording in it; an
uploaded recording picked for a real county-wide level II emergency goes through the
second officer, who hears it before approving."""

from __future__ import annotations

import subprocess
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.browser, pytest.mark.broker, pytest.mark.slow]

VILLAGES = 24  # two townships: t01 (16 villages) and t02 (8)
SPOKEN = "各位村民请注意，这是值班室的录音。"


@pytest.fixture
def capture_wav(tmp_path: Path) -> Path:
    path = tmp_path / "microphone.wav"
    subprocess.run(["espeak-ng", "-v", "cmn", "-w", str(path), SPOKEN], check=True)
    return path


@pytest.fixture
async def browser(capture_wav: Path) -> AsyncIterator[Browser]:
    """The harness's Chromium with a microphone: the fake capture device plays the WAV
    (looped), and the permission prompt is answered yes."""
    args = [
        *CHROMIUM_ARGS,
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={capture_wav}",
    ]
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=args)
        yield b
        await b.close()


async def upload_as_admin(county: Any, wav: bytes, title: str) -> dict[str, Any]:
    """The administrator's upload (a county-wide user of no township)."""
    async with county.http.post(
        county.url + "/api/media",
        params={"title": title},
        data=wav,
        headers={**county.headers(None), "Content-Type": "application/octet-stream"},
    ) as resp:
        assert resp.status == 201, await resp.text()
        return dict(await resp.json())


async def media_info(county: Any, media_id: str) -> dict[str, Any]:
    _, info = await county.api("GET", f"/api/media/{media_id}", expect=200)
    return dict(info)


async def test_officer_records_a_drill_in_the_browser_and_the_fleet_plays_it(
    make_county, open_console
):
    county = await make_county(villages=VILLAGES)
    officer = await open_console(county, "duty1")
    page = officer.page
    await officer.go("emergency", "[data-template=record]")
    await page.click("[data-template=record]")
    button = page.locator("#rec-btn")
    assert "开始录音" in await button.inner_text()
    await button.click()
    await page.wait_for_selector("#rec-btn[data-rec=recording]")
    # The same button now stops, and keeps the keyboard's focus.
    assert await page.evaluate("document.activeElement.id") == "rec-btn"
    await page.wait_for_function(
        "() => /[3-9]/.test(document.getElementById('rec-seconds')?.textContent || '')",
        timeout=30_000,
    )
    await officer.shot("em-rec-01-recording")
    await button.click()
    await page.wait_for_selector("#rec-ok", timeout=60_000)  # uploaded and accepted
    # Listen back to the take as the server stored it.
    take_url = await page.get_attribute("#rec-audio", "src")
    assert take_url and take_url.startswith("/media/")
    assert "重新录音" in await button.inner_text()
    await page.click("[data-area=townships]")
    await page.click("[data-township=t01]")
    await page.click("[data-level='4']")
    await page.click("[data-repeat='2']")
    await page.click("[data-mode=drill]")
    await page.click("#preview-btn")
    await page.wait_for_selector("#preview-audio", timeout=60_000)
    spoken = await officer.text("#preview-audio ~ .spoken")
    assert spoken.startswith("现在进行的是演练") and spoken.endswith("以上是演练。"), spoken
    assert "录音" in spoken
    preview_url = await page.get_attribute("#preview-audio", "src")
    assert preview_url
    await officer.shot("em-rec-02-preview-drill")
    await page.click("#send-btn")
    await page.wait_for_selector("#board-title")

    _, listing = await county.api("GET", "/api/broadcasts")
    [sent] = listing["broadcasts"]
    assert sent["drill"] is True and f"/media/{sent['media_id']}" == preview_url
    composed = await media_info(county, sent["media_id"])
    assert composed["voices"][0] == "upload" and len(composed["voices"]) == 2
    _, uploads = await county.api("GET", "/api/media?source=upload")
    [take] = uploads["media"]
    assert take_url == take["url"]
    assert take["duration_ms"] >= 3000  # about what was recorded, not an empty take
    # Twice the recording, plus the signal and the drill framing.
    assert composed["duration_ms"] > 2 * take["duration_ms"] + 2000

    await county.wait_states(sent["id"], {"done"}, timeout_s=90)
    plays = county.all_plays(sent["id"])
    assert set(plays) == county.terminals_in({"townships": ["t01"]})
    for device_id, entries in plays.items():
        (entry,) = entries
        assert entry["media_sha256"] == sent["media_id"], device_id
    # What a speaker put out lasts as long as the composed announcement.
    device_id = sorted(plays)[0]
    wav_path = county.fleet.hardware[device_id].speaker.record_dir / plays[device_id][0]["wav"]
    with wave.open(str(wav_path)) as w:
        played_ms = w.getnframes() * 1000 // w.getframerate()
    assert abs(played_ms - composed["duration_ms"]) <= 40, (device_id, played_ms)


async def test_uploaded_recording_for_a_real_level_two_emergency_needs_the_second_officer(
    make_county, open_console, tmp_path, capture_wav
):
    county = await make_county(villages=VILLAGES, two_person_levels=(1, 2))
    recording = await upload_as_admin(county, capture_wav.read_bytes(), "堤坝险情录音")

    first = await open_console(county, "duty1")
    page = first.page
    await first.go("emergency", "[data-template=upload]")
    await page.click("[data-template=upload]")
    pick = page.locator(f"[data-media='{recording['media_id']}']")
    await pick.wait_for()
    assert "堤坝险情录音" in await pick.inner_text()
    assert await page.locator(".rec-item audio").count() >= 1  # hear before choosing
    await pick.click()
    assert await pick.get_attribute("aria-pressed") == "true"
    await page.click("[data-area=county]")
    await page.click("[data-level='2']")
    await page.click("[data-repeat='1']")
    await page.click("[data-mode=real]")
    await page.click("#preview-btn")
    await page.wait_for_selector("#preview-audio", timeout=60_000)
    assert "第二名值班员" in await first.text(".notice-second")
    await page.check("#confirm-real")
    await first.shot("em-rec-03-upload-real")
    await page.click("#send-btn")
    await page.wait_for_selector("[data-approval] .waiting")
    _, listing = await county.api("GET", "/api/broadcasts")
    assert listing["broadcasts"] == []

    second = await open_console(county, "duty2")
    await second.go("approvals", "[data-approval] [data-action=approve]")
    approve = second.page.locator("[data-action=approve]")
    assert await approve.is_disabled()  # listen first
    src = await second.page.get_attribute("[data-approval] audio", "src")
    composed_id = src.rsplit("/", 1)[-1]
    assert composed_id != recording["media_id"]  # the signal is part of what is heard
    assert (await media_info(county, composed_id))["voices"] == ["upload"]
    await second.page.locator("[data-approval] audio").evaluate("a => a.play()")
    await second.page.wait_for_function("!document.querySelector('[data-action=approve]').disabled")
    await approve.click()
    await second.page.click("dialog [data-ok]")
    await second.page.wait_for_selector("#board-title")
    assert await second.page.locator(".board .banner-real").is_visible()
    _, listing = await county.api("GET", "/api/broadcasts")
    [sent] = listing["broadcasts"]
    assert sent["media_id"] == composed_id and sent["level"] == 2 and sent["drill"] is False


async def test_clerk_on_a_phone_is_offered_only_recordings_of_their_township(
    make_county, open_console, capture_wav
):
    county = await make_county(villages=VILLAGES)
    # The county's own recording (uploaded by the administrator, of no township).
    county_take = await upload_as_admin(county, capture_wav.read_bytes(), "县里的录音")
    clerk = await open_console(county, "clerk-t01", phone=True)
    page = clerk.page
    await clerk.go("emergency", "[data-template=upload]")
    await page.click("[data-template=upload]")
    await page.wait_for_function(
        "() => !document.querySelector('.rec-list [data-media]') && "
        "document.body.innerText.includes('没有您可用的已上传录音')"
    )
    # Recorded on the phone, it is the clerk's own: offered from then on.
    await page.click("[data-template=record]")
    await page.click("#rec-btn")
    await page.wait_for_selector("#rec-btn[data-rec=recording]")
    await page.wait_for_function(
        "() => /[2-9]/.test(document.getElementById('rec-seconds')?.textContent || '')",
        timeout=30_000,
    )
    await page.click("#rec-btn")
    await page.wait_for_selector("#rec-ok", timeout=60_000)
    await clerk.shot("em-rec-04-phone-recorded")
    await page.reload()  # the page anew: the list is read again
    await page.wait_for_selector("[data-template=upload]")
    await page.click("[data-template=upload]")
    await page.wait_for_selector(".rec-list [data-media]")
    offered = await page.locator(".rec-list [data-media]").evaluate_all(
        "bs => bs.map(b => b.dataset.media)"
    )
    assert len(offered) == 1 and county_take["media_id"] not in offered
    # Nothing is wider than the phone.
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await clerk.shot("em-rec-05-phone-uploads")
