"""Value types of the speech subsystem: what is asked for and what comes back.

They are frozen and validate themselves on construction, so a bad request fails where it
is built rather than halfway through a render.
"""

from __future__ import annotations

from dataclasses import dataclass

CATEGORIES: frozenset[str] = frozenset(
    {
        "flood",
        "forest_fire",
        "fire_prevention",
        "anti_fraud",
        "typhoon",
        "earthquake",
        "epidemic",
        "road_safety",
        "anti_drug",
        "civility",
        "rural_revitalisation",
        "meeting",
        "news",
        "other",
    }
)


def known_category(value: str) -> str:
    """The one check of a category name, shared by every API shape that takes one."""
    if value not in CATEGORIES:
        raise ValueError(f"unknown category {value!r}; one of {', '.join(sorted(CATEGORIES))}")
    return value


PRIORITIES: tuple[str, ...] = ("emergency", "paging", "notice", "routine")
LANGUAGES: frozenset[str] = frozenset({"cmn", "yue"})
# Emergencies are repeated so that someone who only catches the end still hears it whole.
DEFAULT_REPEAT: dict[str, int] = {"emergency": 3, "paging": 1, "notice": 1, "routine": 1}
MAX_REPEAT = 10
MAX_TEXT_CHARS = 5000


@dataclass(frozen=True)
class AnnouncementRequest:
    """One announcement to be spoken.

    `text` is Mandarin with any template already filled in; for each language in
    `languages` the same text is spoken in that language, in order.
    """

    text: str
    category: str
    priority: str
    level: int | None = None
    drill: bool = False
    languages: tuple[str, ...] = ("cmn",)
    repeat: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError("text: must be a non-empty string")
        if len(self.text) > MAX_TEXT_CHARS:
            raise ValueError(f"text: longer than {MAX_TEXT_CHARS} characters")
        if self.category not in CATEGORIES:
            raise ValueError(f"category: unknown category {self.category!r}")
        if self.priority not in PRIORITIES:
            raise ValueError(
                f"priority: must be one of {', '.join(PRIORITIES)}, not {self.priority!r}"
            )
        if self.priority == "emergency":
            if self.level is None or isinstance(self.level, bool) or self.level not in (1, 2, 3, 4):
                raise ValueError("level: emergencies need a level from 1 (I, red) to 4 (IV, blue)")
        elif self.level is not None:
            raise ValueError("level: only emergencies have a level")
        if not isinstance(self.languages, tuple) or not self.languages:
            raise ValueError("languages: must be a non-empty tuple")
        for lang in self.languages:
            if lang not in LANGUAGES:
                raise ValueError(f"languages: unsupported language {lang!r} (cmn or yue)")
        if len(set(self.languages)) != len(self.languages):
            raise ValueError("languages: each language may appear once")
        if self.repeat is not None and (
            isinstance(self.repeat, bool)
            or not isinstance(self.repeat, int)
            or not 1 <= self.repeat <= MAX_REPEAT
        ):
            raise ValueError(f"repeat: must be between 1 and {MAX_REPEAT}")

    @property
    def effective_repeat(self) -> int:
        return self.repeat if self.repeat is not None else DEFAULT_REPEAT[self.priority]


@dataclass(frozen=True)
class RenderedAnnouncement:
    """Encoded audio ready to publish: Ogg/Opus, mono, speech-optimised."""

    audio: bytes
    mime: str
    duration_ms: int
    voices: tuple[str, ...]
    sha256: str
