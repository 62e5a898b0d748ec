"""Which rows of an insert ClickHouse does not hold: the sink's proof of delivery.

A row (window_start, account_id, country, version) counts as present when the table holds
its key with that version or a newer one: exactly what FINAL (or the argMax view) shows,
whatever merges have or have not run. A newer version means a later emission of the
window reached the table; ReplacingMergeTree may already have merged our row away, and
readers see the newer value anyway.

Two steps, both bounded by the insert, not by the table: every query reads only the
insert's windows (`window_start` leads the primary key, so only their granules are read).

1. **Whole batches** (cheap: one aggregate, nothing uploaded). Every rollup row carries its
   ledger batch id and version, and a (batch id, version) names one ledger batch's rows —
   the premise the dedup token rests on too. For each batch of the insert: the distinct
   keys stored with its batch id and version, counted through a 64-bit hash. Collisions can
   only lower that count, and the stored keys of a batch are a subset of its keys, so a
   count equal to the batch's row count proves every row is there at its own version.
   Doubled raw rows are counted once. Almost every check ends here.
2. **Row by row** (only when step 1 comes up short): the insert's keys go into a session's
   temporary table, the table's rows in those windows are grouped by key to their highest
   version and joined to the keys; rows whose key is absent or only older are missing.
   This is also what accepts rows superseded (and perhaps merged away) by a newer version.

docs/sink.md gives the measured cost of both on a 1M-row group.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver.client import Client

from app.clickhouse.schema import ROLLUP_TABLES

CHECK_KEYS: Final = "sink_check_keys"  # temporary: one per session (chDB: per process), gone with it

# Templates: {table} and {keys} are names put in with str.replace (identifiers cannot be
# bound); {windows:...} and {batches:...} are bound parameters.
# toUInt32(window_start) IN <set> is read through the primary key (a monotonic function of
# its first column): only the granules of these windows
_WINDOWS: Final = "toUInt32(window_start) IN {windows:Array(UInt32)}"

_WHOLE_BATCHES: Final = """
SELECT batch_id, version, uniqExact(cityHash64(window_start, account_id, country)) AS keys
FROM {table}
WHERE """ + _WINDOWS + """ AND batch_id IN {batches:Array(UInt64)}
GROUP BY batch_id, version
"""

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
SELECT k.row AS row
FROM
(
    SELECT window_start, account_id, country, max(version) AS stored
    FROM {table}
    WHERE """ + _WINDOWS + """
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
    windows = pc.unique(rows.column("window_start").cast(pa.int64())).to_numpy().astype(np.uint32).tolist()
    if whole_batches(client, table, rows, windows):  # the usual answer, for the price of one aggregate
        return np.empty(0, dtype=np.int64)
    return missing_by_key(client, table, rows, windows)


def whole_batches(client: Client, table: str, rows: pa.Table, windows: list[int]) -> bool:
    """Step 1: is every batch of `rows` stored whole, at its own version?"""
    counts = rows.group_by(["batch_id", "version"]).aggregate([([], "count_all")])
    expected = dict(zip(zip(counts.column("batch_id").to_pylist(), counts.column("version").to_pylist(), strict=True),
                        counts.column("count_all").to_pylist(), strict=True))
    stored = client.query(_WHOLE_BATCHES.replace("{table}", table),
                          parameters={"windows": windows, "batches": sorted({b for b, _ in expected})}).result_rows
    found = {(int(b), int(v)): int(n) for b, v, n in stored}
    return all(found.get(key) == n for key, n in expected.items())


def missing_by_key(client: Client, table: str, rows: pa.Table, windows: list[int]) -> np.ndarray:
    """Step 2: the missing rows one by one (FINAL semantics)."""
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
    found = client.query_arrow(_MISSING.replace("{table}", table).replace("{keys}", CHECK_KEYS),
                              parameters={"windows": windows})
    client.command(f"TRUNCATE TABLE {CHECK_KEYS}")  # the keys hold memory until the next check
    return found.column("row").to_numpy().astype(np.int64) if found.num_rows else np.empty(0, dtype=np.int64)
