"""Schedule tables. The database is the source of truth: the scheduler's jobs are
rebuilt from these rows at every start, and every occurrence is a row with its outcome.

Times are epoch milliseconds (UTC), like every other table.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, UniqueConstraint
from sqlmodel import Field, SQLModel


def _ms(nullable: bool = False, index: bool = False) -> Any:
    return Field(sa_column=Column(BigInteger, nullable=nullable, index=index))


class Schedule(SQLModel, table=True):
    id: str = Field(primary_key=True)
    name: str
    status: str = Field(default="active", index=True)  # active | paused | deleted
    version: int = 1  # grows with every edit; occurrences remember which they follow
    created_ms: int = _ms()
    created_by: str
    updated_ms: int = _ms()
    updated_by: str
    # The townships the schedule plays in: the reach township staff need to edit it,
    # and the timelines it appears on.
    township_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    # The body as the client gave it (what PATCH merges into); the columns below are
    # what it resolved to (template filled in, defaults applied).
    request: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    recurrence: dict[str, Any] = Field(sa_column=Column(JSON))  # rules.recurrence_to_dict
    # Content: the text as spoken (template already filled) or an uploaded recording.
    text: str = ""
    media_sha256: str = Field(foreign_key="media.sha256")
    voices: str = ""
    template_id: str | None = None
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    title: str = ""
    category: str
    priority: str  # emergency | notice | routine
    level: int | None = None
    drill: bool = False
    languages: list[str] = Field(default_factory=lambda: ["cmn"], sa_column=Column(JSON))
    repeat: int | None = None
    targets: dict[str, Any] = Field(sa_column=Column(JSON))  # as requested
    target: dict[str, Any] = Field(sa_column=Column(JSON))  # normalised, as signed
    expires_in_s: int
    misfire_grace_s: int


class Occurrence(SQLModel, table=True):
    """One due time of one schedule, recorded once (unique on schedule and instant) so
    that a restart neither records nor fires it twice."""

    __table_args__ = (UniqueConstraint("schedule_id", "due_ms"),)

    id: str = Field(primary_key=True)  # plan.occurrence_id(); also its broadcast's id
    schedule_id: str = Field(foreign_key="schedule.id", index=True)
    due_ms: int = _ms(index=True)
    expires_at_ms: int = _ms()
    # scheduled | fired | suppressed | missed | played_offline | cancelled
    outcome: str = Field(default="scheduled", index=True)
    reason: str | None = None
    schedule_version: int = 1
    devices_digest: str = ""
    device_count: int = 0
    # township -> why it was kept silent (quiet hours)
    suppressed: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON))
    broadcast_id: str | None = None
    fired_ms: int | None = _ms(nullable=True)
    start_at_ms: int | None = _ms(nullable=True)
    dispatch: str | None = None  # published | failed (the broker did not confirm)
    created_ms: int = _ms()
    updated_ms: int = _ms()


class TerminalSchedule(SQLModel, table=True):
    """What each terminal was last given as its local schedule."""

    device_id: str = Field(primary_key=True)
    version: int = Field(sa_column=Column(BigInteger, nullable=False))
    command_id: str = ""  # of the schedule command, to tell its rejections from forgeries
    digest: str
    items: int
    bytes: int
    horizon_until_ms: int = _ms()
    pushed_ms: int = _ms()
    published: bool = False
    dropped: int = 0  # items that did not fit in one command
    # Whether the terminal was online when pushed: one that had never connected has no
    # broker session to queue the push in, so it is pushed again when it connects.
    device_online: bool = False


class SchedulerHeartbeat(SQLModel, table=True):
    """When the schedule runner was last known to be running: after a restart, every
    due time since then is accounted for (fired within its grace, or recorded missed)."""

    id: str = Field(primary_key=True)
    started_ms: int = _ms()
    heartbeat_ms: int = _ms()
