"""AnnouncementRequest validates itself on construction."""

from __future__ import annotations

import dataclasses

import pytest

from controller.speech import AnnouncementRequest


def test_defaults() -> None:
    notice = AnnouncementRequest(text="明天上午开会。", category="meeting", priority="notice")
    assert notice.languages == ("cmn",)
    assert notice.drill is False
    assert notice.effective_repeat == 1
    flood = AnnouncementRequest(text="洪水预警。", category="flood", priority="emergency", level=1)
    assert flood.effective_repeat == 3
    assert dataclasses.replace(flood, repeat=2).effective_repeat == 2


def test_frozen() -> None:
    notice = AnnouncementRequest(text="开会。", category="meeting", priority="notice")
    with pytest.raises(dataclasses.FrozenInstanceError):
        notice.text = "别的"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"text": "  "}, "text"),
        ({"text": "字" * 5001}, "text"),
        ({"category": "weather"}, "category"),
        ({"priority": "urgent"}, "priority"),
        ({"priority": "emergency"}, "level"),
        ({"priority": "emergency", "level": 5}, "level"),
        ({"priority": "emergency", "level": True}, "level"),
        ({"level": 2}, "level"),
        ({"languages": ()}, "languages"),
        ({"languages": ["cmn"]}, "languages"),
        ({"languages": ("cmn", "en")}, "languages"),
        ({"languages": ("cmn", "cmn")}, "languages"),
        ({"repeat": 0}, "repeat"),
        ({"repeat": 11}, "repeat"),
        ({"repeat": True}, "repeat"),
    ],
)
def test_invalid_requests_name_the_field(kwargs: dict[str, object], field: str) -> None:
    base: dict[str, object] = {
        "text": "请注意防火。",
        "category": "fire_prevention",
        "priority": "notice",
    }
    with pytest.raises(ValueError, match=f"^{field}:"):
        AnnouncementRequest(**{**base, **kwargs})  # type: ignore[arg-type]
