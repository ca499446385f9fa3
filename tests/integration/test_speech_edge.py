"""The real edge-tts library against a local stand-in of the read-aloud service.

Only the service address is changed (`edge_tts.communicate.WSS_URL`, to ws://); the
library's own protocol code, DRM token and 403 retry run unmodified. See
`edge_tts_standin.py` for what the stand-in emulates.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import AsyncIterator

import edge_tts.communicate
import pytest
from edge_tts.drm import DRM
from edge_tts_standin import EdgeTTSStandIn, Mode

from controller.speech import AnnouncementRenderer, AnnouncementRequest

TEXT = "各位村民请注意，今天下午3点停水，请提前储水。"
EDGE_CMN = "edge-tts:zh-CN-XiaoxiaoNeural"
EDGE_YUE = "edge-tts:zh-HK-HiuGaaiNeural"
ESPEAK_CMN = "espeak-ng:cmn-latn-pinyin"
ESPEAK_YUE = "espeak-ng:yue"


@pytest.fixture
async def standin(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[EdgeTTSStandIn]:
    """A running stand-in (mode "ok"; tests switch `.mode`), with the library aimed at it."""
    # A 403 makes the library correct its clock skew globally; keep that inside the test.
    monkeypatch.setattr(DRM, "clock_skew_seconds", DRM.clock_skew_seconds)
    async with EdgeTTSStandIn("ok") as server:
        monkeypatch.setattr(edge_tts.communicate, "WSS_URL", server.wss_url)
        yield server


def notice(**kwargs: object) -> AnnouncementRequest:
    return AnnouncementRequest(text=TEXT, category="other", priority="notice", **kwargs)  # type: ignore[arg-type]


def renderer(tmp_path: pathlib.Path, **kwargs: object) -> AnnouncementRenderer:
    return AnnouncementRenderer(cache_dir=tmp_path / "cache", edge_timeout_s=1.0, **kwargs)  # type: ignore[arg-type]


async def test_edge_voice_is_used_and_recorded(
    standin: EdgeTTSStandIn, tmp_path: pathlib.Path
) -> None:
    result = await renderer(tmp_path).render(notice(languages=("cmn", "yue")))
    assert result.voices == (EDGE_CMN, EDGE_YUE)
    assert result.audio.startswith(b"OggS")
    assert len(result.audio) * 8 / (result.duration_ms / 1000) < 32_000
    seen = {s.voice: s for s in standin.seen}
    cmn = seen["Microsoft Server Speech Text to Speech Voice (zh-CN, XiaoxiaoNeural)"]
    assert "zh-HK" in " ".join(seen)
    # What reached the service was normalised text at the configured rate.
    assert "三点" in cmn.text
    assert cmn.rate == "-5%"
    assert cmn.config["context"]["synthesis"]["audio"]["outputFormat"] == (
        "audio-24khz-48kbitrate-mono-mp3"
    )
    assert "Sec-MS-GEC" in cmn.query


async def test_configured_voice(standin: EdgeTTSStandIn, tmp_path: pathlib.Path) -> None:
    r = renderer(tmp_path, edge_voices={"cmn": "zh-CN-YunxiNeural", "yue": "zh-HK-HiuGaaiNeural"})
    result = await r.render(notice())
    assert result.voices == ("edge-tts:zh-CN-YunxiNeural",)
    assert "YunxiNeural" in standin.seen[0].voice


@pytest.mark.parametrize("mode", ["http403", "http503", "close", "hang"])
async def test_offline_voice_takes_over(
    standin: EdgeTTSStandIn, tmp_path: pathlib.Path, mode: Mode
) -> None:
    standin.mode = mode
    started = time.monotonic()
    result = await renderer(tmp_path).render(notice(languages=("cmn", "yue"), drill=True))
    elapsed = time.monotonic() - started
    assert result.voices == (ESPEAK_CMN, ESPEAK_YUE)
    assert standin.connections >= 1  # the library really tried the service
    if mode == "http403":
        # The library's own recovery: adjust the clock from the Date header, retry once.
        assert standin.connections >= 2
    # Generous bound: one 1 s edge-tts timeout plus rendering, never a timeout per phrase.
    assert elapsed < 15


async def test_edge_voice_returns_after_an_outage(
    standin: EdgeTTSStandIn, tmp_path: pathlib.Path
) -> None:
    r = renderer(tmp_path, backend_retry_after_s=0)
    standin.mode = "http503"
    degraded = await r.render(notice())
    assert degraded.voices == (ESPEAK_CMN,)
    standin.mode = "ok"
    restored = await r.render(notice())
    assert restored.voices == (EDGE_CMN,)
    assert await r.render(notice()) == restored


async def test_cached_edge_speech_survives_an_outage(
    standin: EdgeTTSStandIn, tmp_path: pathlib.Path
) -> None:
    await renderer(tmp_path).render(notice())
    standin.mode = "http503"
    connections = standin.connections
    # A different announcement (a drill) built from the same sentence: the sentence
    # comes from the segment cache in the edge voice; only the framing is new.
    r = renderer(tmp_path)
    same = await r.render(notice())
    assert same.voices == (EDGE_CMN,)
    assert standin.connections == connections
    drill = await r.render(notice(drill=True))
    assert drill.voices == (ESPEAK_CMN,)  # the framing phrases were never cached
