"""Voice fallback order, exercised with fake backends (no network, no espeak-ng)."""

from __future__ import annotations

import asyncio
import pathlib

import pytest
from pydub import AudioSegment
from pydub.generators import Sine

from controller.speech import AnnouncementRenderer, AnnouncementRequest
from controller.speech.backends import (
    EdgeTTSBackend,
    EspeakBackend,
    SpeechBackend,
    SynthesisError,
)
from controller.speech.service import SpeechUnavailable


class FakeBackend:
    """A FAKE speech backend: a short tone per phrase, behaviour chosen by the test."""

    def __init__(
        self, name: str, behaviour: str = "ok", *, langs: tuple[str, ...] = ("cmn", "yue")
    ) -> None:
        self.name = name
        self.behaviour = behaviour  # "ok" | "fail" | "hang" | "crash" | "fail-second"
        self.langs = langs
        self.calls: list[tuple[str, str]] = []

    def voice_for(self, lang: str) -> str:
        if lang not in self.langs:
            raise SynthesisError(f"{self.name} has no {lang} voice")
        return f"fake-{lang}"

    async def synthesize(self, text: str, *, lang: str, rate: int) -> AudioSegment:
        self.calls.append((text, lang))
        if self.behaviour == "fail":
            raise SynthesisError("fake outage (HTTP 503)")
        if self.behaviour == "hang":
            await asyncio.Event().wait()
        if self.behaviour == "crash":
            raise RuntimeError("fake bug")
        if self.behaviour == "fail-second" and len(self.calls) > 1:
            raise SynthesisError("fake failure on the second phrase")
        return Sine(440 + len(self.calls)).to_audio_segment(duration=150)


def make(tmp_path: pathlib.Path, *backends: FakeBackend, **kwargs: float) -> AnnouncementRenderer:
    return AnnouncementRenderer(
        cache_dir=tmp_path,
        backend_order=[b.name for b in backends],
        backends=list(backends),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_first_backend_speaks_when_it_works(tmp_path: pathlib.Path) -> None:
    online, offline = FakeBackend("online"), FakeBackend("offline")
    spoken = await make(tmp_path, online, offline).speak("cmn", ["请注意。"])
    assert spoken.voice == "online:fake-cmn"
    assert spoken.preferred
    assert offline.calls == []


@pytest.mark.parametrize("behaviour", ["fail", "crash", "hang"])
async def test_next_backend_takes_over(tmp_path: pathlib.Path, behaviour: str) -> None:
    online, offline = FakeBackend("online", behaviour), FakeBackend("offline")
    renderer = make(tmp_path, online, offline, synthesis_timeout_s=0.2)
    spoken = await renderer.speak("cmn", ["请注意。", "以上是演练。"])
    assert spoken.voice == "offline:fake-cmn"
    assert not spoken.preferred
    assert len(spoken.segments) == 2
    assert len(offline.calls) == 2


async def test_failed_backend_rests_then_is_tried_again(tmp_path: pathlib.Path) -> None:
    online, offline = FakeBackend("online", "fail"), FakeBackend("offline")
    renderer = make(tmp_path, online, offline, backend_retry_after_s=3600)
    await renderer.speak("cmn", ["一。"])
    assert len(online.calls) == 1
    # While it rests, the failed backend costs nothing: no second timeout per phrase.
    spoken = await renderer.speak("cmn", ["二。"])
    assert spoken.voice == "offline:fake-cmn"
    assert len(online.calls) == 1

    renderer.backend_retry_after_s = 0
    online.behaviour = "ok"
    spoken = await renderer.speak("cmn", ["三。"])
    assert spoken.voice == "online:fake-cmn"


async def test_resting_backend_is_the_last_resort(tmp_path: pathlib.Path) -> None:
    online, offline = FakeBackend("online", "fail"), FakeBackend("offline")
    renderer = make(tmp_path, online, offline, backend_retry_after_s=3600)
    await renderer.speak("cmn", ["一。"])
    online.behaviour, offline.behaviour = "ok", "fail"
    spoken = await renderer.speak("cmn", ["二。"])
    assert spoken.voice == "online:fake-cmn"


async def test_all_failing_names_every_reason(tmp_path: pathlib.Path) -> None:
    renderer = make(tmp_path, FakeBackend("online", "fail"), FakeBackend("offline", "crash"))
    with pytest.raises(SpeechUnavailable) as caught:
        await renderer.speak("cmn", ["请注意。"])
    message = str(caught.value)
    assert "online: fake outage (HTTP 503)" in message
    assert "offline: RuntimeError: fake bug" in message


async def test_one_voice_per_language(tmp_path: pathlib.Path) -> None:
    online, offline = FakeBackend("online", "fail-second"), FakeBackend("offline")
    renderer = make(tmp_path, online, offline)
    # Concurrent phrases: the online voice manages one and fails the other; the whole
    # language then comes from the offline voice rather than a mix of the two.
    spoken = await renderer.speak("cmn", ["一。", "二。"])
    assert spoken.voice == "offline:fake-cmn"
    assert sorted(text for text, _ in offline.calls) == ["一。", "二。"]


async def test_language_without_a_voice_goes_to_the_next(tmp_path: pathlib.Path) -> None:
    online, offline = FakeBackend("online", langs=("cmn",)), FakeBackend("offline")
    spoken = await make(tmp_path, online, offline).speak("yue", ["以上係演練。"])
    assert spoken.voice == "offline:fake-yue"
    assert online.calls == []
    # Not a stand-in: nobody better could have spoken Cantonese.
    assert spoken.preferred


async def test_cached_speech_survives_an_outage(tmp_path: pathlib.Path) -> None:
    online, offline = FakeBackend("online"), FakeBackend("offline")
    before = await make(tmp_path, online, offline).speak("cmn", ["洪水预警。"])
    online.behaviour = "fail"
    after = await make(tmp_path, online, offline).speak("cmn", ["洪水预警。"])
    assert after.voice == "online:fake-cmn"
    assert len(online.calls) == 1
    assert offline.calls == []
    assert after.segments[0].raw_data == before.segments[0].raw_data


async def test_damaged_segment_cache_is_a_miss(tmp_path: pathlib.Path) -> None:
    online = FakeBackend("online")
    await make(tmp_path, online).speak("cmn", ["洪水预警。"])
    for path in (tmp_path / "segments").rglob("*.wav"):
        path.write_bytes(b"RIFF\x00\x00")
    spoken = await make(tmp_path, online).speak("cmn", ["洪水预警。"])
    assert spoken.voice == "online:fake-cmn"
    assert len(online.calls) == 2


def test_unknown_backend_in_order_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="backend_order"):
        AnnouncementRenderer(cache_dir=tmp_path, backend_order=("azure",))


