"""`dalaba db ...`: the database's schema and moves between databases.

Registered by `dalaba_ops.cli`; the subcommands live here so that the migration work
has one home."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `db` command and its subcommands to the `dalaba` parser."""
    sub.add_parser("db", help="database schema: upgrade, copy (see docs/operations.md)")
