"""Tables of the warning intake: who may send warnings (`UpstreamSource`) and everything
they sent, kept verbatim with what became of it (`UpstreamMessage`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, LargeBinary
from sqlmodel import Field, SQLModel


class UpstreamSource(SQLModel, table=True):
    """A sender of warnings. `id` is the name of its user (role `upstream`), whose API
    token is its credential: the token says which source a message came from."""

    id: str = Field(primary_key=True)
    name: str = ""  # shown in the console, e.g. 县气象局
    # automatic: plays at once (unless `hold_levels` holds it); review: every message
    # waits in the approvals queue for one officer.
    mode: str = "review"
    # Real warnings at these levels wait for one officer even in automatic mode: the
    # source's own two-person threshold, which replaces the officers' rule (whose
    # counting of one person's sends across townships does not fit a source). Empty:
    # nothing held in automatic mode.
    hold_levels: list[int] = Field(default_factory=list, sa_column=Column(JSON))
    # PEM certificate whose key must have signed each CAP message (XML Signature,
    # enveloped, RSA/ECDSA with SHA-256; controller/warnings/signature.py). None: no check.
    certificate_pem: str | None = None
    enabled: bool = True
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class UpstreamMessage(SQLModel, table=True):
    id: str = Field(primary_key=True)
    source_id: str = Field(index=True)
    protocol: str  # cap | ebm
    received_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    identifier: str = Field(index=True)
    sender: str = ""
    sent: str = ""  # as the sender wrote it (ISO 8601 for CAP)
    msg_type: str = "alert"  # alert | update | cancel | ack | error
    status: str = "actual"  # actual | exercise | test | system | draft
    references: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    mode: str = "automatic"  # the source's mode when it arrived
    # played | review | recorded | refused | no_area | cancelled | duplicate | failed
    outcome: str = Field(default="recorded", index=True)
    reason: str = ""  # machine code of why (controller/warnings/intake.py REASONS)
    headline: str = ""
    text: str = ""  # what is (or would be) spoken
    level: int | None = None
    priority: str | None = None
    drill: bool = False
    village_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    broadcast_id: str | None = Field(default=None, index=True)
    approval_id: str | None = Field(default=None, index=True)
    # broadcasts this message cancelled (an Update's or a Cancel's references)
    cancelled: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    starts_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    expires_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    content_type: str = ""
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
