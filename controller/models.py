"""Database tables. Times are epoch milliseconds (UTC) everywhere: the same on SQLite
and PostgreSQL, the same as on the wire, and never a naive datetime."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, UniqueConstraint
from sqlmodel import Field, SQLModel


def _ms_column(nullable: bool = False, index: bool = False) -> Any:
    return Field(sa_column=Column(BigInteger, nullable=nullable, index=index))


class Township(SQLModel, table=True):
    id: str = Field(primary_key=True)
    name: str
    name_en: str = ""
    # 9-digit administrative code (county 6 + township 3; controller/areas.py)
    code: str | None = Field(default=None, index=True)
    lat: float
    lon: float
    quiet_start: str | None = None  # "22:00" local; quiet hours for notices
    quiet_end: str | None = None


class Village(SQLModel, table=True):
    id: str = Field(primary_key=True)
    township_id: str = Field(foreign_key="township.id", index=True)
    name: str
    # 12-digit administrative code (township 9 + village 3; controller/areas.py)
    code: str | None = Field(default=None, index=True)
    lat: float
    lon: float


class Device(SQLModel, table=True):
    id: str = Field(primary_key=True)
    village_id: str = Field(foreign_key="village.id", index=True)
    township_id: str = Field(foreign_key="township.id", index=True)
    name: str
    # 18-digit resource code of the standards (type 2, subtype 2, area 12, extension 2)
    resource_code: str | None = Field(default=None, index=True)
    online: bool = False
    last_seen_ms: int | None = _ms_column(nullable=True)
    status_changed_ms: int | None = _ms_column(nullable=True)
    firmware: str | None = None
    volume: int | None = None
    playing_broadcast_id: str | None = None
    telemetry: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # fault name -> epoch ms when it started
    faults: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON))
    telemetry_history_ms: int | None = _ms_column(nullable=True)
    # As the terminal last said in its telemetry; three of these without a word and it
    # is shown offline, whether or not the broker delivered its last will.
    telemetry_interval_s: float | None = None


class User(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    role: str  # admin | duty_officer | township_staff | viewer
    township_id: str | None = Field(default=None, foreign_key="township.id")
    password_hash: str | None = None  # argon2, for console logins
    disabled: bool = False
    created_ms: int = _ms_column()


class ApiToken(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    # sha256 of a 256-bit random token: enough for a secret that cannot be guessed,
    # and cheap to check on every request (argon2 is for low-entropy passwords).
    token_hash: str = Field(unique=True, index=True)
    prefix: str  # first characters, to tell tokens apart in listings
    label: str = ""
    created_ms: int = _ms_column()
    last_used_ms: int | None = _ms_column(nullable=True)
    revoked: bool = False


class Media(SQLModel, table=True):
    sha256: str = Field(primary_key=True)
    mime: str
    size: int
    duration_ms: int
    source: str  # "speech" | "upload"
    voices: str = ""
    text: str = ""
    created_ms: int = _ms_column()


class Broadcast(SQLModel, table=True):
    id: str = Field(primary_key=True)
    created_ms: int = _ms_column(index=True)
    created_by: str
    title: str = ""
    text: str = ""
    media_sha256: str = Field(foreign_key="media.sha256")
    category: str = Field(index=True)
    priority: str
    level: int | None = None
    drill: bool = False
    targets: dict[str, Any] = Field(sa_column=Column(JSON))  # as requested
    target: dict[str, Any] = Field(sa_column=Column(JSON))  # normalised, as signed
    start_at_ms: int = _ms_column()
    expires_at_ms: int = _ms_column(index=True)
    status: str = "active"  # active | cancelled | finished
    swept: bool = False  # expiry has settled every delivery still waiting
    dispatch: str = "pending"  # pending | published | failed
    command_id: str = ""
    voices: str = ""
    device_count: int = 0
    cancelled_ms: int | None = _ms_column(nullable=True)
    cancelled_by: str | None = None
    attempt: int = 0  # resends so far
    # [{"attempt", "command_id", "at", "by", "devices"}] for each resend
    resends: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    # A correction or update names the broadcast it corrects (shown on both boards).
    corrects_id: str | None = Field(default=None, index=True)
    # The second duty officer who confirmed it, when the two-person rule held it.
    approved_by: str | None = None


class Delivery(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("broadcast_id", "device_id"),)

    id: int | None = Field(default=None, primary_key=True)
    broadcast_id: str = Field(foreign_key="broadcast.id", index=True)
    device_id: str = Field(foreign_key="device.id", index=True)
    state: str = "sent"
    reason: str | None = None
    updated_ms: int = _ms_column()
    last_seq: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    # "device" when the terminal said so, "controller" when inferred (e.g. never
    # delivered before expiry); a terminal's own later report overrides an inference.
    state_source: str = "controller"
    attempt: int = 0  # the send (0) or resend (n) the current state belongs to


class DeliveryTransition(SQLModel, table=True):
    """A delivery's history, one row per state it was in: appended, never rewritten
    (controller/deliveries.py). Read in the terminal's order: `at_ms`, then `id`. Keyed
    by broadcast and device rather than the delivery's id, so a broadcast's deliveries
    and their first rows are written together in bulk before any id is known."""

    __tablename__ = "delivery_transition"
    # Also the index every reader uses (a delivery's rows); a report the broker delivered
    # twice has the same seq and is stored once (controller rows have none).
    __table_args__ = (
        UniqueConstraint("broadcast_id", "device_id", "seq", name="uq_delivery_transition_seq"),
    )

    id: int | None = Field(default=None, primary_key=True)
    broadcast_id: str
    device_id: str
    state: str
    at_ms: int = _ms_column()  # when it happened, by the terminal's clock
    rx_ms: int = _ms_column()  # when the controller learned it
    reason: str | None = None
    inferred: bool = False  # the controller's inference, not the terminal's word
    cause: str | None = None  # for an inference: dispatch | sweep | operator | schedule
    seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    # Milliseconds of the announcement skipped by an interruption (statistics read it).
    offset_ms: int | None = _ms_column(nullable=True)
    # The rest the terminal said (offline, late_ms, on_receipt, silent_ms); null when none.
    extra: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class BroadcastCount(SQLModel, table=True):
    """How many of a broadcast's deliveries are in each state, kept in the transaction
    that moves them (controller/deliveries.py), so a board of 10,000 terminals reads a
    dozen rows. The pseudo-state `REACHED` counts deliveries the terminal answered."""

    __tablename__ = "broadcast_count"

    broadcast_id: str = Field(primary_key=True)
    state: str = Field(primary_key=True)
    n: int = 0


class AuditEntry(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    at_ms: int = _ms_column(index=True)
    actor: str
    role: str
    action: str
    target: str = ""
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class SecurityEvent(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    at_ms: int = _ms_column(index=True)
    device_id: str = Field(index=True)
    kind: str
    reason: str | None = None
    command_id: str | None = None
    broadcast_id: str | None = None
    known_command: bool = False  # the command id was one this controller issued
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class TelemetrySample(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(index=True)
    at_ms: int = _ms_column(index=True)
    data: dict[str, Any] = Field(sa_column=Column(JSON))
