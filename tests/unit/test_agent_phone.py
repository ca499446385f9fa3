"""Phone-call broadcast on one terminal, for real: a private Mosquitto, the agent on the
simulated hardware, its whitelist delivered as a signed command, and the simulated modem
ringing with a caller id, feeding call audio and DTMF. What went out is checked in the
simulated speaker's own records, not the agent's word."""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dalaba import protocol as p
from edge_agent.output_watch import capture_to_wav
from firmware_sim.audio import SAMPLE_RATE
from firmware_sim.hardware import SimHardware
from tests.unit.test_agent_truth import Rig, plays_ended

pytestmark = [pytest.mark.broker]

WHITELISTED = "13800138000"
STRANGER = "13900139000"


def voice(seconds: float) -> bytes:
    """A 300 Hz tone standing in for the caller's voice."""
    n = int(SAMPLE_RATE * seconds)
    return b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * 300 * i / SAMPLE_RATE)))
        for i in range(n)
    )


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    setup = Rig(tmp_path, devices=("d-1",))
    try:
        await setup.start()
        yield setup
    finally:
        await setup.stop()


def book(version: int, numbers: list[str], pin: str | None = None) -> p.PhoneBookBody:
    # Personal data in a real county: synthetic numbers here, and at least 32 of them.
    filler = [f"1370000{i:04d}" for i in range(40)]
    extra: dict[str, Any] = {}
    if pin is not None:
        extra = {
            "pin_salt": "salt-for-d-1",
            "pin_sha256": p.phone_pin_digest("salt-for-d-1", pin),
            "pin_length": len(pin),
        }
    return p.PhoneBookBody(version=version, numbers=(*filler, *numbers), **extra)


def call_events(rig: Rig, device_id: str) -> list[dict[str, Any]]:
    return [e.detail for e in rig.events(device_id) if e.kind is p.EventKind.CALL]


async def with_book(rig: Rig, body: p.PhoneBookBody) -> SimHardware:
    agent, hw = await rig.start_agent(rig.config())
    await rig.send("d-1", body)

    def applied() -> list[p.DeviceEvent]:
        return [e for e in rig.events("d-1") if e.kind is p.EventKind.CONFIG_APPLIED]

    await rig.wait(lambda: bool(applied()), what="phone book applied")
    assert agent.phone is not None and agent.phone.book == body
    # The event says how many numbers, never which: events reach more readers.
    (event,) = applied()
    assert event.detail == {"phone_book_version": body.version, "numbers": len(body.numbers)}
    return hw


async def test_a_whitelisted_caller_is_answered_and_played_live(rig: Rig) -> None:
    hw = await with_book(rig, book(1, [f"+86{WHITELISTED}"]))
    assert hw.modem is not None
    call = hw.modem.ring(f"0086{WHITELISTED}")  # caller ids come in more than one form
    await asyncio.wait_for(call.answered.wait(), 10)
    call.say(voice(1.0))
    await rig.wait(lambda: hw.output_monitor.carrying(), what="the call sounding")
    call.hang_up()
    await rig.wait(lambda: bool(call_events(rig, "d-1")), what="call event")
    (event,) = call_events(rig, "d-1")
    assert event["caller"] == f"0086{WHITELISTED}" and event["outcome"] == "played"
    assert 900 <= event["played_ms"] <= 5_000, event
    (played,) = hw.speaker.plays()
    # The speaker's own record: the caller's audio went out (not silence).
    assert played["broadcast_id"].startswith("call-") and played["completed"]
    clip = hw.output_monitor.last_clip(2_000)
    assert clip is not None and max(abs(x) for (x,) in struct.iter_unpack("<h", clip)) > 4000


async def test_a_caller_not_on_the_whitelist_is_refused_and_reported(rig: Rig) -> None:
    hw = await with_book(rig, book(1, [WHITELISTED]))
    assert hw.modem is not None
    call = hw.modem.ring(STRANGER)
    await rig.wait(lambda: bool(call_events(rig, "d-1")), what="call event")
    (event,) = call_events(rig, "d-1")
    assert event == {**event, "caller": STRANGER, "outcome": "rejected", "played_ms": 0}
    assert call.rejected and not call.answered.is_set() and call.ended_by == "terminal"
    withheld = hw.modem.ring("")  # no caller id: never on a whitelist
    await rig.wait(lambda: len(call_events(rig, "d-1")) == 2, what="second call event")
    assert withheld.rejected
    assert hw.speaker.plays_started() == []


