"""What ClickHouse holds in a backfill's range, and removing keys the truth does not have.

ClickHouse is optional for a backfill: its rows reach ClickHouse through the ledger and
the sink. Reading it shows the differences (`--dry-run`), finds keys to delete and
versions written from outside the ledger. An embedded path held by the running sink
cannot be opened; the backfill then lands the truth without those corrections and says
so (docs/backfill.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from clickhouse_connect.driver.client import Client

from app.clickhouse.client import connect, is_retryable, migrate
from app.clickhouse.schema import ROLLUP_TABLES
from app.core.errors import RetryableError

log = structlog.get_logger("backfill.clickhouse")

RollupKey = tuple[int, int, str]          # (window_start seconds, account_id, country)
StoredValue = tuple[int, int, int]        # (event_count, sum_amount, version) as FINAL shows it

# Keys per ALTER ... DELETE statement: each statement is one mutation (one rewrite of the
# parts it touches), so few large statements beat many small ones; the array parameter
# stays a few MB at most.
DELETE_CHUNK = 50_000


@dataclass(frozen=True, slots=True)
class StoredRange:
    """One rollup table between two window starts: FINAL rows and the highest stored version."""

    table: str
    lo_s: int
    hi_s: int
    rows: dict[RollupKey, StoredValue]
    max_version: int   # over every stored row in the range, not only the FINAL ones


def open_clickhouse(url: str, *, read_only: bool) -> Client:
    """Connect; unless read_only, create or migrate the tables like every writer does.
    Raises ServiceLocked when the embedded path is held by another process."""
    client = connect(url)
    if not read_only:
        migrate(client)
    return client


def read_range(client: Client, table: str, lo_s: int, hi_s: int) -> StoredRange:
    """A table that does not exist yet (a dry run on a new CLICKHOUSE_URL) reads as empty."""
    _check_table(table)
    params = {"lo": lo_s, "hi": hi_s}
    where = "window_start >= toDateTime({lo:UInt32}) AND window_start < toDateTime({hi:UInt32})"
    rows: dict[RollupKey, StoredValue] = {}
    try:
        if not int(client.command(f"EXISTS TABLE {table}")):
            return StoredRange(table, lo_s, hi_s, rows, 0)
        # sum_amount is Int128: toString keeps it exact whatever the driver does with wide ints.
        with client.query_row_block_stream(
                f"SELECT toUInt32(window_start), account_id, toString(country), event_count, "
                f"toString(sum_amount), version FROM {table} FINAL WHERE {where}", parameters=params) as stream:
            for block in stream:
                for ws, account, country, count, amount, version in block:
                    rows[(int(ws), int(account), str(country))] = (int(count), int(amount), int(version))
        max_version = int(client.query(f"SELECT max(version) FROM {table} WHERE {where}",
                                       parameters=params).result_rows[0][0] or 0)
    except Exception as e:  # the driver raises several types; is_retryable sorts them
        if is_retryable(e):
            raise RetryableError(f"reading {table} failed: {e}") from e
        raise
    return StoredRange(table, lo_s, hi_s, rows, max_version)


def max_version(client: Client, table: str, lo_s: int | None, hi_s: int | None) -> int:
    """The highest version stored for window starts in [lo_s, hi_s) (None: unbounded); 0 when
    the table is empty or does not exist yet. Read before the pin: the run's version must be
    above it, or a write from outside the ledger would keep winning over the backfill."""
    _check_table(table)
    conds, params = [], {}
    if lo_s is not None:
        conds.append("window_start >= toDateTime({lo:UInt32})")
        params["lo"] = lo_s
    if hi_s is not None:
        conds.append("window_start < toDateTime({hi:UInt32})")
        params["hi"] = hi_s
    where = f" WHERE {' AND '.join(conds)}" if conds else ""
    try:
        if not int(client.command(f"EXISTS TABLE {table}")):
            return 0
        return int(client.query(f"SELECT max(version) FROM {table}{where}", parameters=params).result_rows[0][0] or 0)
    except Exception as e:  # the driver raises several types; is_retryable sorts them
        if is_retryable(e):
            raise RetryableError(f"reading {table} failed: {e}") from e
        raise


def delete_keys(client: Client, table: str, lo_s: int, hi_s: int, keys: Iterable[RollupKey],
                below_version: int) -> int:
    """Delete the rows of `keys` in [lo_s, hi_s) whose version is below `below_version`.

    `below_version` is the run's version, allocated in the pin's transaction, so the guard
    keeps to rows the pin covers whatever happens meanwhile: rows landed by this backfill
    (= below_version) or emitted by the live processor after the pin (higher) are never
    deleted. Synchronous (mutations_sync=2), so FINAL no longer shows them on return.
    """
    _check_table(table)
    todo = sorted(keys)
    for i in range(0, len(todo), DELETE_CHUNK):
        chunk = todo[i:i + DELETE_CHUNK]
        params: dict[str, Any] = {"lo": lo_s, "hi": hi_s, "v": below_version, "keys": chunk}
        try:
            client.command(
                f"ALTER TABLE {table} DELETE WHERE window_start >= toDateTime({{lo:UInt32}}) "
                "AND window_start < toDateTime({hi:UInt32}) AND version < {v:UInt64} "
                "AND has({keys:Array(Tuple(UInt32, UInt64, String))}, "
                "(toUInt32(window_start), account_id, toString(country)))",
                parameters=params, settings={"mutations_sync": 2})
        except Exception as e:
            if is_retryable(e):
                raise RetryableError(f"deleting from {table} failed: {e}") from e
            raise
    log.info("backfill_keys_deleted", table=table, keys=len(todo), below_version=below_version)
    return len(todo)


def _check_table(table: str) -> None:
    if table not in ROLLUP_TABLES:  # the name goes into SQL text: only our own tables
        raise ValueError(f"not a rollup table: {table!r}")
