"""Inside a checkpoint's transaction: add the windows it drops as final to the ledger's
settled totals (read side and definitions: settled.py; what is counted:
app/processor/settled.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg


def add_settled(conn: psycopg.Connection[Any], pipeline_id: str, checkpoint_id: int,
                settled: Mapping[tuple[str, int], Sequence[int]]) -> None:
    """Inside a checkpoint's transaction: add the windows it drops as final."""
    if not settled:
        return
    with conn.cursor() as cur:
        cur.executemany(
            """INSERT INTO settled_window_total AS t (pipeline_id, table_name, window_start_ms, windows, events,
                                                      amount, last_checkpoint_id)
               VALUES (%s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (pipeline_id, table_name, window_start_ms) DO UPDATE
                 SET windows = t.windows + EXCLUDED.windows, events = t.events + EXCLUDED.events,
                     amount = t.amount + EXCLUDED.amount,
                     last_checkpoint_id = greatest(t.last_checkpoint_id, EXCLUDED.last_checkpoint_id)""",
            [(pipeline_id, table, start, int(w), int(e), int(a), checkpoint_id)
             for (table, start), (w, e, a) in sorted(settled.items())])
