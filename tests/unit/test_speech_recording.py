"""A recording laid out as an emergency (`AnnouncementRenderer.render_recording`), with a
FAKE speech backend for the drill framing and real ffmpeg for the audio: the framing is
spoken only for a drill, the recording is repeated, the result is cached by everything
that changes the sound, and a fallback voice is named."""

from __future__ import annotations

import io
import pathlib

from pydub.generators import Sine

from controller.speech import normalise_upload
from controller.speech.service import DRILL_END, DRILL_START
from tests.unit.test_speech_fallback import FakeBackend, make

RECORDING_MS = 2000


async def recording() -> bytes:
    """An uploaded recording as stored: a tone brought to the announcement format."""
    tone = Sine(2300).to_audio_segment(duration=RECORDING_MS).set_frame_rate(16000)
    buf = io.BytesIO()
    tone.set_sample_width(2).export(buf, format="wav")
    return (await normalise_upload(buf.getvalue())).audio


async def test_drill_framing_is_spoken_around_the_repeated_recording(
    tmp_path: pathlib.Path,
) -> None:
    voice = FakeBackend("online")
    renderer = make(tmp_path, voice)
    audio = await recording()
    common = {"recording_sha256": "a" * 64, "priority": "emergency", "level": 2}

    real = await renderer.render_recording(audio, drill=False, repeat=1, **common)
    assert real.voices == ("upload",) and voice.calls == []  # nothing spoken
    twice = await renderer.render_recording(audio, drill=False, repeat=2, **common)
    # One more recording (it carries 800 ms of padding from the upload) and a pause.
    assert twice.duration_ms - real.duration_ms >= RECORDING_MS

    drill = await renderer.render_recording(audio, drill=True, repeat=1, **common)
    assert drill.voices == ("upload", "online:fake-cmn")
    spoken = [text for text, _lang in voice.calls]
    assert len(spoken) == 2 and "演练" in spoken[0] and "演练" in spoken[1]
    assert spoken[0].startswith(DRILL_START["cmn"][:4]) and spoken[1] == DRILL_END["cmn"]
    assert drill.duration_ms > real.duration_ms + 2 * 150  # the two framing phrases


async def test_cached_by_recording_level_and_drill(tmp_path: pathlib.Path) -> None:
    voice = FakeBackend("online")
    renderer = make(tmp_path, voice)
    audio = await recording()
    common = {"priority": "emergency", "drill": True, "repeat": 1}
    first = await renderer.render_recording(audio, recording_sha256="a" * 64, level=3, **common)
    calls = len(voice.calls)
    again = await renderer.render_recording(audio, recording_sha256="a" * 64, level=3, **common)
    assert again.sha256 == first.sha256 and len(voice.calls) == calls  # from the cache
    other_level = await renderer.render_recording(
        audio, recording_sha256="a" * 64, level=1, **common
    )
    assert other_level.sha256 != first.sha256  # another attention signal
    other_take = await renderer.render_recording(
        audio, recording_sha256="b" * 64, level=3, **common
    )
    assert other_take.sha256 == first.sha256  # same sound, whatever its key...
    assert len(list((tmp_path / "announcements").rglob("*.ogg"))) == 3  # ...stored apart


async def test_framing_in_a_fallback_voice_is_named(tmp_path: pathlib.Path) -> None:
    online, offline = FakeBackend("online", "fail"), FakeBackend("offline")
    renderer = make(tmp_path, online, offline)
    result = await renderer.render_recording(
        await recording(),
        recording_sha256="c" * 64,
        priority="emergency",
        level=4,
        drill=True,
    )
    assert result.voices == ("upload", "offline:fake-cmn")
