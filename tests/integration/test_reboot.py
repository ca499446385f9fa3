"""A terminal rebooted (power cut, then power back; its flash kept) remembers what it
has done: a captured command replayed after the reboot is refused and reported, and a
schedule occurrence it claimed is not played a second time."""

from __future__ import annotations

import datetime
import math
import time
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from controller.schedules.plan import occurrence_id
from dalaba import protocol as p

pytestmark = [pytest.mark.broker, pytest.mark.slow]

ZONE = ZoneInfo("Asia/Shanghai")


async def reboot(county: Any, device_id: str) -> None:
    """Power cut and power back: the agent dies mid-flight, its flash survives."""
    await county.fleet.power_off(device_id)
    await county.fleet.power_on(device_id)
    await county.fleet.wait_connected(20)


def plays_of(county: Any, device_id: str, broadcast_id: str) -> tuple[list[Any], list[Any]]:
    """(starts, ends) of `broadcast_id` on the terminal's speaker."""
    return (
        [e for e in county.plays_started(device_id) if e["broadcast_id"] == broadcast_id],
        [e for e in county.plays(device_id) if e["broadcast_id"] == broadcast_id],
    )


async def test_a_command_replayed_after_a_reboot_is_refused_and_not_played(make_county):
    county = await make_county(villages=2)
    device = "d-t01-v01-1"
    captured: list[tuple[str, bytes]] = []
    attacker = await county.attacker(
        subscribe=p.Topics.ALL_COMMANDS,
        on_message=lambda topic, payload: captured.append((topic, payload)),
    )
    bid = await county.broadcast(text="请注意，今晚有暴雨。", targets={"villages": ["t01-v01"]})
    await county.wait_states(bid, {"done"}, timeout_s=40)
    ((topic, envelope),) = [
        (t, e)
        for t, e in captured
        if getattr(county.open_unverified(e).body, "broadcast_id", None) == bid
    ]
    command = county.open_unverified(envelope)
    # Still well within its validity: only the terminal's memory can refuse it.
    assert command.expires_at > p.now_ms() + 60_000

    await reboot(county, device)
    await attacker.publish_confirmed(topic, envelope)

    event = await county.wait_security_event(device, "replayed", bid)
    assert event["known_command"] and event["command_id"] == command.id, event
    # Refused as it arrived (the event says so), so nothing was queued to play later.
    starts, ends = plays_of(county, device, bid)
    assert len(starts) == 1 and len(ends) == 1, (starts, ends)
    view = await county.get_broadcast(bid)
    assert [d["state"] for d in view["deliveries"]] == ["done"]
    await attacker.stop()


def local_in(seconds: float) -> datetime.datetime:
    """A whole-second local time at least `seconds` from now."""
    return datetime.datetime.fromtimestamp(math.ceil(time.time() + seconds), ZONE)


async def test_a_claimed_schedule_occurrence_is_not_played_again_after_a_reboot(make_county):
    county = await make_county(villages=2)
    device = "d-t01-v01-1"
    due = local_in(8)
    _, schedule = await county.api(
        "POST",
        "/api/schedules",
        json_body={
            "name": "防火提醒",
            "recurrence": {
                "kind": "once",
                "times": [due.strftime("%H:%M:%S")],
                "start_date": due.date().isoformat(),
            },
            "text": "请勿野外用火。",
            "category": "fire_prevention",
            "priority": "notice",
            "targets": {"villages": ["t01-v01"]},
        },
        expect=201,
    )
    occ = occurrence_id(schedule["id"], int(due.timestamp() * 1000))
    await county.wait_states(occ, {"done"}, timeout_s=45)
    starts, ends = plays_of(county, device, occ)
    assert len(starts) == 1 and len(ends) == 1, (starts, ends)

    await reboot(county, device)
    # The occurrence is back on the rebooted terminal's schedule and not yet expired:
    # only its claim on flash stands between it and a second play.
    agent = county.fleet.agents[device]
    assert occ in agent.schedule.items
    assert agent.schedule.items[occ].expires_at > p.now_ms() + 60_000

    # A broadcast sent after the reboot waits behind an occurrence the terminal took up
    # again (its start has passed): once this one is done, that one would have started.
    marker = await county.broadcast(text="测试", targets={"devices": [device]})
    await county.wait_states(marker, {"done"}, timeout_s=30)
    starts, ends = plays_of(county, device, occ)
    assert len(starts) == 1 and len(ends) == 1, (starts, ends)
    view = await county.get_broadcast(occ)
    (delivery,) = view["deliveries"]
    assert delivery["state"] == "done"
    assert [t["state"] for t in delivery["transitions"]].count("received") == 1, delivery
