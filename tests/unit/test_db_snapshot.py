"""`Database.run(..., snapshot=True)`: a read of several statements sees one moment on
PostgreSQL (a broadcast's counts and its deliveries agree), and the pooled connection
is back to the ordinary READ COMMITTED, writable, afterwards."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlmodel import Session

from controller.db import Database
from controller.models import Township

pytestmark = pytest.mark.postgres


@pytest.fixture
def db(pg_database: Database) -> Database:
    return pg_database


def townships(s: Session) -> int:
    return int(s.execute(text("SELECT count(*) FROM township")).scalar_one())


def add_township(db: Database, tid: str) -> None:
    db.run_sync(lambda s: s.add(Township(id=tid, name=tid, lat=0, lon=0)))


def read_twice_around_a_commit(db: Database, snapshot: bool) -> tuple[int, int]:
    def read(s: Session) -> tuple[int, int]:
        before = townships(s)
        add_township(db, f"t{before + 1:02d}")  # another connection commits meanwhile
        return before, townships(s)

    return db.run_sync(read, snapshot=snapshot)


def test_a_snapshot_read_does_not_see_what_commits_during_it(db: Database) -> None:
    add_township(db, "t01")
    assert read_twice_around_a_commit(db, snapshot=True) == (1, 1)
    # The check can fail: without the snapshot the second statement sees the commit.
    assert read_twice_around_a_commit(db, snapshot=False) == (2, 3)


def test_the_connection_is_ordinary_again_after_a_snapshot(db: Database) -> None:
    def mode(s: Session) -> tuple[str, str]:
        level = s.execute(text("SHOW transaction_isolation")).scalar_one()
        return level, s.execute(text("SHOW transaction_read_only")).scalar_one()

    assert db.run_sync(mode, snapshot=True) == ("repeatable read", "on")
    for _ in range(12):  # more than the pool holds: every pooled connection was reset
        assert db.run_sync(mode) == ("read committed", "off")
    add_township(db, "t01")  # writes work after a read-only snapshot


@pytest.mark.asyncio
async def test_run_passes_snapshot_to_the_database_thread(db: Database) -> None:
    level = await db.run(
        lambda s: s.execute(text("SHOW transaction_isolation")).scalar_one(), snapshot=True
    )
    assert level == "repeatable read"
