"""The Kafka time range and record count of sink batches (migration 0009): what the sink
needs to observe end-to-end latency per input record (app/sink/latency.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.ledger.ledger import Connection, Ledger


@dataclass(frozen=True, slots=True)
class BatchTimes:
    batch_id: int
    table_name: str
    records: int               # input records of the checkpoint that made the batch
    kafka_ts_min_ms: int
    kafka_ts_max_ms: int


def batch_times(ledger: Ledger, batch_ids: Sequence[int]) -> list[BatchTimes]:
    """Live batches among `batch_ids` that carry a Kafka time range (older and backfill ones do not)."""
    def tx(conn: Connection) -> list[BatchTimes]:
        return [BatchTimes(int(r[0]), r[1], int(r[2]), int(r[3]), int(r[4])) for r in conn.execute(
            """SELECT b.batch_id, b.table_name, c.records, b.kafka_ts_min_ms, b.kafka_ts_max_ms
               FROM sink_batch b JOIN ledger_checkpoint c ON c.checkpoint_id = b.checkpoint_id
               WHERE b.pipeline_id = %s AND b.batch_id = ANY(%s) AND b.kafka_ts_min_ms IS NOT NULL""",
            (ledger.pipeline_id, list(batch_ids)))]
    return ledger.transaction(tx)
