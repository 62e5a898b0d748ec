"""The Postgres ledger: the single commit point of the pipeline (contract §6).

Processor side: claim a partition (fencing older owners), restore its windows, commit a
checkpoint. Sink side: list pending batches, load a payload, acknowledge. Every row is
scoped by pipeline_id; every statement uses bound parameters.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import structlog
from psycopg.types.json import Jsonb

from app.core.config import mask_url, psycopg_conninfo
from app.core.errors import InvariantViolation, OwnershipLost, RetryableError
from app.core.faults import crash_point
from app.ledger import pipeline_rules
from app.ledger import rows as window_rows
from app.ledger.identity import batch_id as make_batch_id

log = structlog.get_logger("ledger")

CONNECT_TIMEOUT_S = 5  # libpq's connect_timeout (whole seconds): a dead or hung server fails within this


class PartitionFenced(OwnershipLost):
    """A checkpoint named partitions that a newer owner generation has claimed since."""

    def __init__(self, message: str, partitions: tuple[int, ...]) -> None:
        super().__init__(message)
        self.partitions = partitions


def checkpoint_ref(checkpoint_id: int, created_at_us: int) -> str:
    """Identity of a committed checkpoint that local state can record and compare.

    The id alone is not enough: a recreated ledger database restarts the bigserial, and a
    stale local store must never match a new ledger's checkpoint by accident.
    """
    return f"{checkpoint_id}@{created_at_us}"


@dataclass(frozen=True, slots=True)
class PartitionClaim:
    """What a new owner of a partition starts from."""

    partition: int
    owner_generation: int
    next_offset: int
    max_event_time_ms: int | None
    last_checkpoint: str | None = None  # checkpoint_ref of the last commit that advanced it


@dataclass(frozen=True, slots=True)
class PartitionAdvance:
    """One partition's progress inside a checkpoint: input [from_offset, next_offset)."""

    partition: int
    from_offset: int
    next_offset: int
    max_event_time_ms: int | None
    watermark_ms: int | None
    owner_generation: int


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Everything one ledger transaction commits together."""

    source: str                                        # 'live' or 'backfill'
    topic: str
    advances: tuple[PartitionAdvance, ...]
    tables: Mapping[str, pa.Table]                     # rollup table -> window rows emitted
    dlq_counts: Mapping[tuple[int, str, str], int]     # (partition, reason, window_kind) -> n
    snapshots: Mapping[int, pa.Table] = field(default_factory=dict)  # partition -> open windows
    scope: str = ""                                    # extra batch-id input (backfill request)

    @property
    def records(self) -> int:
        return sum(a.next_offset - a.from_offset for a in self.advances)

    @property
    def offset_ranges(self) -> dict[int, tuple[int, int]]:
        return {a.partition: (a.from_offset, a.next_offset) for a in self.advances}


@dataclass(frozen=True, slots=True)
class CommitResult:
    checkpoint_id: int
    batch_ids: tuple[int, ...]
    rows: int
    seconds: float
    already_committed: bool = False
    checkpoint_ref: str | None = None   # see checkpoint_ref(); also set when already_committed


@dataclass(frozen=True, slots=True)
class PendingBatch:
    batch_id: int
    checkpoint_id: int
    table_name: str
    row_count: int
    insert_attempts: int
    created_at: Any


class Ledger:
    def __init__(self, url: str, pipeline_id: str, topic: str) -> None:
        self.url = psycopg_conninfo(url)
        self.pipeline_id = pipeline_id
        self.topic = topic
        self._conn: psycopg.Connection[Any] | None = None
        # the processor's rules and input log (app/processor/log_guard.py): each commit records
        # them as the pipeline's first checkpoint or requires the recorded ones
        self.pin: pipeline_rules.PipelinePin | None = None
        self._calls = 0  # > 0 while a Postgres round trip (connect or transaction) is in progress

    # ---- connection -------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Inside a Postgres call: what a stop timer may interrupt (app/processor/shutdown.py)."""
        return self._calls > 0

    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                # connect_timeout also bounds a server that accepts and never answers
                self._conn = psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S)
            except psycopg.OperationalError as e:
                raise RetryableError(f"Postgres unreachable at {mask_url(self.url)}: "
                                     f"{str(e).strip().splitlines()[0] if str(e).strip() else e}") from e
        return self._conn

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None

    def _run(self, fn: Any) -> Any:
        """Run fn(conn) in one transaction; connection loss becomes RetryableError. A call
        interrupted mid-statement (e.g. by a stop request) leaves the connection in an
        unknown state: it is closed, and the next call connects afresh."""
        self._calls += 1
        try:
            conn = self.conn()
            try:
                with conn.transaction():
                    return fn(conn)
            except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                self.close()
                raise RetryableError(f"Postgres error: {e}") from e
            except BaseException:
                if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    self.close()
                raise
        finally:
            self._calls -= 1

    # ---- processor side ---------------------------------------------------

    def claim_partition(self, partition: int, owner: str) -> PartitionClaim:
        """Take ownership: bump the owner generation so an older owner's commits fail."""
        def tx(conn: psycopg.Connection[Any]) -> PartitionClaim:
            row = conn.execute(
                """WITH claimed AS (
                     INSERT INTO partition_state (pipeline_id, topic, partition, owner_generation, owner)
                     VALUES (%s, %s, %s, 1, %s)
                     ON CONFLICT (pipeline_id, topic, partition) DO UPDATE
                       SET owner_generation = partition_state.owner_generation + 1,
                           owner = EXCLUDED.owner, updated_at = now()
                     RETURNING owner_generation, next_offset, max_event_time_ms, last_checkpoint_id)
                   SELECT c.owner_generation, c.next_offset, c.max_event_time_ms, c.last_checkpoint_id,
                          (extract(epoch FROM lc.created_at) * 1000000)::bigint
                   FROM claimed c LEFT JOIN ledger_checkpoint lc ON lc.checkpoint_id = c.last_checkpoint_id""",
                (self.pipeline_id, self.topic, partition, owner)).fetchone()
            assert row is not None
            ref = None if row[3] is None or row[4] is None else checkpoint_ref(int(row[3]), int(row[4]))
            return PartitionClaim(partition, int(row[0]), int(row[1]),
                                  None if row[2] is None else int(row[2]), ref)
        return self._run(tx)  # type: ignore[no-any-return]

    def restore_windows(self, partition: int) -> Iterator[pa.Table]:
        """The partition's windows as committed: its latest snapshot, then every batch
        committed after it, in checkpoint order (each row a window's full value).

        Streamed one payload at a time, so memory is bounded by the largest chunk or batch,
        not by the partition's state. The plan (which snapshot, which batches) is read in
        one transaction; the payloads it names are immutable, and the snapshot's chunks
        cannot be replaced under us: only the owner publishes a snapshot (fenced by the
        owner generation), and the caller claimed the partition before restoring.
        """
        def plan(conn: psycopg.Connection[Any]) -> tuple[int, int, bytes | None, list[int]]:
            snap = conn.execute(
                """SELECT checkpoint_id, chunks, CASE WHEN chunks = 0 THEN payload END FROM window_snapshot
                   WHERE pipeline_id = %s AND topic = %s AND partition = %s""",
                (self.pipeline_id, self.topic, partition)).fetchone()
            since, chunks, whole = -1, 0, None
            if snap is not None:
                since, chunks = int(snap[0]), int(snap[1])
                whole = None if snap[2] is None else bytes(snap[2])
            batches = [int(b) for (b,) in conn.execute(
                """SELECT batch_id FROM sink_batch
                   WHERE pipeline_id = %s AND topic = %s AND source = 'live'
                     AND checkpoint_id > %s AND %s = ANY(partitions)
                   ORDER BY checkpoint_id, table_name""",
                (self.pipeline_id, self.topic, since, partition))]
            return since, chunks, whole, batches

        since, chunks, whole, batches = self._run(plan)
        if whole is not None:
            yield _rows_of(window_rows.decode(whole), partition)
        for chunk in range(chunks):
            yield _rows_of(window_rows.decode(self._snapshot_chunk(partition, since, chunk)), partition)
        for batch in batches:
            yield _rows_of(window_rows.decode(self._batch_payload(batch)), partition)

    def _batch_payload(self, batch: int) -> bytes:
        def tx(conn: psycopg.Connection[Any]) -> bytes:
            row = conn.execute("SELECT payload FROM sink_batch WHERE pipeline_id = %s AND batch_id = %s",
                               (self.pipeline_id, batch)).fetchone()
            if row is None or row[0] is None:
                raise InvariantViolation(f"batch {batch} has no payload: the partition's state cannot be restored")
            return bytes(row[0])
        return self._run(tx)  # type: ignore[no-any-return]

    def _snapshot_chunk(self, partition: int, checkpoint_id: int, chunk: int) -> bytes:
        def tx(conn: psycopg.Connection[Any]) -> bytes:
            row = conn.execute(
                """SELECT payload FROM window_snapshot_chunk
                   WHERE pipeline_id = %s AND topic = %s AND partition = %s AND checkpoint_id = %s
                     AND chunk = %s""",
                (self.pipeline_id, self.topic, partition, checkpoint_id, chunk)).fetchone()
            if row is None:
                raise InvariantViolation(f"snapshot of partition {partition} at checkpoint {checkpoint_id} "
                                         f"lacks chunk {chunk}")
            return bytes(row[0])
        return self._run(tx)  # type: ignore[no-any-return]

    def write_snapshot_chunk(self, partition: int, checkpoint_id: int, chunk: int, table: pa.Table) -> None:
        """One bounded piece of a partition's snapshot; invisible until publish_snapshot."""
        def tx(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                """INSERT INTO window_snapshot_chunk (pipeline_id, topic, partition, checkpoint_id, chunk,
                     window_count, payload) VALUES (%s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (pipeline_id, topic, partition, checkpoint_id, chunk) DO UPDATE
                     SET window_count = EXCLUDED.window_count, payload = EXCLUDED.payload""",
                (self.pipeline_id, self.topic, partition, checkpoint_id, chunk, table.num_rows,
                 window_rows.encode(table)))
        self._run(tx)

    def publish_snapshot(self, partition: int, checkpoint_id: int, chunks: int, owner_generation: int) -> bool:
        """Make the chunks written for `checkpoint_id` the partition's snapshot, atomically,
        and delete every other chunk of the partition. Fenced like a commit: only the
        current owner may publish (a zombie's snapshot is still correct for its
        checkpoint, but deleting chunks a restoring owner is reading would not be).
        Returns False when a snapshot of the same or a later checkpoint is already there."""
        def tx(conn: psycopg.Connection[Any]) -> bool:
            row = conn.execute(
                """SELECT owner_generation FROM partition_state
                   WHERE pipeline_id = %s AND topic = %s AND partition = %s FOR UPDATE""",
                (self.pipeline_id, self.topic, partition)).fetchone()
            if row is None or int(row[0]) != owner_generation:
                raise PartitionFenced(f"partition {partition} is owned by generation "
                                      f"{None if row is None else row[0]}, not {owner_generation}", (partition,))
            conn.execute(  # leftovers of an abandoned attempt at the same checkpoint, if any
                """DELETE FROM window_snapshot_chunk WHERE pipeline_id = %s AND topic = %s AND partition = %s
                     AND checkpoint_id = %s AND chunk >= %s""",
                (self.pipeline_id, self.topic, partition, checkpoint_id, chunks))
            (written, windows) = conn.execute(
                """SELECT count(*), coalesce(sum(window_count), 0) FROM window_snapshot_chunk
                   WHERE pipeline_id = %s AND topic = %s AND partition = %s AND checkpoint_id = %s""",
                (self.pipeline_id, self.topic, partition, checkpoint_id)).fetchone()  # type: ignore[misc]
            if int(written) != chunks:
                raise InvariantViolation(f"snapshot of partition {partition} at checkpoint {checkpoint_id}: "
                                         f"{written} chunks written, {chunks} expected")
            published = conn.execute(
                """INSERT INTO window_snapshot AS s (pipeline_id, topic, partition, checkpoint_id, window_count,
                     payload, chunks) VALUES (%s, %s, %s, %s, %s, '', %s)
                   ON CONFLICT (pipeline_id, topic, partition) DO UPDATE
                     SET checkpoint_id = EXCLUDED.checkpoint_id, window_count = EXCLUDED.window_count,
                         payload = '', chunks = EXCLUDED.chunks, created_at = now()
                     WHERE s.checkpoint_id < EXCLUDED.checkpoint_id
                   RETURNING checkpoint_id""",
                (self.pipeline_id, self.topic, partition, checkpoint_id, int(windows), chunks)).fetchone()
            keep = checkpoint_id if published is not None else conn.execute(
                """SELECT checkpoint_id FROM window_snapshot
                   WHERE pipeline_id = %s AND topic = %s AND partition = %s""",
                (self.pipeline_id, self.topic, partition)).fetchone()[0]  # type: ignore[index]
            conn.execute(
                """DELETE FROM window_snapshot_chunk
                   WHERE pipeline_id = %s AND topic = %s AND partition = %s AND checkpoint_id <> %s""",
                (self.pipeline_id, self.topic, partition, keep))
            return published is not None
        return self._run(tx)  # type: ignore[no-any-return]

    def commit(self, cp: Checkpoint) -> CommitResult:
        """Commit one checkpoint atomically. The steps, in order:

        1. lock the partitions' ledger rows and fence: each must still be owned by our
           generation and stand at the checkpoint's from_offset (a row already at our
           next_offset means a retry of a commit that did land: report it, change nothing);
        2. allocate the checkpoint id, which is the version of every row it emits; the
           pipeline's first checkpoint records its rules and input log (`self.pin`), every
           later one must carry the same (app/ledger/pipeline_rules.py);
        3. insert one sink batch per rollup table, id derived from the offset ranges;
        4. add the DLQ counts;
        5. advance next_offset / watermark of every partition covered;
        6. store the snapshots of open windows, if any;
        7. commit. Until then nothing is visible to the sink; after it, all of it is.
        """
        started = time.monotonic()

        def tx(conn: psycopg.Connection[Any]) -> CommitResult:
            # 1. lock + fence
            parts = [a.partition for a in cp.advances]
            current = {int(r[0]): (int(r[1]), int(r[2]), r[3], r[4]) for r in conn.execute(
                """SELECT ps.partition, ps.owner_generation, ps.next_offset, ps.last_checkpoint_id,
                          (extract(epoch FROM lc.created_at) * 1000000)::bigint
                   FROM partition_state ps
                   LEFT JOIN ledger_checkpoint lc ON lc.checkpoint_id = ps.last_checkpoint_id
                   WHERE ps.pipeline_id = %s AND ps.topic = %s AND ps.partition = ANY(%s)
                   ORDER BY ps.partition FOR UPDATE OF ps""",
                (self.pipeline_id, self.topic, parts))}
            missing = [a.partition for a in cp.advances if a.partition not in current]
            if missing:
                raise InvariantViolation(f"partitions {missing} have no ledger row (never claimed)")
            fenced = tuple(a.partition for a in cp.advances if current[a.partition][0] != a.owner_generation)
            if fenced:
                # nothing is written: the whole checkpoint aborts, the caller drops these
                # partitions and commits the others again
                raise PartitionFenced(
                    "partitions owned by a newer generation: " + ", ".join(
                        f"{a.partition} (ledger {current[a.partition][0]}, ours {a.owner_generation})"
                        for a in cp.advances if a.partition in fenced), fenced)
            landed = [a for a in cp.advances
                      if current[a.partition][1] == a.next_offset and a.next_offset != a.from_offset]
            for a in cp.advances:
                if a not in landed and current[a.partition][1] != a.from_offset:
                    raise InvariantViolation(f"partition {a.partition}: ledger at offset {current[a.partition][1]}, "
                                             f"checkpoint starts at {a.from_offset}")
            if landed:
                # a retry of a commit whose COMMIT reached Postgres but whose answer did not
                refs = {(current[a.partition][2], current[a.partition][3]) for a in landed}
                if len(landed) != len(cp.advances) or len(refs) != 1 or None in next(iter(refs)):
                    raise InvariantViolation("checkpoint partly landed: impossible in one transaction")
                (landed_id, landed_us), = refs
                return CommitResult(int(landed_id), (), 0, 0.0, already_committed=True,
                                    checkpoint_ref=checkpoint_ref(int(landed_id), int(landed_us)))
            # 2. the checkpoint id = version
            (checkpoint_id, created_us) = conn.execute(
                """INSERT INTO ledger_checkpoint (pipeline_id, source, topic, partitions, records)
                   VALUES (%s, %s, %s, %s, %s)
                   RETURNING checkpoint_id, (extract(epoch FROM created_at) * 1000000)::bigint""",
                (self.pipeline_id, cp.source, cp.topic, parts, cp.records)).fetchone()  # type: ignore[misc]
            if self.pin is not None:
                pipeline_rules.check_or_record(conn, self.pipeline_id, self.pin, int(checkpoint_id))
            # 3. sink batches
            ranges = cp.offset_ranges
            ranges_json = Jsonb([[p, a, b] for p, (a, b) in sorted(ranges.items())])
            batch_ids: list[int] = []
            total_rows = 0
            for table_name, table in sorted(cp.tables.items()):
                if table.num_rows == 0:
                    continue
                bid = make_batch_id(self.pipeline_id, cp.source, cp.topic, table_name, ranges, cp.scope)
                batch_parts = sorted(set(table.column("partition").to_pylist()))
                conn.execute(
                    """INSERT INTO sink_batch (pipeline_id, batch_id, checkpoint_id, table_name, source,
                         topic, partitions, offset_ranges, row_count, total_events, total_amount, payload)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                    (self.pipeline_id, bid, checkpoint_id, table_name, cp.source, cp.topic, batch_parts,
                     ranges_json, table.num_rows, _sum(table, "event_count"), _sum(table, "sum_amount"),
                     window_rows.encode(table)))
                batch_ids.append(bid)
                total_rows += table.num_rows
            # 4. DLQ counts
            for (partition, reason, kind), n in sorted(cp.dlq_counts.items()):
                if n:
                    conn.execute(
                        """INSERT INTO dlq_count (pipeline_id, topic, partition, reason, window_kind, count)
                           VALUES (%s, %s, %s, %s, %s, %s)
                           ON CONFLICT (pipeline_id, topic, partition, reason, window_kind)
                           DO UPDATE SET count = dlq_count.count + EXCLUDED.count""",
                        (self.pipeline_id, cp.topic, partition, reason, kind, n))
            # 5. offsets and watermarks
            for a in cp.advances:
                conn.execute(
                    """UPDATE partition_state SET next_offset = %s, max_event_time_ms = %s, watermark_ms = %s,
                         last_checkpoint_id = %s, updated_at = now()
                       WHERE pipeline_id = %s AND topic = %s AND partition = %s""",
                    (a.next_offset, a.max_event_time_ms, a.watermark_ms, checkpoint_id,
                     self.pipeline_id, cp.topic, a.partition))
            # 6. snapshots
            for partition, snap in sorted(cp.snapshots.items()):
                conn.execute(
                    """INSERT INTO window_snapshot (pipeline_id, topic, partition, checkpoint_id, window_count, payload)
                       VALUES (%s, %s, %s, %s, %s, %s)
                       ON CONFLICT (pipeline_id, topic, partition) DO UPDATE
                         SET checkpoint_id = EXCLUDED.checkpoint_id, window_count = EXCLUDED.window_count,
                             payload = EXCLUDED.payload, chunks = 0, created_at = now()""",
                    (self.pipeline_id, cp.topic, partition, checkpoint_id, snap.num_rows,
                     window_rows.encode(snap)))
            crash_point("checkpoint.inside_commit")  # everything written, COMMIT not yet sent
            return CommitResult(int(checkpoint_id), tuple(batch_ids), total_rows, 0.0,
                                checkpoint_ref=checkpoint_ref(int(checkpoint_id), int(created_us)))

        # 7. commit happens when the transaction block exits
        result: CommitResult = self._run(tx)
        return CommitResult(result.checkpoint_id, result.batch_ids, result.rows,
                            time.monotonic() - started, result.already_committed, result.checkpoint_ref)

    def pending_rows(self) -> int:
        """Rows committed but not yet acknowledged by ClickHouse (backpressure input)."""
        def tx(conn: psycopg.Connection[Any]) -> int:
            (n,) = conn.execute(
                """SELECT coalesce(sum(row_count), 0) FROM sink_batch
                   WHERE pipeline_id = %s AND status = 'pending'""", (self.pipeline_id,)).fetchone()  # type: ignore[misc]
            return int(n)
        return self._run(tx)  # type: ignore[no-any-return]

    def partition_offsets(self) -> dict[int, int]:
        def tx(conn: psycopg.Connection[Any]) -> dict[int, int]:
            return {int(p): int(o) for p, o in conn.execute(
                "SELECT partition, next_offset FROM partition_state WHERE pipeline_id = %s AND topic = %s",
                (self.pipeline_id, self.topic))}
        return self._run(tx)  # type: ignore[no-any-return]

    # ---- until-end runs ---------------------------------------------------

    def start_run(self, end_offsets: Mapping[int, int]) -> None:
        def tx(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                """INSERT INTO pipeline_run (pipeline_id, topic, end_offsets) VALUES (%s, %s, %s)
                   ON CONFLICT (pipeline_id) DO UPDATE SET topic = EXCLUDED.topic,
                     end_offsets = EXCLUDED.end_offsets, started_at = now(), finished_at = NULL""",
                (self.pipeline_id, self.topic, Jsonb({str(p): o for p, o in end_offsets.items()})))
        self._run(tx)

    def finish_run(self) -> None:
        def tx(conn: psycopg.Connection[Any]) -> None:
            conn.execute("UPDATE pipeline_run SET finished_at = now() WHERE pipeline_id = %s",
                         (self.pipeline_id,))
        self._run(tx)

    def run_reached_end(self) -> tuple[bool, bool]:
        """(every partition at or past the run's end offsets, run marked finished)."""
        def tx(conn: psycopg.Connection[Any]) -> tuple[bool, bool]:
            row = conn.execute("SELECT end_offsets, finished_at FROM pipeline_run WHERE pipeline_id = %s",
                               (self.pipeline_id,)).fetchone()
            if row is None:
                return False, False
            ends = {int(p): int(o) for p, o in row[0].items()}
            offsets = {int(p): int(o) for p, o in conn.execute(
                "SELECT partition, next_offset FROM partition_state WHERE pipeline_id = %s AND topic = %s",
                (self.pipeline_id, self.topic))}
            reached = all(offsets.get(p, 0) >= end for p, end in ends.items() if end > 0)
            return reached, row[1] is not None
        return self._run(tx)  # type: ignore[no-any-return]

    # ---- sink side --------------------------------------------------------

    def pending_batches(self, limit: int = 100) -> list[PendingBatch]:
        def tx(conn: psycopg.Connection[Any]) -> list[PendingBatch]:
            return [PendingBatch(int(r[0]), int(r[1]), r[2], int(r[3]), int(r[4]), r[5]) for r in conn.execute(
                """SELECT batch_id, checkpoint_id, table_name, row_count, insert_attempts, created_at
                   FROM sink_batch WHERE pipeline_id = %s AND status = 'pending'
                   ORDER BY checkpoint_id, table_name LIMIT %s""", (self.pipeline_id, limit))]
        return self._run(tx)  # type: ignore[no-any-return]

    def load_payload(self, batch: int) -> pa.Table:
        def tx(conn: psycopg.Connection[Any]) -> bytes:
            row = conn.execute("SELECT payload FROM sink_batch WHERE pipeline_id = %s AND batch_id = %s",
                               (self.pipeline_id, batch)).fetchone()
            if row is None or row[0] is None:
                raise InvariantViolation(f"batch {batch} has no payload")
            return bytes(row[0])
        return window_rows.decode(self._run(tx))

    def record_attempt(self, batch: int) -> None:
        """Counted before the insert, so a replay after a crash is visible in the ledger."""
        def tx(conn: psycopg.Connection[Any]) -> None:
            conn.execute("""UPDATE sink_batch SET insert_attempts = insert_attempts + 1
                            WHERE pipeline_id = %s AND batch_id = %s""", (self.pipeline_id, batch))
        self._run(tx)

    def acknowledge(self, batch: int) -> None:
        def tx(conn: psycopg.Connection[Any]) -> None:
            conn.execute("""UPDATE sink_batch SET status = 'acked', acked_at = now()
                            WHERE pipeline_id = %s AND batch_id = %s AND status = 'pending'""",
                         (self.pipeline_id, batch))
        self._run(tx)

    def sink_run_state(self) -> tuple[bool, bool]:
        """For `sink --until-idle`: (processor's until-end run finished, batches pending)."""
        def tx(conn: psycopg.Connection[Any]) -> tuple[bool, bool]:
            row = conn.execute("SELECT finished_at FROM pipeline_run WHERE pipeline_id = %s",
                               (self.pipeline_id,)).fetchone()
            pending = conn.execute(
                "SELECT 1 FROM sink_batch WHERE pipeline_id = %s AND status = 'pending' LIMIT 1",
                (self.pipeline_id,)).fetchone()
            return (row is not None and row[0] is not None), pending is not None
        return self._run(tx)  # type: ignore[no-any-return]


def _rows_of(table: pa.Table, partition: int) -> pa.Table:
    return table.filter(pc.equal(table.column("partition"), partition))


def _sum(table: pa.Table, column: str) -> int:
    value = pc.sum(table.column(column)).as_py()
    return int(value or 0)
