"""Text-to-speech and audio rendering for announcements.

Entry point: `AnnouncementRenderer(cache_dir=...).render(AnnouncementRequest(...))` gives
an Ogg/Opus `RenderedAnnouncement`; `normalise_upload(data)` does the same for an
uploaded recording and raises `UnsupportedAudio` for anything it refuses.
"""

from controller.speech.render import UnsupportedAudio, normalise_upload
from controller.speech.service import AnnouncementRenderer
from controller.speech.types import AnnouncementRequest, RenderedAnnouncement

__all__ = [
    "AnnouncementRenderer",
    "AnnouncementRequest",
    "RenderedAnnouncement",
    "UnsupportedAudio",
    "normalise_upload",
]
