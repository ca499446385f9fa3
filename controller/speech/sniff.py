"""What an uploaded file really is, decided from its bytes before any decoder sees it.

ffmpeg left to guess a format reads playlists (HLS), concat scripts, SDP and other formats
that name further files or URLs, and follows them: a 109-byte "MP3" made of an ID3 tag
and an `#EXTM3U` playlist naming a server file was once decoded and published as an
announcement of that file. So the container is decided here from the structure of the
bytes (magic numbers, and for the MPEG and ADTS streams, which have none, a chain of valid
frame headers), and ffmpeg is told it (`-f`, `-format_whitelist`) and given the bytes on
a pipe with `pipe` as the only protocol it may open (`ffmpeg_input`). So no input can
name another file or URL. Playlists, concat scripts, session descriptions and bare URLs
are refused by name, so the person uploading learns why.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

ACCEPTED = "accepted: WAV, MP3, OGG, WebM, M4A/AAC, AMR"


class UnsupportedAudio(ValueError):
    """An uploaded recording was refused; the message says why, for the person uploading."""

    code = "unsupported_audio"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotPlainAudio(UnsupportedAudio):
    """The upload names or holds something other than audio (a playlist, a URL...)."""

    code = "not_plain_audio"

    def __init__(self, what: str) -> None:
        super().__init__(f"not plain audio ({what})")
        self.what = what


@dataclass(frozen=True)
class Container:
    kind: str  # our name, also used in messages: "the MP3 file is corrupt"
    demuxer: str  # ffmpeg's input format for it

    @property
    def label(self) -> str:
        return self.kind.upper()


WAV = Container("wav", "wav")
MP3 = Container("mp3", "mp3")
OGG = Container("ogg", "ogg")
MP4 = Container("mp4", "mp4")  # also M4A and 3GP: one demuxer reads them all
WEBM = Container("webm", "matroska")
AAC = Container("aac", "aac")  # raw ADTS frames
AMR = Container("amr", "amr")
AMR_WB = Container("amr-wb", "amr")


def ffmpeg_input(container: Container) -> list[str]:
    """ffmpeg/ffprobe input options: the format is forced (no probing, so no playlist,
    concat or SDP demuxer can be chosen, nor opened nested), and stdin is the only thing
    the input may open."""
    args = ["-f", container.demuxer, "-format_whitelist", container.demuxer]
    args += ["-protocol_whitelist", "pipe"]
    if container is MP4:
        # MP4 data references can point at other files; off by default, off for certain.
        args += ["-enable_drefs", "0"]
    return [*args, "-i", "pipe:0"]


def sniff(data: bytes) -> Container:
    """The container of `data`, or `UnsupportedAudio` / `NotPlainAudio` saying why not."""
    body = after_id3(data)
    what = _not_audio(data[body : body + 4096])
    if what is not None:
        raise NotPlainAudio(what)
    if body:
        # An ID3 tag must be followed by what it tags: MPEG audio (or, from some
        # encoders, ADTS AAC). Anything else behind it is what the trick hides.
        if _frame_chain(data, body, mpeg_frame_length):
            return MP3
        if _frame_chain(data, body, adts_frame_length):
            return AAC
        raise UnsupportedAudio(
            "the MP3 file is corrupt or incomplete (its ID3 tag is not followed by MPEG audio)"
        )
    head = data[:16]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return WAV
    if head[:4] == b"OggS":
        return OGG
    if head[4:8] == b"ftyp":
        return MP4
    if head[:4] == b"\x1a\x45\xdf\xa3":
        # EBML: WebM/Matroska, what browsers' MediaRecorder produces (Opus inside).
        return WEBM
    if head.startswith(b"#!AMR-WB\n"):
        return AMR_WB
    if head.startswith(b"#!AMR\n"):
        return AMR
    if _frame_chain(data, 0, adts_frame_length):
        return AAC
    if _frame_chain(data, 0, mpeg_frame_length):
        return MP3
    raise UnsupportedAudio(f"not a recognised audio file ({ACCEPTED})")


# --- text that names other things ----------------------------------------------------

_CONCAT_LINE = re.compile(rb"(?:\s*#[^\n]*\n)*\s*file\s+\S")
_SDP = re.compile(rb"v=0\s*\r?\n")
# A URL or one of ffmpeg's protocol prefixes: `file:`, `http:`, `subfile,,start,…`,
# `concat:a|b`, `crypto+file:`.
_REFERENCE = re.compile(rb"[a-z][a-z0-9+.-]{1,15}:[^\s]|subfile,")
_XML_LISTS = (b"<mpd", b"<smil", b"<asx", b"<playlist", b"<?xml")


def _not_audio(head: bytes) -> str | None:
    """If `head` (the start of the file, after any ID3 tag) is one of the text formats
    that make a decoder open other files or URLs, what it is."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n\x00").lower()
    if text.startswith((b"#extm3u", b"[playlist]")) or b"#ext-x-" in text or b"#extinf" in text:
        return "playlist"
    if text.startswith(b"ffconcat") or _CONCAT_LINE.match(text):
        return "concat script"
    if _SDP.match(text):
        return "SDP session description"
    if text.startswith(_XML_LISTS):
        return "playlist"
    if _is_text(text) and _REFERENCE.match(text):
        return "a file or URL reference"
    return None


