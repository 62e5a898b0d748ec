"""A sink batch row: window rows with their deterministic id, the input they cover and their
totals, pending until the sink acknowledges it. The one insert the live checkpoint
(`Ledger.commit`) and a backfill (`backfill_runs.commit_batch`) both use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg.types.json import Jsonb

from app.ledger import rows as window_rows


def column_sum(table: pa.Table, column: str) -> int:
    value = pc.sum(table.column(column)).as_py() if table.num_rows else 0
    return int(value or 0)


def insert_sink_batch(conn: psycopg.Connection[Any], *, pipeline_id: str, batch_id: int, checkpoint_id: int,
                      table_name: str, source: str, topic: str, rows: pa.Table,
                      offset_ranges: Mapping[int, tuple[int, int]],
                      kafka_ts_ms: tuple[int, int] | None = None) -> bool:
    """Insert one pending batch inside the caller's transaction. Returns False, writing
    nothing, when a batch with this id is already there (the caller decides what that means)."""
    return bool(conn.execute(
        """INSERT INTO sink_batch (pipeline_id, batch_id, checkpoint_id, table_name, source, topic,
             partitions, offset_ranges, row_count, total_events, total_amount, payload, kafka_ts_min_ms,
             kafka_ts_max_ms)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (pipeline_id, batch_id) DO NOTHING""",
        (pipeline_id, batch_id, checkpoint_id, table_name, source, topic,
         sorted(set(rows.column("partition").to_pylist())),
         Jsonb([[p, a, b] for p, (a, b) in sorted(offset_ranges.items())]),
         rows.num_rows, column_sum(rows, "event_count"), column_sum(rows, "sum_amount"),
         window_rows.encode(rows), *(kafka_ts_ms or (None, None)))).rowcount)
