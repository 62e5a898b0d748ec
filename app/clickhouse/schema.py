"""The rollup tables of contract §4, created or migrated idempotently by every writer.

A small versioned DDL list: each step runs once per database and is recorded in
`schema_version`, so adding a step later migrates existing databases in place.
"""

from __future__ import annotations

from typing import Final

ROLLUP_TABLES: Final = ("rollup_minute", "rollup_hour")
TABLE_OF_KIND: Final = {"minute": "rollup_minute", "hour": "rollup_hour"}

# The dedup ids of an insert's parts are remembered for the last N parts written to the
# table. A group can only be re-sent while it is open, the sink has one group in flight
# and resumes it before anything else, so N must cover the parts ONE insert writes:
# ceil(rows / insert_block_rows) + (day partitions touched - 1), plus whatever other
# writers insert into the table meanwhile. 10,000 covers that with a wide margin
# (docs/sink.md, "sizing the dedup window").
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


# The argMax-by-version reading of each rollup table (docs/read-side.md): one row per
# window, its highest version, whatever merges have or have not happened. The inner
# names differ from the outer ones on purpose: `max(version) AS version` beside
# `argMax(x, version)` would make ClickHouse substitute the alias into the argMax.
LATEST_VIEWS: Final = {"rollup_minute": "rollup_minute_latest", "rollup_hour": "rollup_hour_latest"}


def _latest_view_ddl(table: str, view: str) -> str:
    return f"""
CREATE VIEW IF NOT EXISTS {view} AS
SELECT window_start, account_id, country,
       latest_event_count AS event_count, latest_sum_amount AS sum_amount, latest_version AS version
FROM
(
    SELECT window_start, account_id, country,
           argMax(event_count, version) AS latest_event_count,
           argMax(sum_amount, version)  AS latest_sum_amount,
           max(version)                 AS latest_version
    FROM {table}
    GROUP BY window_start, account_id, country
)
"""


MIGRATIONS: Final[list[tuple[int, str, list[str]]]] = [
    (1, "rollup tables", [_rollup_ddl(t) for t in ROLLUP_TABLES]),
    (2, "argMax-by-version views", [_latest_view_ddl(t, v) for t, v in LATEST_VIEWS.items()]),
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
