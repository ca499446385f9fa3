"""Helpers shared by tests in several folders (fixtures live in conftest.py)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dalaba.protocol import Command, MediaRef, PlayBody, Priority, Target

PG_HOST, PG_PORT = "127.0.0.1", 5432


def throwaway_postgres_url() -> Iterator[str]:
    """A throwaway database on the local PostgreSQL (127.0.0.1:5432) for one test,
    dropped afterwards; skips the test where no server answers."""
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=0.5):
            pass
    except OSError:
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432")
    psycopg = pytest.importorskip("psycopg")
    name = f"dalaba_test_{uuid.uuid4().hex[:12]}"
    for user in ("postgres", "root"):
        try:
            admin = psycopg.connect(
                host=PG_HOST, port=PG_PORT, user=user, dbname="postgres", autocommit=True
            )
            break
        except psycopg.OperationalError:
            continue
    else:
        pytest.skip("PostgreSQL answers but refuses the postgres and root roles")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://{admin.info.user}@{PG_HOST}:{PG_PORT}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ------------------------------------------------------------------ wire-protocol builders

NOW = 1_760_000_000_000  # a fixed "terminal clock" instant, epoch ms
SHA = "ab" * 32


def play_body(**overrides: Any) -> PlayBody:
    fields: dict[str, Any] = {
        "broadcast_id": "b-flood-1",
        "priority": Priority.EMERGENCY,
        "level": 2,
        "category": "flood",
        "title": "山洪预警",
        "media": MediaRef(sha256=SHA, url="media/x.ogg", size=1234, duration_ms=5000),
        "start_at": NOW + 2_000,
    }
    fields.update(overrides)
    return PlayBody(**fields)


def command(
    *, issued_at: int = NOW, expires_at: int = NOW + 600_000, body: PlayBody | None = None
) -> Command:
    return Command(
        id="c0ffee",
        issued_at=issued_at,
        expires_at=expires_at,
        target=Target(villages=("v-001",)),
        body=body or play_body(),
    )
