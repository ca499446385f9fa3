"""What every `dalaba` subcommand shares: its exit codes, the one error type that carries
them, the mapping from any other exception to one line on stderr, loading the settings
from `--config`, and opening an existing database without changing it.

Imports of the controller stay inside the functions: a terminal installs `dalaba[agent]`
without the controller, and `dalaba agent` and `dalaba --version` must still work there.
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from controller.db import Database
    from controller.settings import Settings

T = TypeVar("T")

# The exit codes (README, "The dalaba command"). Scripts and the technician's notes
# depend on them: change them only with a release note.
EXIT_OK = 0
EXIT_FAILED = 1  # `dalaba check` found a problem, or an unexpected error
EXIT_USAGE = 2  # bad arguments, a bad or missing config file, a value that is refused
EXIT_NOT_FOUND = 3  # a data directory, database, user, township, terminal or token
EXIT_UNREACHABLE = 4  # the broker or database server cannot be reached, or a file opened

# A session with a database server that does not answer should fail, not hang.
DB_CONNECT_TIMEOUT_S = 5


class CliError(Exception):
    """A mistake the user can correct: printed as one line, exits with `code`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def describe(exc: BaseException) -> tuple[int, str]:
    """The exit code and one-line message for any exception a subcommand raises; the
    only place that decides how a failure looks to the user."""
    if isinstance(exc, CliError):
        return exc.code, exc.message
    try:
        from pydantic import ValidationError
    except ImportError:  # pragma: no cover - pydantic is in every install
        ValidationError = ()  # type: ignore[assignment,misc]
    if isinstance(exc, ValidationError):
        return EXIT_USAGE, f"{exc.title}: {validation_summary(exc)}"
    api_error = _optional_class("controller.errors", "ApiError")
    if api_error is not None and isinstance(exc, api_error):
        return EXIT_USAGE, str(getattr(exc, "message", "") or first_line(exc))
    schema_error = _optional_class("controller.migrations", "SchemaError")
    if schema_error is not None and isinstance(exc, schema_error):
        return EXIT_USAGE, first_line(exc)
    sqlalchemy_exc = _sqlalchemy_exc()
    if sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.DBAPIError):
        return EXIT_UNREACHABLE, f"database: {first_line(exc.orig) or first_line(exc)}"
    if isinstance(exc, PermissionError):
        return EXIT_USAGE, f"{exc.filename or ''}: permission denied".lstrip(": ")
    if isinstance(exc, FileNotFoundError):
        return EXIT_NOT_FOUND, f"{exc.filename or ''}: not found".lstrip(": ")
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return EXIT_UNREACHABLE, first_line(exc) or type(exc).__name__
    if isinstance(exc, LookupError) and not isinstance(exc, KeyError | IndexError):
        return EXIT_NOT_FOUND, first_line(exc)
    if isinstance(exc, ValueError):
        return EXIT_USAGE, first_line(exc)
    text = first_line(exc)
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return EXIT_FAILED, f"{detail} (run with -v for the traceback)"


def _optional_class(module: str, name: str) -> type[BaseException] | None:
    """An exception class of a part that may not be installed (a terminal has no
    controller) or may not exist in this release."""
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


def _sqlalchemy_exc() -> Any:
    try:
        import sqlalchemy.exc
    except ImportError:
        return None
    return sqlalchemy.exc


def first_line(value: object) -> str:
    lines = str(value).strip().splitlines()
    return lines[0].strip() if lines else ""


def validation_summary(exc: Any) -> str:
    """A pydantic ValidationError in one line: `field: message; field: message`."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()))
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


# ------------------------------------------------------------------ arguments


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="a DALABA_* env file (see config/dalaba.example.env); "
        "DALABA_* variables set in the environment override it",
    )


def add_location_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --data-dir and --database-url: where an existing deployment's
    database is. One of them (or DALABA_DATA_DIR / DALABA_DATABASE_URL) is required."""
    add_config_argument(parser)
    parser.add_argument("--data-dir", metavar="DIR", help="the controller's DALABA_DATA_DIR")
    parser.add_argument(
        "--database-url", metavar="URL", help="the controller's DALABA_DATABASE_URL"
    )


# ------------------------------------------------------------------ settings


