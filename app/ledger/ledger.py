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
from app.ledger import rows as window_rows
from app.ledger.identity import batch_id as make_batch_id

log = structlog.get_logger("ledger")


@dataclass(frozen=True, slots=True)
class PartitionClaim:
    """What a new owner of a partition starts from."""

    partition: int
    owner_generation: int
    next_offset: int
    max_event_time_ms: int | None


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

    # ---- connection -------------------------------------------------------

    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = psycopg.connect(self.url, connect_timeout=10)
            except psycopg.OperationalError as e:
                raise RetryableError(f"Postgres unreachable at {mask_url(self.url)}: "
                                     f"{str(e).strip().splitlines()[0] if str(e).strip() else e}") from e
        return self._conn

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None

    def _run(self, fn: Any) -> Any:
        """Run fn(conn) in one transaction; connection loss becomes RetryableError."""
        conn = self.conn()
        try:
            with conn.transaction():
                return fn(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            self.close()
            raise RetryableError(f"Postgres error: {e}") from e

    # ---- processor side ---------------------------------------------------

    def claim_partition(self, partition: int, owner: str) -> PartitionClaim:
        """Take ownership: bump the owner generation so an older owner's commits fail."""
        def tx(conn: psycopg.Connection[Any]) -> PartitionClaim:
            row = conn.execute(
                """INSERT INTO partition_state (pipeline_id, topic, partition, owner_generation, owner)
                   VALUES (%s, %s, %s, 1, %s)
                   ON CONFLICT (pipeline_id, topic, partition) DO UPDATE
                     SET owner_generation = partition_state.owner_generation + 1,
                         owner = EXCLUDED.owner, updated_at = now()
                   RETURNING owner_generation, next_offset, max_event_time_ms""",
                (self.pipeline_id, self.topic, partition, owner)).fetchone()
            assert row is not None
            return PartitionClaim(partition, int(row[0]), int(row[1]),
                                  None if row[2] is None else int(row[2]))
        return self._run(tx)  # type: ignore[no-any-return]

    def restore_windows(self, partition: int) -> Iterator[pa.Table]:
        """The partition's windows as committed: its latest snapshot, then every batch
        committed after it, in checkpoint order (each row a window's full value)."""
        def tx(conn: psycopg.Connection[Any]) -> list[bytes]:
            snap = conn.execute(
                """SELECT checkpoint_id, payload FROM window_snapshot
                   WHERE pipeline_id = %s AND topic = %s AND partition = %s""",
                (self.pipeline_id, self.topic, partition)).fetchone()
            since = -1
            payloads: list[bytes] = []
            if snap is not None:
                since = int(snap[0])
                payloads.append(bytes(snap[1]))
            for (payload,) in conn.execute(
                    """SELECT payload FROM sink_batch
                       WHERE pipeline_id = %s AND topic = %s AND source = 'live'
                         AND checkpoint_id > %s AND %s = ANY(partitions)
                       ORDER BY checkpoint_id, table_name""",
                    (self.pipeline_id, self.topic, since, partition)):
                payloads.append(bytes(payload))
            return payloads
        for payload in self._run(tx):
            table = window_rows.decode(payload)
            yield table.filter(pc.equal(table.column("partition"), partition))

    def commit(self, cp: Checkpoint) -> CommitResult:
        """Commit one checkpoint atomically. The steps, in order:

        1. lock the partitions' ledger rows and fence: each must still be owned by our
           generation and stand at the checkpoint's from_offset (a row already at our
           next_offset means a retry of a commit that did land: report it, change nothing);
        2. allocate the checkpoint id, which is the version of every row it emits;
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
            current = {int(r[0]): (int(r[1]), int(r[2])) for r in conn.execute(
                """SELECT partition, owner_generation, next_offset FROM partition_state
                   WHERE pipeline_id = %s AND topic = %s AND partition = ANY(%s)
                   ORDER BY partition FOR UPDATE""",
                (self.pipeline_id, self.topic, parts))}
            landed = 0
            for a in cp.advances:
                if a.partition not in current:
                    raise InvariantViolation(f"partition {a.partition} has no ledger row (never claimed)")
                generation, next_offset = current[a.partition]
                if generation != a.owner_generation:
                    raise OwnershipLost(f"partition {a.partition} is owned by generation {generation}, "
                                        f"not {a.owner_generation}")
                if next_offset == a.next_offset and a.next_offset != a.from_offset:
                    landed += 1
                elif next_offset != a.from_offset:
                    raise InvariantViolation(f"partition {a.partition}: ledger at offset {next_offset}, "
                                             f"checkpoint starts at {a.from_offset}")
            if landed:
                if landed != len(cp.advances):
                    raise InvariantViolation("checkpoint partly landed: impossible in one transaction")
                return CommitResult(-1, (), 0, 0.0, already_committed=True)
            # 2. the checkpoint id = version
            (checkpoint_id,) = conn.execute(
                """INSERT INTO ledger_checkpoint (pipeline_id, source, topic, partitions, records)
                   VALUES (%s, %s, %s, %s, %s) RETURNING checkpoint_id""",
                (self.pipeline_id, cp.source, cp.topic, parts, cp.records)).fetchone()  # type: ignore[misc]
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
                             payload = EXCLUDED.payload, created_at = now()""",
                    (self.pipeline_id, cp.topic, partition, checkpoint_id, snap.num_rows,
                     window_rows.encode(snap)))
            crash_point("checkpoint.inside_commit")  # everything written, COMMIT not yet sent
            return CommitResult(int(checkpoint_id), tuple(batch_ids), total_rows, 0.0)

        # 7. commit happens when the transaction block exits
        result: CommitResult = self._run(tx)
        return CommitResult(result.checkpoint_id, result.batch_ids, result.rows,
                            time.monotonic() - started, result.already_committed)

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


def _sum(table: pa.Table, column: str) -> int:
    value = pc.sum(table.column(column)).as_py()
    return int(value or 0)
