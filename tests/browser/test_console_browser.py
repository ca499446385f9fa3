"""The console in real Chromium against a real controller, broker and simulated
terminals: a drill to a township watched to the end on the live board, the two-person
confirmation of a real county-wide alert with cancel and correction, a township clerk
on a phone who can neither see nor target another township, and a terminal fault
appearing on the overview. Screenshots of each main screen are kept as artifacts."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
from playwright.async_api import TimeoutError as PlaywrightTimeout

pytestmark = [pytest.mark.browser, pytest.mark.broker, pytest.mark.slow]

VILLAGES = 24  # two townships: t01 (16 villages) and t02 (8)


def terminals_in(county, township: str) -> int:
    return sum(v.terminals for v in county.prepared.county.villages if v.township_id == township)


async def board_counts(page) -> dict[str, str]:
    return dict(
        await page.locator("[data-count]").evaluate_all(
            "els => els.map(e => [e.dataset.count, e.querySelector('strong').textContent])"
        )
    )


async def to_play_out(county, page, margin_s: float = 60) -> float:
    """How long the broadcast on the board may take to be done everywhere: its audio's
    length plus a margin for fetching and reporting on a loaded machine. A fixed wait
    is wrong here: the correction of a real alert is a framed emergency of about 53 s,
    which left a 60 s wait a few seconds of slack (57.7 s were used under load)."""
    view = await county.get_broadcast(page.url.rsplit("/", 1)[-1])
    return county.media_ms(view["media_id"]) / 1000 + margin_s


async def wait_count(
    page, state: str, expected: int, timeout_s: float = 60, *, county=None
) -> None:
    """Wait until the live board counts `expected` terminals in `state`. On a timeout,
    with `county`, the failure shows the board's counts beside what the controller holds
    for each terminal (state and reason), so a run that fails under load says whether
    the board or the terminals are behind."""
    try:
        await page.wait_for_function(
            "([s, n]) => document.querySelector(`[data-count=${s}] strong`)?.textContent"
            " === String(n)",
            arg=[state, expected],
            timeout=timeout_s * 1000,
        )
    except PlaywrightTimeout:
        if county is None:
            raise
        shown = await board_counts(page)
        broadcast_id = page.url.rsplit("/", 1)[-1]
        view = await county.get_broadcast(broadcast_id)
        held = {
            d["device_id"]: f"{d['state']} ({d.get('reason') or '-'})" for d in view["deliveries"]
        }
        # The steps of each terminal not in `state`: when it got there, and from where.
        behind = {
            d["device_id"]: [(x.get("state"), x.get("at")) for x in d.get("transitions") or []]
            for d in view["deliveries"]
            if d["state"] != state
        }
        raise AssertionError(
            f"board never counted {expected} {state} in {timeout_s}s; board: {shown}; "
            f"controller: {view.get('summary')}; per terminal: {held}; steps: {behind}"
        ) from None


async def test_duty_officer_sends_a_drill_to_a_township_and_watches_it_finish(
    make_county, open_console
):
    county = await make_county(villages=VILLAGES)
    officer = await open_console(county, "duty1", shot="01-login")
    page = officer.page
    await officer.shot("02-home-duty-officer")
    await officer.reset_effort()
    # One obvious entry: the big red button, first thing on the page.
    big = page.locator("#big-emergency")
    assert await big.is_visible() and "紧急广播" in await big.inner_text()

    await big.click()
    await page.wait_for_selector("[data-template=free]")
    assert await page.locator(".banner-unset").is_visible()  # drill/real not chosen yet
    await page.click("[data-template=free]")
    await page.fill("textarea[name=text]", "山洪演练：请沿河村民注意。")
    await page.click("[data-area=townships]")
    await page.click("[data-township=t01]")
    await page.click("[data-level='4']")
    await page.click("[data-repeat='1']")
    await page.click("[data-mode=drill]")
    await page.wait_for_selector("body.drill-mode")
    assert await page.locator("#em-summary .banner-drill").is_visible()
    assert "城关镇" in await officer.text("#sum-area")
    assert "Ⅳ级" in await officer.text("#sum-level")
    await officer.shot("03-emergency-form-drill")

    await page.click("#preview-btn")
    await page.wait_for_selector("#preview-audio")
    audio_url = await page.get_attribute("#preview-audio", "src")
    assert audio_url and audio_url.startswith("/media/")
    ogg = await page.evaluate(
        "async (u) => new Uint8Array(await (await fetch(u)).arrayBuffer()).slice(0, 4).join()",
        audio_url,
    )
    assert ogg == "79,103,103,83"  # "OggS": the real audio, playable in the browser
    # The words shown are the words heard: a drill's framing included (issue 16).
    spoken = await officer.text(".spoken")
    assert spoken.startswith("现在进行的是演练") and spoken.endswith("以上是演练。")
    # Drill is marked on the preview and on the confirmation, and the button says so.
    assert await page.locator(".confirm-step .banner-drill").count() == 1
    assert await page.locator(".banner-real").count() == 0
    send = page.locator("#send-btn")
    assert "演练" in await send.inner_text() and await send.is_enabled()
    await send.scroll_into_view_if_needed()
    await officer.shot("04-emergency-preview-confirm-drill")

    await send.click()
    await page.wait_for_selector("#board-title")
    assert await page.locator(".board .banner-drill").is_visible()
    # As fast as the duty officers found it (issue 16): home to a drill on air in 9
    # clicks, typing only the text.
    clicks, fields = await officer.effort()
    assert clicks <= 9 and fields <= 1, (clicks, fields)
    expected = terminals_in(county, "t01")
    await wait_count(page, "done", expected, await to_play_out(county, page), county=county)
    states = await page.locator(".tile").evaluate_all("ts => ts.map(t => t.dataset.state)")
    assert len(states) == 16 and set(states) == {"done"}
    assert await officer.text("[data-count=failed] strong") == "0"
    await officer.shot("05-board-drill-done")

    await officer.go("records", "#records tbody tr")
    row = page.locator("#records tbody tr.rec-row").first
    assert "演练" in await row.inner_text()
    await row.click()
    await page.wait_for_selector(".rec-detail .outcome")
    assert await page.locator(".rec-detail .outcome").count() == 16
    await officer.shot("06-records")
    href = await page.get_attribute("#csv-link", "href")
    csv_text = await page.evaluate("async (u) => await (await fetch(u)).text()", href)
    assert csv_text.count("\n") == expected + 1 and "城关镇" in csv_text
    await officer.go("audit", "#audit tbody tr")
    assert "broadcast.create" in await officer.text("#audit")
    await officer.shot("07-audit")


async def test_real_county_wide_alert_needs_a_second_officer_then_cancel_and_correct(
    make_county, open_console
):
    county = await make_county(villages=VILLAGES, two_person_levels=(1, 2))
    first = await open_console(county, "duty1")
    page = first.page
    await first.reset_effort()
    await page.click("#big-emergency")
    await page.wait_for_selector("[data-template=free]")
    await page.click("[data-template=free]")
    await page.fill(
        "textarea[name=text]",
        "紧急通知：上游水库泄洪，沿河村民请立即转移到高处，不要在河边停留，听到通知后马上行动。",
    )
    await page.click("[data-area=county]")
    await page.click("[data-level='1']")
    await page.click("[data-repeat='1']")
    await page.click("[data-mode=real]")
    await page.wait_for_selector("body.real-mode")
    await page.click("#preview-btn")
    await page.wait_for_selector("#preview-audio")
    assert await page.locator(".banner-drill").count() == 0
    assert "第二名值班员" in await first.text(".notice-second")
    send = page.locator("#send-btn")
    assert "实际" in await send.inner_text()
    assert await send.is_disabled()  # until "this is real" is ticked
    await page.check("#confirm-real")
    await send.scroll_into_view_if_needed()
    await first.shot("08-emergency-confirm-real")
    await send.click()
    requester_clicks, requester_fields = await first.effort()

    # Nothing is on air: the request waits in a visible queue.
    await page.wait_for_selector("[data-approval] .waiting")
    await first.shot("09-approval-waiting-requester")
    _, listing = await county.api("GET", "/api/broadcasts")
    assert listing["broadcasts"] == []

    second = await open_console(county, "duty2")
    await second.reset_effort()
    await second.page.wait_for_selector("#nav [data-nav=approvals] .badge")
    await second.page.click("#nav [data-nav=approvals]")
    await second.page.wait_for_selector("[data-approval] [data-action=approve]")
    approve = second.page.locator("[data-action=approve]")
    assert await approve.is_disabled()  # listen first
    # Listening is a click on the player's own play button, inside the browser's
    # shadow DOM: played by script here, and counted as the click it is.
    await second.page.locator("[data-approval] audio").evaluate("a => a.play()")
    await second.page.wait_for_function("!document.querySelector('[data-action=approve]').disabled")
    assert "全县" in await second.text("[data-approval]")
    await second.shot("10-approval-second-officer")
    await approve.click()
    await second.page.click("dialog [data-ok]")
    await second.page.wait_for_selector("#board-title")
    assert await second.page.locator(".board .banner-real").is_visible()
    # A level I county-wide alert with its second officer in 13 clicks (measured: 9 by
    # the requester from the home page, 3 by the approver plus the play button), typing
    # only the text, as the duty officers found it (issue 16).
    approver_clicks, approver_fields = await second.effort()
    together = requester_clicks + approver_clicks + 1  # + the play button
    assert together <= 13, (requester_clicks, approver_clicks)
    assert requester_fields + approver_fields <= 1

    # The requester's screen follows by itself to the same live board.
    await page.wait_for_selector("#board-title", timeout=15_000)
    assert await first.text("#board-title") == await second.text("#board-title")
    everyone = len(county.fleet.agents)
    await second.page.wait_for_function(
        "n => Number(document.querySelector('[data-count=playing] strong').textContent) > 0",
        arg=everyone,
        timeout=30_000,
    )
    await second.shot("11-board-real-playing")

    await second.reset_effort()
    await second.page.click("#cancel-btn")  # one click, no dialog
    await second.page.wait_for_selector("#board-status.st-cancelled")
    assert await second.effort() == (1, 0)
    await wait_count(second.page, "cancelled", everyone, timeout_s=20, county=county)
    await second.shot("12-board-cancelled")

    await second.page.click("#correction-btn")
    await second.page.wait_for_selector("dialog audio")
    assert "误报" in await second.page.input_value("dialog #correction-text")
    await second.shot("13-correction-dialog")
    await second.page.click("dialog [data-ok]")
    await second.page.wait_for_function(
        "() => document.querySelector('#board-title')?.textContent.includes('更正')"
    )
    assert "Ⅳ级" in await second.text(".board-title")
    played_out_s = await to_play_out(county, second.page)
    await wait_count(second.page, "done", everyone, played_out_s, county=county)
    await second.shot("14-board-correction-done")


async def test_township_clerk_on_a_phone_sees_and_targets_only_their_township(
    make_county, open_console
):
    county = await make_county(villages=VILLAGES)
    clerk = await open_console(county, "clerk-t01", phone=True)
    page = clerk.page
    await clerk.shot("15-phone-home-clerk")
    await clerk.go("emergency", "[data-template=free]")
    assert await page.locator("[data-area=county]").count() == 0
    await page.click("[data-area=townships]")
    assert await page.locator("[data-township]").evaluate_all(
        "els => els.map(e => e.dataset.township)"
    ) == ["t01"]
    await page.click("[data-area=villages]")
    villages = await page.locator("[data-village]").evaluate_all(
        "els => els.map(e => e.dataset.village)"
    )
    assert len(villages) == 16 and all(v.startswith("t01-") for v in villages)
    await clerk.shot("16-phone-emergency-area-clerk")
    # Forcing another township through the API is refused too.
    clerk.allowed.append("403")
    status = await page.evaluate(
        """async () => {
            const csrf = (await (await fetch('/api/session')).json()).csrf_token;
            const r = await fetch('/api/broadcasts', {method: 'POST',
                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf},
                body: JSON.stringify({text: '越界', category: 'other', priority: 'notice',
                                      targets: {villages: ['t02-v01']}})});
            return r.status;
        }"""
    )
    assert status == 403

    await clerk.go("terminals", "circle.dev")
    shown = await page.locator("circle.dev").evaluate_all("els => els.map(e => e.dataset.device)")
    assert shown and all(d.startswith("d-t01-") for d in shown)
    await clerk.go("schedules", "#sch-editor [data-village]")
    chips = await page.locator("#sch-editor [data-village]").evaluate_all(
        "els => els.map(e => e.dataset.village)"
    )
    assert len(chips) == 16 and all(v.startswith("t01-") for v in chips)
    # A daily reminder for the whole township, from a template.
    await page.fill("#sch-editor input[name=name]", "反诈提醒")
    await page.select_option("#sch-editor select[name=template]", "anti_fraud_reminder")
    await page.select_option("#sch-editor select[name=kind]", "daily")
    await page.fill("#sch-editor input[name=times]", "08:00, 19:30")
    await page.click("#sch-save")
    await page.wait_for_selector(".sch-item[data-schedule]")
    assert "反诈提醒" in await clerk.text(".sch-item")
    await clerk.shot("17-phone-schedules-clerk")
    await clerk.go("records", "#records")
    await clerk.shot("18-phone-records-clerk")


async def test_a_terminal_fault_appears_on_the_overview_and_its_page(make_county, open_console):
    county = await make_county(villages=VILLAGES)
    tech = await open_console(county, "duty1")
    page = tech.page
    device = "d-t01-v05-1"
    await tech.go("terminals", f"circle[data-device={device}][data-state=online]")
    assert await page.locator("#attention .attention-item").count() == 0

    # A board without a thermometer or a modem (the fault below sends its telemetry).
    sensors = county.fleet.hardware[device].sensors
    sensors.has_thermometer = sensors.has_modem = False
    county.fleet.set_amplifier_failed(device)
    county.fleet.set_on_battery("d-t02-v03-1")
    await page.wait_for_selector(f"circle[data-device={device}][data-state=fault]", timeout=20_000)
    await page.wait_for_selector("#attention [data-device='d-t02-v03-1']", timeout=20_000)
    item = await tech.text(f"#attention [data-device={device}]")
    assert "功放故障" in item and "开始于" in item
    await tech.shot("19-terminals-overview-fault")

    await page.click(f"#attention [data-device={device}]")
    await page.wait_for_selector("#faults [data-fault=amplifier]")
    assert "功放故障" in await tech.text("#faults")
    await page.click("#test-tone")
    await page.wait_for_selector("#deliveries tbody tr")
    # Redrawn after the tone, with the telemetry the fault sent: temperature, signal and
    # mobile network absent (无), not a dash (no report) and not 0.
    await page.wait_for_function(
        "document.querySelector('dl.facts').innerText.split('无（未装传感器）').length > 3",
        timeout=20_000,
    )
    await asyncio.sleep(0.2)
    await tech.shot("20-terminal-page")


async def test_the_board_keeps_a_terminal_change_that_arrives_while_it_reloads(
    make_county, open_console
):
    """A cancel makes the board reload every delivery while the terminals' own
    `cancelled` reports stream in. A report stored after the reload's snapshot was read,
    but shown live before that snapshot arrived, must not be undone by it (seen in CI:
    the board never counted every terminal cancelled). One playing terminal is cut off
    so that its report comes, deterministically, after the snapshot is read; the
    snapshot is handed to the board only once the board has shown that report."""
    county = await make_county(villages=8)
    officer = await open_console(county, "duty1")
    page = officer.page
    # Long (about half a minute), so that every terminal still plays when the cancel
    # comes, however slowly a loaded machine gets them all started.
    broadcast_id = await county.broadcast(
        text="通知：明天上午九点在村委会开会，请各户派一人参加，不要迟到，带好身份证和户口本。" * 3,
        targets={"all": True},
    )
    everyone = len(county.fleet.agents)
    late = sorted(county.fleet.agents)[0]
    await officer.go(f"board/{broadcast_id}", "#board-title")
    await county.wait_states(broadcast_id, {"playing"}, 60)
    await wait_count(page, "playing", everyone, 20, county=county)
    county.fleet.network_down(late)  # it plays on; the cancel waits for it at the broker

    marker = " [reload]"
    held: list[str] = []

    # The handler's outcome: its own failure is raised in the test, not lost in
    # Playwright's route dispatch (where it would only leave the page waiting).
    handled: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def hold_the_reload(route) -> None:
        if held:  # only the reload the cancel causes
            await route.continue_()
            return
        held.append("")
        try:
            response = await route.fetch()  # the snapshot, read now
            view = await response.json()
            held[0] = next(d["state"] for d in view["deliveries"] if d["device_id"] == late)
            county.fleet.network_up(late)
            # Its report is stored and shown live while the snapshot is still on its way.
            await county.wait_states(broadcast_id, {"cancelled"}, 30)
            await wait_count(page, "cancelled", everyone, 20, county=county)
            # Marked, so the test sees the moment the board draws this snapshot.
            await route.fulfill(response=response, json={**view, "title": view["title"] + marker})
        except Exception as exc:
            handled.set_exception(exc)
            await route.continue_()
        else:
            handled.set_result(None)

    async def hold_the_counts(route) -> None:
        # A counts-only refresh answered before the broadcast's own event would bring the
        # new status first, and the board would then see no change to reload for (one
        # run of this test waited for a reload that never came).
        await asyncio.wait([handled], timeout=120)
        await route.continue_()

    board_url = f"/api/broadcasts/{broadcast_id}"

    def snapshot(url: str) -> bool:  # the board's full read (paged: ?limit=..., &after=...)
        return urlsplit(url).path.endswith(board_url) and "deliveries=0" not in url

    def counts_only(url: str) -> bool:
        return urlsplit(url).path.endswith(board_url) and "deliveries=0" in url

    await page.route(snapshot, hold_the_reload)
    await page.route(counts_only, hold_the_counts)
    # The counts the board drew with the snapshot, taken in the same DOM change (an
    # observer's callback runs before anything else can redraw the board).
    await page.evaluate(
        """m => new MutationObserver((_, observer) => {
            if (!document.querySelector('#board-title')?.textContent.includes(m)) return;
            window.drawnWithSnapshot = Object.fromEntries(
                [...document.querySelectorAll('[data-count]')].map(
                    e => [e.dataset.count, e.querySelector('strong').textContent]));
            observer.disconnect();
        }).observe(document.body, {childList: true, subtree: true, characterData: true})""",
        marker,
    )
    # Cancelled from elsewhere (another officer, the API): the board's one reload is the
    # one its live view makes on the broadcast's new status.
    await county.api("POST", f"/api/broadcasts/{broadcast_id}/cancel", expect=200)
    await asyncio.wait_for(handled, 120)
    drawn = await page.wait_for_function("() => window.drawnWithSnapshot", timeout=20_000)
    shown = await drawn.json_value()
    assert held == ["playing"], held  # the snapshot did predate the late report
    assert shown["cancelled"] == str(everyone) and shown["playing"] == "0", shown
