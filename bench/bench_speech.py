"""Speech rendering benchmark: offline voices, cache hits and encoded size.

Measures, on this machine:

- render time of a 200-character notice per offline voice (espeak-ng cmn-latn-pinyin and
  yue) with an empty cache, and per 100 characters;
- where that time goes (synthesis; layout, loudness and encoding);
- a cached render (the whole announcement already on disk);
- encoded bytes per second of announcement, against the same audio as 32 kbit/s MP3.

Targets: cached render < 20 ms; offline render of a 200-character notice < 1.5 s;
output < 32 kbit/s. Prints a Markdown table and writes it to
bench/results/speech-<date>.md with the machine and the command.

Run: .venv/bin/python bench/bench_speech.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import pathlib
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

with warnings.catch_warnings():
    # pydub probes for the removed stdlib audioop module (same filter as the test suite).
    warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
    from controller.speech import AnnouncementRenderer, AnnouncementRequest
    from controller.speech import render as audio
    from controller.speech.backends import EspeakBackend
    from controller.speech.normalize import normalize

from machine import machine_facts

# A typical 200-character township notice (fire prevention before the Qingming festival).
NOTICE_200 = (
    "各位村民请注意：清明节将至，进入森林防火紧要期。根据县森林防火指挥部通知，"
    "即日起至五月三十一日，全县范围内禁止一切野外用火。上山祭祀请文明祭扫，"
    "不得焚烧纸钱、燃放鞭炮，不得携带火种进山。发现火情请立即拨打森林火警电话，"
    "或者报告村委会。违反规定野外用火的，将依法处以罚款；引发森林火灾的，"
    "依法追究刑事责任。请各位家长管好孩子，不要在山边玩火。护林员和网格员"
    "要加强巡查，做到早发现、早报告、早处置。谢谢！"
)
VOICES = {"cmn": "cmn-latn-pinyin", "yue": "yue"}
TARGET_CACHED_MS = 20.0
TARGET_RENDER_S = 1.5
TARGET_KBITS = 32.0


def machine() -> str:
    facts = machine_facts()
    espeak = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout
    return (
        f"{facts['nproc']} CPUs (`nproc`), {facts['cpu']}; Python {facts['python']}; "
        f"{espeak.split('  Data')[0].strip()}; {ffmpeg.splitlines()[0]}"
    )


def mp3_bytes_per_second(ogg: bytes, workdir: pathlib.Path) -> float:
    """The same announcement as 32 kbit/s mono MP3 (what terminals often get elsewhere)."""
    src, dst = workdir / "cmp.ogg", workdir / "cmp.mp3"
    src.write_bytes(ogg)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(src), "-ac", "1", "-ar", "16000",
         "-c:a", "libmp3lame", "-b:a", "32k", str(dst)],
        check=True,
    )  # fmt: skip
    seconds = float(
        subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-show_entries",
                "format=duration",
                "-of",
                "csv=p=0",
                str(dst),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    return dst.stat().st_size / seconds


async def bench_voice(lang: str, runs: int, workdir: pathlib.Path) -> dict[str, float]:
    request = AnnouncementRequest(
        text=NOTICE_200, category="fire_prevention", priority="notice", languages=(lang,)
    )
    cold: list[float] = []
    for i in range(runs):
        renderer = AnnouncementRenderer(
            cache_dir=workdir / f"{lang}-{i}", backend_order=("espeak-ng",)
        )
        started = time.perf_counter()
        result = await renderer.render(request)
        cold.append(time.perf_counter() - started)

    backend = EspeakBackend()
    spoken = normalize(NOTICE_200, lang=lang)
    synth: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        await backend.synthesize(spoken, lang=lang, rate=-5)
        synth.append(time.perf_counter() - started)

    warm = AnnouncementRenderer(cache_dir=workdir / f"{lang}-0", backend_order=("espeak-ng",))
    cached: list[float] = []
    for _ in range(max(20, runs * 10)):
        started = time.perf_counter()
        again = await warm.render(request)
        cached.append(time.perf_counter() - started)
    assert again == result

    seconds = result.duration_ms / 1000
    render_s = statistics.median(cold)
    return {
        "chars": len(NOTICE_200),
        "render_s": render_s,
        "render_per_100_s": render_s / (len(NOTICE_200) / 100),
        "synth_s": statistics.median(synth),
        "cached_ms": statistics.median(cached) * 1000,
        "cached_max_ms": max(cached) * 1000,
        "audio_s": seconds,
        "bytes_per_s": len(result.audio) / seconds,
        "mp3_bytes_per_s": mp3_bytes_per_second(result.audio, workdir),
    }


def table(results: dict[str, dict[str, float]]) -> str:
    def ok(good: bool) -> str:
        return "yes" if good else "**NO**"

    rows = [
        "| voice | chars | audio s | render s (median) | per 100 chars s | of which synthesis s "
        "| cached ms (median / max) | Opus B/s (kbit/s) | MP3 32k B/s | < 1.5 s | < 20 ms "
        "| < 32 kbit/s |",
        "|" + " --- |" * 12,
    ]
    for lang, r in results.items():
        kbits = r["bytes_per_s"] * 8 / 1000
        rows.append(
            f"| espeak-ng:{VOICES[lang]} | {r['chars']:.0f} | {r['audio_s']:.1f} "
            f"| {r['render_s']:.3f} | {r['render_per_100_s']:.3f} | {r['synth_s']:.3f} "
            f"| {r['cached_ms']:.2f} / {r['cached_max_ms']:.2f} "
            f"| {r['bytes_per_s']:.0f} ({kbits:.1f}) | {r['mp3_bytes_per_s']:.0f} "
            f"| {ok(r['render_s'] < TARGET_RENDER_S)} | {ok(r['cached_ms'] < TARGET_CACHED_MS)} "
            f"| {ok(kbits < TARGET_KBITS)} |"
        )
    return "\n".join(rows)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="cold renders per voice")
    parser.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dalaba-bench-") as tmp:
        results = {lang: await bench_voice(lang, args.runs, pathlib.Path(tmp)) for lang in VOICES}

    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    report = "\n".join(
        [
            f"# Speech rendering benchmark, {datetime.date.today().isoformat()}",
            "",
            f"- Machine: {machine()}",
            f"- Command: `{command}`",
            f"- Notice: {len(NOTICE_200)} characters, priority notice (chime, spoken once), "
            f"encoded Ogg/Opus {audio.OPUS_BITRATE} voip, complexity {audio.OPUS_COMPLEXITY}, "
            f"loudness {audio.LOUDNESS_TARGET_LUFS:g} LUFS; {args.runs} cold renders per voice "
            "(empty cache each), cached renders from a warm cache.",
            "- Targets: cached render < 20 ms; offline render of a 200-character notice < 1.5 s; "
            "< 32 kbit/s.",
            "",
            table(results),
            "",
        ]
    )
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"speech-{datetime.date.today().isoformat()}.md"
    path.write_text(report, encoding="utf-8")
    print(f"written to {path}")


if __name__ == "__main__":
    asyncio.run(main())
