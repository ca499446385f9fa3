"""`failed` and `silent`, produced for real: the simulated hardware's fault switches
(speaker line cut, amplifier failed: before a play `failed`, during it `silent`) and
the media path (audio altered in the controller's store, audio gone from it).

Every ending is checked twice: the delivery's state and reason from the API, and the
simulated speaker's own records (`plays-started.jsonl` when a play starts,
`plays.jsonl` when it ends), which do not depend on anything the agent reports.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow]

SHORT_TEXT = "请注意，今晚有暴雨。"
# Long enough to be cut well before its end (espeak-ng reads it in over ten seconds).
LONG_TEXT = "各位村民请注意，" + "近期电信诈骗案件多发，请提高警惕。" * 4


def delivery_of(view: dict[str, Any], device_id: str) -> dict[str, Any]:
    (found,) = [d for d in view["deliveries"] if d["device_id"] == device_id]
    return dict(found)


def assert_reason(view: dict[str, Any], device_id: str, words: str) -> None:
    delivery = delivery_of(view, device_id)
    assert words in (delivery["reason"] or "").lower(), delivery


def states_of(delivery: dict[str, Any]) -> list[str]:
    return [t["state"] for t in delivery["transitions"]]


async def test_a_cut_speaker_line_or_a_failed_amplifier_fails_the_play_without_sound(
    make_county,
):
    county = await make_county(villages=3)
    cut, dead_amplifier, healthy = "d-t01-v01-1", "d-t01-v02-1", "d-t01-v03-1"
    county.fleet.set_speaker_line_cut(cut)
    county.fleet.set_amplifier_failed(dead_amplifier)

    bid = await county.broadcast(text=SHORT_TEXT, targets={"townships": ["t01"]})
    view = await county.wait_states(
        bid, {cut: "failed", dead_amplifier: "failed", healthy: "done"}, timeout_s=40
    )
    assert_reason(view, cut, "speaker line")
    assert_reason(view, dead_amplifier, "amplifier")
    # Never shown as playing: nothing went out.
    for device_id in (cut, dead_amplifier):
        assert "playing" not in states_of(delivery_of(view, device_id)), device_id
    assert county.all_started(bid).keys() == {healthy}
    played = county.all_plays(bid)
    assert played.keys() == {healthy}
    assert [e["completed"] for e in played[healthy]] == [True]


async def test_a_speaker_line_cut_or_an_amplifier_failing_mid_play_is_reported_silent(
    make_county,
):
    # The DAC plays on through a dead line: the output monitor notices, and the play ends
    # `silent` (not `done`) with the seconds that were not heard.
    county = await make_county(villages=3)
    cut, dead_amplifier, healthy = "d-t01-v01-1", "d-t01-v02-1", "d-t01-v03-1"
    bid = await county.broadcast(text=LONG_TEXT, targets={"townships": ["t01"]})
    # The faults strike once the speakers have really started (their own records).
    await county.wait_started(bid, [cut, dead_amplifier], timeout_s=40)
    county.fleet.set_speaker_line_cut(cut)
    county.fleet.set_amplifier_failed(dead_amplifier)

    view = await county.wait_states(
        bid, {cut: "silent", dead_amplifier: "silent", healthy: "done"}, timeout_s=60
    )
    assert_reason(view, cut, "speaker_line")
    assert_reason(view, dead_amplifier, "amplifier")
    audio_ms = county.media_ms(view["media_id"])
    started, ended = county.all_started(bid), county.all_plays(bid)
    assert started.keys() == ended.keys() == {cut, dead_amplifier, healthy}
    for device_id in (cut, dead_amplifier):
        delivery = delivery_of(view, device_id)
        assert states_of(delivery)[-2:] == ["playing", "silent"], device_id
        reported = delivery["transitions"][-1]["silent_ms"]
        (end,) = ended[device_id]
        # The speaker's own record: it ran on, and silence went out from the fault.
        assert end["completed"] and 0 < end["silent_ms"] < audio_ms, (device_id, end)
        assert abs(reported - end["silent_ms"]) < 1_500, (device_id, reported, end)
    (whole,) = ended[healthy]
    assert whole["completed"] and whole["duration_ms"] == audio_ms, (whole, audio_ms)
    assert "silent_ms" not in whole


async def _stored_preview(county: Any, text: str) -> str:
    """Render `text` into the controller's media store without broadcasting it."""
    _, preview = await county.api(
        "POST",
        "/api/preview",
        json_body={"text": text, "category": "flood", "priority": "notice"},
        expect=200,
    )
    media_id = str(preview["media_id"])
    assert county.media_path(media_id).exists()
    return media_id


async def test_audio_altered_in_the_store_fails_on_its_hash_and_is_never_played(make_county):
    county = await make_county(villages=2)
    altered, untouched = "d-t01-v01-1", "d-t01-v02-1"
    media_id = await _stored_preview(county, SHORT_TEXT)
    path = county.media_path(media_id)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed on the controller's disk
    path.write_bytes(bytes(data))

    bid = await county.broadcast(media_id=media_id, targets={"devices": [altered]})
    view = await county.wait_states(bid, {"failed"}, timeout_s=60)
    failed = delivery_of(view, altered)
    assert "hash" in (failed["reason"] or ""), failed
    assert "playing" not in states_of(failed)
    # No sound, and nothing kept on the terminal's flash for a later play.
    assert county.all_started(bid) == {} and county.all_plays(bid) == {}
    assert not county.fleet.agents[altered].cache.has(media_id)
    # The other terminal heard nothing of it.
    assert county.plays(untouched) == [] and county.plays_started(untouched) == []


async def test_audio_missing_from_the_store_fails_with_the_404_and_is_never_played(make_county):
    county = await make_county(villages=2)
    media_id = await _stored_preview(county, SHORT_TEXT)
    county.media_path(media_id).unlink()

    bid = await county.broadcast(media_id=media_id, targets={"townships": ["t01"]})
    view = await county.wait_states(bid, {"failed"}, timeout_s=60)
    for device_id in county.targeted[bid]:
        failed = delivery_of(view, device_id)
        assert "404" in (failed["reason"] or ""), failed
        assert "playing" not in states_of(failed)
        assert not county.fleet.agents[device_id].cache.has(media_id)
    assert county.all_started(bid) == {} and county.all_plays(bid) == {}
