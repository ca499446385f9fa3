"""An automated accessibility scan (axe-core, vendored in tests/browser/vendor/axe-core,
version in AXE_VERSION) of the duty officer's and the township clerk's screens in real
Chromium, in Chinese and in English: home, live board, emergency form (filled in up to
its confirmation), records, schedules, approvals. Any violation of WCAG 2.1 A/AA rules
with impact serious or critical fails the test; colour contrast is one of them.

The board's colour for every delivery state is scanned too, whatever state the live
county happens to be in, on a swatch of one tile, count, mini-label and level chip per
state drawn with the console's own classes."""

from __future__ import annotations

import colorsys
from pathlib import Path

import pytest

from tests.browser.conftest import SCREENSHOTS

pytestmark = [pytest.mark.browser, pytest.mark.broker, pytest.mark.slow]

AXE_DIR = Path(__file__).parent / "vendor" / "axe-core"
AXE_VERSION = "4.14.1"
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
BLOCKING = {"serious", "critical"}
AXE_SOURCE = (AXE_DIR / "axe.min.js").read_text(encoding="utf-8")

STATES = ["sent", "offline", "received", "fetched", "preempted", "playing", "done",
          "unknown", "failed", "unreached", "cancelled"]  # fmt: skip

SWATCH = """(states) => {
  const box = document.createElement('div');
  box.id = 'a11y-swatch';
  const tiles = document.createElement('div');
  tiles.className = 'tiles';
  for (const st of states) {
    const tile = document.createElement('a');
    tile.href = '#'; tile.className = `tile st-${st}`;
    tile.innerHTML = `<span class="tile-name">村 ${st}</span><span class="tile-state">${st}</span>`;
    tiles.append(tile);
    const mini = document.createElement('span');
    mini.className = `mini st-${st}`; mini.textContent = st;
    const count = document.createElement('div');
    count.className = `count st-${st}`; count.innerHTML = `<strong>3</strong><span>${st}</span>`;
    box.append(mini, count);
  }
  for (const lv of [1, 2, 3, 4]) {
    const chip = document.createElement('span');
    chip.className = `level lv${lv}`; chip.textContent = `Level ${lv} 级`;
    const btn = document.createElement('button');
    btn.className = `level-btn lv${lv}`;
    btn.innerHTML = `<strong>${lv}级</strong><small>desc</small>`;
    box.append(chip, btn);
  }
  box.prepend(tiles);
  document.querySelector('#main').prepend(box);
}"""


def test_axe_is_vendored_with_its_licence():
    assert AXE_SOURCE.startswith(f"/*! axe v{AXE_VERSION}")
    assert "Mozilla Public" in (AXE_DIR / "LICENSE").read_text(encoding="utf-8")


async def scan(page, screen: str) -> list[str]:
    """Violations that block: one line each, naming the rule and the first elements."""
    if not await page.evaluate("typeof window.axe === 'object'"):
        # evaluate() is not subject to the console's Content-Security-Policy.
        await page.evaluate(AXE_SOURCE)
    result = await page.evaluate(
        """async (tags) => {
            const r = await axe.run(document, {runOnly: {type: 'tag', values: tags}});
            return r.violations.map(v => ({id: v.id, impact: v.impact,
              nodes: v.nodes.map(n => n.target.join(' ') + ' ' + (n.failureSummary || '')
                .replace(/\\s+/g, ' ').slice(0, 160)).slice(0, 10)}));
        }""",
        WCAG_TAGS,
    )
    return [
        f"{screen}: {v['id']} ({v['impact']}) {v['nodes']}"
        for v in result
        if v["impact"] in BLOCKING
    ]


async def create(page, body: dict) -> dict:
    """A broadcast request through the console's own session, as the form would send it."""
    return await page.evaluate(
        """async (body) => {
            const csrf = (await (await fetch('/api/session')).json()).csrf_token;
            const r = await fetch('/api/broadcasts', {method: 'POST', body: JSON.stringify(body),
                headers: {'Content-Type': 'application/json', 'X-CSRF-Token': csrf}});
            return {status: r.status, data: await r.json()};
        }""",
        body,
    )


