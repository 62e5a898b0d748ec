"""Ledger side of a backfill (docs/backfill.md): pin the input positions and allocate the
version in one transaction, commit the recomputed windows as sink batches marked
`source = 'backfill'`.

A backfill never touches `partition_state`, the DLQ counts or the window snapshots: those
belong to the live processor. It adds a `ledger_checkpoint` (its version), `sink_batch`
rows (delivered by the ordinary sink) and one `backfill_run` row that makes it resumable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from psycopg.types.json import Jsonb

from app.core.errors import InvariantViolation
from app.ledger.batches import column_sum, insert_sink_batch
from app.ledger.identity import batch_id as make_batch_id
from app.ledger.ledger import Connection, Ledger, single_row

SOURCE = "backfill"
PLANNED = "planned"
LANDED = "landed"

DlqKey = tuple[str, str]  # (reason, window_kind), window_kind '' for invalid


@dataclass(frozen=True, slots=True)
class PinnedPartition:
    """One input partition as the ledger stood at the pin: the live processor had read
    [0, next_offset), with this watermark and these DLQ counts."""

    partition: int
    next_offset: int
    max_event_time_ms: int | None
    watermark_ms: int | None
    dlq: Mapping[DlqKey, int]


@dataclass(frozen=True, slots=True)
class Pin:
    """The ledger at one instant. `covers_below`: every ledger version (checkpoint id) below it
    was committed at or before the pin, so its rows are reproduced by a replay up to these
    positions; none at or above it was. For a run it is the run's own version, allocated in
    the pin's transaction. None: unknown (a run pinned by an older release, before the two
    were one transaction): then no row can be shown to be covered, and none is deleted."""

    partitions: tuple[PinnedPartition, ...]
    covers_below: int | None = None

    def get(self, partition: int) -> PinnedPartition:
        for p in self.partitions:
            if p.partition == partition:
                return p
        return PinnedPartition(partition, 0, None, None, {})

    def covers(self, version: int) -> bool:
        return self.covers_below is not None and version < self.covers_below

    def to_json(self) -> dict[str, Any]:
        return {"covers_below": self.covers_below,
                "partitions": [{"partition": p.partition, "next_offset": p.next_offset,
                                "max_event_time_ms": p.max_event_time_ms, "watermark_ms": p.watermark_ms,
                                "dlq": [[r, k, n] for (r, k), n in sorted(p.dlq.items())]}
                               for p in self.partitions]}

    @staticmethod
    def from_json(data: dict[str, Any] | list[dict[str, Any]]) -> Pin:
        # a bare list: a pin stored by an older release, which read it before allocating the version
        parts, covers = (data, None) if isinstance(data, list) else (data["partitions"], data["covers_below"])
        return Pin(tuple(PinnedPartition(int(d["partition"]), int(d["next_offset"]),
                                         None if d["max_event_time_ms"] is None else int(d["max_event_time_ms"]),
                                         None if d["watermark_ms"] is None else int(d["watermark_ms"]),
                                         {(str(r), str(k)): int(n) for r, k, n in d["dlq"]})
                         for d in parts), None if covers is None else int(covers))


@dataclass(frozen=True, slots=True)
class BackfillRun:
    request: str
    run_no: int
    checkpoint_id: int   # the version of every row this run lands
    pin: Pin
    status: str

    @property
    def landed(self) -> bool:
        return self.status == LANDED


def _positions(conn: Connection, ledger: Ledger) -> tuple[PinnedPartition, ...]:
    """Every partition's position, watermark and DLQ counts. Call it inside a REPEATABLE READ
    transaction: the live processor commits them together, so one snapshot sees them agree."""
    dlq: dict[int, dict[DlqKey, int]] = {}
    for p, reason, kind, n in conn.execute(
            """SELECT partition, reason, window_kind, count FROM dlq_count
               WHERE pipeline_id = %s AND topic = %s""", (ledger.pipeline_id, ledger.topic)):
        dlq.setdefault(int(p), {})[(str(reason), str(kind))] = int(n)
    return tuple(PinnedPartition(int(p), int(o), None if m is None else int(m), None if w is None else int(w),
                                 dlq.get(int(p), {}))
                 for p, o, m, w in conn.execute(
                     """SELECT partition, next_offset, max_event_time_ms, watermark_ms FROM partition_state
                        WHERE pipeline_id = %s AND topic = %s ORDER BY partition""",
                     (ledger.pipeline_id, ledger.topic)))


def read_pin(ledger: Ledger, *, above_version: int = 0) -> Pin:
    """A pin without a version, for a dry run: what a run started now would pin. Its
    `covers_below` is the version such a run would get (approximately: nothing is locked)."""
    def tx(conn: Connection) -> Pin:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        parts = _positions(conn, ledger)
        return Pin(parts, max(_last_id(conn), above_version) + 1)
    return ledger.transaction(tx)


def latest_run(ledger: Ledger, request: str) -> BackfillRun | None:
    def tx(conn: Connection) -> BackfillRun | None:
        row = conn.execute(
            """SELECT run_no, checkpoint_id, pin, status FROM backfill_run
               WHERE pipeline_id = %s AND request = %s ORDER BY run_no DESC LIMIT 1""",
            (ledger.pipeline_id, request)).fetchone()
        if row is None:
            return None
        return BackfillRun(request, int(row[0]), int(row[1]), Pin.from_json(row[2]), str(row[3]))
    return ledger.transaction(tx)


def start_run(ledger: Ledger, request: str, *, above_version: int = 0) -> BackfillRun:
    """Pin the ledger, allocate the run's version and record the run, in one transaction, so
    the pin covers exactly the versions below the run's (docs/backfill.md, "the pin"):

    1. lock `ledger_checkpoint` against inserts (SHARE ROW EXCLUSIVE, held for
       milliseconds). A live checkpoint that already allocated its id commits before we get
       the lock; one that has not waits until we commit and gets an id above ours. The
       lock comes before the first query, so the REPEATABLE READ snapshot is taken after it;
    2. pin: every partition's position, watermark and DLQ counts in that snapshot, which
       holds every checkpoint below our id and none above it;
    3. if ClickHouse holds a version >= the next id in the range (a write that did not come
       from this ledger), move the sequence past it: ids stay unique and increasing, and
       our rows replace that write;
    4. insert the checkpoint (source 'backfill'): a fresh id, higher than every version
       the pin covers, in particular for the (final) windows we rewrite, and lower than
       every row the live processor emits after the pin;
    5. insert the run row with the pin, so a rerun after a crash resumes with the same
       input positions, version and batch ids.
    """
    def tx(conn: Connection) -> BackfillRun:
        # 1.
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute("LOCK TABLE ledger_checkpoint IN SHARE ROW EXCLUSIVE MODE")
        # 2.
        parts = _positions(conn, ledger)
        # 3.
        if above_version > 0:
            # setval(s, v): the next id is v + 1. Only forwards: ids already handed out stay unique.
            conn.execute(
                """SELECT setval(q.s, %s)
                   FROM (SELECT pg_get_serial_sequence('ledger_checkpoint', 'checkpoint_id') AS s) AS q
                   WHERE %s > coalesce(pg_sequence_last_value(q.s::regclass), 0)""",
                (above_version, above_version))
        # 4. (records: set when the run lands, once the replay has counted them)
        (checkpoint_id,) = single_row(conn.execute(
            """INSERT INTO ledger_checkpoint (pipeline_id, source, topic, partitions, records)
               VALUES (%s, %s, %s, %s, 0) RETURNING checkpoint_id""",
            (ledger.pipeline_id, SOURCE, ledger.topic, [p.partition for p in parts])))
        pin = Pin(parts, int(checkpoint_id))
        # 5.
        (run_no,) = single_row(conn.execute(
            """SELECT coalesce(max(run_no), 0) + 1 FROM backfill_run
               WHERE pipeline_id = %s AND request = %s""", (ledger.pipeline_id, request)))
        conn.execute(
            """INSERT INTO backfill_run (pipeline_id, request, run_no, topic, checkpoint_id, pin)
               VALUES (%s, %s, %s, %s, %s, %s)""",
            (ledger.pipeline_id, request, run_no, ledger.topic, checkpoint_id, Jsonb(pin.to_json())))
        return BackfillRun(request, int(run_no), int(checkpoint_id), pin, PLANNED)
    return ledger.transaction(tx)


def batch_scope(run: BackfillRun, chunk: int) -> str:
    """The batch-id scope: request, run and chunk number, so a resumed run reproduces its ids."""
    return f"{run.request}|run={run.run_no}|chunk={chunk}"


def commit_batch(ledger: Ledger, run: BackfillRun, table_name: str, chunk: int, rows: pa.Table,
                 offset_ranges: Mapping[int, tuple[int, int]]) -> tuple[int, bool]:
    """Commit one chunk of recomputed rows as a pending sink batch at the run's version.

    Returns (batch_id, newly committed). A chunk an earlier attempt of this run already
    committed is left as it is (the sink may have delivered it); its totals must equal the
    recomputed ones, since the run's input positions are pinned.
    """
    bid = make_batch_id(ledger.pipeline_id, SOURCE, ledger.topic, table_name, offset_ranges,
                        batch_scope(run, chunk))
    events, amount = column_sum(rows, "event_count"), column_sum(rows, "sum_amount")

    def tx(conn: Connection) -> bool:
        if insert_sink_batch(conn, pipeline_id=ledger.pipeline_id, batch_id=bid, checkpoint_id=run.checkpoint_id,
                             table_name=table_name, source=SOURCE, topic=ledger.topic, rows=rows,
                             offset_ranges=offset_ranges):
            return True
        row = conn.execute(
            """SELECT checkpoint_id, row_count, total_events, total_amount FROM sink_batch
               WHERE pipeline_id = %s AND batch_id = %s""", (ledger.pipeline_id, bid)).fetchone()
        assert row is not None
        if (int(row[0]), int(row[1]), int(row[2]), int(row[3])) != (run.checkpoint_id, rows.num_rows, events,
                                                                     amount):
            raise InvariantViolation(
                f"backfill batch {bid} (run {run.run_no}, chunk {chunk}) was committed with other rows: "
                f"{row[1]} rows / {row[2]} events before, {rows.num_rows} / {events} now")
        return False
    return bid, ledger.transaction(tx)


def finish_run(ledger: Ledger, run: BackfillRun, *, records: int, windows: int, batches: int,
               deleted_keys: int | None) -> None:
    def tx(conn: Connection) -> None:
        conn.execute(
            """UPDATE backfill_run SET status = %s, windows = %s, batches = %s, deleted_keys = %s,
                 finished_at = now()
               WHERE pipeline_id = %s AND request = %s AND run_no = %s""",
            (LANDED, windows, batches, deleted_keys, ledger.pipeline_id, run.request, run.run_no))
        conn.execute("UPDATE ledger_checkpoint SET records = %s WHERE checkpoint_id = %s",
                     (records, run.checkpoint_id))
    ledger.transaction(tx)


def abandon_run(ledger: Ledger, run: BackfillRun) -> bool:
    """Forget a run that committed no batch (it was refused, or found nothing to land): its
    run row and its checkpoint go, so the next run of the request starts afresh. A run with
    a batch is kept (the sink may have delivered it); returns whether it was forgotten."""
    def tx(conn: Connection) -> bool:
        if conn.execute("SELECT 1 FROM sink_batch WHERE pipeline_id = %s AND checkpoint_id = %s LIMIT 1",
                        (ledger.pipeline_id, run.checkpoint_id)).fetchone() is not None:
            return False
        conn.execute("DELETE FROM backfill_run WHERE pipeline_id = %s AND request = %s AND run_no = %s",
                     (ledger.pipeline_id, run.request, run.run_no))
        conn.execute("DELETE FROM ledger_checkpoint WHERE checkpoint_id = %s AND source = %s",
                     (run.checkpoint_id, SOURCE))
        return True
    return ledger.transaction(tx)


def last_version(ledger: Ledger) -> int:
    """The highest checkpoint id of the database (the id sequence is shared by every
    pipeline): a stored version above it was not written through this ledger."""
    return ledger.transaction(_last_id)


def _last_id(conn: Connection) -> int:
    (n,) = single_row(conn.execute("SELECT coalesce(max(checkpoint_id), 0) FROM ledger_checkpoint"))
    return int(n)


def max_live_checkpoint(ledger: Ledger) -> int:
    """The highest checkpoint id of this pipeline (reporting only)."""
    def tx(conn: Connection) -> int:
        (n,) = single_row(conn.execute(
            "SELECT coalesce(max(checkpoint_id), 0) FROM ledger_checkpoint WHERE pipeline_id = %s",
            (ledger.pipeline_id,)))
        return int(n)
    return ledger.transaction(tx)

