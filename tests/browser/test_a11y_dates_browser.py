"""Date and time fields show 年/月/日 and the 24-hour clock in the Chinese console even
when Chromium itself runs in English (US), where its native date and time inputs would
draw mm/dd/yyyy and "09:30 PM". Checked on the records filters (dates) and the quiet
hours (times), with what the field shows, what the view reads (.value: yyyy-mm-dd and
hh:mm as a native field gives) and what is sent to the server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, DESKTOP, ConsolePage

pytestmark = [pytest.mark.browser, pytest.mark.broker, pytest.mark.slow]

# What the view reads. Not page.input_value(): Playwright reads in its own isolated
# JavaScript world, which sees the native property, not the console's.
VALUE = "sel => document.querySelector(sel).value"
SHOWN = "sel => Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value')" \
    ".get.call(document.querySelector(sel))"  # fmt: skip


@pytest.fixture
async def english_browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} absent")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, "--lang=en-US"])
        yield b
        await b.close()


async def test_dates_and_times_in_the_chinese_console_of_an_english_browser(
    make_county, english_browser
):
    county = await make_county(villages=4)
    context = await english_browser.new_context(
        viewport=DESKTOP, locale="en-US", timezone_id="Asia/Shanghai"
    )
    try:
        console = ConsolePage(await context.new_page(), county.url)
        await console.login("duty1", county.prepared.console_users["duty1"][2])
        page = console.page
        assert await page.evaluate("navigator.language") == "en-US"
        assert await page.evaluate("document.documentElement.lang") == "zh-CN"

        await console.go("records", "input[name=from]")
        assert await page.get_attribute("input[name=from]", "type") == "text"
        shown = await page.evaluate(SHOWN, "input[name=from]")
        iso = await page.evaluate(VALUE, "input[name=from]")
        year, month, day = iso.split("-")
        assert shown == f"{year}年{month}月{day}日", shown
        assert await page.get_attribute("input[name=from]", "placeholder") == "年/月/日"

        # Typed any common way, shown the Chinese way once left, read as yyyy-mm-dd.
        await page.fill("input[name=from]", "2026/3/5")
        await page.press("input[name=from]", "Tab")
        assert await page.evaluate(SHOWN, "input[name=from]") == "2026年03月05日"
        await page.wait_for_function(
            "document.querySelector('#csv-link').href.includes('from=2026-03-05')"
        )
        # Not a date: the field says so in Chinese, and .value is empty as a native one's.
        await page.fill("input[name=to]", "2026-13-45")
        await page.press("input[name=to]", "Tab")
        assert await page.evaluate(VALUE, "input[name=to]") == ""
        message = await page.evaluate("document.querySelector('input[name=to]').validationMessage")
        assert "年/月/日" in message
        await console.shot("dates-01-records-en-US-browser")

        await console.go("schedules", "input[name=quiet-start]")
        assert await page.get_attribute("input[name=quiet-start]", "type") == "text"
        await page.fill("input[name=quiet-start]", "2130")
        await page.press("input[name=quiet-start]", "Tab")
        assert await page.evaluate(SHOWN, "input[name=quiet-start]") == "21:30"
        assert await page.evaluate(VALUE, "input[name=quiet-start]") == "21:30"
        await page.fill("input[name=quiet-end]", "25:00")
        await page.press("input[name=quiet-end]", "Tab")
        assert await page.evaluate(VALUE, "input[name=quiet-end]") == ""
        assert "24 小时" in await page.evaluate(
            "document.querySelector('input[name=quiet-end]').validationMessage"
        )
        await console.shot("dates-02-quiet-hours-en-US-browser")

        # In the English console the same field reads yyyy-mm-dd.
        await page.click("#lang")
        await console.go("records", "input[name=from]")
        shown = await page.evaluate(SHOWN, "input[name=from]")
        assert shown == await page.evaluate(VALUE, "input[name=from]") and shown[4] == "-"
        console.assert_no_errors()
    finally:
        await context.close()
