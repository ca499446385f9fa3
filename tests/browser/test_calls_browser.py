"""Phone-call broadcast and hearing a pole in real Chromium against a real county: a
duty officer saves a village's whitelist on the 电话广播 page; the simulated modem rings
from a number on it and from a stranger; the officer sees both calls in full, a
technician sees them masked and no whitelist; the technician asks a terminal for a clip
of its last play (听一听) and the browser loads it. Screenshots are kept as artifacts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.test_agent_phone import voice

pytestmark = [pytest.mark.browser, pytest.mark.broker, pytest.mark.slow]

DEVICE = "d-t01-v01-1"
CADRE = "13800138000"
STRANGER = "13900139000"


async def test_calls_whitelists_and_a_clip_in_the_console(
    make_county: Any, open_console: Any
) -> None:
    county = await make_county(villages=2)
    village = county.fleet.configs[DEVICE].village_id
    bid = await county.broadcast(text="请注意，今晚有暴雨。", targets={"devices": [DEVICE]})
    await county.wait_states(bid, {DEVICE: "done"}, timeout_s=40)

    duty = await open_console(county, "duty1")
    page = duty.page
    assert await duty.text("#nav [data-nav=calls]") == "电话广播"
    await duty.go("calls", "#whitelists form")
    await page.select_option("#whitelists select[name=scope]", "village")
    await page.select_option("#whitelists select[name=scope_id]", village)
    await page.fill("#whitelists textarea[name=numbers]", f"138 0013 8000\n{'1370000' + '0001'}")
    await page.click("#whitelists button[type=submit]")
    await page.wait_for_selector("#whitelists li")
    assert "2 个号码" in await duty.text("#whitelists li")

    agent = county.fleet.agents[DEVICE]

    async def book_arrived() -> bool:
        return agent.phone is not None and agent.phone.allowed(CADRE)

    await county.wait_for(book_arrived, 20, "the phone book on the terminal")
    modem = county.fleet.hardware[DEVICE].modem
    call = modem.ring(CADRE)
    await asyncio.wait_for(call.answered.wait(), 20)
    call.say(voice(1.0))
    await asyncio.sleep(1.5)
    call.hang_up()
    modem.ring(STRANGER)

    async def both_listed() -> bool:
        _, body = await county.api("GET", "/api/calls")
        return len(body["calls"]) == 2

    await county.wait_for(both_listed, 30, "both calls")
    await page.reload()  # the same route: a reload, not a hash change
    await page.wait_for_selector("#calls tbody tr")
    played = await duty.text("#calls tr[data-outcome=played]")
    refused = await duty.text("#calls tr[data-outcome=rejected]")
    assert CADRE in played and "已接通并播出" in played
    assert STRANGER in refused and "已拒接（不在白名单）" in refused
    await duty.shot("calls-duty-officer")

    # The records page leads to them.
    await duty.go("records", "#rec-calls")
    await page.click("#rec-calls")
    await page.wait_for_selector("#calls tbody tr")

    tech = await open_console(county, "tech1")
    await tech.go("calls", "#calls tbody tr")
    text = await tech.text("#calls")
    assert "138****8000" in text and CADRE not in text and "部分隐藏" in text
    assert await tech.page.query_selector("#whitelists") is None

    # 听一听: the terminal's last play (the phone call) comes back and the browser loads it.
    await tech.go(f"terminal/{DEVICE}", "#clip-request")
    await tech.page.click("#clip-request")
    await tech.page.wait_for_selector("#clip-audio", timeout=60_000)
    await tech.page.wait_for_function(
        "() => document.querySelector('#clip-audio').duration > 0.9", timeout=30_000
    )
    await tech.shot("terminal-clip")
