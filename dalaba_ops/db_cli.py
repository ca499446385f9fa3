"""`dalaba db ...`: the database's schema and moves between databases.

Registered by `dalaba_ops.cli`; the subcommands live here so that the migration work
has one home. Failures are raised and turned into one line and an exit code by
`dalaba_ops.cli.main` (`cli_support.describe`); `current` exits 1 when the database is
not at this release's schema, so a script can test it.

The controller (SQLAlchemy, Alembic) is imported when a `db` command runs, not when
`dalaba` starts: a terminal's install has none of it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dalaba_ops.cli_support import (
    DB_CONNECT_TIMEOUT_S,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    add_location_arguments,
    load_settings,
    safe_url,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `db` command and its subcommands to the `dalaba` parser."""
    p = sub.add_parser("db", help="database schema: upgrade, current, copy (docs/operations.md)")
    dsub = p.add_subparsers(dest="db_command", required=True, metavar="SUBCOMMAND")

    c = dsub.add_parser(
        "upgrade",
        help="bring the database to this release's schema (a new one is created)",
        description="Back up first (docs/operations.md, Upgrading). A database made by "
        "Dalaba 0.1.0 is recognised and upgraded; one made by a newer release is refused.",
    )
    _add_verbose(c)
    add_location_arguments(c)
    c.set_defaults(func=cmd_upgrade)

    c = dsub.add_parser(
        "current", help="print the database's schema revision; exit 1 when not the newest"
    )
    _add_verbose(c)
    add_location_arguments(c)
    c.set_defaults(func=cmd_current)

    c = dsub.add_parser(
        "copy",
        help="copy every table into another, empty database (SQLite to PostgreSQL)",
        description="Stop the controller first. The target is brought to this release's "
        "schema and filled in one transaction; the source is only read. The source "
        "defaults to the configured database (--config, --data-dir, DALABA_*).",
    )
    _add_verbose(c)
    c.add_argument("--from", dest="database_url", metavar="URL", help="the source database")
    c.add_argument("--to", dest="target_url", metavar="URL", required=True, help="the target")
    add_location_arguments(c)
    c.add_argument("--batch-rows", type=int, default=2000, help="rows per insert (2000)")
    c.set_defaults(func=cmd_copy)


def _add_verbose(p: argparse.ArgumentParser) -> None:
    # As on every other subcommand: -v after the subcommand too; SUPPRESS keeps
    # `dalaba -v db ...` working.
    p.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
        help="log more, and show the traceback of an error",
    )  # fmt: skip


def cmd_upgrade(args: argparse.Namespace) -> int:
    from controller import migrations
    from controller.db import table_metadata

    url = _database_url(args, must_exist=False)
    engine = _engine(migrations.migration_engine, url)
    try:
        with migrations.locked(engine) as conn:
            outcome = migrations.prepare(conn, table_metadata(), auto_migrate=True, url=url)
    finally:
        engine.dispose()
    print(outcome.message)
    return EXIT_OK


def cmd_current(args: argparse.Namespace) -> int:
    from controller import migrations
    from controller.migrations.copy import reader_engine

    url = _database_url(args, must_exist=True)
    engine = _engine(reader_engine, url)
    try:
        with engine.connect() as conn:
            st = migrations.status(conn)
    finally:
        engine.dispose()
    upgrade = "run `dalaba db upgrade`"
    text = {
        "current": f"{st.current} (head)",
        "behind": f"{st.current} (behind: this release needs {st.head}; {upgrade})",
        "unversioned": f"no revision: made by Dalaba 0.1.0 ({upgrade})",
        "empty": f"empty: no tables ({upgrade} to create them at {st.head})",
        "newer": f"{st.current} (unknown to this release, which needs {st.head}: newer)",
    }[st.state]
    print(f"{safe_url(url)}: {text}")
    return EXIT_OK if st.state == "current" else EXIT_FAILED


def cmd_copy(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from controller.db import table_metadata
    from controller.migrations.copy import copy_database

    if args.batch_rows < 1:
        raise CliError(EXIT_USAGE, "--batch-rows: at least 1")
    source = _database_url(args, must_exist=True)
    target = _checked_url(args.target_url, "--to")
    if make_url(source) == make_url(target):
        raise CliError(EXIT_USAGE, "--from and --to are the same database")

    def progress(table: str, rows: int) -> None:
        print(f"  {table}: {rows} rows", flush=True)

    print(f"copying {safe_url(source)} to {safe_url(target)}", flush=True)
    try:
        copied = copy_database(
            _with_timeout(source),
            _with_timeout(target),
            table_metadata(),
            batch_rows=args.batch_rows,
            progress=progress,
        )
    except ModuleNotFoundError as exc:
        raise _no_driver(target) from exc
    print(f"copied {sum(copied.values())} rows in {len(copied)} tables; counts checked")
    return EXIT_OK


def _database_url(args: argparse.Namespace, *, must_exist: bool) -> str:
    """The database the command means, as the controller would open it: --database-url
    (or --from), else the settings' (--config, --data-dir, DALABA_* variables). Never
    the default ./data: a command run in the wrong directory must not make a database."""
    settings = load_settings(args, require_location=True)
    url = _checked_url(settings.db_url, "--database-url" if args.database_url else "database_url")
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None:
        if not sqlite_file.parent.is_dir():
            raise CliError(EXIT_NOT_FOUND, f"data directory {sqlite_file.parent}: not found")
        if must_exist and not sqlite_file.is_file():
            raise CliError(EXIT_NOT_FOUND, f"database {sqlite_file}: not found")
    return url


def _checked_url(url: str, option: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise CliError(
            EXIT_USAGE, f"{option}: not a database URL (sqlite:///PATH, postgresql+psycopg://…)"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise CliError(EXIT_USAGE, f"{option}: {backend} is not supported (sqlite, postgresql)")
    if backend == "sqlite" and _sqlite_file(url) is None:
        raise CliError(EXIT_USAGE, f"{option}: an in-memory SQLite database keeps nothing")
    return url


def _sqlite_file(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:" or "memory" in parsed.query.values():
        return None
    return Path(parsed.database)


def _with_timeout(url: str) -> str:
    """A server that does not answer fails the command instead of hanging it."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or "connect_timeout" in parsed.query:
        return url
    timeout = parsed.update_query_dict({"connect_timeout": str(DB_CONNECT_TIMEOUT_S)})
    return timeout.render_as_string(hide_password=False)


def _engine(factory: Callable[[str], Engine], url: str) -> Engine:
    try:
        return factory(_with_timeout(url))
    except ModuleNotFoundError as exc:
        raise _no_driver(url) from exc


def _no_driver(url: str) -> CliError:
    return CliError(
        EXIT_USAGE,
        f"database {safe_url(url)}: its driver is not installed "
        "(PostgreSQL needs the postgres extra: pip install 'dalaba[postgres]')",
    )
