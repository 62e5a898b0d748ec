"""One way into ClickHouse for every stage: an embedded chDB path or a server URL.

`chdb:///abs/path` opens the embedded engine in this process (it locks the path: one
process at a time); `http(s)://user:pass@host:port/db` talks to a server. Both return a
clickhouse-connect Client, so the rest of the code has a single path.
"""

from __future__ import annotations

import fcntl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
import structlog
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

from app.clickhouse.errors import translate
from app.clickhouse.schema import MIGRATIONS, SCHEMA_VERSION_DDL
from app.core.config import mask_url
from app.core.errors import ConfigurationError, RetryableError, ServiceLocked

log = structlog.get_logger("clickhouse")

# Inserts must be durable before the ledger marks a batch acknowledged: chDB defaults
# to async inserts, which would acknowledge rows still in a buffer.
DURABLE_INSERT_SETTINGS: dict[str, Any] = {"async_insert": 0, "insert_deduplicate": 1}

# What makes a retried insert recognisable block by block (docs/sink.md, "partial inserts"):
# ClickHouse derives each part's dedup id from the token, the block's ordinal in the insert
# and the partition, so the blocks must be the same on every attempt. With no squashing
# (both minimums 0) and one insert thread, a block is exactly one Arrow record batch of
# the insert, in order: the caller decides the layout. optimize_on_insert=0 keeps every
# sent row (no in-block collapsing of versions), so before merges the raw table holds
# exactly the rows the ledger recorded and can be counted against it.
BLOCK_LAYOUT_SETTINGS: dict[str, Any] = {
    "min_insert_block_size_rows": 0,
    "min_insert_block_size_bytes": 0,
    "max_insert_threads": 1,
    "optimize_on_insert": 0,
}

# Async inserts, still exactly once: deduplicated by the same token, and the call returns
# only once the buffer holding our rows is flushed into parts (docs/sink.md).
ASYNC_INSERT_SETTINGS: dict[str, Any] = {
    "async_insert": 1,
    "wait_for_async_insert": 1,
    "async_insert_deduplicate": 1,
}

TOKEN_SETTING = "insert_deduplication_token"


def block_layout_settings(*, async_insert: bool = False) -> dict[str, Any]:
    """Every setting of a rollup insert except its token. The sink records these with each
    group before its first insert and sends the recorded ones on every retry: a default
    changed here later never reshapes the blocks of a group already (partly) sent."""
    settings: dict[str, Any] = {**DURABLE_INSERT_SETTINGS, **BLOCK_LAYOUT_SETTINGS}
    if async_insert:
        settings.update(ASYNC_INSERT_SETTINGS)
    return settings


def insert_settings(token: str, *, async_insert: bool = False) -> dict[str, Any]:
    """Settings of every rollup insert: durable, deduplicated by `token`, fixed block layout."""
    return {**block_layout_settings(async_insert=async_insert), TOKEN_SETTING: token}


def legacy_insert_settings(*, async_insert: bool = False) -> dict[str, Any]:
    """What the sink sent before groups recorded their layout (migration 0006), frozen
    here so that a later change of the defaults above cannot reshape those groups' blocks.
    Their blocks were cut every --insert-block-rows rows whatever the day, so one could
    touch more than 100 day partitions: the limit is lifted (it only decides whether such
    a block is refused; it changes neither the parts written nor their dedup ids)."""
    settings: dict[str, Any] = {"async_insert": 0, "insert_deduplicate": 1, "min_insert_block_size_rows": 0,
                                "min_insert_block_size_bytes": 0, "max_insert_threads": 1, "optimize_on_insert": 0}
    if async_insert:
        settings.update({"async_insert": 1, "wait_for_async_insert": 1, "async_insert_deduplicate": 1})
    settings["max_partitions_per_insert_block"] = 0
    return settings


@dataclass(frozen=True, slots=True)
class ClickHouseTarget:
    url: str

    @property
    def embedded(self) -> bool:
        return self.url.startswith("chdb:")

    @property
    def path(self) -> Path | None:
        if not self.embedded:
            return None
        parts = urlsplit(self.url)
        return Path(parts.path) if not parts.netloc else None


# A server that does not accept the TCP connection within this is down for this attempt
# (the retry comes soon). A slow answer is another matter: an insert of a large group may
# legitimately take minutes under merge pressure, hence the long send/receive timeout.
CONNECT_TIMEOUT_S = 5
SEND_RECEIVE_TIMEOUT_S = 300


def connect(url: str) -> Client:
    """Open a client; translate lock and connection failures into our error types: a
    transient one is a RetryableError, a wrong password or database a ClickHouseConfigError,
    any other answer with an error code a ClickHouseRejected (app/clickhouse/errors.py)."""
    target = ClickHouseTarget(url)
    try:
        if target.embedded:
            if target.path is not None:
                target.path.mkdir(parents=True, exist_ok=True)
                _raise_if_locked(target.path)
            client = clickhouse_connect.get_client(dsn=url, settings={"async_insert": 0})
        else:
            # the scheme picks TLS: clickhouse-connect reads host, port, credentials and options
            # from a DSN but not its scheme, and would send plain HTTP to an https:// URL
            client = clickhouse_connect.get_client(dsn=url, interface=urlsplit(url).scheme,
                                                   connect_timeout=CONNECT_TIMEOUT_S,
                                                   send_receive_timeout=SEND_RECEIVE_TIMEOUT_S)
    except (ClickHouseError, ConnectionError, OSError) as e:
        raise translate(e, "connecting", url) from e
    return client


def _raise_if_locked(path: Path) -> None:
    """The engine flocks `<path>/status` while open; probe it so a held path gets a clear error
    (chDB itself only reports a generic initialisation failure)."""
    status = path / "status"
    if not status.exists():
        return
    with open(status, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ServiceLocked(
                f"embedded ClickHouse at {path} is in use by another process (the sink owns it "
                "while it runs); stop that process or point CLICKHOUSE_URL elsewhere") from None
        fcntl.flock(f, fcntl.LOCK_UN)


def migrate(client: Client) -> int:
    """Create or upgrade the rollup tables; returns the schema version now in force."""
    client.command(SCHEMA_VERSION_DDL)
    applied = {int(r[0]) for r in client.query("SELECT version FROM schema_version").result_rows}
    for version, description, statements in MIGRATIONS:
        if version in applied:
            continue
        for stmt in statements:
            client.command(stmt)
        client.insert("schema_version", [[version, description]], column_names=["version", "description"])
        log.info("clickhouse_migrated", version=version, description=description)
    return max(v for v, _, _ in MIGRATIONS)


def is_retryable(e: BaseException) -> bool:
    """Server errors and transport failures are worth retrying; bad SQL is not."""
    if isinstance(e, (OperationalError, ConnectionError, TimeoutError, RetryableError)):
        return True
    if isinstance(e, ClickHouseError):
        return True
    return False


def raise_fatal_on_bad_url(url: str) -> None:
    if not url.startswith(("chdb:", "http://", "https://")):
        raise ConfigurationError(f"unsupported CLICKHOUSE_URL {mask_url(url)!r}: use chdb:///abs/path or http(s)://")
