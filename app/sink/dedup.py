"""Dedup hits: blocks of an insert that ClickHouse suppressed because it already held them
(a retried group whose first attempt wrote some or all of its blocks).

Measured, not inferred: ClickHouse's own counters around each insert. The embedded engine
(chDB) runs inside the sink's process and the sink inserts one group at a time, so the
change of `system.events` across one insert is that insert's alone. Measured on chDB 4.4:
a block suppressed by its token creates no part (InsertedCompactParts/InsertedWideParts
stay) and adds 2 to DuplicatedInsertedBlocks (the test in
tests/integration/test_metrics_dedup.py pins both); so the suppressed blocks are counted
as blocks sent minus parts created, and ClickHouse's DuplicatedInsertedBlocks is exported
beside it as ClickHouse counts it. A ClickHouse server's system.events is shared by every
client, so there the sink does not measure (no series) rather than guess.
"""

from __future__ import annotations

from typing import Final

import structlog
from clickhouse_connect.driver.client import Client

from app.core import metrics

log = structlog.get_logger("sink")

EVENTS: Final = ("DuplicatedInsertedBlocks", "InsertedCompactParts", "InsertedWideParts")


class DedupProbe:
    def __init__(self, embedded: bool) -> None:
        self.enabled = embedded

    def before(self, client: Client) -> dict[str, int] | None:
        return self._read(client) if self.enabled else None

    def after(self, client: Client, before: dict[str, int] | None, table: str, blocks: int) -> None:
        if before is None:
            return
        now = self._read(client)
        if now is None:
            return
        delta = {e: now.get(e, 0) - before.get(e, 0) for e in EVENTS}
        parts = delta["InsertedCompactParts"] + delta["InsertedWideParts"]
        metrics.DEDUP_BLOCKS.labels(table=table).inc(max(0, blocks - parts))
        metrics.CH_DUPLICATED_BLOCKS.labels(table=table).inc(max(0, delta["DuplicatedInsertedBlocks"]))

    @staticmethod
    def _read(client: Client) -> dict[str, int] | None:
        try:
            return {str(e): int(v) for e, v in client.query(
                "SELECT event, value FROM system.events WHERE event IN {events:Array(String)}",
                parameters={"events": list(EVENTS)}).result_rows}
        except Exception as e:  # noqa: BLE001 - a metric never fails an insert
            log.debug("dedup_probe_failed", error=str(e))
            return None
