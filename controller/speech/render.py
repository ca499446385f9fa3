"""Audio pipeline: compose, loudness-normalise and encode announcements; accept uploads.

Everything leaves here in one shape: Ogg/Opus, mono, 16 kHz, about 24 kbit/s, tuned for
speech (`-application voip`), loudness-normalised to the same target so that a notice,
an emergency and an uploaded recording play at the same perceived level on a pole.
Small horn loudspeakers reproduce nothing below ~150 Hz, so a high-pass removes energy
they would only turn into distortion.

ffmpeg runs as an asyncio subprocess and pydub's pure-Python work runs in a worker thread,
so a render never blocks the controller's event loop. The output is bit-exact for the
same input (`-fflags +bitexact` fixes the Ogg stream serial), so the same announcement
always hashes the same.

Every ffmpeg and ffprobe run here reads its input from stdin with its format forced and
`pipe` as the only protocol allowed: our own PCM as `s16le`, anything from outside
(uploads, the edge-tts stream) in the container `sniff` found. No run is ever given a
path, a URL or a list of files, so no input can make it open anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import re
import struct
from collections.abc import Sequence

from pydub import AudioSegment

from controller.speech.sniff import (
    MP3,
    MP4,
    OGG,
    WAV,
    Container,
    UnsupportedAudio,
    after_id3,
    ffmpeg_input,
    mpeg_frame_length,
    sniff,
    streamable_mp4,
)
from controller.speech.types import RenderedAnnouncement

# Bump whenever anything that changes the sound changes (tones, timings, filters, codec
# settings): it is part of every cache key, so old cached audio is simply not found.
RENDER_VERSION = "1"

SAMPLE_RATE = 16_000
OPUS_BITRATE = "24k"
# libopus at its default complexity 10 takes twice as long for no difference a horn
# loudspeaker can reproduce; 5 keeps a one-minute notice well under a second to encode.
OPUS_COMPLEXITY = 5
MIME = "audio/ogg"
LOUDNESS_TARGET_LUFS = -16.0
TRUE_PEAK_DBTP = -1.5
# Opus at 24 kbit/s overshoots sample peaks by up to about two decibels once decoded, so
# the limiter aims lower; decoded peaks stay below full scale.
LIMITER_CEILING_DBFS = TRUE_PEAK_DBTP - 1.0
HIGHPASS_HZ = 120
FFMPEG = "ffmpeg"

# Every part is brought to this level before mixing (see `level_match`); the signal sits
# a little below the speech because a steady tone sounds louder than speech of equal RMS.
PART_LEVEL_DBFS = -20.0
SIGNAL_LEVEL_DB = -3.0

# Timings of a spoken announcement, in milliseconds.
LEAD_SILENCE_MS = 500  # an amplifier waking from standby must not cut the first word
AFTER_SIGNAL_MS = 500
BETWEEN_LANGUAGES_MS = 700
BETWEEN_REPEATS_MS = 1500
AROUND_DRILL_FRAME_MS = 600
TAIL_SILENCE_MS = 300

MAX_UPLOAD_BYTES = 20_000_000
MAX_UPLOAD_DURATION_S = 600.0
# Uploads shorter than this are almost always a mis-tap on the record button.
MIN_UPLOAD_DURATION_MS = 300


class FFmpegError(RuntimeError):
    """ffmpeg failed on input that should have been valid (our own PCM)."""


async def _run(args: Sequence[str], stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate(stdin)
    finally:
        if proc.returncode is None:  # cancelled: do not leave ffmpeg behind
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err


def _pcm16(segment: AudioSegment) -> AudioSegment:
    return segment.set_channels(1).set_frame_rate(SAMPLE_RATE).set_sample_width(2)


def silence(ms: int) -> AudioSegment:
    return AudioSegment.silent(duration=ms, frame_rate=SAMPLE_RATE)


def concat(parts: Sequence[AudioSegment]) -> AudioSegment:
    """Join segments after bringing them to one format (16 kHz mono 16-bit)."""
    out = silence(0)
    for part in parts:
        out += _pcm16(part)
    return out


def gated_level_dbfs(segment: AudioSegment, block_ms: int = 100) -> float:
    """RMS level of the active parts only (pauses gated out), in dBFS.

    A cheap stand-in for loudness that is good enough to balance the pieces of one
    announcement against each other; the absolute level is set later in R128 terms.
    """
    powers = []
    for start in range(0, len(segment), block_ms):
        rms = segment[start : start + block_ms].rms
        if rms > 0:
            powers.append((rms / segment.max_possible_amplitude) ** 2)
    active = [p for p in powers if p > 1e-6]  # -60 dBFS absolute gate
    if not active:
        return -math.inf
    mean = sum(active) / len(active)
    active = [p for p in active if p > mean / 30]  # about -15 dB relative gate
    return 10 * math.log10(sum(active) / len(active))


def level_match(segment: AudioSegment, target_dbfs: float = PART_LEVEL_DBFS) -> AudioSegment:
    """Bring a part (tone, phrase) to a common level without clipping it.

    Voices differ by several dB (espeak-ng is much hotter than edge-tts); without this
    the loudness normalisation of the whole would keep the imbalance between them.
    """
    level = gated_level_dbfs(segment)
    if not math.isfinite(level):
        return segment
    headroom = -1.0 - segment.max_dBFS
    return segment.apply_gain(min(target_dbfs - level, headroom))


def compose_announcement(
    *,
    signal: AudioSegment,
    speech: Sequence[AudioSegment],
    repeat: int,
    drill_start: Sequence[AudioSegment] = (),
    drill_end: Sequence[AudioSegment] = (),
) -> AudioSegment:
    """Lay out one announcement.

    lead silence, attention signal, [drill notice in each language], the speech in each
    language in order, repeated `repeat` times with a pause, [drill end in each
    language], a short tail.
    """
    signal = level_match(signal, PART_LEVEL_DBFS + SIGNAL_LEVEL_DB)
    speech = [level_match(s) for s in speech]
    drill_start = [level_match(s) for s in drill_start]
    drill_end = [level_match(s) for s in drill_end]
    parts: list[AudioSegment] = [silence(LEAD_SILENCE_MS), signal, silence(AFTER_SIGNAL_MS)]
    for frame in drill_start:
        parts += [frame, silence(AROUND_DRILL_FRAME_MS)]
    for r in range(repeat):
        if r:
            parts.append(silence(BETWEEN_REPEATS_MS))
        for i, spoken in enumerate(speech):
            if i:
                parts.append(silence(BETWEEN_LANGUAGES_MS))
            parts.append(spoken)
    for frame in drill_end:
        parts += [silence(AROUND_DRILL_FRAME_MS), frame]
    parts.append(silence(TAIL_SILENCE_MS))
    return concat(parts)


# Applied before measuring and before encoding, so the measured loudness is that of what
# is encoded. A gentle compressor evens out speech for outdoor listening and leaves the
# final limiter little to do (a limiter working hard would pull the loudness under target).
_SHAPING = (
    f"highpass=f={HIGHPASS_HZ},acompressor=threshold=-24dB:ratio=3:attack=5:release=120:knee=4"
)


def _pcm_input(rate: int = SAMPLE_RATE) -> list[str]:
    return [
        "-f", "s16le", "-ar", str(rate), "-ch_layout", "mono",
        "-format_whitelist", "s16le", "-protocol_whitelist", "pipe", "-i", "pipe:0",
    ]  # fmt: skip


async def measure_loudness(pcm: bytes) -> float:
    """Integrated loudness (EBU R128, LUFS) of 16 kHz mono PCM, after the high-pass.

    The `ebur128` scanner runs at the input rate; `loudnorm` would do the same job but
    oversamples to 192 kHz and costs about ten times as much on a long emergency.
    """
    args = [
        FFMPEG, "-hide_banner", "-nostdin", "-nostats", *_pcm_input(),
        "-af", f"{_SHAPING},ebur128=framelog=verbose", "-f", "null", "-",
    ]  # fmt: skip
    rc, _out, err = await _run(args, stdin=pcm)
    text = err.decode(errors="replace")
    summary = text.rpartition("Summary:")[2]
    match = re.search(r"I:\s*(-?[\d.]+|-inf)\s*LUFS", summary)
    if rc != 0 or match is None:
        raise FFmpegError(f"ffmpeg could not measure loudness: {text[-300:]}")
    value = match.group(1)
    return -math.inf if value == "-inf" else float(value)


def loudness_gain_db(measured_lufs: float) -> float:
    """Gain that brings `measured_lufs` to the target; silence and near-silence stay put."""
    if not math.isfinite(measured_lufs) or measured_lufs < -60:
        return 0.0
    return max(-30.0, min(30.0, LOUDNESS_TARGET_LUFS - measured_lufs))


async def encode_ogg_opus(segment: AudioSegment) -> bytes:
    """Loudness-normalise and encode into Ogg/Opus (16 kHz mono, ~24 kbit/s, voip)."""
    pcm = await asyncio.to_thread(lambda: _pcm16(segment).raw_data)
    gain = loudness_gain_db(await measure_loudness(pcm))
    ceiling = 10 ** (LIMITER_CEILING_DBFS / 20)
    # The limiter catches what peaks the linear gain still pushes over the ceiling;
    # level=false keeps it from undoing the gain.
    limiter = f"alimiter=limit={ceiling:.4f}:level=false:attack=5:release=50"
    args = [
        FFMPEG, "-hide_banner", "-nostdin", "-v", "error", *_pcm_input(),
        "-af", f"{_SHAPING},volume={gain:.2f}dB,{limiter}",
        "-c:a", "libopus", "-b:a", OPUS_BITRATE, "-vbr", "on",
        "-application", "voip", "-compression_level", str(OPUS_COMPLEXITY),
        "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
        "-f", "ogg", "pipe:1",
    ]  # fmt: skip
    rc, out, err = await _run(args, stdin=pcm)
    if rc != 0 or not out.startswith(b"OggS"):
        raise FFmpegError(f"ffmpeg could not encode: {err.decode(errors='replace')[-300:]}")
    return out


def rendered(audio: bytes, duration_ms: int, voices: tuple[str, ...]) -> RenderedAnnouncement:
    return RenderedAnnouncement(
        audio=audio,
        mime=MIME,
        duration_ms=duration_ms,
        voices=voices,
        sha256=hashlib.sha256(audio).hexdigest(),
    )


# --- decoding ---------------------------------------------------------------------------


async def decode_audio(
    data: bytes, *, container: Container | None = None, limit_s: float | None = None
) -> AudioSegment:
    """Decode audio from outside into 16 kHz mono PCM.

    The container is sniffed unless the caller already did (`UnsupportedAudio` if it is
    not plain audio). ffmpeg is told to stop at the first decoding error, which catches
    most corrupt and truncated files instead of half-playing them. Raises ValueError with
    ffmpeg's reason.
    """
    container = container or sniff(data)
    limit = ["-t", f"{limit_s:.3f}"] if limit_s is not None else []
    args = [
        FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-xerror",
        "-err_detect", "crccheck+bitstream+buffer+explode",
        *ffmpeg_input(container), *limit, "-map", "0:a:0", "-vn",
        "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "s16le", "pipe:1",
    ]  # fmt: skip
    rc, out, err = await _run(args, stdin=_streamable(container, data))
    if rc != 0 or err.strip():
        raise ValueError(_reason(err) or f"ffmpeg exited with {rc}")
    return await asyncio.to_thread(
        lambda: AudioSegment(data=out, sample_width=2, frame_rate=SAMPLE_RATE, channels=1)
    )


def _streamable(container: Container, data: bytes) -> bytes:
    return streamable_mp4(data) if container is MP4 else data


def _reason(stderr: bytes) -> str:
    """ffmpeg's last complaint, without its internal addresses or the name of its input."""
    lines = stderr.decode(errors="replace").strip().splitlines()
    if not lines:
        return ""
    line = re.sub(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*", "", lines[-1])
    return line.replace("pipe:0: ", "").replace("pipe:0", "the file")


async def probe_duration_s(data: bytes, container: Container) -> float | None:
    """The duration the container declares (None if it declares none, or if it can only
    be found by seeking, which a pipe cannot: see `wav_declared_s`)."""
    args = [
        "ffprobe", "-hide_banner", "-v", "error", *ffmpeg_input(container),
        "-select_streams", "a:0", "-show_entries", "format=duration:stream=codec_type",
        "-of", "json",
    ]  # fmt: skip
    rc, out, err = await _run(args, stdin=_streamable(container, data))
    if rc != 0:
        raise ValueError(_reason(err) or f"ffprobe exited with {rc}")
    info = json.loads(out or b"{}")
    if not info.get("streams"):
        raise ValueError("no audio stream")
    try:
        return float(info["format"]["duration"])
    except (KeyError, TypeError, ValueError):
        return None


def wav_declared_s(data: bytes) -> float | None:
    """The duration a WAV header declares (its data size over its byte rate).

    ffprobe reading a pipe has no file size and reports none, yet this is what catches a
    WAV cut off in transfer. A size of 0 or 0xFFFFFFFF means "unknown" (written by
    streaming encoders), and so does a byte rate of 0.
    """
    byte_rate = 0
    pos = 12
    while pos + 8 <= len(data):
        kind, size = struct.unpack_from("<4sI", data, pos)
        if kind == b"fmt " and size >= 16 and pos + 24 <= len(data):
            (byte_rate,) = struct.unpack_from("<I", data, pos + 16)
        elif kind == b"data":
            if size in (0, 0xFFFFFFFF) or byte_rate == 0:
                return None
            return size / byte_rate
        pos += 8 + size + (size & 1)
    return None


def ogg_is_complete(data: bytes) -> bool:
    """Whether the last Ogg page is whole and marks the end of the stream.

    A finished recording always ends with an end-of-stream page; a file cut off in
    transfer does not, and the Ogg demuxer itself says nothing about it.
    """
    pos = data.rfind(b"OggS")
    if pos < 0 or len(data) < pos + 27:
        return False
    header_type = data[pos + 5]
    segments = data[pos + 26]
    table = data[pos + 27 : pos + 27 + segments]
    if len(table) < segments:
        return False
    return bool(header_type & 0x04) and pos + 27 + segments + sum(table) == len(data)


def mp3_is_complete(data: bytes) -> bool:
    """Whether the last MPEG audio frame is whole.

    A constant-bitrate MP3 without a Xing header declares no length, so a file cut off
    at the end decodes without complaint; its last frame is short, though.
    """
    pos = after_id3(data)
    while (length := mpeg_frame_length(data, pos)) is not None:
        if pos + length > len(data):
            return False
        pos += length
    return True  # the end, or a tag (ID3v1, APE) or trailing junk: not ours to judge


async def normalise_upload(
    data: bytes,
    *,
    max_duration_s: float = MAX_UPLOAD_DURATION_S,
    max_bytes: int = MAX_UPLOAD_BYTES,
) -> RenderedAnnouncement:
    """Check an uploaded recording and bring it to the announcement format.

    Accepts WAV, MP3, Ogg (Vorbis/Opus), WebM, M4A/MP4 and raw AAC (ADTS), AMR-NB/AMR-WB
    (what feature phones record). Raises `UnsupportedAudio` for anything empty, too big,
    not audio, corrupt or truncated, too short or too long, and its `NotPlainAudio` for
    playlists, concat scripts, session descriptions and references to files or URLs.
    """
    if not data:
        raise UnsupportedAudio("the file is empty")
    if len(data) > max_bytes:
        raise UnsupportedAudio(
            f"the file is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB"
        )
    container = sniff(data)
    damaged = f"the {container.label} file is corrupt or incomplete"
    complete = {OGG: ogg_is_complete, MP3: mp3_is_complete}
    if container in complete and not complete[container](data):
        raise UnsupportedAudio(f"{damaged} (it ends in the middle of the audio)")
    try:
        declared_s = await probe_duration_s(data, container)
    except ValueError as exc:
        raise UnsupportedAudio(f"{damaged} ({exc})") from exc
    if container is WAV:
        declared_s = wav_declared_s(data)
    too_long = f"the recording is longer than the limit of {max_duration_s:g} seconds"
    if declared_s is not None and declared_s > max_duration_s + 0.5:
        raise UnsupportedAudio(too_long)
    try:
        # Decode a little past the limit so "too long" is detected without decoding hours.
        segment = await decode_audio(data, container=container, limit_s=max_duration_s + 1)
    except ValueError as exc:
        raise UnsupportedAudio(f"{damaged} ({exc})") from exc
    decoded_s = len(segment) / 1000
    if decoded_s > max_duration_s:
        raise UnsupportedAudio(too_long)
    if declared_s is not None and decoded_s < declared_s - max(0.5, 0.05 * declared_s):
        raise UnsupportedAudio(
            f"{damaged} (it declares {declared_s:.1f} s but holds only {decoded_s:.1f} s)"
        )
    if len(segment) < MIN_UPLOAD_DURATION_MS:
        raise UnsupportedAudio("the recording contains no audio or is too short")
    if not math.isfinite(await asyncio.to_thread(gated_level_dbfs, segment)):
        raise UnsupportedAudio("the recording is silent (nothing louder than -60 dBFS)")
    # Pre-levelled like speech, so the compressor treats a whispered phone recording and
    # a hot studio file alike before the loudness target is applied.
    composed = await asyncio.to_thread(
        lambda: concat([silence(LEAD_SILENCE_MS), level_match(segment), silence(TAIL_SILENCE_MS)])
    )
    audio = await encode_ogg_opus(composed)
    return rendered(audio, len(composed), ("upload",))
