"""Browser fixtures: Debian's Chromium driven by Playwright, against the real county the
`make_county` fixture starts. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    # The second officer's "listen first" is a real <audio>.play() in the test.
    "--autoplay-policy=no-user-gesture-required",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
# Counts what a person does, as the page sees it: every trusted click (a tap, a pressed
# checkbox) and every named field typed into. Kept in sessionStorage, so reloads and
# route changes inside the console do not reset it. Added through the browser's
# devtools protocol, which the console's Content-Security-Policy does not govern.
EFFORT_COUNTER = """
(() => {
  const KEY = 'dalaba.test.effort';
  const read = () => JSON.parse(sessionStorage.getItem(KEY) || '{"clicks":0,"fields":[]}');
  const write = (e) => sessionStorage.setItem(KEY, JSON.stringify(e));
  addEventListener('click', (ev) => {
    if (!ev.isTrusted) return;
    const e = read(); e.clicks += 1; write(e);
  }, true);
  addEventListener('input', (ev) => {
    const name = ev.target && ev.target.name;
    if (!ev.isTrusted || !name) return;
    const e = read(); if (!e.fields.includes(name)) e.fields.push(name); write(e);
  }, true);
})();
"""


class ConsolePage:
    """One logged-in console in its own browser context (its own cookie jar)."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.errors: list[str] = []
        self.allowed: list[str] = ["401"]  # the session probe before login
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._on_console)

    def _on_console(self, message: Any) -> None:
        if message.type == "error" and not any(a in message.text for a in self.allowed):
            self.errors.append(f"console: {message.text}")

    async def login(self, name: str, password: str, shot: str | None = None) -> None:
        await self.page.goto(self.base_url + "/")
        await self.page.wait_for_selector("input[name=name]")
        await self.page.fill("input[name=name]", name)
        await self.page.fill("input[name=password]", password)
        if shot:
            await self.shot(shot)
        await self.page.click("button[type=submit]")
        await self.page.wait_for_selector("#nav a")
        await self.page.wait_for_selector(".live-dot.up")

    async def go(self, route: str, ready: str) -> None:
        await self.page.goto(f"{self.base_url}/#/{route}")
        await self.page.wait_for_selector(ready)

    async def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        # From the top, so the sticky header is where a person sees it.
        await self.page.evaluate("window.scrollTo(0, 0)")
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    async def reset_effort(self) -> None:
        await self.page.evaluate("sessionStorage.removeItem('dalaba.test.effort')")

    async def effort(self) -> tuple[int, int]:
        """(clicks, distinct fields typed into) since the last `reset_effort`."""
        e = await self.page.evaluate(
            "JSON.parse(sessionStorage.getItem('dalaba.test.effort') || "
            '\'{"clicks":0,"fields":[]}\')'
        )
        return int(e["clicks"]), len(e["fields"])

    async def text(self, selector: str) -> str:
        return re.sub(r"\s+", " ", await self.page.inner_text(selector)).strip()

    def assert_no_errors(self) -> None:
        assert not self.errors, self.errors


OpenConsole = Callable[..., Awaitable[ConsolePage]]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        # scripts/ensure-system-deps.sh installs it unless told not to.
        if os.environ.get("DALABA_SKIP_BROWSER") == "1":
            pytest.skip("DALABA_SKIP_BROWSER=1 and no Chromium")
        pytest.fail(f"{CHROMIUM} is required by the browser tests; run `make test`")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        await b.close()


@pytest.fixture
async def open_console(browser: Browser) -> AsyncIterator[OpenConsole]:
    """`await open_console(county, "duty1", phone=False, shot="01-login")`: a browser
    logged in as one of the demo's console users."""
    pages: list[ConsolePage] = []

    async def factory(
        county: Any, name: str, *, phone: bool = False, shot: str | None = None
    ) -> ConsolePage:
        context = await browser.new_context(
            viewport=PHONE if phone else DESKTOP,
            locale="zh-CN",
            timezone_id="Asia/Shanghai",  # the county's clock, as on the duty-room PC
            is_mobile=phone,
            has_touch=phone,
            device_scale_factor=1,
        )
        await context.add_init_script(EFFORT_COUNTER)
        console = ConsolePage(await context.new_page(), county.url)
        pages.append(console)
        await console.login(name, county.prepared.console_users[name][2], shot)
        return console

    yield factory
    for console in pages:
        await console.page.context.close()
    for console in pages:
        console.assert_no_errors()
