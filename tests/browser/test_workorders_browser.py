"""The work-orders page in real Chromium against a real county: a terminal's speaker line
is cut long enough to open a work order; the technician sees it on the county map and
under its township, in Chinese, takes it and notes what they found (the close button
waits for the fault to clear); a clerk of another township sees none of it. A screenshot
is kept as an artifact."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.broker, pytest.mark.slow]

VILLAGES = 20  # two townships: t01 (16 villages) and t02 (4)
TOWNSHIP = "t02"
NOTE = "喇叭线被树枝压断，明早带线上山"


async def test_the_technician_sees_an_open_order_on_the_map_and_takes_it(
    make_county: Any, open_console: Any
) -> None:
    county = await make_county(villages=VILLAGES)
    county.controller.settings.work_order_after_s = 0.5
    victim = min(d for d, c in county.fleet.configs.items() if c.township_id == TOWNSHIP)
    county.fleet.set_speaker_line_cut(victim)

    orders: list[dict[str, Any]] = []

    async def opened() -> bool:
        _, body = await county.api("GET", "/api/workorders")
        orders[:] = body["orders"]
        return len(orders) == 1

    await county.wait_for(opened, 30, "the work order for the cut line")
    [order] = orders
    assert (order["device_id"], order["status"]) == (victim, "open")
    oid = order["id"]

    tech = await open_console(county, "tech1")
    page = tech.page
    assert await tech.text("#nav [data-nav=workorders]") == "工单"
    await tech.go("workorders", f"#wo-{oid}")
    card = f"#wo-{oid}"
    text = await tech.text(card)
    assert "喇叭线路断开" in text and "待维修" in text and victim in text
    assert "未指派" in text
    assert await tech.text(f"#wo-tw-{TOWNSHIP} h3") == "河口镇 1 张"
    mark = f"circle[data-order='{oid}']"
    assert await page.get_attribute(mark, "data-state") == "fault"
    assert await page.get_attribute(mark, "data-device") == victim
    assert await tech.text("[data-legend=open]") == "待维修 1"
    assert "null" not in await tech.text("#main")
    # The mark leads to its order.
    await page.click(mark)
    await page.wait_for_function("id => document.activeElement?.id === `wo-${id}`", arg=oid)
    # Closing waits for the terminal to report the line mended.
    assert await page.is_disabled(f"{card} [data-action=close]")

    await page.click(f"{card} [data-action=assign-me]")
    await page.wait_for_function(
        "id => document.querySelector(`#wo-${id}`)?.innerText.includes('tech1')", arg=oid
    )
    await page.fill(f"{card} textarea[name=note]", NOTE)
    await page.click(f"{card} [data-action=note]")
    await page.wait_for_selector(f"{card} .wo-notes li")
    assert NOTE in await tech.text(f"{card} .wo-notes")
    _, body = await county.api("GET", "/api/workorders")
    [saved] = body["orders"]
    assert saved["assigned_to"] == "tech1" and saved["notes"][-1]["text"] == NOTE
    assert saved["notes"][-1]["by"] == "tech1"
    await tech.shot("workorders-open-zh")

    # A clerk of the other township sees none of it, and no buttons anywhere.
    clerk = await open_console(county, "clerk-t01")
    await clerk.go("workorders", "#workorders .empty")
    assert await clerk.text("#workorders") == "没有工单。"
    assert await clerk.page.locator("#wo-readonly").count() == 1
    assert await clerk.page.locator("circle[data-order]").count() == 0