def config_file(args: argparse.Namespace) -> Path | None:
    """`--config`, which must name a readable file: a missing one is an error, never
    silently the built-in defaults."""
    value = getattr(args, "config", None)
    if not value:
        return None
    path = Path(value)
    if not path.exists():
        raise CliError(EXIT_USAGE, f"--config {path}: no such file")
    if not path.is_file():
        raise CliError(EXIT_USAGE, f"--config {path}: not a file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise CliError(EXIT_USAGE, f"--config {path}: {exc.strerror or exc}") from exc
    return path


def load_settings(
    args: argparse.Namespace, *, require_location: bool = False, strict: bool = False
) -> Settings:
    """The controller's settings as `dalaba controller --config` would read them, with
    --data-dir/--database-url on top.

    `require_location`: refuse to fall back on the default ./data, which would silently
    create or read a database wherever the command happens to be run.
    `strict`: apply the placeholder-secret rule (only the controller itself needs the
    broker password; user and token commands must not fail over it)."""
    from pydantic import ValidationError

    from controller.settings import Settings

    path = config_file(args)
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    from_environment = os.environ.get("DALABA_DATA_DIR") or os.environ.get("DALABA_DATABASE_URL")
    if require_location and path is None and not overrides and not from_environment:
        raise CliError(
            EXIT_USAGE,
            "which deployment? give --config FILE (the controller's env file), "
            "--data-dir DIR or --database-url URL",
        )
    if not strict:
        overrides["demo"] = True
    try:
        return Settings(_env_file=path, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        source = f"{path}" if path else "DALABA_* settings"
        raise CliError(EXIT_USAGE, f"{source}: {validation_summary(exc)}") from exc


# ------------------------------------------------------------------ database


def safe_url(url: str) -> str:
    """The database URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a malformed URL is reported by the caller
        return url.split("@")[-1]


REQUIRED_TABLES = ("township", "village", "device", "user", "apitoken")


def open_database(settings: Settings, *, check_schema: bool = True) -> Database:
    """Open the deployment's existing database. Unlike `Database.start()` this creates
    and upgrades nothing: a wrong --data-dir gives an error, not a new empty county, and
    a database behind this release is sent to `dalaba db upgrade` (`check_schema`)."""
    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    from controller.db import TABLE_MODULES, Database, make_engine

    url = settings.db_url
    shown = safe_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise CliError(EXIT_USAGE, f"database URL {shown}: not a database URL") from exc
    if parsed.get_backend_name() == "sqlite":
        file = Path(parsed.database or "")
        if settings.database_url is None and not settings.data_dir.is_dir():
            raise CliError(EXIT_NOT_FOUND, f"data directory {settings.data_dir}: not found")
        if not file.is_file():
            raise CliError(
                EXIT_NOT_FOUND,
                f"database {file}: not found (wrong data directory? the controller "
                "creates it when it first starts)",
            )
        if not os.access(file, os.R_OK):
            raise CliError(EXIT_UNREACHABLE, f"database {file}: not readable by this user")
    elif "connect_timeout" not in parsed.query and parsed.get_backend_name() == "postgresql":
        with_timeout = parsed.update_query_dict({"connect_timeout": str(DB_CONNECT_TIMEOUT_S)})
        url = with_timeout.render_as_string(hide_password=False)
    for module in TABLE_MODULES:
        importlib.import_module(module)
    try:
        engine = make_engine(url)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise CliError(
            EXIT_USAGE,
            f"database {shown}: its driver is not installed "
            "(PostgreSQL needs the postgres extra: pip install 'dalaba[postgres]')",
        ) from exc
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
    except DBAPIError as exc:
        engine.dispose()
        raise CliError(
            EXIT_UNREACHABLE, f"database {shown}: cannot open: {first_line(exc.orig)}"
        ) from exc
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    if missing:
        engine.dispose()
        raise CliError(
            EXIT_NOT_FOUND,
            f"database {shown}: no Dalaba tables ({', '.join(missing)} missing): "
            "start the controller once, or run `dalaba db upgrade`",
        )
    if check_schema:
        problem = schema_problem(engine)
        if problem:
            engine.dispose()
            raise CliError(EXIT_USAGE, f"database {shown}: {problem}")
    db = Database(url)
    # The engine only: run_sync needs nothing else, and start() would create tables.
    db.engine = engine
    return db


def schema_problem(engine: Any) -> str | None:
    """Why this release may not work on the database as it is, or None."""
    try:
        from controller import migrations
    except ImportError:  # a release without migrations
        return None
    with engine.connect() as conn:
        st = migrations.status(conn)
    if st.state == "current":
        return None
    if st.state == "newer":
        return f"at revision {st.current}, which this release does not know (a newer one made it)"
    at = st.current or "0.1.0 (no revision)"
    return f"at {at}, this release needs {st.head}: run `dalaba db upgrade`"


def with_database(settings: Settings, work: Callable[[Any], T]) -> T:
    """Run `work(session)` in one transaction on the existing database, then close it."""
    db = open_database(settings)
    try:
        return db.run_sync(work)
    finally:
        db.stop()
