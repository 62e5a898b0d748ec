"""Unacknowledged work in the ledger: what the processor's backpressure bounds and the
sink publishes as metrics."""

from __future__ import annotations

from dataclasses import dataclass

from app.ledger.ledger import Connection, Ledger, single_row


@dataclass(frozen=True, slots=True)
class PendingWork:
    rows: int
    payload_bytes: int
    oldest_age_s: float                # 0 when nothing is pending
    batches: int = 0


def pending_work(ledger: Ledger) -> PendingWork:
    """Rows, payload bytes and age of the oldest batch not yet acknowledged. octet_length
    of an out-of-line bytea reads its TOAST pointer only, so this stays cheap."""
    def tx(conn: Connection) -> PendingWork:
        row = single_row(conn.execute(
            """SELECT coalesce(sum(row_count), 0), coalesce(sum(octet_length(payload)), 0),
                      coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8, count(*)
               FROM sink_batch WHERE pipeline_id = %s AND status = 'pending'""",
            (ledger.pipeline_id,)))
        return PendingWork(int(row[0]), int(row[1]), float(row[2]), int(row[3]))
    return ledger.transaction(tx)
