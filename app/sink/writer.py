"""The ClickHouse side of the sink: one insert per ledger batch, idempotent by token.

`RollupWriter` is the seam (fault injection and other targets wrap or replace it).
ClickHouseWriter inserts column-oriented Arrow data with the batch's
insert_deduplication_token and synchronous (durable) insert settings, so a retried
batch — same rows, same token — is dropped by ClickHouse instead of stored twice.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pyarrow as pa
import structlog
from clickhouse_connect.driver.client import Client

from app.clickhouse.client import DURABLE_INSERT_SETTINGS, connect, migrate
from app.core.errors import PipelineError, RetryableError

log = structlog.get_logger("sink")


class RollupWriter(Protocol):
    def insert(self, table: str, rows: pa.Table, token: str) -> None:
        """Insert rows durably; the same token must make a repeated call a no-op."""

    def close(self) -> None: ...


def insert_table(rows: pa.Table, batch_id: int, version: int) -> pa.Table:
    """Ledger window rows -> the rollup table's columns (contract §4)."""
    n = rows.num_rows
    return pa.Table.from_arrays(
        [rows.column("window_start").cast(pa.timestamp("s")),
         rows.column("account_id"),
         rows.column("country"),
         rows.column("event_count"),
         rows.column("sum_amount"),
         pa.array(np.full(n, batch_id, dtype=np.uint64)),
         pa.array(np.full(n, version, dtype=np.uint64))],
        names=["window_start", "account_id", "country", "event_count", "sum_amount", "batch_id", "version"])


class ClickHouseWriter:
    def __init__(self, url: str, *, async_insert: bool = False) -> None:
        self.url = url
        self.async_insert = async_insert
        self._client: Client | None = None

    def client(self) -> Client:
        if self._client is None:
            self._client = connect(self.url)
            migrate(self._client)
        return self._client

    def insert(self, table: str, rows: pa.Table, token: str) -> None:
        settings = dict(DURABLE_INSERT_SETTINGS)
        settings["insert_deduplication_token"] = token
        if self.async_insert:
            # Async inserts deduplicate by token too; wait_for_async_insert=1 makes the call
            # return only once the buffer is flushed into a part.
            settings.update({"async_insert": 1, "wait_for_async_insert": 1, "async_insert_deduplicate": 1})
        try:
            self.client().insert_arrow(table, rows, settings=settings)
        except PipelineError:
            raise
        except Exception as e:  # driver errors carry no stable class across backends
            if not self.url.startswith("chdb:"):
                self.close()  # a server connection may be half-broken: reconnect next time
            raise RetryableError(f"ClickHouse insert into {table} failed: {type(e).__name__}: {e}") from e

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception as e:  # closing is best-effort
                log.debug("clickhouse_close_failed", error=str(e))
        self._client = None
