"""Rendering with the real offline voice (espeak-ng) and real ffmpeg.

These tools are required, not optional: a controller without them cannot speak when the
internet is down, so the tests fail loudly rather than skip.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import pathlib
import re
import struct
import subprocess
from typing import Any

import pytest

from controller.speech import AnnouncementRenderer, AnnouncementRequest, RenderedAnnouncement, tones
from controller.speech import render as audio
from controller.speech.backends import EspeakBackend, SynthesisError
from controller.speech.service import DRILL_END, DRILL_START

NOTICE_TEXT = "各位村民请注意，明天上午9点在村委会召开防汛工作会议，请各户派一名代表参加。"
FLOOD_TEXT = "暴雨橙色预警：今天夜间有大暴雨，请住在河边和山脚下的群众立即转移到村小学。"


class CountingEspeak(EspeakBackend):
    """The real espeak-ng backend, counting how often it is actually asked to speak."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    async def synthesize(self, text: str, *, lang: str, rate: int):  # type: ignore[no-untyped-def]
        self.calls.append((text, lang))
        return await super().synthesize(text, lang=lang, rate=rate)


@pytest.fixture
def espeak() -> CountingEspeak:
    return CountingEspeak()


@pytest.fixture
def renderer(tmp_path: pathlib.Path, espeak: CountingEspeak) -> AnnouncementRenderer:
    return AnnouncementRenderer(
        cache_dir=tmp_path / "cache", backend_order=("espeak-ng",), backends=[espeak]
    )


def notice(**changes: object) -> AnnouncementRequest:
    base = AnnouncementRequest(text=NOTICE_TEXT, category="meeting", priority="notice")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def flood(**changes: object) -> AnnouncementRequest:
    base = AnnouncementRequest(text=FLOOD_TEXT, category="flood", priority="emergency", level=2)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def probe(data: bytes, tmp_path: pathlib.Path) -> Any:
    path = tmp_path / "probe.ogg"
    path.write_bytes(data)
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
        check=True,
        capture_output=True,
    ).stdout
    return json.loads(out)


def loudness(data: bytes, tmp_path: pathlib.Path) -> float:
    path = tmp_path / "loudness.ogg"
    path.write_bytes(data)
    err = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostats", "-i", str(path),
         "-af", "ebur128=framelog=verbose", "-f", "null", "-"],
        capture_output=True,
        check=True,
    ).stderr.decode()  # fmt: skip
    match = re.search(r"I:\s*(-?[\d.]+)\s*LUFS", err.rpartition("Summary:")[2])
    assert match is not None
    return float(match.group(1))


def opus_input_rate(data: bytes) -> int:
    pos = data.index(b"OpusHead")
    return struct.unpack("<I", data[pos + 12 : pos + 16])[0]  # type: ignore[no-any-return]


def assert_announcement_format(result: RenderedAnnouncement, tmp_path: pathlib.Path) -> None:
    assert result.mime == "audio/ogg"
    assert result.audio.startswith(b"OggS")
    info = probe(result.audio, tmp_path)
    (stream,) = info["streams"]
    assert stream["codec_name"] == "opus"
    assert stream["channels"] == 1
    assert opus_input_rate(result.audio) == 16_000
    probed_ms = float(info["format"]["duration"]) * 1000
    assert abs(probed_ms - result.duration_ms) < 100
    assert result.sha256 == hashlib.sha256(result.audio).hexdigest()
    bits_per_second = len(result.audio) * 8 / (result.duration_ms / 1000)
    assert bits_per_second < 32_000


async def test_mandarin_notice(renderer: AnnouncementRenderer, tmp_path: pathlib.Path) -> None:
    result = await renderer.render(notice())
    assert result.voices == ("espeak-ng:cmn-latn-pinyin",)
    assert_announcement_format(result, tmp_path)
    # Leading silence, then chime, then speech: at least several seconds of it.
    assert result.duration_ms > 5000


async def test_mandarin_and_cantonese(
    renderer: AnnouncementRenderer, espeak: CountingEspeak, tmp_path: pathlib.Path
) -> None:
    cmn = await renderer.render(notice())
    both = await renderer.render(notice(languages=("cmn", "yue")))
    assert both.voices == ("espeak-ng:cmn-latn-pinyin", "espeak-ng:yue")
    assert_announcement_format(both, tmp_path)
    assert both.duration_ms > cmn.duration_ms + 3000
    assert [lang for _, lang in espeak.calls] == ["cmn", "yue"]  # Mandarin reused from cache


async def test_text_is_normalised_before_synthesis(
    renderer: AnnouncementRenderer, espeak: CountingEspeak
) -> None:
    await renderer.render(notice())
    ((spoken, _),) = espeak.calls
    assert "9" not in spoken
    assert "九点" in spoken


async def test_drill_is_framed_and_longer(
    renderer: AnnouncementRenderer, espeak: CountingEspeak, tmp_path: pathlib.Path
) -> None:
    real = await renderer.render(flood(repeat=1))
    drill = await renderer.render(flood(repeat=1, drill=True))
    assert_announcement_format(drill, tmp_path)
    assert drill.duration_ms > real.duration_ms + 2000
    assert drill.sha256 != real.sha256
    spoken = [text for text, _ in espeak.calls]
    assert DRILL_START["cmn"] in spoken
    assert DRILL_END["cmn"] in spoken

    both = await renderer.render(flood(repeat=1, drill=True, languages=("cmn", "yue")))
    assert both.duration_ms > drill.duration_ms
    assert (DRILL_START["yue"], "yue") in espeak.calls
    assert (DRILL_END["yue"], "yue") in espeak.calls


