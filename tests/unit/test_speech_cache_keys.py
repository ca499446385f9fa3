"""Cache keys: stable for the same sound, different for anything that changes it."""

from __future__ import annotations

import dataclasses
import pathlib

from controller.speech import AnnouncementRenderer, AnnouncementRequest
from controller.speech.backends import EdgeTTSBackend, EspeakBackend
from controller.speech.service import RENDER_VERSION, segment_key


def test_segment_key_is_pinned() -> None:
    # If this changes, every cached phrase on every controller is re-synthesized: change
    # it only together with RENDER_VERSION, on purpose.
    assert RENDER_VERSION == "1"
    assert segment_key("请注意。", "espeak-ng", "cmn-latn-pinyin", -5) == (
        "2967d0f71775f35c3bfabf228229c126a4fc84c3eb9c6277855ca7853116a36e"
    )


def test_segment_key_depends_on_every_input() -> None:
    base = segment_key("请注意。", "espeak-ng", "cmn-latn-pinyin", -5)
    assert segment_key("请注意。", "espeak-ng", "cmn-latn-pinyin", -5) == base
    variants = {
        segment_key("请注意！", "espeak-ng", "cmn-latn-pinyin", -5),
        segment_key("请注意。", "edge-tts", "cmn-latn-pinyin", -5),
        segment_key("请注意。", "espeak-ng", "yue", -5),
        segment_key("请注意。", "espeak-ng", "cmn-latn-pinyin", 0),
    }
    assert base not in variants
    assert len(variants) == 4


def renderer(tmp_path: pathlib.Path, **kwargs: object) -> AnnouncementRenderer:
    return AnnouncementRenderer(cache_dir=tmp_path, **kwargs)  # type: ignore[arg-type]


FLOOD = AnnouncementRequest(
    text="各位村民请注意，2024年7月15日有暴雨。", category="flood", priority="emergency", level=2
)


def test_announcement_key_is_stable_across_instances(tmp_path: pathlib.Path) -> None:
    first = renderer(tmp_path).announcement_key(FLOOD)
    assert renderer(tmp_path / "elsewhere").announcement_key(FLOOD) == first
    # An explicit default repeat is the same announcement as the implicit one.
    assert renderer(tmp_path).announcement_key(dataclasses.replace(FLOOD, repeat=3)) == first


def test_announcement_key_changes_with_the_sound(tmp_path: pathlib.Path) -> None:
    r = renderer(tmp_path)
    base = r.announcement_key(FLOOD)
    changed = [
        r.announcement_key(dataclasses.replace(FLOOD, text="各位村民请注意，明天有暴雨。")),
        r.announcement_key(dataclasses.replace(FLOOD, level=1)),
        r.announcement_key(dataclasses.replace(FLOOD, drill=True)),
        r.announcement_key(dataclasses.replace(FLOOD, repeat=1)),
        r.announcement_key(dataclasses.replace(FLOOD, languages=("cmn", "yue"))),
        r.announcement_key(dataclasses.replace(FLOOD, priority="notice", level=None)),
        renderer(tmp_path, rate=0).announcement_key(FLOOD),
        renderer(tmp_path, backend_order=("espeak-ng",)).announcement_key(FLOOD),
        renderer(
            tmp_path,
            backends=[EdgeTTSBackend(voices={"cmn": "zh-CN-YunxiNeural"}), EspeakBackend()],
        ).announcement_key(FLOOD),
    ]
    assert base not in changed
    assert len(set(changed)) == len(changed)


def test_announcement_key_follows_normalisation(tmp_path: pathlib.Path) -> None:
    # "2024年" and "二零二四年" are read the same, so they are the same announcement.
    r = renderer(tmp_path)
    spelled = dataclasses.replace(FLOOD, text="各位村民请注意，二零二四年七月十五日有暴雨。")
    assert r.announcement_key(spelled) == r.announcement_key(FLOOD)
