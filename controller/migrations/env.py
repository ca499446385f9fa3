"""Alembic's entry point, run by `alembic.command` with the connection and the models'
metadata in `config.attributes` (see `controller.migrations.alembic_config`); it opens
nothing itself, so it never guesses which database is meant."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from alembic.migration import MigrationContext, MigrationInfo
from sqlmodel.sql.sqltypes import AutoString

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through controller.migrations, not the alembic command")


def render_item(type_: str, obj: Any, _autogen_context: AutogenContext) -> str | Literal[False]:
    # Revisions spell plain SQLAlchemy types, so an old revision never depends on
    # sqlmodel's internals (AutoString is a VARCHAR in every database we use).
    if type_ == "type" and isinstance(obj, AutoString):
        return "sa.String()" if obj.length is None else f"sa.String(length={obj.length})"
    return False


def log_step(
    ctx: MigrationContext, step: MigrationInfo, heads: Collection[Any], run_args: Mapping[str, Any]
) -> None:
    if config.attributes.get("log_steps") is False:
        return
    doc = str(getattr(step.up_revision, "doc", "") or "")
    logging.getLogger("controller.migrations").info(
        "schema: %s -> %s (%s)",
        ", ".join(step.source_revision_ids) or "nothing",
        ", ".join(step.destination_revision_ids),
        doc.splitlines()[0] if doc else "",
    )


def skip_empty(ctx: MigrationContext, revision: Any, directives: list[Any]) -> None:
    # `python -m controller.migrations revision` with nothing to say writes no file.
    if config.attributes.get("skip_empty") and directives[0].upgrade_ops.is_empty():
        directives.clear()


context.configure(
    connection=connection,
    target_metadata=config.attributes.get("target_metadata"),
    # SQLite alters most of a table only by copying it into a new one; batch mode does
    # that, and is plain ALTER TABLE on PostgreSQL.
    render_as_batch=True,
    render_item=render_item,
    compare_type=True,
    on_version_apply=log_step,
    process_revision_directives=skip_empty,
)
with context.begin_transaction():
    context.run_migrations()
