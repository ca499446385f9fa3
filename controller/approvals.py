"""The two-person rule: a real emergency that reaches the whole county waits for a second
duty officer (Hawaii, January 2018: one person, one drop-down, one confirmation).

The request is rendered before it waits, and the second officer hears that exact audio;
approving sends that audio and nothing else. Which requests wait is a setting
(`two_person_levels`, `two_person_min_townships`).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web
from sqlalchemy import JSON, BigInteger, Column
from sqlmodel import Field, SQLModel

from controller.settings import Settings
from controller.timefmt import iso


class PendingBroadcast(SQLModel, table=True):
    id: str = Field(primary_key=True)
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    expires_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    requested_by: str
    requested_role: str
    requested_township: str | None = None
    status: str = Field(default="pending", index=True)  # pending|approved|rejected|expired
    body: dict[str, Any] = Field(sa_column=Column(JSON))  # the BroadcastIn, as sent
    media_sha256: str = Field(foreign_key="media.sha256")
    voices: str = ""
    device_count: int = 0
    townships: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    decided_by: str | None = None
    decided_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    reason: str = ""
    broadcast_id: str | None = None


def needs_second_person(
    settings: Settings,
    *,
    priority: str,
    level: int | None,
    drill: bool,
    townships_reached: int,
    townships_total: int,
) -> bool:
    if drill or priority != "emergency" or level not in settings.two_person_levels:
        return False
    if townships_total and townships_reached >= townships_total:
        return True
    minimum = settings.two_person_min_townships
    return minimum > 0 and townships_reached >= minimum


def new_id() -> str:
    return "req-" + uuid.uuid4().hex[:12]


def pending_view(row: PendingBroadcast) -> dict[str, Any]:
    body = row.body
    return {
        "id": row.id,
        "status": row.status,
        "created_at": iso(row.created_ms),
        "expires_at": iso(row.expires_ms),
        "requested_by": row.requested_by,
        "title": body.get("title") or (body.get("text") or "")[:40],
        "text": body.get("text") or "",
        "category": body.get("category"),
        "priority": body.get("priority"),
        "level": body.get("level"),
        "drill": bool(body.get("drill")),
        "targets": body.get("targets"),
        "townships": row.townships,
        "device_count": row.device_count,
        "media_id": row.media_sha256,
        "media_url": f"/media/{row.media_sha256}",
        "decided_by": row.decided_by,
        "decided_at": iso(row.decided_ms),
        "reason": row.reason,
        "broadcast_id": row.broadcast_id,
    }


class ApprovalRequired(web.HTTPAccepted):
    """Raised by `BroadcastService.create` instead of sending.

    An HTTP 202 on purpose: whichever entry point asked for the broadcast (the API, a
    template, anything added later) answers "accepted, waiting for a second officer"
    without having to know about the rule, and none of them can send around it.
    """

    def __init__(self, view: dict[str, Any]) -> None:
        self.view = view
        super().__init__(
            text=json.dumps(
                {"status": "pending_approval", "approval_id": view["id"], "approval": view},
                ensure_ascii=False,
            ),
            content_type="application/json",
        )
