"""Text-to-speech and audio rendering for announcements.

Entry point: `AnnouncementRenderer(cache_dir=...).render(AnnouncementRequest(...))` gives
an Ogg/Opus `RenderedAnnouncement`; `normalise_upload(data)` does the same for an
uploaded recording and raises `UnsupportedAudio` for anything it refuses
(`NotPlainAudio` for playlists and other files that name further files or URLs).
"""

from controller.speech.render import normalise_upload
from controller.speech.service import AnnouncementRenderer
from controller.speech.sniff import NotPlainAudio, UnsupportedAudio
from controller.speech.types import AnnouncementRequest, RenderedAnnouncement

__all__ = [
    "AnnouncementRenderer",
    "AnnouncementRequest",
    "NotPlainAudio",
    "RenderedAnnouncement",
    "UnsupportedAudio",
    "normalise_upload",
]
