"""The duty officer's emergency flow completed with the keyboard alone (Tab to move,
Enter or Space to press, typing into fields), in real Chromium against a real county.
After every choice the focus must still be on the control just used: the form redraws
its steps after each choice, and a redraw that dropped focus to the page body would
send a keyboard or screen-reader user back to the top of the page each time."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.broker, pytest.mark.slow]

ACTIVE_MATCHES = "sel => !!document.activeElement && document.activeElement.matches(sel)"


async def tab_to(page, selector: str, limit: int = 150) -> None:
    """Press Tab (only Tab) until the focused element matches `selector`."""
    for _ in range(limit):
        if await page.evaluate(ACTIVE_MATCHES, selector):
            return
        await page.keyboard.press("Tab")
    focused = await page.evaluate("document.activeElement?.outerHTML.slice(0, 120)")
    raise AssertionError(f"{selector} not reached with Tab; focus is on {focused}")


async def press_and_keep_focus(page, selector: str, key: str = "Enter") -> None:
    await tab_to(page, selector)
    await page.keyboard.press(key)
    # Still the same control, now marked as chosen for assistive technology.
    assert await page.evaluate(ACTIVE_MATCHES, selector), f"focus left {selector}"
    assert await page.get_attribute(selector, "aria-pressed") == "true", selector


# Both languages and both sizes, without four runs of a county each: Chinese on the
# duty-room desktop, English on a 390 px phone.
@pytest.mark.parametrize(("lang", "phone"), [("zh-CN", False), ("en", True)])
async def test_emergency_drill_with_the_keyboard_alone_keeps_focus_on_each_control(
    make_county, open_console, lang: str, phone: bool
):
    county = await make_county(villages=12)
    officer = await open_console(county, "duty1", phone=phone)
    page = officer.page
    if lang != "zh-CN":
        await page.evaluate("l => localStorage.setItem('dalaba.lang', l)", lang)
    await officer.go("emergency", "[data-template=free]")
    await page.reload()
    await page.wait_for_selector("[data-template=free]")
    assert await page.evaluate("document.documentElement.lang") == lang

    await press_and_keep_focus(page, "[data-template=free]")
    await page.wait_for_selector("textarea[name=text]")
    await tab_to(page, "textarea[name=text]")
    await page.keyboard.type("山洪演练：请沿河村民注意。")
    await press_and_keep_focus(page, "[data-area=townships]", key="Space")
    await press_and_keep_focus(page, "[data-township=t01]")
    await press_and_keep_focus(page, "[data-level='4']", key="Space")
    await press_and_keep_focus(page, "[data-repeat='1']")
    await press_and_keep_focus(page, "[data-mode=drill]")
    # The other choices say they are not selected.
    assert await page.get_attribute("[data-mode=real]", "aria-pressed") == "false"
    assert await page.get_attribute("[data-level='1']", "aria-pressed") == "false"
    # What was typed survived every redraw.
    assert await page.input_value("textarea[name=text]") == "山洪演练：请沿河村民注意。"
    # A choice changed back and forth keeps the focus too.
    await press_and_keep_focus(page, "[data-area=villages]")
    await tab_to(page, "input[name=village-search]")
    await page.keyboard.type("1")
    assert await page.evaluate(ACTIVE_MATCHES, "input[name=village-search]")
    await page.keyboard.press("Shift+Tab")
    await page.keyboard.press("Shift+Tab")
    await tab_to(page, "[data-area=townships]")
    await page.keyboard.press("Enter")
    assert await page.get_attribute("[data-township=t01]", "aria-pressed") == "true"

    await tab_to(page, "#preview-btn")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#preview-audio")
    # The preview button is replaced by the audio: focus moves there, not to the body.
    assert await page.evaluate(ACTIVE_MATCHES, "#preview-audio")
    await officer.shot(f"kb-01-emergency-preview-{lang}-{'phone' if phone else 'desktop'}")
    await tab_to(page, "#send-btn")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#board-title")
    assert await page.locator(".board .banner-drill").is_visible()

    # A record row opens with Enter, and closes with Space.
    await officer.go("records", "#records tbody tr.rec-row")
    await tab_to(page, "#records tr.rec-row")
    await page.keyboard.press("Enter")
    await page.wait_for_selector(".rec-detail:not([hidden]) .outcome")
    await page.keyboard.press("Space")
    await page.wait_for_selector(".rec-detail[hidden]", state="attached")
    assert await page.locator(".rec-detail:not([hidden])").count() == 0
