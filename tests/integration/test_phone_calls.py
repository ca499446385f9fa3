"""Phone-call broadcast through the whole system: a whitelist saved in the controller's
API goes to the terminals as a signed phone book; the simulated modem rings with a
whitelisted and a stranger's caller id; the calls come back as events and are listed
(callers masked for readers without the phone-book permission). Bad inputs refused."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.integration.content_support import tokens
from tests.unit.test_agent_phone import voice

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CADRE = "13800138000"
STRANGER = "13900139000"
# Synthetic numbers (never real people's), enough to show a list of 32 and more works.
FILLER = [f"137 0000 {i:04d}" for i in range(40)]


async def wait_for(check: Any, timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_whitelisted_and_stranger_calls_end_to_end(make_county) -> None:
    county = await make_county(villages=2)
    device = "d-t01-v01-1"
    village = county.fleet.configs[device].village_id
    users = tokens(county)

    _, saved = await county.api(
        "PUT",
        f"/api/phone/whitelists/village/{village}",
        json_body={"numbers": [*FILLER, f"+86 {CADRE[:3]}-{CADRE[3:7]}-{CADRE[7:]}"]},
        expect=200,
    )
    assert saved["numbers"][-1] == CADRE and len(saved["numbers"]) == 41
    assert saved["devices"] >= 1 and saved["published"] == saved["devices"]
    agent = county.fleet.agents[device]

    async def book_arrived() -> bool:
        return agent.phone is not None and agent.phone.allowed(CADRE)

    await wait_for(book_arrived, 20, "the phone book on the terminal")
    modem = county.fleet.hardware[device].modem
    assert modem is not None

    call = modem.ring(CADRE)
    await asyncio.wait_for(call.answered.wait(), 20)
    call.say(voice(1.0))
    await asyncio.sleep(1.5)
    call.hang_up()
    stranger = modem.ring(STRANGER)

    async def both_listed() -> bool:
        _, body = await county.api("GET", f"/api/calls?device_id={device}", expect=200)
        return len(body["calls"]) == 2

    await wait_for(both_listed, 30, "both calls listed")
    assert stranger.rejected and not stranger.answered.is_set()
    _, listed = await county.api("GET", "/api/calls", expect=200)
    by_caller = {c["caller"]: c for c in listed["calls"]}
    assert by_caller[CADRE]["outcome"] == "played" and by_caller[CADRE]["played_ms"] >= 900
    assert by_caller[STRANGER]["outcome"] == "rejected" and by_caller[STRANGER]["played_ms"] == 0
    assert listed["callers_masked"] is False
    # What the speaker really put out: the caller's voice, as its own play.
    plays = county.fleet.hardware[device].speaker.plays()
    assert [str(e["broadcast_id"])[:5] for e in plays] == ["call-"]

    # Least privilege: a viewer sees that calls happened, not who called.
    _, seen = await county.api("GET", "/api/calls", token=users["viewer"], expect=200)
    assert seen["callers_masked"] is True
    assert {c["caller"] for c in seen["calls"]} == {"138****8000", "139****9000"}
    await county.api("GET", "/api/phone/whitelists", token=users["viewer"], expect=403)
    _, visible = await county.api("GET", "/api/phone/whitelists", token=users["staff"], expect=200)
    assert [w["scope_id"] for w in visible["whitelists"]] == [village]


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("village/{v}", {"numbers": ["138 0013 8000", "call me; rm -rf /"]}, 400, "numbers"),
        ("village/{v}", {"numbers": ["12"]}, 400, "numbers"),
        ("village/{v}", {"numbers": [CADRE], "pin": "12ab"}, 400, "pin"),
        ("village/{v}", {"numbers": [CADRE], "extra": 1}, 400, "extra"),
        ("village/{v}", {"numbers": [f"1370000{i:04d}" for i in range(201)]}, 400, "numbers"),
        ("galaxy/{v}", {"numbers": [CADRE]}, 400, "scope"),
        ("village/no-such-village", {"numbers": [CADRE]}, 404, None),
    ],
)
async def test_bad_whitelists_are_refused_and_nothing_is_stored(
    make_county, path: str, body: dict[str, Any], status: int, field: str | None
) -> None:
    county = await make_county(villages=1)
    village = county.fleet.configs["d-t01-v01-1"].village_id
    _, answer = await county.api(
        "PUT", "/api/phone/whitelists/" + path.format(v=village), json_body=body, expect=status
    )
    if field is not None:
        assert field in answer.get("field", "") or field in str(answer), answer
    _, stored = await county.api("GET", "/api/phone/whitelists", expect=200)
    assert stored["whitelists"] == []