def test_real_backends_satisfy_the_interface() -> None:
    for backend in (EdgeTTSBackend(), EspeakBackend(), FakeBackend("fake")):
        assert isinstance(backend, SpeechBackend)
    assert EspeakBackend().voice_for("cmn") == "cmn-latn-pinyin"
    assert EspeakBackend().voice_for("yue") == "yue"
    assert EdgeTTSBackend().voice_for("yue") == "zh-HK-HiuGaaiNeural"


async def test_resting_backend_still_serves_its_cache(tmp_path: pathlib.Path) -> None:
    online, offline = FakeBackend("online"), FakeBackend("offline")
    renderer = make(tmp_path, online, offline, backend_retry_after_s=3600)
    await renderer.speak("cmn", ["洪水预警。"])
    online.behaviour = "fail"
    await renderer.speak("cmn", ["新的通知。"])  # fails over, online now rests
    calls = len(online.calls)
    spoken = await renderer.speak("cmn", ["洪水预警。"])
    assert spoken.voice == "online:fake-cmn"
    assert len(online.calls) == calls


async def test_missing_voice_is_not_a_failure(tmp_path: pathlib.Path) -> None:
    online, offline = FakeBackend("online", langs=("cmn",)), FakeBackend("offline")
    renderer = make(tmp_path, online, offline, backend_retry_after_s=3600)
    await renderer.speak("yue", ["以上係演練。"])
    spoken = await renderer.speak("cmn", ["以上是演练。"])
    assert spoken.voice == "online:fake-cmn"


async def test_render_reports_speech_unavailable(tmp_path: pathlib.Path) -> None:
    renderer = make(tmp_path, FakeBackend("online", "fail"), FakeBackend("offline", "fail"))
    request = AnnouncementRequest(
        text="请注意。", category="other", priority="notice", languages=("cmn", "yue")
    )
    with pytest.raises(SpeechUnavailable, match="no voice could speak"):
        await renderer.render(request)
