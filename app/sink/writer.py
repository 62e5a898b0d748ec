"""The ClickHouse side of the sink: one idempotent, column-oriented insert per group.

`RollupWriter` is the seam: fault injection (`app/sink/faults.py`) wraps it, tests wrap
the client underneath it. ClickHouseWriter sends Arrow record batches (never Python
tuples) with the group's insert_deduplication_token and the group's recorded insert
settings (`app.clickhouse.client.block_layout_settings` when it was recorded), so a
retried group — same batches, same settings, same token — is dropped block by block by
ClickHouse instead of stored twice, even when the first attempt died after writing some
of its blocks.

Errors are sorted by their ClickHouse code (app/clickhouse/errors.py): transient ones
become a RetryableError (the group is retried), the others a ClickHouseRejected or
ClickHouseConfigError that stops the sink with exit code 1 or 2.

Embedded (`chdb://`) and server (`http(s)://`) URLs take the same path; on a server a
failed insert also drops the connection, so the retry starts on a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import pyarrow as pa
import structlog
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from app.clickhouse.client import TOKEN_SETTING, ClickHouseTarget, block_layout_settings, connect, migrate
from app.clickhouse.errors import classify, first_line, translate
from app.core.config import mask_url
from app.core.errors import PipelineError, RetryableError, ServiceLocked
from app.sink.dedup import DedupProbe

log = structlog.get_logger("sink")


class RollupWriter(Protocol):
    def prepare(self) -> None:
        """Connect and create or migrate the tables; fails fast on a wrong password."""

    def insert(self, table: str, rows: pa.Table, token: str, settings: Mapping[str, Any] | None = None) -> None:
        """Insert rows durably, each record batch of `rows` as one ClickHouse block, in
        order, with `settings` (a group's recorded ones; None: the defaults of a
        synchronous insert) and `token`. Repeating the call with the same token, batches
        and settings — also after an attempt that wrote only some blocks — stores every
        row exactly once."""

    def close(self) -> None: ...


class ClickHouseWriter:
    def __init__(self, url: str, *, connect_fn: Callable[[str], Client] = connect) -> None:
        self.url = url
        self._connect = connect_fn
        self._client: Client | None = None
        self._server = not ClickHouseTarget(url).embedded
        self.dedup = DedupProbe(embedded=not self._server)

    def prepare(self) -> None:
        self.client()

    def client(self) -> Client:
        if self._client is None:
            try:
                client = self._connect(self.url)
            except ServiceLocked as e:
                # a verify or backfill holds the embedded path for a while: wait for it
                raise RetryableError(str(e)) from e
            try:
                migrate(client)
            except (ClickHouseError, OSError) as e:
                client.close()
                raise translate(e, "the schema migration", self.url) from e
            self._client = client
        return self._client

    def insert(self, table: str, rows: pa.Table, token: str, settings: Mapping[str, Any] | None = None) -> None:
        sent = {**(block_layout_settings() if settings is None else settings), TOKEN_SETTING: token}
        try:
            client = self.client()
            before = self.dedup.before(client)
            client.insert_arrow(table, rows, settings=sent)
            self.dedup.after(client, before, table, len(rows.to_batches()))
        except PipelineError:
            raise
        except (ClickHouseError, ConnectionError, TimeoutError, OSError) as e:
            kind = classify(e)
            transport = kind.code is None and isinstance(e, (OperationalError, ConnectionError, TimeoutError, OSError))
            self._failed(table, token, e, transport=transport, kind=kind.kind)
            if kind.kind != "transient":
                raise translate(e, f"the insert into {table}", self.url) from e
            if transport:
                # the server may or may not have applied the insert; the retry's token
                # settles it. The connection itself is suspect: reconnect.
                raise RetryableError(f"ClickHouse insert into {table} failed (connection): "
                                     f"{type(e).__name__}: {first_line(e)}") from e
            # the server answered with a transient error (too many parts, memory, timeout, ...)
            raise RetryableError(f"ClickHouse insert into {table} failed ({kind.label}): "
                                 f"{type(e).__name__}: {first_line(e)}") from e

    def _failed(self, table: str, token: str, e: BaseException, *, transport: bool, kind: str) -> None:
        reconnect = transport or self._server
        log.warning("clickhouse_insert_failed", table=table, token=token, error_class=type(e).__name__,
                    code=classify(e).code, kind=kind, transport=transport, reconnect=reconnect,
                    url=mask_url(self.url), error=first_line(e))
        if reconnect:
            self.close()

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception as e:  # closing is best-effort  # noqa: BLE001
                log.debug("clickhouse_close_failed", error=str(e))
        self._client = None

