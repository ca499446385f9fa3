"""The board's truthful endings with a real broker, controller and fleet (in-process):
a terminal offline at dispatch waits as `offline` and plays on return, a play that goes
silent ends `unknown` (never `done`), and a resend reaches the terminal that failed
without asking the others again."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow]

TEXT = "防汛通知：请沿河群众注意安全，远离河道。"


async def device_online(county: Any, device_id: str) -> bool:
    _, body = await county.api("GET", f"/api/devices/{device_id}", expect=200)
    return bool(body["online"])


async def counts(county: Any, broadcast_id: str) -> dict[str, Any]:
    _, view = await county.api("GET", f"/api/broadcasts/{broadcast_id}?deliveries=0", expect=200)
    return dict(view)


async def test_an_offline_terminal_waits_as_offline_the_board_settles_and_it_plays_on_return(
    make_county: Any,
) -> None:
    county = await make_county(villages=4)
    terminals = sorted(county.fleet.agents)
    victim, others = terminals[0], terminals[1:]
    county.fleet.network_down(victim)

    async def shown_offline() -> bool:
        return not await device_online(county, victim)

    await county.wait_for(shown_offline, 20, f"{victim} shown offline")

    bid = await county.broadcast(text=TEXT, category="flood", targets={"all": True})
    await county.wait_states(bid, {victim: "offline", **{d: "done" for d in others}}, 60)
    view = await counts(county, bid)
    assert view["settled"] is True  # nothing left to wait for but an offline terminal
    assert view["reach"]["targeted"] == len(terminals)
    assert view["reach"]["reached"] == len(others)
    assert view["reach"]["rate"] == pytest.approx(len(others) / len(terminals), abs=1e-3)
    assert county.all_plays(bid).keys() == set(others)

    county.fleet.network_up(victim)  # back before expiry: the broker's queue delivers it
    await county.wait_states(bid, {"done"}, 60)
    assert county.all_plays(bid).keys() == set(terminals)
    assert (await counts(county, bid))["reach"]["rate"] == 1.0


async def test_a_play_that_goes_silent_ends_unknown_not_done(make_county: Any) -> None:
    county = await make_county(villages=2)
    county.controller.settings.unknown_after_s = 1.0
    terminals = sorted(county.fleet.agents)
    victim = terminals[0]
    bid = await county.broadcast(text=TEXT, category="flood", targets={"all": True})
    await county.wait_started(bid, [victim])
    await county.fleet.power_off(victim)  # dies mid-play: no word about how it ended
    view = await county.wait_states(
        bid, {victim: "unknown", **{d: "done" for d in terminals[1:]}}, 60
    )
    (row,) = [d for d in view["deliveries"] if d["device_id"] == victim]
    assert row["source"] == "controller"
    assert "no report" in (row["reason"] or "")
    assert [t["state"] for t in row["transitions"]][-2:] == ["playing", "unknown"]


async def test_resend_reaches_the_terminal_that_failed_and_only_it(make_county: Any) -> None:
    county = await make_county(villages=3)
    terminals = sorted(county.fleet.agents)
    victim = terminals[0]
    county.fleet.set_speaker_line_cut(victim)
    bid = await county.broadcast(
        text=TEXT, category="flood", targets={"all": True}, expires_in_s=600
    )
    await county.wait_states(bid, {victim: "failed", **{d: "done" for d in terminals[1:]}}, 60)
    assert (await counts(county, bid))["resendable"] == 1

    county.fleet.set_speaker_line_cut(victim, False)  # the technician mended the line
    _, view = await county.api("POST", f"/api/broadcasts/{bid}/resend", expect=200)
    assert view["attempt"] == 1
    assert view["resends"][0]["devices"] == 1
    await county.wait_states(bid, {"done"}, 60)

    plays = county.all_plays(bid)
    assert [p["completed"] for p in plays[victim]] == [True]
    for other in terminals[1:]:
        assert len(plays[other]) == 1  # not asked again
    _, body = await county.api("POST", f"/api/broadcasts/{bid}/resend", expect=409)
    assert body["error"]["code"] == "nothing_to_resend"
