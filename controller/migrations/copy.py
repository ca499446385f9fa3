"""Copy every table from one database to another (SQLite to PostgreSQL, mainly).

The source must be at the newest revision and is read in one snapshot; the target is
brought to the newest revision and filled in one transaction, parents before children,
in batches, so a failure leaves it empty. PostgreSQL's id sequences are then set past
the copied ids, or the next insert would collide with a copied row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import JSON, Integer, MetaData, Table, create_engine, event, func, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from controller.migrations import (
    SchemaError,
    display_url,
    locked,
    migration_engine,
    prepare,
    status,
)

Progress = Callable[[str, int], None]


def reader_engine(url: str) -> Engine:
    """An engine whose transactions are snapshots. pysqlite would not begin one before a
    SELECT, so every batch would see the database as it is then; BEGIN is issued by
    hand (deferred: a reader takes no write lock)."""
    if not url.startswith("sqlite"):
        return create_engine(url, poolclass=NullPool, isolation_level="REPEATABLE READ")
    engine = create_engine(url, poolclass=NullPool)

    @event.listens_for(engine, "connect")
    def _connect(conn: Any, _record: Any) -> None:
        conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


def copy_database(
    source_url: str,
    target_url: str,
    metadata: MetaData,
    *,
    batch_rows: int = 2000,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Copy all rows; returns rows per table (checked against the target's counts)."""
    source = reader_engine(source_url)
    target = migration_engine(target_url)
    try:
        with source.connect() as sconn, sconn.begin():
            st = status(sconn)
            if st.state != "current":
                raise SchemaError(
                    f"source {display_url(source_url)} is {st.state} (at {st.current}, "
                    f"head {st.head}): run `dalaba db upgrade` on it first"
                )
            with locked(target) as tconn:
                prepare(tconn, metadata, auto_migrate=True, url=target_url)
                _refuse_rows(tconn, metadata, target_url)
                copied = {
                    table.name: _copy_table(sconn, tconn, table, batch_rows, progress)
                    for table in metadata.sorted_tables
                }
                if tconn.dialect.name == "postgresql":
                    _reset_sequences(tconn, metadata)
                for table in metadata.sorted_tables:
                    landed = tconn.execute(select(func.count()).select_from(table)).scalar_one()
                    if landed != copied[table.name]:
                        raise SchemaError(
                            f"{table.name}: copied {copied[table.name]} rows, "
                            f"target holds {landed}; nothing was committed"
                        )
        return copied
    finally:
        source.dispose()
        target.dispose()


def _refuse_rows(conn: Connection, metadata: MetaData, url: str) -> None:
    for table in metadata.sorted_tables:
        if conn.execute(select(1).select_from(table).limit(1)).first() is not None:
            raise SchemaError(
                f"target {display_url(url)} already has rows in {table.name}: "
                "copy into an empty database"
            )


def _copy_table(
    src: Connection, dst: Connection, table: Table, batch_rows: int, progress: Progress | None
) -> int:
    # In primary-key order: the same order on every run, and batches that PostgreSQL
    # appends to its indexes instead of scattering.
    query = select(table).order_by(*table.primary_key.columns)
    result = src.execution_options(yield_per=batch_rows).execute(query)
    insert = _keeping_sql_nulls(table).insert()
    count = 0
    for rows in result.partitions():
        dst.execute(insert, [dict(row._mapping) for row in rows])
        count += len(rows)
    if progress is not None:
        progress(table.name, count)
    return count


def _keeping_sql_nulls(table: Table) -> Table:
    """The table with JSON columns that write None as SQL NULL. The models' JSON columns
    write None as the JSON value null; a NULL read from the source must stay NULL, or
    `IS NULL` finds different rows after the move."""
    copy = table.to_metadata(MetaData())
    for column in copy.columns:
        if isinstance(column.type, JSON):
            column.type = JSON(none_as_null=True)
    return copy


def _reset_sequences(conn: Connection, metadata: MetaData) -> None:
    quote = conn.dialect.identifier_preparer
    for table in metadata.sorted_tables:
        pk = list(table.primary_key.columns)
        if len(pk) != 1 or not isinstance(pk[0].type, Integer):
            continue
        column = pk[0]
        sequence = conn.execute(
            text("SELECT pg_get_serial_sequence(:table, :column)"),
            {"table": quote.format_table(table), "column": column.name},
        ).scalar_one()
        if sequence is None:
            continue
        top = conn.execute(select(func.max(column))).scalar_one()
        # is_called false: the next value handed out is exactly this one.
        conn.execute(
            text("SELECT setval(:sequence, :next, false)"),
            {"sequence": sequence, "next": (top or 0) + 1},
        )