async def fill_emergency_form(page) -> None:
    """The form up to its confirmation: a level II real alert (the orange that failed)."""
    await page.click("[data-template=free]")
    await page.fill("textarea[name=text]", "紧急通知：请沿河村民立即转移。")
    await page.click("[data-area=townships]")
    if await page.get_attribute("[data-township=t01]", "aria-pressed") != "true":
        await page.click("[data-township=t01]")  # a clerk's own township is preset
    await page.click("[data-level='2']")
    await page.click("[data-repeat='1']")
    await page.click("[data-mode=real]")
    await page.click("#preview-btn")
    await page.wait_for_selector("#preview-audio")


async def scan_screens(console, *, officer: bool, board_id: str, tag: str) -> list[str]:
    page = console.page
    problems: list[str] = []
    screens = [
        ("home", "", "#big-emergency"),
        ("board", f"board/{board_id}", "#board-title"),
        ("emergency", "emergency", "[data-template=free]"),
        ("records", "records", "#records tbody tr.rec-row"),
        ("schedules", "schedules", "#sch-editor"),
    ]
    if officer:
        screens.append(("approvals", "approvals", "[data-approval]"))
    for name, route, ready in screens:
        await console.go(route, ready)
        if name == "emergency":
            await fill_emergency_form(page)
        if name == "records":
            await page.click("#records tr.rec-row")
            await page.wait_for_selector(".rec-detail .outcome")
        if name == "board":
            await page.evaluate(SWATCH, STATES)
        await console.shot(f"a11y-{tag}-{name}")
        problems += await scan(page, f"{tag}/{name}")
    return problems


async def test_duty_officer_and_clerk_screens_pass_an_axe_scan_in_both_languages(
    make_county, open_console
):
    county = await make_county(villages=12, two_person_levels=(1,))
    officer = await open_console(county, "duty1")
    page = officer.page
    # Reduced motion: the pulse of a playing tile must not make contrast depend on when
    # the scan looks (the console honours the preference).
    await page.emulate_media(reduced_motion="reduce")
    drill = await create(
        page,
        {"text": "演练：山洪转移演练。", "category": "flood", "priority": "emergency",
         "level": 4, "drill": True, "repeat": 1, "targets": {"townships": ["t01"]}},
    )  # fmt: skip
    assert drill["status"] == 201, drill
    pending = await create(
        page,
        {"text": "紧急通知：全县防汛。", "category": "flood", "priority": "emergency",
         "level": 1, "drill": False, "repeat": 1, "targets": {"all": True}},
    )  # fmt: skip
    assert pending["status"] == 202, pending
    board_id = drill["data"]["id"]

    clerk = await open_console(county, "clerk-t01", phone=True)
    await clerk.page.emulate_media(reduced_motion="reduce")

    problems: list[str] = []
    for lang in ("zh", "en"):
        if lang == "en":
            for console in (officer, clerk):
                await console.page.click("#lang")
                await console.page.wait_for_function(
                    "document.querySelector('#lang').textContent === '中文'"
                )
        problems += await scan_screens(officer, officer=True, board_id=board_id, tag=f"{lang}-duty")
        problems += await scan_screens(clerk, officer=False, board_id=board_id, tag=f"{lang}-clerk")
    print(f"screenshots: {SCREENSHOTS}")
    assert not problems, "\n".join(problems)


def _hue(rgb: str) -> float:
    r, g, b = (int(x) / 255 for x in rgb[rgb.index("(") + 1 : rgb.index(")")].split(",")[:3])
    return colorsys.rgb_to_hls(r, g, b)[0] * 360


async def test_playing_and_done_are_told_apart_by_more_than_a_shade(make_county, open_console):
    county = await make_county(villages=4)
    console = await open_console(county, "duty1")
    page = console.page
    await page.evaluate(SWATCH, STATES)
    colours = await page.evaluate(
        """() => Object.fromEntries(['playing', 'done', 'fetched'].map(st =>
            [st, getComputedStyle(document.querySelector(`#a11y-swatch .tile.st-${st}`))
                   .backgroundColor]))"""
    )
    hues = {st: _hue(c) for st, c in colours.items()}

    def apart(a: str, b: str) -> float:
        d = abs(hues[a] - hues[b]) % 360
        return min(d, 360 - d)

    # Two greens a shade apart were the complaint: the hues must differ plainly.
    assert apart("playing", "done") >= 40, colours
    assert apart("playing", "fetched") >= 20, colours
