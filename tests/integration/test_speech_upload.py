"""Uploaded recordings: the formats phones and PCs produce are accepted and brought to the
announcement format; anything else is refused with a reason, never half-played."""

from __future__ import annotations

import pathlib
import random
import re
import subprocess
import wave

import pytest

from controller.speech import UnsupportedAudio, normalise_upload
from controller.speech import render as audio

SPEECH = "各位村民请注意，本周六上午在村文化广场举行反诈骗宣传活动，欢迎大家参加。"


@pytest.fixture(scope="module")
def source_wav(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("upload") / "source.wav"
    subprocess.run(["espeak-ng", "-v", "cmn-latn-pinyin", "-w", str(path), SPEECH], check=True)
    return path


def ffmpeg(source: pathlib.Path, target: pathlib.Path, *args: str) -> bytes:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(source), *args, str(target)],
        check=True,
    )
    return target.read_bytes()


def amr_nb(frames: int, seed: int = 7) -> bytes:
    """An AMR-NB file built by hand: this ffmpeg has the AMR decoders but no encoder.
    Mode 7 (12.2 kbit/s) frames: one header byte and 31 bytes of (arbitrary) speech bits."""
    rng = random.Random(seed)
    return b"#!AMR\n" + b"".join(bytes([0x3C]) + rng.randbytes(31) for _ in range(frames))


def amr_wb(frames: int, seed: int = 7) -> bytes:
    """AMR-WB likewise: mode 8 (23.85 kbit/s) frames of one header byte and 60 bytes."""
    rng = random.Random(seed)
    return b"#!AMR-WB\n" + b"".join(bytes([0x44]) + rng.randbytes(60) for _ in range(frames))


FORMATS = {
    "wav": ("in.wav", ()),
    "mp3": ("in.mp3", ("-c:a", "libmp3lame", "-b:a", "64k")),
    "mp3-cbr-no-xing": ("in2.mp3", ("-c:a", "libmp3lame", "-b:a", "32k", "-write_xing", "0")),
    "ogg-opus": ("in.ogg", ("-c:a", "libopus", "-b:a", "32k")),
    "m4a": ("in.m4a", ("-c:a", "aac", "-b:a", "64k")),
    "aac-adts": ("in.aac", ("-c:a", "aac", "-b:a", "64k", "-f", "adts")),
    # What a browser's MediaRecorder uploads from the console.
    "webm-opus": ("in.webm", ("-c:a", "libopus", "-b:a", "32k")),
}


def loudness(data: bytes, tmp_path: pathlib.Path) -> float:
    path = tmp_path / "out.ogg"
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


@pytest.mark.parametrize("kind", FORMATS)
async def test_common_formats_are_accepted(
    kind: str, source_wav: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    name, args = FORMATS[kind]
    data = ffmpeg(source_wav, tmp_path / name, *args)
    result = await normalise_upload(data)
    assert result.mime == "audio/ogg"
    assert result.audio.startswith(b"OggS")
    assert result.voices == ("upload",)
    with wave.open(str(source_wav), "rb") as w:
        source_ms = w.getnframes() * 1000 / w.getframerate()
    padding = audio.LEAD_SILENCE_MS + audio.TAIL_SILENCE_MS
    assert abs(result.duration_ms - (source_ms + padding)) < 150
    assert len(result.audio) * 8 / (result.duration_ms / 1000) < 32_000


@pytest.mark.parametrize("data", [amr_nb(150), amr_wb(150)], ids=["amr-nb", "amr-wb"])
async def test_amr_is_accepted(data: bytes) -> None:
    result = await normalise_upload(data)
    assert 3000 + 500 <= result.duration_ms <= 3000 + 1000


async def test_quiet_recording_is_brought_to_the_common_level(
    source_wav: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    quiet = ffmpeg(source_wav, tmp_path / "quiet.wav", "-af", "volume=-30dB")
    result = await normalise_upload(quiet)
    assert loudness(result.audio, tmp_path) == pytest.approx(audio.LOUDNESS_TARGET_LUFS, abs=1.5)


@pytest.mark.parametrize("kind", ["wav", "mp3", "mp3-cbr-no-xing", "ogg-opus", "m4a", "aac-adts"])
async def test_truncated_files_are_refused(
    kind: str, source_wav: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    name, args = FORMATS[kind]
    data = ffmpeg(source_wav, tmp_path / name, *args)
    with pytest.raises(UnsupportedAudio, match="corrupt or incomplete"):
        await normalise_upload(data[: len(data) * 6 // 10])


async def test_truncated_amr_is_refused() -> None:
    data = amr_nb(150)
    with pytest.raises(UnsupportedAudio, match="corrupt or incomplete"):
        await normalise_upload(data[: len(data) // 2 + 5])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, this is not audio\n" * 100, "not a recognised audio file"),
        (b"\x89PNG\r\n\x1a\n" + bytes(2000), "not a recognised audio file"),
        (random.Random(3).randbytes(50_000), "not a recognised audio file"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt " + random.Random(4).randbytes(5000), "corrupt"),
        (b"OggS" + random.Random(5).randbytes(5000), "corrupt"),
        (b"ID3" + random.Random(6).randbytes(5000), "corrupt"),
    ],
    ids=["empty", "text", "png", "noise-bytes", "bad-wav", "bad-ogg", "bad-mp3"],
)
async def test_garbage_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(UnsupportedAudio, match=reason) as caught:
        await normalise_upload(data)
    assert isinstance(caught.value, ValueError)
    assert caught.value.reason == str(caught.value)


async def test_too_big_is_refused_before_decoding(source_wav: pathlib.Path) -> None:
    data = ffmpeg(source_wav, source_wav.with_name("big.wav"))
    with pytest.raises(UnsupportedAudio, match=r"limit is 0\.1 MB"):
        await normalise_upload(data, max_bytes=100_000)


async def test_too_long_is_refused(source_wav: pathlib.Path, tmp_path: pathlib.Path) -> None:
    data = ffmpeg(source_wav, tmp_path / "long.wav")
    with pytest.raises(UnsupportedAudio, match="longer than the limit of 2 seconds"):
        await normalise_upload(data, max_duration_s=2)
    # A stream that declares no length is caught while decoding.
    adts = ffmpeg(source_wav, tmp_path / "x.aac", "-c:a", "aac", "-f", "adts")
    with pytest.raises(UnsupportedAudio, match="longer than the limit"):
        await normalise_upload(adts, max_duration_s=2)


def silence_wav(path: pathlib.Path) -> bytes:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono",
         "-t", "3", str(path)],
        check=True,
    )  # fmt: skip
    return path.read_bytes()


async def test_silence_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(UnsupportedAudio, match="silent"):
        await normalise_upload(silence_wav(tmp_path / "silent.wav"))
