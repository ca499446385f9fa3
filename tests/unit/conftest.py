"""Fixtures of the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller.db import Database
from tests.support import throwaway_postgres_url


@pytest.fixture
def pg_database() -> Iterator[Database]:
    """A started `Database` on a throwaway PostgreSQL database at this release's schema
    (skips where there is no PostgreSQL), for what only PostgreSQL can show: writers
    running side by side, isolation levels."""
    for url in throwaway_postgres_url():
        database = Database(url)
        database.start()
        try:
            yield database
        finally:
            database.stop()
