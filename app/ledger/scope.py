"""A pipeline id's whole footprint in the ledger, for tools that reset a scope (demo,
experiments, tests): every table with a `pipeline_id` column, read from the catalog so a
table added by a later migration is never left behind."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql


def pipeline_tables(conn: psycopg.Connection[Any]) -> list[str]:
    return [str(t) for (t,) in conn.execute(
        """SELECT c.table_name FROM information_schema.columns c
           JOIN information_schema.tables t USING (table_schema, table_name)
           WHERE c.column_name = 'pipeline_id' AND c.table_schema = current_schema()
             AND t.table_type = 'BASE TABLE'
           ORDER BY c.table_name""")]


def forget_pipeline(conn: psycopg.Connection[Any], pipeline_id: str) -> dict[str, int]:
    """Delete every ledger row of `pipeline_id`, in one transaction; rows deleted per table."""
    out: dict[str, int] = {}
    with conn.transaction():
        for table in pipeline_tables(conn):
            cur = conn.execute(sql.SQL("DELETE FROM {} WHERE pipeline_id = %s").format(sql.Identifier(table)),
                               (pipeline_id,))
            out[table] = cur.rowcount
    return out
