"""The database: one engine, and one place where blocking ORM work leaves the event loop."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine

T = TypeVar("T")

# Every module that defines tables, imported so that create_all() sees them all.
TABLE_MODULES: tuple[str, ...] = (
    "controller.models",
    "controller.sessions",
    "controller.approvals",
    "controller.groups",
    "controller.templates",
    "controller.prepositioning",
    "controller.schedules.models",
)


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

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def start(self) -> None:
        for module in TABLE_MODULES:
            importlib.import_module(module)
        self.engine = make_engine(self.url)
        SQLModel.metadata.create_all(self.engine)
        self._executor = ThreadPoolExecutor(
            max_workers=1 if self.is_sqlite else 4, thread_name_prefix="db"
        )

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

    def run_sync(self, fn: Callable[[Session], T]) -> T:
        with self.session() as session:
            result = fn(session)
            session.commit()
            return result

    async def run(self, fn: Callable[[Session], T]) -> T:
        """Run `fn(session)` in a transaction off the event loop; commits on return."""
        assert self._executor is not None, "Database.start() first"
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.run_sync, fn)
