"""What the county reported up, and what became of each report (migration 0005_upstream,
the section marked "upstream reports")."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column
from sqlmodel import Field, SQLModel


class UpstreamReport(SQLModel, table=True):
    """One package sent up (a broadcast log, terminal states, the platform's state and
    online rate): sent, its receipt's result code, or why it failed."""

    ebd_id: str = Field(primary_key=True)
    ebd_type: str = Field(index=True)
    trigger: str  # schedule | request | omd (the platform asked)
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    period_start_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    period_end_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    items: int = 0
    status: str = "sent"  # sent | refused (a receipt code 2-5) | failed (no receipt)
    http_status: int | None = None
    result_code: int | None = None  # the platform's receipt
    error: str = ""
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
