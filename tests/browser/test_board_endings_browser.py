"""The live board tells the truth when some terminals are not there: in real Chromium
against a real controller, broker and simulated terminals, a notice to one township
where two villages' terminals are cut off and one terminal's amplifier has failed. The
board shows those villages "offline (waiting)" and the reach rate, stops saying "on air"
once only offline terminals are left, and its one resend button sends the broadcast
again to the failed terminal, which then plays it. A terminal that comes back plays it
too. Screenshots in Chinese and in English are kept as artifacts."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.broker, pytest.mark.slow]

VILLAGES = 24  # two townships: t01 (16 villages) and t02 (8)
TOWNSHIP = "t02"
OFFLINE_VILLAGES = ("t02-v02", "t02-v05")
BROKEN_VILLAGE = "t02-v07"  # one terminal here cannot switch its amplifier on


async def devices_of(county: Any, township: str) -> list[dict[str, Any]]:
    _, body = await county.api("GET", "/api/devices")
    return [d for d in body["devices"] if d["township_id"] == township]


async def tile_state(page: Any, village: str, state: str, timeout_s: float = 60) -> None:
    await page.wait_for_selector(
        f".tile[data-village='{village}'][data-state='{state}']", timeout=timeout_s * 1000
    )


async def test_board_shows_offline_terminals_reach_and_resends_to_the_unreached(
    make_county, open_console
):
    county = await make_county(villages=VILLAGES)
    township_devices = await devices_of(county, TOWNSHIP)
    everyone = {d["id"] for d in township_devices}
    offline = {d["id"] for d in township_devices if d["village_id"] in OFFLINE_VILLAGES}
    broken = min(d["id"] for d in township_devices if d["village_id"] == BROKEN_VILLAGE)
    assert offline and broken not in offline and len(everyone) > len(offline) + 1

    for device in offline:
        county.fleet.network_down(device)
    county.fleet.set_amplifier_failed(broken)

    async def cut_off_seen() -> bool:
        shown = {d["id"]: d["online"] for d in await devices_of(county, TOWNSHIP)}
        return not any(shown[d] for d in offline) and all(shown[d] for d in everyone - offline)

    await county.wait_for(cut_off_seen, 30, "the cut-off terminals shown offline")

    officer = await open_console(county, "duty1")
    page = officer.page
    _, created = await county.api(
        "POST",
        "/api/broadcasts",
        json_body={
            "text": "通知：明天上午九点在村委会开会，请各户派一人参加。",
            "category": "meeting",
            "priority": "notice",
            "targets": {"townships": [TOWNSHIP]},
        },
        expect=201,
    )
    broadcast_id = created["id"]
    assert created["device_count"] == len(everyone)
    await officer.go(f"board/{broadcast_id}", "#board-title")

    # Offline villages wait, grey-blue and striped; the rest play; the broken one fails.
    for village in OFFLINE_VILLAGES:
        await tile_state(page, village, "offline")
        assert "离线等待" in await officer.text(f".tile[data-village='{village}']")
    await tile_state(page, BROKEN_VILLAGE, "failed")
    online_villages = {d["village_id"] for d in township_devices} - {
        *OFFLINE_VILLAGES,
        BROKEN_VILLAGE,
    }
    for village in sorted(online_villages):
        await tile_state(page, village, "done")

    # Nothing is left but terminals waiting offline: the board is no longer "on air".
    await page.wait_for_selector("#board-status[data-status=finished]", timeout=30_000)
    status = await officer.text("#board-status")
    assert "播发中" not in status and f"{len(offline)}台离线等待" in status
    assert await officer.text("[data-count=offline] strong") == str(len(offline))
    assert await officer.text("[data-count=failed] strong") == "1"
    assert await officer.text("[data-count=done] strong") == str(len(everyone) - len(offline) - 1)

    # Reach: every terminal that was online received it, the broken one included.
    reached = len(everyone) - len(offline)
    await page.wait_for_selector(
        f"#board-reach[data-reached='{reached}'][data-targeted='{len(everyone)}']",
        timeout=15_000,
    )
    assert await officer.text("#reach-rate") == f"{round(100 * reached / len(everyone))}%"
    assert f"{reached}/{len(everyone)}" in await officer.text("#board-reach")
    attention = await page.locator("#board-attention tbody tr").evaluate_all(
        "rows => rows.map(r => [r.dataset.device, r.dataset.state])"
    )
    assert attention[0] == [broken, "failed"]
    assert {d for d, s in attention[1:] if s == "offline"} == offline

    # One button for the unreached: the failed terminal, not those still waiting.
    resend = page.locator("#resend-btn")
    await resend.wait_for(timeout=15_000)
    assert await resend.get_attribute("data-resendable") == "1"
    assert "补发未送达（1）" in await resend.inner_text()
    await officer.shot("21-board-offline-waiting-resend")
    await page.click("#lang")
    await page.wait_for_selector("#resend-btn:has-text('Resend to unreached (1)')")
    assert "offline (waiting)" in await officer.text(f".tile[data-village='{OFFLINE_VILLAGES[0]}']")
    assert "offline, waiting" in await officer.text("#board-status")
    await officer.shot("22-board-offline-waiting-resend-en")
    await page.click("#lang")
    await page.wait_for_selector("#resend-btn:has-text('补发未送达（1）')")

    # The technician fixed the amplifier; the resend plays where the first send failed.
    county.fleet.set_amplifier_failed(broken, False)
    await page.click("#resend-btn")
    await page.wait_for_selector("dialog [data-ok]")
    assert "1 台终端" in await officer.text("dialog")
    async with page.expect_response(
        lambda r: (
            r.url.endswith(f"/api/broadcasts/{broadcast_id}/resend") and r.request.method == "POST"
        )
    ) as answer:
        await page.click("dialog [data-ok]")
    assert (await answer.value).status == 200
    await page.wait_for_selector(
        f"#board-attention tr[data-device='{broken}']", state="detached", timeout=60_000
    )
    await tile_state(page, BROKEN_VILLAGE, "done")
    await page.wait_for_selector("#resend-btn", state="detached", timeout=15_000)
    assert "第1次补发" in await officer.text("#resends")
    view = await county.get_broadcast(broadcast_id)
    assert view["attempt"] == 1 and view["resendable"] == 0
    by_device = {d["device_id"]: d["state"] for d in view["deliveries"]}
    assert by_device[broken] == "done"
    await officer.shot("23-board-after-resend")

    # A terminal that comes back plays what it missed (it has not expired).
    returning = min(d for d in offline if d.startswith(f"d-{OFFLINE_VILLAGES[0]}-"))
    county.fleet.network_up(returning)
    await page.wait_for_selector(
        f"#board-attention tr[data-device='{returning}']", state="detached", timeout=60_000
    )
    done_now = len(everyone) - len(offline) + 1
    await page.wait_for_function(
        "n => document.querySelector('[data-count=done] strong')?.textContent === String(n)",
        arg=done_now,
        timeout=60_000,
    )
    view = await county.get_broadcast(broadcast_id)
    assert {d["device_id"]: d["state"] for d in view["deliveries"]}[returning] == "done"
    assert view["reach"]["reached"] == reached + 1
    await page.wait_for_selector("#board-status[data-status=finished]")
    await officer.shot("24-board-terminal-returned")
