"""A partition's windows as the ledger committed them: what a new owner rebuilds its state
from when its local store does not reflect the ledger's last checkpoint of the partition
(docs/state-and-rebalancing.md)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import LiteralString

import numpy as np
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


def restore_partitions(ledger: Ledger, partitions: Sequence[int]) -> Iterator[tuple[int, pa.Table]]:
    """`restore_windows` for several partitions at once, reading and decoding every payload
    once: a batch holds the rows of every partition of its checkpoint, and rebuilding N
    partitions one after another read each batch N times.

    Yields (partition, rows): per partition its snapshot's chunks, then its rows of every
    later batch, in checkpoint order (the order restore_windows gives it); partitions
    interleave. The plan is read in one transaction, as restore_windows does.
    """
    wanted = sorted(set(partitions))
    if not wanted:
        return
    pipeline_id, topic = ledger.pipeline_id, ledger.topic

    def plan(conn: Connection) -> tuple[dict[int, tuple[int, int, bytes | None]], list[tuple[int, int, list[int]]]]:
        snaps: dict[int, tuple[int, int, bytes | None]] = {}
        for p, cp, chunks, whole in conn.execute(
                """SELECT partition, checkpoint_id, chunks, CASE WHEN chunks = 0 THEN payload END
                   FROM window_snapshot WHERE pipeline_id = %s AND topic = %s AND partition = ANY(%s)""",
                (pipeline_id, topic, wanted)):
            snaps[int(p)] = (int(cp), int(chunks), None if whole is None else bytes(whole))
        since = min(snaps.get(p, (-1, 0, None))[0] for p in wanted)
        batches = [(int(b), int(cp), [int(x) for x in parts]) for b, cp, parts in conn.execute(
            """SELECT batch_id, checkpoint_id, partitions FROM sink_batch
               WHERE pipeline_id = %s AND topic = %s AND source = 'live'
                 AND checkpoint_id > %s AND partitions && %s::int[]
               ORDER BY checkpoint_id, table_name""",
            (pipeline_id, topic, since, wanted))]
        return snaps, batches

    snaps, batches = ledger.transaction(plan)
    since = {p: snaps.get(p, (-1, 0, None))[0] for p in wanted}
    for p in wanted:
        if p not in snaps:
            continue
        cp, chunks, whole = snaps[p]
        if whole is not None:
            yield p, _rows_of(window_rows.decode(whole), p)
        for chunk in range(chunks):
            yield p, _rows_of(window_rows.decode(_payload(
                ledger, """SELECT payload FROM window_snapshot_chunk WHERE pipeline_id = %s AND topic = %s
                             AND partition = %s AND checkpoint_id = %s AND chunk = %s""",
                (pipeline_id, topic, p, cp, chunk),
                f"snapshot of partition {p} at checkpoint {cp} lacks chunk {chunk}")), p)
    todo = [(b, [p for p in parts if p in since and cp > since[p]]) for b, cp, parts in batches]
    todo = [(b, mine) for b, mine in todo if mine]
    for i in range(0, len(todo), _BATCHES_PER_READ):  # a few payloads per round trip
        group = todo[i:i + _BATCHES_PER_READ]
        payloads = _payloads(ledger, [b for b, _ in group])
        for batch, mine in group:
            yield from _split(window_rows.decode(payloads[batch]), mine)


_BATCHES_PER_READ = 8


def _split(table: pa.Table, partitions: list[int]) -> Iterator[tuple[int, pa.Table]]:
    """The rows of each of `partitions`, in table order: one sort of the partition column
    instead of one filter of the whole table per partition."""
    column = table.column("partition").to_numpy()
    order = np.argsort(column, kind="stable")
    ordered = column[order]
    for p in partitions:
        lo, hi = np.searchsorted(ordered, [p, p + 1])
        yield p, table.take(pa.array(order[lo:hi]))


def _payloads(ledger: Ledger, batch_ids: list[int]) -> dict[int, bytes]:
    """Several batches' payloads in one transaction (the plan named them; payloads never change)."""
    def tx(conn: Connection) -> dict[int, bytes]:
        rows = conn.execute("SELECT batch_id, payload FROM sink_batch WHERE pipeline_id = %s AND batch_id = ANY(%s)",
                            (ledger.pipeline_id, batch_ids)).fetchall()
        return {int(b): bytes(payload) for b, payload in rows if payload is not None}
    got = ledger.transaction(tx)
    for b in batch_ids:
        if b not in got:
            raise InvariantViolation(f"batch {b} has no payload: the partition's state cannot be restored")
    return got
