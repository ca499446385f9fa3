"""Saved target groups ("riverside villages", "reservoir downstream"): a named list of
villages, kept by the county or by one township for its own villages."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column
from sqlmodel import Field, SQLModel


class TargetGroup(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    description: str = ""
    # None: a county group (duty officers); else the township that owns it, whose
    # staff alone may change it and whose villages alone it may hold.
    township_id: str | None = Field(default=None, foreign_key="township.id", index=True)
    villages: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    created_by: str
    created_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
