"""The duty officer's flow on a 390 × 844 phone in real Chromium: home, the emergency
form filled in to its confirmation, the live board. Nothing scrolls sideways (the page
and the navigation), the step cards take the full width, template choices sit two per
row, every control is a tap target of at least 44 × 44 px and every map dot at least
12 px across. Screenshots are kept in test-artifacts/screenshots (path printed)."""

from __future__ import annotations

import pytest

from tests.browser.conftest import PHONE, SCREENSHOTS

pytestmark = [pytest.mark.browser, pytest.mark.broker, pytest.mark.slow]

# Every control a finger uses, in the header and the page (inline text links excepted).
TARGETS = (
    "header button:not([hidden]), header a, #main button, #main select, #main input, "
    "#main textarea, #main a.btn, #main a.tile, #main .nav a"
)

MEASURE = """(selector) => {
  const small = [];
  for (const el of document.querySelectorAll(selector)) {
    const r = el.getBoundingClientRect();
    if (!r.width || !r.height || getComputedStyle(el).visibility === 'hidden') continue;
    if (el.type === 'checkbox') {
      // The box may be small when its whole label is the target.
      const label = el.closest('label');
      const lr = label ? label.getBoundingClientRect() : r;
      if (lr.height >= 44 && lr.width >= 44) continue;
    }
    if (r.height < 44 - 0.5 || r.width < 44 - 0.5) {
      small.push(`${el.outerHTML.slice(0, 70)} ${Math.round(r.width)}x${Math.round(r.height)}`);
    }
  }
  return small;
}"""


async def no_sideways_scroll(page, where: str) -> None:
    widths = await page.evaluate(
        """() => ({doc: document.documentElement.scrollWidth, view: window.innerWidth,
                  nav: [document.querySelector('#nav').scrollWidth,
                        document.querySelector('#nav').clientWidth]})"""
    )
    assert widths["doc"] <= widths["view"] == PHONE["width"], (where, widths)
    assert widths["nav"][0] <= widths["nav"][1], (where, "navigation scrolls sideways", widths)


async def tap_targets_ok(page, where: str) -> None:
    small = await page.evaluate(MEASURE, TARGETS)
    assert not small, (where, small)


async def map_dots_ok(page, where: str, dots: str = "circle.vmark") -> None:
    sizes = await page.locator(dots).evaluate_all(
        "cs => cs.map(c => Math.min(c.getBoundingClientRect().width,"
        " c.getBoundingClientRect().height))"
    )
    assert sizes and min(sizes) >= 12 - 0.5, (where, sorted(sizes)[:5])


async def fits_a_phone(console, shot: str, *, dots: str | None = None, taps: bool = True) -> None:
    """One screen: screenshot first (kept even when a check fails), then the checks."""
    page = console.page
    if dots:
        await page.wait_for_function("sel => document.querySelectorAll(sel).length > 0", arg=dots)
    await console.shot(shot)
    await no_sideways_scroll(page, shot)
    if taps:
        await tap_targets_ok(page, shot)
    if dots:
        await map_dots_ok(page, shot, dots)


async def test_duty_officer_flow_fits_a_390px_phone(make_county, open_console):
    county = await make_county(villages=24)
    officer = await open_console(county, "duty1", phone=True)
    page = officer.page

    # Home: the navigation is behind a menu button, and opens without sideways scroll.
    await page.wait_for_selector("#big-emergency")
    await fits_a_phone(officer, "phone-01-home", dots="circle.vmark")
    await page.click("#menu-toggle")
    await page.wait_for_selector("#nav a[data-nav=records]", state="visible")
    assert await page.get_attribute("#menu-toggle", "aria-expanded") == "true"
    await fits_a_phone(officer, "phone-02-menu")
    await page.click("#nav a[data-nav=emergency]")

    # The emergency form, filled in up to its confirmation.
    await page.wait_for_selector("[data-template=free]")
    assert not await page.locator("#nav a[data-nav=records]").is_visible()  # menu closed
    main_width = await page.evaluate("document.querySelector('#main').clientWidth")
    tops = await page.locator(".tpl").evaluate_all(
        "ts => ts.map(t => [Math.round(t.getBoundingClientRect().top),"
        " t.getBoundingClientRect().width])"
    )
    assert len(tops) >= 4
    assert tops[0][0] == tops[1][0] != tops[2][0] == tops[3][0], tops  # two per row
    await page.click("[data-template=free]")
    await page.fill("textarea[name=text]", "山洪演练：请沿河村民注意。")
    await page.click("[data-area=townships]")
    await page.click("[data-township=t01]")
    await page.click("[data-level='4']")
    await page.click("[data-repeat='1']")
    await page.click("[data-mode=drill]")
    await page.click("#preview-btn")
    await page.wait_for_selector("#preview-audio")
    steps = await page.locator(".steps .step").evaluate_all(
        "ss => ss.map(s => s.getBoundingClientRect().width)"
    )
    padding = await page.evaluate(
        "parseFloat(getComputedStyle(document.querySelector('#main')).paddingLeft) * 2"
    )
    # Full width: the card spans the layout (the 294 px card in a 373 px layout is gone).
    assert len(steps) == 5 and min(steps) >= main_width - padding - 1, (steps, main_width)
    await fits_a_phone(officer, "phone-03-emergency")
    await page.click("#send-btn")

    # The live board.
    await page.wait_for_selector("#board-title")
    await fits_a_phone(officer, "phone-04-board", dots="circle.vmark")

    # The terminals map: a technician's dots too.
    await officer.go("terminals", "circle.dev")
    await fits_a_phone(officer, "phone-05-terminals", dots="circle.dev", taps=False)

    # English words are longer: the header, the menu and the form must still fit.
    await page.click("#lang")
    await officer.go("", "#big-emergency")
    await fits_a_phone(officer, "phone-06-home-en", dots="circle.vmark")
    await page.click("#menu-toggle")
    await fits_a_phone(officer, "phone-07-menu-en")
    await page.click("#menu-toggle")
    await officer.go("emergency", "[data-template=free]")
    await page.click("[data-template=free]")
    await fits_a_phone(officer, "phone-08-emergency-en")
    print(f"screenshots: {SCREENSHOTS}")
