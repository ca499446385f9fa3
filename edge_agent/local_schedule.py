"""The terminal's own copy of its coming schedule, kept on flash.

The controller sends each terminal its occurrences for the next two days or more
(`ScheduleBody`); the terminal plays them from its own clock when the controller or the
broker cannot be reached. Every occurrence is claimed once, by whichever path gets to it
first (the controller's command or the local clock), and the claim survives a reboot,
so an occurrence plays exactly once.

Broadcasts sent by the controller are claimed the same way, with the attempt the claim
was made for: a resend (a higher attempt) of a broadcast that did not play to the end
may be accepted again; see `EdgeAgent._start_track`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dalaba import protocol as p
from edge_agent.replay import SeenCommands


class LocalSchedule:
    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / "schedule.json"
        self._claims = SeenCommands(state_dir / "claimed-occurrences.txt")
        self.version = 0
        self.horizon_until = 0
        self.items: dict[str, p.ScheduledItem] = {}

    def load(self, now_ms: int) -> None:
        self._claims.load(now_ms)
        if not self._path.exists():
            return
        try:
            data = json.loads(self._path.read_text())
            body = p.ScheduleBody.model_validate(data)
        except (ValueError, OSError):
            return  # a corrupt file is as good as none; the controller resends
        self._set(body)

    def close(self) -> None:
        self._claims.close()

    def replace(self, body: p.ScheduleBody) -> bool:
        """Take a newer schedule; False if it is not newer than the one held."""
        if body.version <= self.version:
            return False
        self._set(body)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_bytes(body.to_bytes())
        os.replace(tmp, self._path)
        return True

    def _set(self, body: p.ScheduleBody) -> None:
        self.version = body.version
        self.horizon_until = body.horizon_until
        self.items = {i.occurrence_id: i for i in body.items}

    def claimed(self, occurrence_id: str) -> bool:
        return self._claims.seen(occurrence_id)

    def claimed_attempt(self, occurrence_id: str) -> int | None:
        """The attempt the id was last claimed for, or None if it is not claimed."""
        return self._claims.value(occurrence_id)

    def claim(self, occurrence_id: str, expires_at_ms: int, attempt: int = 0) -> None:
        self._claims.remember(occurrence_id, expires_at_ms, attempt)

    def due(self, now_ms: int, lead_ms: int) -> list[p.ScheduledItem]:
        """Unclaimed items whose start is within `lead_ms` and that have not expired."""
        return sorted(
            (
                i
                for i in self.items.values()
                if i.start_at - lead_ms <= now_ms < i.expires_at
                and not self._claims.seen(i.occurrence_id)
            ),
            key=lambda i: i.start_at,
        )

    def media(self) -> set[str]:
        return {i.media.sha256 for i in self.items.values()}


class PinnedMedia:
    """Media the controller asked to keep (pre-positioned emergency templates), by
    purpose. Each preload names the complete set for its purpose, so media left out of
    a newer set is released and the flash does not fill up over the years."""

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / "pinned-media.json"
        self._by_purpose: dict[str, dict[str, p.MediaRef]] = {}

    @property
    def refs(self) -> dict[str, p.MediaRef]:
        return {sha: ref for refs in self._by_purpose.values() for sha, ref in refs.items()}

    def load(self) -> None:
        if not self._path.exists():
            return
        try:
            data = json.loads(self._path.read_text())
            self._by_purpose = {
                purpose: {r["sha256"]: p.MediaRef.model_validate(r) for r in refs}
                for purpose, refs in data.items()
            }
        except (ValueError, OSError, AttributeError, KeyError, TypeError):
            self._by_purpose = {}

    def replace(self, purpose: str, refs: tuple[p.MediaRef, ...]) -> set[str]:
        """Set the media kept for `purpose`; returns the hashes no longer kept."""
        before = set(self.refs)
        self._by_purpose[purpose] = {r.sha256: r for r in refs}
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    purpose: [r.model_dump(mode="json") for r in kept.values()]
                    for purpose, kept in self._by_purpose.items()
                }
            )
        )
        os.replace(tmp, self._path)
        return before - set(self.refs)
