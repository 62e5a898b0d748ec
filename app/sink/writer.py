"""The ClickHouse side of the sink: one idempotent, column-oriented insert per group.

`RollupWriter` is the seam: fault injection (`app/sink/faults.py`) wraps it, tests wrap
the client underneath it. ClickHouseWriter sends Arrow record batches (never Python
tuples) with the group's insert_deduplication_token and fixed block-layout settings
(`app.clickhouse.client.insert_settings`), so a retried group — same batches, same
token — is dropped block by block by ClickHouse instead of stored twice, even when the
first attempt died after writing some of its blocks.

Embedded (`chdb://`) and server (`http(s)://`) URLs take the same path; on a server a
failed insert also drops the connection, so the retry starts on a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import pyarrow as pa
import structlog
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from app.clickhouse.client import ClickHouseTarget, connect, insert_settings, migrate
from app.core.config import mask_url
from app.core.errors import PipelineError, RetryableError, ServiceLocked

log = structlog.get_logger("sink")


class RollupWriter(Protocol):
    def insert(self, table: str, rows: pa.Table, token: str) -> None:
        """Insert rows durably, each record batch of `rows` as one ClickHouse block, in
        order. Repeating the call with the same token and the same batches — also after
        an attempt that wrote only some blocks — stores every row exactly once."""

    def close(self) -> None: ...


class ClickHouseWriter:
    def __init__(self, url: str, *, async_insert: bool = False,
                 connect_fn: Callable[[str], Client] = connect) -> None:
        self.url = url
        self.async_insert = async_insert
        self._connect = connect_fn
        self._client: Client | None = None
        self._server = not ClickHouseTarget(url).embedded

    def client(self) -> Client:
        if self._client is None:
            try:
                client = self._connect(self.url)
            except ServiceLocked as e:
                # a verify or backfill holds the embedded path for a while: wait for it
                raise RetryableError(str(e)) from e
            try:
                migrate(client)
            except ClickHouseError as e:
                client.close()
                raise RetryableError(f"ClickHouse schema migration failed: {type(e).__name__}: {e}") from e
            self._client = client
        return self._client

    def insert(self, table: str, rows: pa.Table, token: str) -> None:
        try:
            self.client().insert_arrow(table, rows, settings=insert_settings(token, async_insert=self.async_insert))
        except PipelineError:
            raise
        except (OperationalError, ConnectionError, TimeoutError, OSError) as e:
            # transport: the server may or may not have applied the insert; the retry's
            # token settles it. The connection itself is suspect: reconnect.
            self._failed(table, token, e, transport=True)
            raise RetryableError(f"ClickHouse insert into {table} failed (connection): "
                                 f"{type(e).__name__}: {e}") from e
        except ClickHouseError as e:
            # the server answered with an error (too many parts, memory, timeout, ...)
            self._failed(table, token, e, transport=False)
            raise RetryableError(f"ClickHouse insert into {table} failed: {type(e).__name__}: {e}") from e

    def _failed(self, table: str, token: str, e: BaseException, *, transport: bool) -> None:
        reconnect = transport or self._server
        log.warning("clickhouse_insert_failed", table=table, token=token, error_class=type(e).__name__,
                    code=getattr(e, "code", None), transport=transport, reconnect=reconnect,
                    url=mask_url(self.url), error=str(e).splitlines()[0][:300] if str(e) else "")
        if reconnect:
            self.close()

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception as e:  # closing is best-effort  # noqa: BLE001
                log.debug("clickhouse_close_failed", error=str(e))
        self._client = None