def _is_text(chunk: bytes) -> bool:
    sample = chunk[:256]
    return bool(sample) and all(b >= 0x20 or b in b"\t\r\n" for b in sample)


# --- ID3 and frame chains ------------------------------------------------------------


def after_id3(data: bytes) -> int:
    """Where the data after any leading ID3v2 tags (and their zero padding) starts."""
    pos = 0
    while data[pos : pos + 3] == b"ID3":
        header = data[pos : pos + 10]
        size_bytes = header[6:10]
        if len(header) < 10 or header[3] not in (2, 3, 4) or any(b & 0x80 for b in size_bytes):
            raise UnsupportedAudio("the MP3 file is corrupt or incomplete (its ID3 tag is damaged)")
        size = (size_bytes[0] << 21) | (size_bytes[1] << 14) | (size_bytes[2] << 7) | size_bytes[3]
        pos += 10 + size + (10 if header[5] & 0x10 else 0)
    if pos:
        while pos < len(data) and data[pos] == 0:
            pos += 1
    return pos


_MP3_BITRATES_KBPS = {
    # (MPEG-1?, layer) -> bitrate table indexed 1..14
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def mpeg_frame_length(data: bytes, pos: int) -> int | None:
    """Length of the MPEG audio frame whose header starts at `pos`, or None if there is
    no valid header there (free-format bitrates, which nobody records in, included)."""
    if pos + 4 > len(data):
        return None
    b0, b1, b2 = data[pos], data[pos + 1], data[pos + 2]
    version, layer_bits = (b1 >> 3) & 0x03, (b1 >> 1) & 0x03
    bitrate_index, rate_index = b2 >> 4, (b2 >> 2) & 0x03
    if (
        b0 != 0xFF
        or b1 & 0xE0 != 0xE0
        or version == 1
        or layer_bits == 0
        or bitrate_index in (0, 15)
        or rate_index == 3
    ):
        return None
    layer = 4 - layer_bits
    mpeg1 = version == 3
    bitrate = _MP3_BITRATES_KBPS[(mpeg1, layer)][bitrate_index - 1] * 1000
    rate = _MP3_SAMPLE_RATES[version][rate_index]
    padding = (b2 >> 1) & 0x01
    if layer == 1:
        return (12 * bitrate // rate + padding) * 4
    return (144 if mpeg1 or layer == 2 else 72) * bitrate // rate + padding


def adts_frame_length(data: bytes, pos: int) -> int | None:
    """Length of the ADTS (AAC) frame whose header starts at `pos`, or None."""
    if pos + 7 > len(data):
        return None
    if data[pos] != 0xFF or data[pos + 1] & 0xF6 != 0xF0:
        return None  # not the 12-bit sync word with layer 00
    if (data[pos + 2] >> 2) & 0x0F > 12:
        return None  # reserved sampling-rate index
    length = ((data[pos + 3] & 0x03) << 11) | (data[pos + 4] << 3) | (data[pos + 5] >> 5)
    header = 7 if data[pos + 1] & 0x01 else 9
    return length if length > header else None


FrameLength = Callable[[bytes, int], "int | None"]


def _frame_chain(data: bytes, pos: int, frame_length: FrameLength, frames: int = 4) -> bool:
    """Whether `frames` valid frames follow one another from `pos` (fewer if the data
    ends first): one header-like pair of bytes happens by chance, a chain does not."""
    for _ in range(frames):
        length = frame_length(data, pos)
        if length is None:
            return False
        pos += length
        if pos + 4 > len(data):
            return True  # the data ends here; a cut-off last frame is judged later
    return True


# --- MP4 for a pipe ------------------------------------------------------------------


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int, int]]:
    """(type, start, payload start, end) of the boxes in data[start:end]; a box running
    past the end (a cut-off file) is clipped to it."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                return
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header:
            raise UnsupportedAudio(f"the MP4 file is corrupt or incomplete (bad {kind!r} box)")
        yield kind, pos, pos + header, min(pos + size, end)
        pos += size


_PATH_TO_OFFSETS = (b"trak", b"mdia", b"minf", b"stbl")


def streamable_mp4(data: bytes) -> bytes:
    """The same MP4 with its index (moov) ahead of the media data (mdat).

    Phones write the index last, and ffmpeg cannot read such a file from a pipe; rather
    than give it a file path (and so the file protocol), the boxes are put in streaming
    order here, with the chunk offsets in the index moved to match.
    """
    top = list(_boxes(data, 0, len(data)))
    moovs = [box for box in top if box[0] == b"moov"]
    if len(moovs) != 1:
        raise UnsupportedAudio(
            "the MP4 file is corrupt or incomplete (it has no index; the recording "
            "was probably not finished)"
        )
    moov = moovs[0]
    first_mdat = next((box[1] for box in top if box[0] == b"mdat"), None)
    if first_mdat is None or moov[1] < first_mdat:
        return data
    before = [box for box in top if box[1] < first_mdat]
    after = [box for box in top if box[1] >= first_mdat and box is not moov]
    moved: list[tuple[int, int, int]] = []  # (old start, old end, new start)
    pos = sum(box[3] - box[1] for box in before) + (moov[3] - moov[1])
    for box in after:
        moved.append((box[1], box[3], pos))
        pos += box[3] - box[1]

    def relocate(offset: int) -> int:
        for old_start, old_end, new_start in moved:
            if old_start <= offset < old_end:
                return offset - old_start + new_start
        for box in before:
            if box[1] <= offset < box[3]:
                return offset
        raise UnsupportedAudio("the MP4 file is corrupt or incomplete (bad chunk offset)")

    index = bytearray(data[moov[1] : moov[3]])
    _relocate_offsets(index, 0, len(index), 0, relocate)
    parts = [data[box[1] : box[3]] for box in before]
    parts.append(bytes(index))
    parts += [data[box[1] : box[3]] for box in after]
    return b"".join(parts)


def _relocate_offsets(
    index: bytearray, start: int, end: int, depth: int, relocate: Callable[[int], int]
) -> None:
    for kind, _box_start, payload, box_end in _boxes(bytes(index), start, end):
        if kind == b"moov" and depth == 0:
            _relocate_offsets(index, payload, box_end, 1, relocate)
        elif 1 <= depth <= len(_PATH_TO_OFFSETS) and kind == _PATH_TO_OFFSETS[depth - 1]:
            _relocate_offsets(index, payload, box_end, depth + 1, relocate)
        elif depth == len(_PATH_TO_OFFSETS) + 1 and kind in (b"stco", b"co64"):
            wide = kind == b"co64"
            width, fmt = (8, ">Q") if wide else (4, ">I")
            if payload + 8 > box_end:
                raise UnsupportedAudio("the MP4 file is corrupt or incomplete (bad chunk table)")
            (count,) = struct.unpack_from(">I", index, payload + 4)
            if payload + 8 + count * width > box_end:
                raise UnsupportedAudio("the MP4 file is corrupt or incomplete (bad chunk table)")
            for i in range(count):
                at = payload + 8 + i * width
                (offset,) = struct.unpack_from(fmt, index, at)
                new = relocate(offset)
                if not wide and new > 0xFFFFFFFF:
                    raise UnsupportedAudio("the MP4 file is too large to stream")
                struct.pack_into(fmt, index, at, new)
