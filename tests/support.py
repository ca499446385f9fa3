"""Helpers shared by tests in several folders (fixtures live in conftest.py)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest

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
