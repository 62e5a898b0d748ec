"""Bounding the ledger's size: payloads that no reader can need any more are dropped.

A batch payload is read by the sink (until acknowledged) and by restore (only batches
after a partition's latest snapshot). Once a batch is acknowledged and every partition it
covers has a snapshot at or after it, its rows live on in ClickHouse and in the snapshots:
the payload is set to NULL, the batch's row (ids, offsets, totals, times) stays for audit.
"""

from __future__ import annotations

from app.ledger.ledger import Connection, Ledger


def prune_payloads(ledger: Ledger, limit: int = 1000) -> int:
    """Drop up to `limit` unneeded payloads; returns how many were dropped."""
    def tx(conn: Connection) -> int:
        cur = conn.execute(
            """UPDATE sink_batch SET payload = NULL
               WHERE (pipeline_id, batch_id) IN (
                 SELECT b.pipeline_id, b.batch_id FROM sink_batch b
                 WHERE b.pipeline_id = %s AND b.topic = %s AND b.status = 'acked'
                   AND b.payload IS NOT NULL
                   AND b.checkpoint_id <= (
                     SELECT min(s.checkpoint_id) FROM window_snapshot s
                     WHERE s.pipeline_id = b.pipeline_id AND s.topic = b.topic
                       AND s.partition = ANY(b.partitions)
                     HAVING count(*) = cardinality(b.partitions))
                 ORDER BY b.checkpoint_id LIMIT %s)""",
            (ledger.pipeline_id, ledger.topic, limit))
        return cur.rowcount
    return ledger.transaction(tx)
