"""The database schema's history (Alembic), driven from code: no alembic.ini at run time.

Revisions live in `versions/` beside this file. `0001` is the schema of Dalaba 0.1.0, the
last release that built its tables with `create_all` and kept no version; every schema
change since is a revision. A database is in one of these states:

- empty: no tables at all. It is created at head in one step (`create_all`, then
  stamped), which is what tests creating hundreds of databases need to stay cheap;
  `tests/integration/test_migrations.py` proves the revisions build the same schema.
- unversioned: tables and no `alembic_version`: made by 0.1.0 (or by a development build
  between releases). Stamped at the revision whose tables and columns it has exactly
  (`0001` for 0.1.0), then upgraded; one that matches no revision is refused.
- behind, current, or newer (a revision this release does not know: made by a later
  release, which this one must not touch).

All the work on one database happens in one transaction, behind a lock that a second
controller or `dalaba db upgrade` started at the same moment waits on: PostgreSQL's
transaction-level advisory lock, SQLite's `BEGIN IMMEDIATE`. A migration that fails
leaves the database as it was.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# Alembic announces its plugins as it is imported and "Context impl SQLiteImpl" at every
# start; what happened to the schema is logged here instead (prepare, and each revision
# applied, from env.py).
logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402
from sqlalchemy import MetaData, create_engine, event, inspect, make_url, text  # noqa: E402
from sqlalchemy.engine import Connection, Engine  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

BASELINE = "0001"
# Any fixed number: the key of the PostgreSQL advisory lock that serialises migrations.
_PG_LOCK_KEY = 0x44414C41  # "DALA"


class SchemaError(Exception):
    """The database cannot be used as it is; the message is one line for the operator."""


@dataclass(frozen=True)
class SchemaStatus:
    current: str | None  # the revision stored in the database, if any
    head: str  # the revision this release needs
    has_tables: bool

    @property
    def state(self) -> str:
        """empty | unversioned | behind | current | newer"""
        if self.current is None:
            return "unversioned" if self.has_tables else "empty"
        if self.current == self.head:
            return "current"
        return "behind" if self.current in known_revisions() else "newer"


def display_url(url: str) -> str:
    """The URL as it may be printed or logged: without its password."""
    return make_url(url).render_as_string(hide_password=True)


def alembic_config(
    connection: Connection | None = None, metadata: MetaData | None = None
) -> Config:
    """Alembic's configuration, from this package instead of an ini file. `env.py` takes
    the connection and the models' metadata from `attributes`."""
    config = Config()
    config.set_main_option("script_location", "controller:migrations")
    config.attributes["connection"] = connection
    config.attributes["target_metadata"] = metadata
    return config


@functools.cache
def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The one head revision (more than one is a mistake in the revisions: refuse)."""
    rev = scripts().get_current_head()
    assert rev is not None, "no revisions in controller/migrations/versions"
    return rev


@functools.cache
def known_revisions() -> frozenset[str]:
    return frozenset(s.revision for s in scripts().walk_revisions())


def migration_engine(url: str) -> Engine:
    """An engine for schema work only: one connection at a time, real transactions.

    pysqlite issues BEGIN only before data changes, so DDL would commit statement by
    statement; it is switched off here and the transaction begun by hand (SQLAlchemy's
    recipe), IMMEDIATE so that a writer elsewhere waits instead of interleaving. Foreign
    keys are off while the schema changes: a batch migration recreates tables that
    others refer to; `foreign_key_check` runs before the commit instead."""
    if not url.startswith("sqlite"):
        return create_engine(url, poolclass=NullPool)
    engine = create_engine(url, poolclass=NullPool)

    @event.listens_for(engine, "connect")
    def _connect(conn: Any, _record: Any) -> None:
        conn.isolation_level = None
        cur = conn.cursor()
        cur.execute("PRAGMA foreign_keys=OFF")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextmanager
def locked(engine: Engine) -> Iterator[Connection]:
    """One transaction holding the migration lock; committed when the block ends."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        yield conn
        if conn.dialect.name == "sqlite":
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise SchemaError(f"the migration broke {len(broken)} foreign keys: {broken[:3]}")


def status(conn: Connection) -> SchemaStatus:
    current = MigrationContext.configure(conn).get_current_revision()
    has_tables = current is not None or bool(inspect(conn).get_table_names())
    return SchemaStatus(current=current, head=head(), has_tables=has_tables)


@dataclass(frozen=True)
class Outcome:
    action: str  # none | created | upgraded
    before: SchemaStatus
    message: str


def prepare(conn: Connection, metadata: MetaData, *, auto_migrate: bool, url: str) -> Outcome:
    """Bring the database on `conn` to head, or refuse with SchemaError. `conn` is in a
    transaction from `locked`."""
    st = status(conn)
    where = display_url(url)
    match st.state:
        case "current":
            return Outcome("none", st, f"database {where} is at {st.head}, the newest revision")
        case "empty":
            metadata.create_all(conn)
            MigrationContext.configure(conn).stamp(scripts(), "head")
            return Outcome("created", st, f"created database {where} at {st.head}")
        case "newer":
            raise SchemaError(
                f"database {where} is at revision {st.current}, which this Dalaba release "
                "does not know: it was upgraded by a newer release; run that release"
            )
    if not auto_migrate:
        at = st.current or "0.1.0 (no revision)"
        raise SchemaError(
            f"database {where} is at {at}, this release needs {st.head}: "
            "run `dalaba db upgrade` (or set DALABA_AUTO_MIGRATE=true)"
        )
    start = st.current
    if start is None:
        start = _revision_of_unversioned(conn, metadata, where)
        MigrationContext.configure(conn).stamp(scripts(), start)
    command.upgrade(alembic_config(conn, metadata), "head")
    before = start if st.current else f"{start} ({_release_of(start)}, no revision kept)"
    return Outcome("upgraded", st, f"upgraded database {where} from {before} to {st.head}")


def _release_of(revision: str) -> str:
    return "Dalaba 0.1.0" if revision == BASELINE else "a development build"


def _revision_of_unversioned(conn: Connection, metadata: MetaData, where: str) -> str:
    """The revision whose tables and columns a database without a revision has: 0001
    for one made by 0.1.0 (which kept none); a later one for a development build that
    made its tables with create_all. Each revision's schema is built in a scratch
    in-memory database to compare with. Nothing is guessed: a database that matches none
    (another program's, or Dalaba's altered by hand) is refused, not taken over."""
    found = _columns(conn)
    matches: list[str] = []
    missing: list[str] = []
    scratch_engine = migration_engine("sqlite://")
    try:
        with locked(scratch_engine) as scratch:
            config = alembic_config(scratch, metadata)
            config.attributes["log_steps"] = False  # not the database being upgraded
            for script in reversed(list(scripts().walk_revisions())):  # oldest first
                command.upgrade(config, script.revision)
                expected = _columns(scratch)
                if script.revision == BASELINE:
                    missing = sorted(set(expected) - set(found))
                if all(found.get(table) == cols for table, cols in expected.items()):
                    matches.append(script.revision)
    finally:
        scratch_engine.dispose()
    if matches:
        return matches[-1]
    what = f"missing tables {', '.join(missing[:5])}" if missing else "other columns"
    raise SchemaError(
        f"database {where} has tables but no revision, and they are not Dalaba's "
        f"({what}): point the settings at a Dalaba database or an empty one"
    )


def _columns(conn: Connection) -> dict[str, frozenset[str]]:
    insp = inspect(conn)
    return {
        table: frozenset(c["name"] for c in insp.get_columns(table))
        for table in insp.get_table_names()
        if table != "alembic_version"
    }
