"""The rollup tables of contract §4, created or migrated idempotently by every writer.

A small versioned DDL list: each step runs once per database and is recorded in
`schema_version`, so adding a step later migrates existing databases in place.
"""

from __future__ import annotations

from typing import Final

ROLLUP_TABLES: Final = ("rollup_minute", "rollup_hour")
TABLE_OF_KIND: Final = {"minute": "rollup_minute", "hour": "rollup_hour"}

# The dedup token of an insert is remembered for the last N inserted blocks. A batch can
# only be re-sent while it is unacknowledged, and the sink has at most one insert in
# flight, whose blocks are at most one per day partition touched: 10,000 blocks covers
# any replay with a wide margin (docs/exactly-once.md, "dedup window").
DEDUP_WINDOW_BLOCKS: Final = 10_000


def _rollup_ddl(table: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {table}
(
    window_start  DateTime,
    account_id    UInt64,
    country       LowCardinality(String),
    event_count   UInt64,
    sum_amount    Int128,
    batch_id      UInt64,
    version       UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMMDD(window_start)
ORDER BY (window_start, account_id, country)
SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW_BLOCKS}
"""


MIGRATIONS: Final[list[tuple[int, str, list[str]]]] = [
    (1, "rollup tables", [_rollup_ddl(t) for t in ROLLUP_TABLES]),
]

SCHEMA_VERSION_DDL: Final = """
CREATE TABLE IF NOT EXISTS schema_version
(
    version     UInt32,
    description String,
    applied_at  DateTime DEFAULT now()
)
ENGINE = MergeTree ORDER BY version
"""
