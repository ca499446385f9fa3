"""`AnnouncementRenderer`: text in, a ready-to-publish Ogg/Opus announcement out.

How a render goes:

1. The text (and the drill framing, if any) is normalised per language with
   `controller.speech.normalize.normalize`, so numbers, dates and units are read the way
   a villager expects.
2. If the whole announcement is already on disk (key: the normalised texts and every
   setting that changes the sound, plus `RENDER_VERSION`), it is returned as is: a
   repeated emergency costs one file read.
3. Otherwise each language is spoken by the first backend in `backend_order` that works.
   Speech already in the segment cache is used without asking the backend at all, so
   cached phrases still play in the preferred voice during an outage. A backend that
   fails or exceeds its timeout is passed over at once, and then skipped for
   `backend_retry_after_s`, so a dead online voice costs one timeout, not one per phrase.
   All phrases of one language come from the same voice.
4. The pieces are laid out (`render.compose_announcement`), loudness-normalised and
   encoded, and the result is cached. A render in which a fallback voice had to stand in
   is cached apart and served only while the preferred backend is known to be down (it
   failed less than `backend_retry_after_s` ago): repeats during an outage cost nothing,
   and the preferred voice returns by itself once its service does.

Cache writes are atomic (temporary file, then rename); a damaged cache file is treated as
a miss and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import pathlib
import tempfile
import time
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydub import AudioSegment

from controller.speech import render as audio
from controller.speech import tones
from controller.speech.backends import EdgeTTSBackend, EspeakBackend, SpeechBackend, SynthesisError
from controller.speech.normalize import PronunciationDictionary, normalize
from controller.speech.types import AnnouncementRequest, RenderedAnnouncement

log = logging.getLogger(__name__)

RENDER_VERSION = audio.RENDER_VERSION

DRILL_START: dict[str, str] = {
    "cmn": "现在进行的是演练，不是真实警报。",
    "yue": "而家進行嘅係演練，唔係真嘅警報。",
}
DRILL_END: dict[str, str] = {"cmn": "以上是演练。", "yue": "以上係演練。"}


def spoken_text(text: str | None, *, drill: bool, lang: str = "cmn") -> str | None:
    """The words of an announcement in the order they are heard: a drill is framed by
    its notice before and after (the preview shows what the villages hear, all of it)."""
    if not text:
        return text
    return f"{DRILL_START[lang]}{text}{DRILL_END[lang]}" if drill else text


DEFAULT_RATE = -5  # percent; loudspeakers on poles echo between houses, a touch slower helps


def standard_backends(
    order: Sequence[str], *, data_dir: pathlib.Path, edge_timeout_s: float = 3.0
) -> list[SpeechBackend]:
    """The backends a controller offers: edge-tts and espeak-ng always; the neural voice
    only where `order` names it (opt-in: its corpus is non-commercial), and then it must
    be installed, or the controller refuses to start (NeuralVoiceUnavailable) rather than
    quietly speak with espeak-ng."""
    backends: list[SpeechBackend] = [
        EdgeTTSBackend(silence_timeout_s=edge_timeout_s),
        EspeakBackend(),
    ]
    if "neural" in order:
        from controller.speech.neural import NeuralBackend, check_installed

        check_installed(data_dir)
        backends.append(NeuralBackend(data_dir=data_dir))
    return backends


class SpeechUnavailable(RuntimeError):
    """No configured backend could speak a language; the message lists why each failed."""


def segment_key(text: str, backend: str, voice: str, rate: int) -> str:
    """Cache key of one synthesized phrase (text already normalised)."""
    fields = {"v": RENDER_VERSION, "text": text, "backend": backend, "voice": voice, "rate": rate}
    return _digest(fields)


def _digest(fields: Mapping[str, Any]) -> str:
    blob = json.dumps(fields, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SpokenLanguage:
    """The phrases of one language, all in one voice."""

    voice: str  # "backend:voice", as recorded in RenderedAnnouncement.voices
    segments: tuple[AudioSegment, ...]
    preferred: bool  # spoken by the first backend in the order, not a stand-in


class AnnouncementRenderer:
    """Renders announcements with caching and voice fallback. Construction starts nothing."""

    def __init__(
        self,
        *,
        cache_dir: pathlib.Path,
        backend_order: Sequence[str] = ("edge-tts", "espeak-ng"),
        edge_timeout_s: float = 3.0,
        synthesis_timeout_s: float = 30.0,
        rate: int = DEFAULT_RATE,
        edge_voices: Mapping[str, str] | None = None,
        espeak_voices: Mapping[str, str] | None = None,
        backends: Sequence[SpeechBackend] | None = None,
        backend_retry_after_s: float = 60.0,
        dictionary: PronunciationDictionary | None = None,
    ) -> None:
        """
        `backend_order` names backends from `backends` (default: edge-tts and espeak-ng
        built from `edge_voices` / `espeak_voices`). edge-tts is given up when it has
        sent nothing for `edge_timeout_s` (so a long text that streams steadily is not
        cut off); `synthesis_timeout_s` caps any backend's work on one language.
        `rate` is the speaking rate in percent relative to normal. `dictionary` is
        passed to `normalize`. `backend_retry_after_s`: how long a failed backend is
        skipped before it is tried again.
        """
        if backends is None:
            backends = (
                EdgeTTSBackend(voices=edge_voices, silence_timeout_s=edge_timeout_s),
                EspeakBackend(voices=espeak_voices),
            )
        self._backends: dict[str, SpeechBackend] = {b.name: b for b in backends}
        unknown = [name for name in backend_order if name not in self._backends]
        if unknown or not backend_order:
            raise ValueError(
                f"backend_order: unknown backend(s) {unknown}; known: {sorted(self._backends)}"
            )
        self.cache_dir = pathlib.Path(cache_dir)
        self.backend_order = tuple(backend_order)
        self.edge_timeout_s = edge_timeout_s
        self.synthesis_timeout_s = synthesis_timeout_s
        self.rate = rate
        self.backend_retry_after_s = backend_retry_after_s
        self.dictionary = dictionary
        self._failed_at: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Future[RenderedAnnouncement]] = {}

    # --- public ----------------------------------------------------------------------

    async def render(self, request: AnnouncementRequest) -> RenderedAnnouncement:
        """Render (or fetch from cache) the announcement for `request`."""
        texts = {lang: self._texts(request, lang) for lang in request.languages}
        key = self.announcement_key(request, texts)
        cached = await asyncio.to_thread(self._read_announcement, key, False)
        if cached is None and self._any_resting(request):
            cached = await asyncio.to_thread(self._read_announcement, key, True)
        if cached is not None:
            return cached
        # Concurrent requests for the same announcement (an emergency pushed to several
        # townships at once) share one render instead of racing to write the same file.
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._render_uncached(request, texts, key))
            self._inflight[key] = pending
            pending.add_done_callback(lambda _f: self._inflight.pop(key, None))
            # Its failure is reported to every waiter; if all of them were cancelled,
            # nobody is left to retrieve it and asyncio would log it as lost.
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())
        return await asyncio.shield(pending)

    async def render_recording(
        self,
        recording: bytes,
        *,
        recording_sha256: str,
        priority: str,
        level: int | None,
        drill: bool,
        languages: Sequence[str] = ("cmn",),
        repeat: int | None = None,
    ) -> RenderedAnnouncement:
        """An uploaded recording (already in the announcement format) laid out as an
        announcement: the attention signal, the drill framing spoken around it in each
        language, the recording repeated. Villages hear a recorded emergency exactly as
        a spoken one, with the recorder's own voice in place of the synthesized text."""
        request = AnnouncementRequest(
            text="(recording)",  # validates priority/level/repeat; never spoken
            category="other",
            priority=priority,
            level=level,
            drill=drill,
            languages=tuple(languages),
            repeat=repeat,
        )
        framing = {lang: self._framing_texts(lang) if drill else () for lang in request.languages}
        key = _digest(
            {
                "v": RENDER_VERSION,
                "recording": recording_sha256,
                "framing": [[lang, list(framing[lang])] for lang in request.languages],
                "priority": priority,
                "level": level,
                "repeat": request.effective_repeat,
                "voices": [
                    [name, {lang: self._voice_or_none(name, lang) for lang in request.languages}]
                    for name in self.backend_order
                ],
            }
        )
        for fallback in (False, True):
            cached = await asyncio.to_thread(self._read_announcement, key, fallback)
            if cached is not None and (not fallback or self._any_resting(request)):
                return cached
        spoken = (
            [await self.speak(lang, framing[lang]) for lang in request.languages] if drill else []
        )
        decoded = await audio.decode_audio(recording)

        def compose() -> AudioSegment:
            return audio.compose_announcement(
                signal=tones.attention_signal(priority, level),
                speech=[decoded],
                repeat=request.effective_repeat,
                drill_start=[s.segments[0] for s in spoken],
                drill_end=[s.segments[1] for s in spoken],
            )

        composed = await asyncio.to_thread(compose)
        encoded = await audio.encode_ogg_opus(composed)
        voices = ("upload", *(s.voice for s in spoken))
        result = audio.rendered(encoded, len(composed), voices)
        fallback = not all(s.preferred for s in spoken)
        await asyncio.to_thread(self._write_announcement, key, result, fallback)
        return result

    def _framing_texts(self, lang: str) -> tuple[str, ...]:
        """The drill notice before and after, normalised like any phrase."""
        dictionary = self.dictionary if lang == "cmn" else None
        return tuple(
            normalize(p, lang=lang, dictionary=dictionary)
            for p in (DRILL_START[lang], DRILL_END[lang])
        )

    def _any_resting(self, request: AnnouncementRequest) -> bool:
        return any(
            self._is_resting(name)
            for name in {self._preferred(lang) for lang in request.languages}
            if name is not None
        )

    def announcement_key(
        self, request: AnnouncementRequest, texts: Mapping[str, Sequence[str]] | None = None
    ) -> str:
        """Cache key of a whole announcement: everything that changes how it sounds."""
        if texts is None:
            texts = {lang: self._texts(request, lang) for lang in request.languages}
        return _digest(
            {
                "v": RENDER_VERSION,
                "texts": [[lang, list(texts[lang])] for lang in request.languages],
                "priority": request.priority,
                "level": request.level,
                "drill": request.drill,
                "repeat": request.effective_repeat,
                "rate": self.rate,
                "voices": [
                    [name, {lang: self._voice_or_none(name, lang) for lang in request.languages}]
                    for name in self.backend_order
                ],
            }
        )

    # --- text ------------------------------------------------------------------------

    def _texts(self, request: AnnouncementRequest, lang: str) -> tuple[str, ...]:
        """Normalised phrases for one language: body, then drill start/end if a drill."""
        phrases = [request.text]
        if request.drill:
            phrases += [DRILL_START[lang], DRILL_END[lang]]
        # The county's dictionary respells Mandarin readings (polyphones, place names);
        # applied to a Cantonese voice it would mislead it, so yue keeps its default.
        dictionary = self.dictionary if lang == "cmn" else None
        return tuple(normalize(p, lang=lang, dictionary=dictionary) for p in phrases)

    def _voice_or_none(self, name: str, lang: str) -> str | None:
        try:
            return self._backends[name].voice_for(lang)
        except SynthesisError:
            return None

    # --- rendering -------------------------------------------------------------------

    async def _render_uncached(
        self, request: AnnouncementRequest, texts: Mapping[str, tuple[str, ...]], key: str
    ) -> RenderedAnnouncement:
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self.speak(lang, texts[lang])) for lang in request.languages
                ]
        except ExceptionGroup as group:
            raise group.exceptions[0] from None  # callers catch SpeechUnavailable, not a group
        spoken = [t.result() for t in tasks]

        def compose() -> AudioSegment:
            return audio.compose_announcement(
                signal=tones.attention_signal(request.priority, request.level),
                speech=[s.segments[0] for s in spoken],
                repeat=request.effective_repeat,
                drill_start=[s.segments[1] for s in spoken] if request.drill else (),
                drill_end=[s.segments[2] for s in spoken] if request.drill else (),
            )

        composed = await asyncio.to_thread(compose)
        encoded = await audio.encode_ogg_opus(composed)
        result = audio.rendered(encoded, len(composed), tuple(s.voice for s in spoken))
        fallback = not all(s.preferred for s in spoken)
        if fallback:
            log.warning("announcement rendered with fallback voice(s) %s", result.voices)
        await asyncio.to_thread(self._write_announcement, key, result, fallback)
        return result

    async def speak(self, lang: str, phrases: Sequence[str]) -> SpokenLanguage:
        """All `phrases` (normalised) of one language, from the first backend that can say
        them all; raises SpeechUnavailable if none can. Used by `render`; public so
        that the fallback order can be exercised on its own."""
        errors: list[str] = []
        deferred: list[str] = []
        for attempt in (self.backend_order, deferred):
            for name in list(attempt):
                voice = self._voice_or_none(name, lang)
                if voice is None:
                    if attempt is self.backend_order:
                        errors.append(f"{name}: no voice for {lang!r}")
                    continue
                # A backend that failed recently is asked for cached speech only; it gets
                # another real try only if every other backend fails as well.
                resting = attempt is self.backend_order and self._is_resting(name)
                try:
                    spoken = await self._speak_with(name, voice, lang, phrases, resting)
                except (SynthesisError, TimeoutError) as exc:
                    reason = str(exc) or type(exc).__name__
                except Exception as exc:  # a broken backend must not take the others down
                    log.exception("speech backend %s crashed", name)
                    reason = f"{type(exc).__name__}: {exc}"
                else:
                    if spoken is not None:
                        return spoken
                    deferred.append(name)
                    continue
                errors.append(f"{name}: {reason}")
                self._failed_at[name] = time.monotonic()
                log.warning("speech backend %s failed for %s, trying the next: %s",
                            name, lang, reason)  # fmt: skip
        raise SpeechUnavailable(f"no voice could speak {lang!r}: " + "; ".join(errors))

    def _is_resting(self, name: str) -> bool:
        failed_at = self._failed_at.get(name)
        return failed_at is not None and time.monotonic() - failed_at < self.backend_retry_after_s

    async def _speak_with(
        self, name: str, voice: str, lang: str, phrases: Sequence[str], cache_only: bool
    ) -> SpokenLanguage | None:
        """The phrases in this backend's voice, from cache or synthesized (unless
        `cache_only`, in which case None means "not all of it is cached")."""
        backend = self._backends[name]
        keys = [segment_key(p, name, voice, self.rate) for p in phrases]
        segments: list[AudioSegment | None] = [
            await asyncio.to_thread(self._read_segment, k) for k in keys
        ]
        missing = [i for i, s in enumerate(segments) if s is None]
        if missing and cache_only:
            return None
        if missing:
            timeout = self.synthesis_timeout_s
            try:
                async with asyncio.timeout(timeout), asyncio.TaskGroup() as tg:
                    tasks = {
                        i: tg.create_task(backend.synthesize(phrases[i], lang=lang, rate=self.rate))
                        for i in missing
                    }
            except TimeoutError:
                raise TimeoutError(f"no answer within {timeout:g} s") from None
            except ExceptionGroup as group:
                raise group.exceptions[0] from group
            for i, task in tasks.items():
                seg = await asyncio.to_thread(_normalise_segment, task.result())
                await asyncio.to_thread(self._write_segment, keys[i], seg)
                segments[i] = seg
            self._failed_at.pop(name, None)
        done = tuple(s for s in segments if s is not None)
        return SpokenLanguage(f"{name}:{voice}", done, preferred=name == self._preferred(lang))

    def _preferred(self, lang: str) -> str | None:
        """The first backend in the order that has a voice for `lang`."""
        return next((n for n in self.backend_order if self._voice_or_none(n, lang)), None)

    # --- cache (runs in worker threads) ----------------------------------------------

    def _segment_path(self, key: str) -> pathlib.Path:
        return self.cache_dir / "segments" / key[:2] / f"{key}.wav"

    def _announcement_paths(self, key: str, fallback: bool) -> tuple[pathlib.Path, pathlib.Path]:
        base = self.cache_dir / "announcements" / key[:2]
        name = f"{key}.fallback" if fallback else key
        return base / f"{name}.ogg", base / f"{name}.json"

    def _read_segment(self, key: str) -> AudioSegment | None:
        path = self._segment_path(key)
        try:
            with wave.open(str(path), "rb") as w:
                if w.getsampwidth() != 2 or w.getnchannels() != 1:
                    raise wave.Error("unexpected format")
                return AudioSegment(
                    data=w.readframes(w.getnframes()),
                    sample_width=2,
                    frame_rate=w.getframerate(),
                    channels=1,
                )
        except FileNotFoundError:
            return None
        except (OSError, EOFError, wave.Error):
            log.warning("damaged speech cache file %s; synthesizing again", path)
            return None

    def _write_segment(self, key: str, segment: AudioSegment) -> None:
        def write(f: Any) -> None:
            with wave.open(f, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(segment.frame_rate)
                w.writeframes(segment.raw_data)

        _atomic_write(self._segment_path(key), write)

    def _read_announcement(self, key: str, fallback: bool) -> RenderedAnnouncement | None:
        ogg, meta = self._announcement_paths(key, fallback)
        try:
            info = json.loads(meta.read_text("utf-8"))
            data = ogg.read_bytes()
            if hashlib.sha256(data).hexdigest() != info["sha256"]:
                raise ValueError("checksum mismatch")
            return RenderedAnnouncement(
                audio=data,
                mime=info["mime"],
                duration_ms=int(info["duration_ms"]),
                voices=tuple(info["voices"]),
                sha256=info["sha256"],
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("damaged announcement cache entry %s; rendering again", key)
            return None

    def _write_announcement(self, key: str, result: RenderedAnnouncement, fallback: bool) -> None:
        ogg, meta = self._announcement_paths(key, fallback)
        _atomic_write(ogg, lambda f: f.write(result.audio))
        # The metadata goes last: an entry without it is invisible to readers.
        info = {
            "mime": result.mime,
            "duration_ms": result.duration_ms,
            "voices": list(result.voices),
            "sha256": result.sha256,
        }
        _atomic_write(meta, lambda f: f.write(json.dumps(info).encode("utf-8")))


def _normalise_segment(segment: AudioSegment) -> AudioSegment:
    """Cache speech at the output format: smaller files and no resampling on reuse."""
    return segment.set_channels(1).set_frame_rate(audio.SAMPLE_RATE).set_sample_width(2)


def _atomic_write(path: pathlib.Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
