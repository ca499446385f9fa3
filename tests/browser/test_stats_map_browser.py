"""The map where people look, and the statistics page, in real Chromium against a real
controller, broker and simulated terminals.

- The home page's county map shows each village's terminals online, offline or faulty,
  as /api/devices says, and a village opens its terminal's page.
- The live board's map colours each village by its delivery state as a broadcast goes
  out (a village is seen playing, then done), the same colour as its tile; the village
  whose only terminal is cut off shows "offline (waiting)"; villages outside the
  broadcast stay grey. On a 390 px phone the map sits above the list and its marks are
  at least 12 px across.
- The 统计 page draws the figures of a county that sent a few broadcasts: the numbers on
  the page are the API's and equal what the test itself sent (real and drill apart).

Screenshots (Chinese and English, desktop and phone) go to test-artifacts/screenshots/."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.broker, pytest.mark.slow]

VILLAGES = 24  # two townships: t01 (16 villages) and t02 (8)
TARGET = "t02"
# Long enough that each terminal is seen playing for seconds, not one frame.
LONG_NOTICE = (
    "通知：今天下午三点在村委会召开防汛工作会议，请各村民小组长准时参加，"
    "会议结束后请把会议精神传达到每家每户。"
)
MIN_MARK_PX = 12


async def devices(county: Any) -> list[dict[str, Any]]:
    _, body = await county.api("GET", "/api/devices", expect=200)
    return list(body["devices"])


def single_terminal_village(devs: list[dict[str, Any]], township: str) -> dict[str, Any]:
    """A terminal that is its village's only one, so cutting it off is the village's state."""
    by_village: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in devs:
        if d["township_id"] == township:
            by_village[d["village_id"]].append(d)
    return min((ds[0] for ds in by_village.values() if len(ds) == 1), key=lambda d: d["id"])


def expected_health(devs: list[dict[str, Any]]) -> dict[str, str]:
    """Each village's state on the home map, worked out here from the API: a fault on any
    terminal first, then any terminal offline, then any playing, else online."""
    states: dict[str, set[str]] = defaultdict(set)
    for d in devs:
        if not d["online"]:
            states[d["village_id"]].add("offline")
        elif d["faults"]:
            states[d["village_id"]].add("fault")
        elif d["playing"]:
            states[d["village_id"]].add("playing")
        else:
            states[d["village_id"]].add("online")
    order = ["fault", "offline", "playing", "online"]
    return {v: next(s for s in order if s in ss) for v, ss in states.items()}


async def mark_states(page: Any, root: str) -> dict[str, str]:
    return dict(
        await page.locator(f"{root} circle[data-village]").evaluate_all(
            "els => els.map(e => [e.dataset.village, e.dataset.state])"
        )
    )


async def smallest_mark_px(page: Any, root: str) -> float:
    return float(
        await page.locator(f"{root} circle[data-village]").evaluate_all(
            "els => Math.min(...els.map(e => e.getBoundingClientRect().width))"
        )
    )


async def test_home_and_board_maps_colour_villages_by_health_and_delivery(
    make_county, open_console
):
    county = await make_county(villages=VILLAGES)
    devs = await devices(county)
    cut_off = single_terminal_village(devs, TARGET)
    # The faulty terminal is outside the broadcast's township: it shows on the home map
    # and must not change the board.
    faulty = min(
        (d for d in devs if d["township_id"] != TARGET),
        key=lambda d: d["id"],
    )
    county.fleet.network_down(cut_off["id"])
    county.fleet.set_amplifier_failed(faulty["id"])

    async def seen() -> bool:
        now = {d["id"]: d for d in await devices(county)}
        return not now[cut_off["id"]]["online"] and bool(now[faulty["id"]]["faults"])

    await county.wait_for(seen, 30, "the cut-off terminal offline and the fault reported")

    # ---------------------------------------------------------------- home map
    officer = await open_console(county, "duty1")
    page = officer.page
    await page.wait_for_selector(
        f"#home-map circle[data-village='{cut_off['village_id']}'][data-state=offline]"
    )
    await page.wait_for_selector(
        f"#home-map circle[data-village='{faulty['village_id']}'][data-state=fault]"
    )
    expected = expected_health(await devices(county))
    assert await mark_states(page, "#home-map") == expected
    assert set(expected.values()) == {"online", "offline", "fault"}
    legend = await officer.text("#home-map-legend")
    online_villages = sum(1 for s in expected.values() if s == "online")
    assert f"在线 {online_villages}" in legend and "故障 1" in legend and "离线 1" in legend
    assert await smallest_mark_px(page, "#home-map") >= MIN_MARK_PX - 0.01
    await officer.shot("31-home-map-health")
    await page.click(f"#home-map circle[data-village='{faulty['village_id']}']")
    await page.wait_for_selector("#faults [data-fault=amplifier]")
    assert page.url.endswith(f"#/terminal/{faulty['id']}")

    # ---------------------------------------------------------------- live board map
    broadcast_id = await county.broadcast(
        text=LONG_NOTICE, category="meeting", priority="notice", targets={"townships": [TARGET]}
    )
    await officer.go(f"board/{broadcast_id}", "#board-map circle[data-village]")
    # As it goes out: some village is seen playing on the map while others are not done.
    await page.wait_for_selector("#board-map circle[data-state=playing]", timeout=60_000)
    playing_tiles = await page.locator("#board-map circle[data-state=playing]").count()
    assert playing_tiles >= 1
    await officer.shot("32-board-map-playing")

    await county.wait_states(
        broadcast_id,
        {d["id"]: "done" for d in devs if d["township_id"] == TARGET and d["id"] != cut_off["id"]}
        | {cut_off["id"]: "offline"},
        timeout_s=90,
        targeted={d["id"] for d in devs if d["township_id"] == TARGET},
    )
    target_villages = {d["village_id"] for d in devs if d["township_id"] == TARGET}
    want = {
        v["village_id"]: "offline" if v["village_id"] == cut_off["village_id"] else "done"
        for v in devs
        if v["township_id"] == TARGET
    }
    await page.wait_for_function(
        """want => Object.entries(want).every(([v, s]) => document.querySelector(
            `#board-map circle[data-village='${v}']`)?.dataset.state === s)""",
        arg=want,
        timeout=30_000,
    )
    states = await mark_states(page, "#board-map")
    # Every village of the county is on the map; those outside the broadcast are grey.
    assert set(states) == {d["village_id"] for d in devs}
    assert {v: s for v, s in states.items() if v in target_villages} == want
    assert {s for v, s in states.items() if v not in target_villages} == {"none"}
    # The map and the tiles say the same thing, in the same colour.
    tiles = dict(
        await page.locator(".tile[data-village]").evaluate_all(
            "els => els.map(e => [e.dataset.village, e.dataset.state])"
        )
    )
    assert tiles == want
    colours = await page.evaluate(
        """vs => vs.map(v => [
            getComputedStyle(document.querySelector(`#board-map circle[data-village='${v}']`)).fill,
            getComputedStyle(document.querySelector(`.tile[data-village='${v}']`)).backgroundColor])""",
        sorted(v for v, s in want.items() if s == "done")[:2],
    )
    for mark_fill, tile_bg in colours:
        assert mark_fill == tile_bg, (mark_fill, tile_bg)
    offline_fill = await page.evaluate(
        f"""getComputedStyle(document.querySelector(
            "#board-map circle[data-village='{cut_off["village_id"]}']")).fill"""
    )
    assert "map-stripes-offline" in offline_fill
    title = await page.locator(
        f"#board-map circle[data-village='{cut_off['village_id']}'] title"
    ).text_content()
    assert title and "离线等待" in title
    assert await smallest_mark_px(page, "#board-map") >= MIN_MARK_PX - 0.01
    await officer.shot("33-board-map-offline-waiting")
    # The map sits beside the list on a desktop.
    map_box = await page.locator("#board-map").bounding_box()
    list_box = await page.locator(".village-board").bounding_box()
    assert map_box and list_box and map_box["x"] > list_box["x"] + list_box["width"] - 1

    await page.click("#lang")
    await page.wait_for_selector("#board-map-note:has-text('not in this broadcast')")
    await officer.shot("34-board-map-en")
    await page.click("#lang")
    await page.wait_for_selector("#board-map circle[data-village]")

    # A village on the map opens its terminal's page: the cut-off one here.
    await page.click(f"#board-map circle[data-village='{cut_off['village_id']}']")
    await page.wait_for_selector("#faults")
    assert page.url.endswith(f"#/terminal/{cut_off['id']}")

    # ---------------------------------------------------------------- a 390 px phone
    phone = await open_console(county, "duty1", phone=True)
    await phone.page.wait_for_selector(
        f"#home-map circle[data-village='{faulty['village_id']}'][data-state=fault]"
    )
    assert await smallest_mark_px(phone.page, "#home-map") >= MIN_MARK_PX - 0.01
    await phone.shot("35-phone-home-map")
    await phone.go(
        f"board/{broadcast_id}",
        f"#board-map circle[data-village='{cut_off['village_id']}'][data-state=offline]",
    )
    assert await smallest_mark_px(phone.page, "#board-map") >= MIN_MARK_PX - 0.01
    map_box = await phone.page.locator("#board-map").bounding_box()
    first_tile = await phone.page.locator(".tile").first.bounding_box()
    assert map_box and first_tile and map_box["y"] + map_box["height"] <= first_tile["y"]
    assert map_box["width"] <= 390
    await phone.shot("36-phone-board-map")


async def test_statistics_page_draws_the_counties_figures(make_county, open_console):
    county = await make_county(villages=VILLAGES)
    # What the county sent today: two real notices and one drill, counted apart.
    sent = [
        await county.broadcast(
            text="反诈提醒：不要向陌生人转账。",
            category="anti_fraud",
            targets={"townships": ["t01"]},
        ),
        await county.broadcast(
            text="通知：明天上午九点开会。", category="meeting", targets={"townships": ["t02"]}
        ),
        await county.broadcast(
            text="森林防火演练：请注意用火安全。",
            category="forest_fire",
            priority="emergency",
            level=4,
            drill=True,
            targets={"townships": ["t02"]},
        ),
    ]
    for broadcast_id in sent:
        await county.wait_states(broadcast_id, {"done"}, timeout_s=90)
    _, today = await county.api("GET", "/api/stats/summary?period=day", expect=200)
    day = today["period"]["start"][:10]
    b = today["broadcasts"]
    # The API counts what the test sent, real and drill apart.
    assert (b["total"], b["real"], b["drill"]) == (3, 2, 1)
    assert b["by_category"] == {"anti_fraud": 1, "meeting": 1}
    assert b["drill_by_category"] == {"forest_fire": 1}
    terminals = len(county.fleet.configs)
    assert today["reach"] == {"targeted": terminals, "done": terminals, "rate": 1.0}

    officer = await open_console(county, "duty1")
    page = officer.page
    await page.click("#nav a[data-nav=stats]")
    await page.wait_for_selector("#stats-figures")
    await page.click("[data-period=day]")
    await page.fill("input[name=date]", day)
    await page.dispatch_event("input[name=date]", "change")
    await page.wait_for_selector(
        f"#stats-range[data-start='{today['period']['start']}'] ", state="attached"
    )
    await page.wait_for_selector("#stats-figures [data-figure=broadcasts][data-value='3']")
    assert "实际 2 · 演练 1" in await officer.text("[data-figure=broadcasts]")
    assert await officer.text("[data-figure=reach] strong") == "100.0%"
    assert f"{terminals}/{terminals}" in await officer.text("[data-figure=reach]")
    plays = today["plays"]["total"]
    assert await page.get_attribute("[data-figure=plays]", "data-value") == str(plays)
    # Bars: the category chart's numbers are the API's, the drill striped beside them.
    bars = dict(
        await page.locator("[data-chart=category] [data-bar]").evaluate_all(
            "gs => gs.map(g => [g.dataset.bar, Number(g.dataset.value)])"
        )
    )
    assert bars == {"anti_fraud": 1, "meeting": 1, "forest_fire": 1}
    drill_fill = await page.evaluate(
        """getComputedStyle(document.querySelector(
            "[data-chart=category] [data-bar=forest_fire] rect.bar-drill")).fill"""
    )
    assert "chart-stripes-drill" in drill_fill
    assert (
        await page.locator("[data-chart=category] [data-bar=forest_fire] rect.bar-real").count()
        == 0
    )
    modes = dict(
        await page.locator("[data-chart=mode] [data-bar]").evaluate_all(
            "gs => gs.map(g => [g.dataset.bar, Number(g.dataset.value)])"
        )
    )
    assert modes == {"real": 2, "drill": 1}
    # Per township: the table says what the API says (one real broadcast each, one drill in t02).
    rows = {r["id"]: r for r in today["townships"]}
    assert rows["t01"]["broadcasts"] == 1 and rows["t02"]["broadcasts"] == 1
    assert rows["t02"]["drills"] == 1
    for tid in ("t01", "t02"):
        row = f"#stats-townships tr[data-township={tid}]"
        assert await officer.text(f"{row} [data-col=broadcasts]") == str(rows[tid]["broadcasts"])
        assert await officer.text(f"{row} [data-col=drills]") == str(rows[tid]["drills"])
        assert await officer.text(f"{row} [data-col=reach]") == "100.0%"
    reach = dict(
        await page.locator("[data-chart=reach] [data-bar]").evaluate_all(
            "gs => gs.map(g => [g.dataset.bar, Number(g.dataset.value)])"
        )
    )
    assert reach == {"t01": 1.0, "t02": 1.0}
    # The online rate over the day, hour by hour: the hours passed have a point.
    _, online = await county.api(
        "GET", f"/api/stats/online?period=day&date={day}&bucket=hour", expect=200
    )
    known = [p for p in online["points"] if p["online_rate"] is not None]
    assert known
    drawn = await page.locator("[data-chart=online] circle.line-point").count()
    assert drawn == len(known)
    # The year report, one click away in three forms.
    html_link = await page.get_attribute("[data-report=html]", "href")
    assert html_link and f"year={day[:4]}" in html_link
    assert await page.get_attribute("[data-report=pdf]", "href") == f"{html_link}&format=pdf"
    status = await page.evaluate("async u => (await fetch(u)).status", html_link)
    assert status == 200
    await officer.shot("37-stats-day")

    # The month holds the same three broadcasts (the county is a few minutes old).
    await page.click("[data-period=month]")
    _, month = await county.api("GET", f"/api/stats/summary?period=month&date={day}", expect=200)
    await page.wait_for_selector(
        f"#stats-range[data-start='{month['period']['start']}']", state="attached"
    )
    assert month["broadcasts"]["total"] == 3
    assert await page.get_attribute("[data-figure=broadcasts]", "data-value") == "3"
    assert page.url.endswith(f"#/stats/month/{day}")
    # One township: the figures narrow to it.
    await page.select_option("select[name=township]", "t01")
    await page.wait_for_selector("#stats-figures [data-figure=broadcasts][data-value='1']")
    assert await page.locator("#stats-townships tbody tr").count() == 1
    await officer.shot("38-stats-month-township")

    await page.click("#lang")
    await page.wait_for_selector("h1:has-text('Statistics')")
    await page.wait_for_selector("#stats-figures [data-figure=broadcasts]")
    assert "real 1 · drill 0" in await officer.text("[data-figure=broadcasts]")
    await officer.shot("39-stats-en")
    await page.click("#lang")

    phone = await open_console(county, "duty1", phone=True)
    await phone.go(f"stats/day/{day}", "#stats-figures [data-figure=broadcasts][data-value='3']")
    await phone.page.wait_for_selector("[data-chart=category] [data-bar=forest_fire]")
    width = await phone.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone: {width}px"
    await phone.shot("40-phone-stats")
