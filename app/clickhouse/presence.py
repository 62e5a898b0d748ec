"""Which rows of an insert ClickHouse does not hold: the sink's proof of delivery.

A row (window_start, account_id, country, version) counts as present when the table holds
its key with that version or a newer one: exactly what FINAL (or the argMax view) shows,
whatever merges have or have not run. A newer version means a later emission of the
window reached the table; ReplacingMergeTree may already have merged our row away, and
the reader sees the newer value anyway.

The check is bounded by the insert, not by the table: the insert's keys go into a
session-local temporary table, and the rollup table is read only in the insert's windows
(`window_start` is the first column of the primary key, so only those windows' granules
are read), grouped by key to its highest version, and joined to the keys. Its cost grows
with the group and with the versions stored for the group's windows; docs/sink.md gives
the figure for a 1M-row group.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from app.clickhouse.schema import ROLLUP_TABLES

CHECK_KEYS: Final = "sink_check_keys"  # temporary: one per session (chDB: per process), dropped with it

_KEYS_DDL: Final = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS {CHECK_KEYS}
(
    window_start DateTime,
    account_id   UInt64,
    country      LowCardinality(String),
    version      UInt64,
    row          UInt32
)
ENGINE = Memory
"""

# RIGHT JOIN: the keys (the smaller side) are the hash table, the table's rows stream past.
_MISSING: Final = """
SELECT k.row
FROM
(
    SELECT window_start, account_id, country, max(version) AS stored
    FROM {table}
    WHERE window_start IN (SELECT window_start FROM {keys})
    GROUP BY window_start, account_id, country
) AS t
RIGHT JOIN {keys} AS k
    ON t.window_start = k.window_start AND t.account_id = k.account_id AND t.country = k.country
WHERE t.stored IS NULL OR t.stored < k.version
ORDER BY k.row
SETTINGS join_use_nulls = 1
"""


def missing_rows(client: Client, table: str, rows: pa.Table) -> np.ndarray:
    """Positions (ascending) of the rows of `rows` (rollup columns) that `table` holds
    neither at their version nor at a newer one. Empty: every row is there."""
    if table not in ROLLUP_TABLES:  # an identifier cannot be a bound parameter: only known names
        raise ValueError(f"not a rollup table: {table!r}")
    if rows.num_rows == 0:
        return np.empty(0, dtype=np.int64)
    keys = pa.table({
        "window_start": rows.column("window_start"),
        "account_id": rows.column("account_id"),
        "country": rows.column("country"),
        "version": rows.column("version"),
        "row": pa.array(np.arange(rows.num_rows, dtype=np.uint32)),
    })
    client.command(_KEYS_DDL)
    client.command(f"TRUNCATE TABLE {CHECK_KEYS}")  # a check that failed half way left its keys
    client.insert_arrow(CHECK_KEYS, keys)
    found = client.query_arrow(_MISSING.format(table=table, keys=CHECK_KEYS))
    client.command(f"TRUNCATE TABLE {CHECK_KEYS}")  # the keys hold memory until the next check
    return found.column("row").to_numpy().astype(np.int64) if found.num_rows else np.empty(0, dtype=np.int64)
