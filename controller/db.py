"""The database: one engine, and one place where blocking ORM work leaves the event loop.

The schema is Alembic's (controller/migrations): `start()` creates a new database at the
newest revision, upgrades an older one when allowed, and otherwise refuses to run on it.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, SQLModel, create_engine

from controller import migrations
from controller.migrations import SchemaError

__all__ = ["TABLE_MODULES", "Database", "SchemaError", "make_engine", "table_metadata"]

T = TypeVar("T")
log = logging.getLogger(__name__)

# Every module that defines tables, imported so that create_all() and the migrations
# see them all. A new table or column also needs a revision (controller/migrations).
TABLE_MODULES: tuple[str, ...] = (
    "controller.models",
    "controller.sessions",
    "controller.approvals",
    "controller.groups",
    "controller.templates",
    "controller.prepositioning",
    "controller.schedules.models",
    "controller.idempotency",
    "controller.history",
    "controller.warnings.models",
    "controller.upstream.models",
    "controller.enrolment",
    "controller.updates",
    "controller.phone",
    "controller.clips",
)


def table_metadata() -> MetaData:
    """Every table of the controller (what the newest revision must describe)."""
    for module in TABLE_MODULES:
        importlib.import_module(module)
    return SQLModel.metadata


def is_memory_url(url: str) -> bool:
    return url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: Any, _record: Any) -> None:
            cur = conn.cursor()
            # WAL: readers never wait for the ingest writer; NORMAL is durable across
            # a process crash, which is what a county server meets in practice.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()

        return engine
    return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


class Database:
    """Runs ORM work in worker threads. SQLite gets one thread, so writes are serialised
    in-process instead of fighting over the file lock; PostgreSQL gets a few."""

    def __init__(self, url: str, auto_migrate: bool = True) -> None:
        self.url = url
        # False: a database behind this release's schema is refused (SchemaError)
        # instead of upgraded, for operators who upgrade by hand after a backup.
        self.auto_migrate = auto_migrate
        self.engine: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def file_path(self) -> Path:
        """A SQLite database's file."""
        return Path(make_url(self.url).database or "")

    def start(self) -> None:
        """Open the database at this release's schema; SchemaError (one line for the
        operator) when it cannot be used as it is."""
        metadata = table_metadata()
        if is_memory_url(self.url):
            self.engine = make_engine(self.url)
            # Lives and dies with this process: never older than this release.
            metadata.create_all(self.engine)
        else:
            self._prepare_schema(metadata)
            self.engine = make_engine(self.url)
        self._executor = ThreadPoolExecutor(
            max_workers=1 if self.is_sqlite else 4, thread_name_prefix="db"
        )

    def _prepare_schema(self, metadata: MetaData) -> None:
        # Schema work on its own engine: real transactions, a lock against a second
        # migrator, foreign keys checked at the end (controller.migrations).
        engine = migrations.migration_engine(self.url)
        try:
            with migrations.locked(engine) as conn:
                outcome = migrations.prepare(
                    conn, metadata, auto_migrate=self.auto_migrate, url=self.url
                )
        finally:
            engine.dispose()
        if outcome.action != "none":
            log.info("%s", outcome.message)

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None

    def session(self) -> Session:
        assert self.engine is not None, "Database.start() first"
        return Session(self.engine, expire_on_commit=False)

    def run_sync(self, fn: Callable[[Session], T], *, snapshot: bool = False) -> T:
        with self.session() as session:
            if snapshot and not self.is_sqlite:
                # Every statement of `fn` sees the database as of its first one. Under
                # READ COMMITTED (the default) each statement sees what was committed
                # when it began, so a view read in several statements (a broadcast's
                # counts, then its deliveries) can mix two moments: every delivery
                # `done` beside a count that says none is. Read-only: a snapshot that
                # wrote could fail on a row changed since. SQLite needs nothing: its one
                # database thread runs `fn` between writes, never beside one.
                session.connection(
                    execution_options={
                        "isolation_level": "REPEATABLE READ",
                        "postgresql_readonly": True,
                    }
                )
            result = fn(session)
            session.commit()
            return result

    async def run(self, fn: Callable[[Session], T], *, snapshot: bool = False) -> T:
        """Run `fn(session)` in a transaction off the event loop; commits on return.
        `snapshot`: `fn` only reads, and must see one consistent moment (on PostgreSQL a
        read-only REPEATABLE READ transaction; see `run_sync`)."""
        assert self._executor is not None, "Database.start() first"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(self.run_sync, fn, snapshot=snapshot)
        )
