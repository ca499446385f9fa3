"""Write the next revision after a model change (for developers, from a checkout):

    .venv/bin/python -m controller.migrations revision -m "what changed"

The models are compared with a scratch SQLite database built by running every revision,
and the difference is written to versions/NNNN_what_changed.py (formatted by ruff when
the venv has it). Read it before committing: a NOT NULL column added to a table with
rows needs a server default (what existing rows mean), a rename comes out as drop and
add and must be rewritten, and data that moves needs its own statements. Then run
tests/integration/test_migrations.py, which fails while the models and the revisions
differ.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.config import Config

from controller import migrations
from controller.db import table_metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.migrations")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("revision", help="write the next revision from the models")
    p.add_argument("-m", "--message", required=True)
    p.add_argument("--empty", action="store_true", help="no autogenerate: a data-only revision")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{Path(scratch) / 'scratch.db'}"
        engine = migrations.migration_engine(url)
        try:
            with migrations.locked(engine) as conn:
                config = migrations.alembic_config(conn, table_metadata())
                config.set_main_option("truncate_slug_length", "60")
                config.attributes["skip_empty"] = not args.empty
                _format_with_ruff(config)
                command.upgrade(config, "head")
                rev_id = f"{int(migrations.head()) + 1:04d}"
                script = command.revision(
                    config, message=args.message, autogenerate=not args.empty, rev_id=rev_id
                )
        finally:
            engine.dispose()
    written = [s for s in (script if isinstance(script, list) else [script]) if s is not None]
    if not written:
        print("nothing written: the models match the newest revision (--empty for a data move)")
    for s in written:
        print(s.path)
    return 0


def _format_with_ruff(config: Config) -> None:
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        return
    section = "post_write_hooks"
    config.set_section_option(section, "hooks", "ruff")
    config.set_section_option(section, "ruff.type", "exec")
    config.set_section_option(section, "ruff.executable", str(ruff))
    config.set_section_option(section, "ruff.options", "format REVISION_SCRIPT_FILENAME")


if __name__ == "__main__":
    sys.exit(main())