async def test_emergency_repeats_three_times_by_default(
    renderer: AnnouncementRenderer,
) -> None:
    once = await renderer.render(flood(repeat=1))
    default = await renderer.render(flood())
    assert default == await renderer.render(flood(repeat=3))
    fixed = (
        audio.LEAD_SILENCE_MS
        + len(tones.emergency_alert(2))
        + audio.AFTER_SIGNAL_MS
        + audio.TAIL_SILENCE_MS
    )
    speech_ms = once.duration_ms - fixed
    expected = fixed + 3 * speech_ms + 2 * audio.BETWEEN_REPEATS_MS
    assert abs(default.duration_ms - expected) <= 3


async def test_level_changes_the_signal_not_the_speech(
    renderer: AnnouncementRenderer, espeak: CountingEspeak
) -> None:
    level1 = await renderer.render(flood(level=1, repeat=1))
    level4 = await renderer.render(flood(level=4, repeat=1))
    assert level1.sha256 != level4.sha256
    difference = len(tones.emergency_alert(1)) - len(tones.emergency_alert(4))
    assert abs((level1.duration_ms - level4.duration_ms) - difference) <= 2
    assert len(espeak.calls) == 1


async def test_loudness_is_normalised(
    renderer: AnnouncementRenderer, tmp_path: pathlib.Path
) -> None:
    for request in (notice(), flood(repeat=1), notice(languages=("yue",))):
        result = await renderer.render(request)
        assert loudness(result.audio, tmp_path) == pytest.approx(
            audio.LOUDNESS_TARGET_LUFS, abs=1.5
        )


async def test_cache_hit_returns_identical_bytes_without_synthesis(
    tmp_path: pathlib.Path, espeak: CountingEspeak
) -> None:
    cache = tmp_path / "cache"
    first = await AnnouncementRenderer(
        cache_dir=cache, backend_order=("espeak-ng",), backends=[espeak]
    ).render(flood(drill=True))
    calls = len(espeak.calls)
    assert list((cache / "announcements").rglob("*.ogg"))
    # A new renderer (as after a controller restart) finds it on disk.
    again = AnnouncementRenderer(cache_dir=cache, backend_order=("espeak-ng",), backends=[espeak])
    second = await again.render(flood(drill=True))
    assert second == first
    assert len(espeak.calls) == calls


async def test_concurrent_identical_requests_render_once(
    renderer: AnnouncementRenderer, espeak: CountingEspeak
) -> None:
    results = await asyncio.gather(*(renderer.render(flood()) for _ in range(4)))
    assert len({r.sha256 for r in results}) == 1
    assert len(espeak.calls) == 1


async def test_damaged_cache_is_rendered_again_identically(
    renderer: AnnouncementRenderer, tmp_path: pathlib.Path
) -> None:
    first = await renderer.render(notice())
    (ogg,) = (tmp_path / "cache" / "announcements").rglob("*.ogg")
    ogg.write_bytes(first.audio[: len(first.audio) // 2])
    second = await renderer.render(notice())
    # Same input, same bytes: the encoder runs bit-exact, so a re-render hashes the same.
    assert second == first
    assert ogg.read_bytes() == first.audio


async def test_output_is_deterministic_across_caches(tmp_path: pathlib.Path) -> None:
    results = [
        await AnnouncementRenderer(cache_dir=tmp_path / name, backend_order=("espeak-ng",)).render(
            notice()
        )
        for name in ("a", "b")
    ]
    assert results[0].sha256 == results[1].sha256


async def test_no_temporary_files_are_left(
    renderer: AnnouncementRenderer, tmp_path: pathlib.Path
) -> None:
    await renderer.render(flood(languages=("cmn", "yue"), drill=True))
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


class FakeFailingEdge:
    """A FAKE edge-tts backend that is down (the real library is tested in test_speech_edge)."""

    name = "edge-tts"

    def voice_for(self, lang: str) -> str:
        return "zh-CN-XiaoxiaoNeural"

    async def synthesize(self, text: str, *, lang: str, rate: int):  # type: ignore[no-untyped-def]
        raise SynthesisError("fake HTTP 503")


async def test_repeats_during_an_outage_cost_nothing(
    tmp_path: pathlib.Path, espeak: CountingEspeak, monkeypatch: pytest.MonkeyPatch
) -> None:
    encodes: list[int] = []
    real_encode = audio.encode_ogg_opus

    async def counting_encode(segment):  # type: ignore[no-untyped-def]
        encodes.append(len(segment))
        return await real_encode(segment)

    monkeypatch.setattr(audio, "encode_ogg_opus", counting_encode)
    renderer = AnnouncementRenderer(
        cache_dir=tmp_path / "cache", backends=[FakeFailingEdge(), espeak]
    )
    first = await renderer.render(flood())
    assert first.voices == ("espeak-ng:cmn-latn-pinyin",)
    assert await renderer.render(flood()) == first
    assert len(encodes) == 1
    assert len(espeak.calls) == 1
    # Once the online voice is due for another try, the stand-in render is not served.
    renderer.backend_retry_after_s = 0
    assert await renderer.render(flood()) == first
    assert len(encodes) == 2