async def test_a_wrong_pin_is_hung_up_and_the_right_one_plays(rig: Rig) -> None:
    hw = await with_book(rig, book(1, [WHITELISTED], pin="2468"))
    assert hw.modem is not None
    wrong = hw.modem.ring(WHITELISTED)
    await asyncio.wait_for(wrong.answered.wait(), 10)
    wrong.press("1357#")
    await asyncio.wait_for(wrong.ended.wait(), 10)
    right = hw.modem.ring(WHITELISTED)
    await asyncio.wait_for(right.answered.wait(), 10)
    right.press("2468")
    right.say(voice(0.5))
    await rig.wait(lambda: hw.output_monitor.carrying(), what="the call sounding")
    right.hang_up()
    await rig.wait(lambda: len(call_events(rig, "d-1")) == 2, what="two call events")
    assert [e["outcome"] for e in call_events(rig, "d-1")] == ["wrong_pin", "played"]
    assert wrong.ended_by == "terminal" and len(hw.speaker.plays()) == 1


async def test_an_older_or_forged_phone_book_changes_nothing(rig: Rig) -> None:
    agent, _ = await rig.start_agent(rig.config())
    await rig.send("d-1", book(5, [WHITELISTED]))
    await rig.wait(lambda: agent.phone is not None and agent.phone.book is not None)
    await rig.send("d-1", book(4, [STRANGER]))
    await rig.settled("d-1")
    assert agent.phone is not None and agent.phone.allowed(WHITELISTED)
    assert not agent.phone.allowed(STRANGER)
    assert agent.counters["phone_book_not_newer"] == 1
    # A malformed number cannot even be built, let alone signed and sent.
    with pytest.raises(ValueError, match="numbers"):
        p.PhoneBookBody(version=6, numbers=("138 0013 8000; rm -rf",))


async def test_an_emergency_preempts_a_call(rig: Rig) -> None:
    hw = await with_book(rig, book(1, [WHITELISTED]))
    assert hw.modem is not None
    call = hw.modem.ring(WHITELISTED)
    await asyncio.wait_for(call.answered.wait(), 10)
    for _ in range(20):
        call.say(voice(0.5))
    await rig.wait(lambda: hw.output_monitor.carrying(), what="the call sounding")
    emergency = rig.play(
        "e-1", capture_to_wav(voice(1.0)), start_in_ms=500, priority=p.Priority.EMERGENCY
    )
    await rig.send("d-1", emergency)
    await rig.wait_state("d-1", "e-1", p.DeliveryState.DONE)
    await rig.wait(lambda: bool(call_events(rig, "d-1")), what="call event")
    assert call_events(rig, "d-1")[0]["outcome"] == "preempted"
    assert call.ended_by == "terminal"
    assert [e["broadcast_id"] for e in plays_ended(hw, "e-1")] == ["e-1"]


async def test_a_caller_who_hangs_up_while_an_emergency_plays_is_abandoned(rig: Rig) -> None:
    hw = await with_book(rig, book(1, [WHITELISTED]))
    assert hw.modem is not None
    emergency = rig.play(
        "e-1", capture_to_wav(voice(3.0)), start_in_ms=300, priority=p.Priority.EMERGENCY
    )
    await rig.send("d-1", emergency)
    await rig.wait_state("d-1", "e-1", p.DeliveryState.PLAYING)
    call = hw.modem.ring(WHITELISTED)
    await asyncio.wait_for(call.answered.wait(), 10)  # answered, waits behind the emergency
    call.hang_up()
    await rig.wait(lambda: bool(call_events(rig, "d-1")), what="call event")
    (event,) = call_events(rig, "d-1")
    assert (event["outcome"], event["played_ms"]) == ("abandoned", 0)
    await rig.wait_state("d-1", "e-1", p.DeliveryState.DONE)
    # Nothing of the call ever sounded: the emergency was the only play.
    assert [e["broadcast_id"] for e in hw.speaker.plays()] == ["e-1"]
