"""A partition's windows as the ledger committed them: what a new owner rebuilds its state
from when its local store does not reflect the ledger's last checkpoint of the partition
(docs/state-and-rebalancing.md)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import LiteralString

import pyarrow as pa
import pyarrow.compute as pc

from app.core.errors import InvariantViolation
from app.ledger import rows as window_rows
from app.ledger.ledger import Connection, Ledger


def restore_windows(ledger: Ledger, partition: int) -> Iterator[pa.Table]:
    """The partition's windows as committed: its latest snapshot, then every batch
    committed after it, in checkpoint order (each row a window's full value).

    Streamed one payload at a time, so memory is bounded by the largest chunk or batch,
    not by the partition's state. The plan (which snapshot, which batches) is read in
    one transaction; the payloads it names are immutable, and the snapshot's chunks
    cannot be replaced under us: only the owner publishes a snapshot (fenced by the
    owner generation), and the caller claimed the partition before restoring.
    """
    pipeline_id, topic = ledger.pipeline_id, ledger.topic

    def plan(conn: Connection) -> tuple[int, int, bytes | None, list[int]]:
        snap = conn.execute(
            """SELECT checkpoint_id, chunks, CASE WHEN chunks = 0 THEN payload END FROM window_snapshot
               WHERE pipeline_id = %s AND topic = %s AND partition = %s""",
            (pipeline_id, topic, partition)).fetchone()
        since, chunks, whole = -1, 0, None
        if snap is not None:
            since, chunks = int(snap[0]), int(snap[1])
            # chunks = 0: one whole payload, as releases before the chunked snapshots wrote it
            whole = None if snap[2] is None else bytes(snap[2])
        batches = [int(b) for (b,) in conn.execute(
            """SELECT batch_id FROM sink_batch
               WHERE pipeline_id = %s AND topic = %s AND source = 'live'
                 AND checkpoint_id > %s AND %s = ANY(partitions)
               ORDER BY checkpoint_id, table_name""",
            (pipeline_id, topic, since, partition))]
        return since, chunks, whole, batches

    since, chunks, whole, batches = ledger.transaction(plan)
    if whole is not None:
        yield _rows_of(window_rows.decode(whole), partition)
    for chunk in range(chunks):
        yield _rows_of(window_rows.decode(_payload(
            ledger, """SELECT payload FROM window_snapshot_chunk WHERE pipeline_id = %s AND topic = %s
                         AND partition = %s AND checkpoint_id = %s AND chunk = %s""",
            (pipeline_id, topic, partition, since, chunk),
            f"snapshot of partition {partition} at checkpoint {since} lacks chunk {chunk}")), partition)
    for batch in batches:
        yield _rows_of(window_rows.decode(_payload(
            ledger, "SELECT payload FROM sink_batch WHERE pipeline_id = %s AND batch_id = %s",
            (pipeline_id, batch), f"batch {batch} has no payload: the partition's state cannot be restored")),
            partition)


def _payload(ledger: Ledger, sql: LiteralString, params: tuple[object, ...], missing: str) -> bytes:
    """One payload, in its own transaction (the plan named it; payloads never change)."""
    def tx(conn: Connection) -> bytes:
        row = conn.execute(sql, params).fetchone()
        if row is None or row[0] is None:
            raise InvariantViolation(missing)
        return bytes(row[0])
    return ledger.transaction(tx)


def _rows_of(table: pa.Table, partition: int) -> pa.Table:
    return table.filter(pc.equal(table.column("partition"), partition))
