"""The Postgres ledger: the single commit point of the pipeline (contract §6).

`Ledger` holds one connection and runs every statement through `transaction(fn)`: fn(conn)
inside one Postgres transaction, a lost connection translated to RetryableError. The
processor's side is methods here (claim a partition, fencing older owners; restore its
windows; write snapshots; commit a checkpoint). The other sides are free functions over
`transaction` in modules named for what they hold: `sink_groups.py` (the sink),
`backfill_runs.py` (backfill), `retention.py`, `backlog.py` (what backpressure bounds),
`pipeline_rules.py` (what a pipeline id is pinned to). Every row is scoped by
pipeline_id; every statement uses bound parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeAlias, TypeVar

import psycopg
import pyarrow as pa
import structlog

from app.core.config import mask_url, psycopg_conninfo
from app.core.errors import InvariantViolation, RetryableError
from app.core.faults import crash_point
from app.ledger import pipeline_rules
from app.ledger import rows as window_rows
from app.ledger.batches import insert_sink_batch
from app.ledger.checkpoint import (
    Checkpoint,
    CommitResult,
    PartitionAdvance,
    PartitionClaim,
    PartitionFenced,
    checkpoint_ref,
)
from app.ledger.identity import batch_id as make_batch_id
from app.ledger.settled_write import add_settled

__all__ = ["Checkpoint", "CommitResult", "Connection", "Ledger", "PartitionAdvance", "PartitionClaim",
           "PartitionFenced", "single_row"]

log = structlog.get_logger("ledger")

SOURCE = "live"       # ledger_checkpoint / sink_batch source of the processor's rows
CONNECT_TIMEOUT_S = 5  # libpq's connect_timeout (whole seconds): a dead or hung server fails within this

Connection: TypeAlias = psycopg.Connection[Any]
T = TypeVar("T")


def single_row(cur: psycopg.Cursor[Any]) -> Any:
    """The row of a statement that always returns one (an aggregate, INSERT ... RETURNING)."""
    row = cur.fetchone()
    if row is None:
        raise InvariantViolation("a statement that always returns a row returned none")
    return row


class Ledger:
    def __init__(self, url: str, pipeline_id: str, topic: str) -> None:
        self.url = psycopg_conninfo(url)
        self.pipeline_id = pipeline_id
        self.topic = topic
        self._conn: Connection | None = None
        # the processor's rules and input log (app/processor/log_guard.py): each commit records
        # them as the pipeline's first checkpoint or requires the recorded ones
        self.pin: pipeline_rules.PipelinePin | None = None
        self._calls = 0  # > 0 while a Postgres round trip (connect or transaction) is in progress

    # ---- connection -------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Inside a Postgres call: what a stop timer may interrupt (app/processor/shutdown.py)."""
        return self._calls > 0

    def conn(self) -> Connection:
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

    def transaction(self, fn: Callable[[Connection], T]) -> T:
        """fn(conn) in one transaction: committed when fn returns, rolled back when it raises.
        Connection loss becomes RetryableError. A call interrupted mid-statement (e.g. by a
        stop request) leaves the connection in an unknown state: it is closed, and the next
        call connects afresh."""
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

    def pinned(self) -> pipeline_rules.PinnedPipeline | None:
        """The rules and input log the pipeline id is pinned to, as its first checkpoint
        recorded them (app/ledger/pipeline_rules.py); None before its first checkpoint."""
        return self.transaction(lambda conn: pipeline_rules.select_pinned(conn, self.pipeline_id))

    # ---- processor side ---------------------------------------------------

    def claim_partition(self, partition: int, owner: str) -> PartitionClaim:
        """Take ownership: bump the owner generation so an older owner's commits fail."""
        def tx(conn: Connection) -> PartitionClaim:
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
        return self.transaction(tx)

    def write_snapshot_chunk(self, partition: int, checkpoint_id: int, chunk: int, table: pa.Table) -> None:
        """One bounded piece of a partition's snapshot; invisible until publish_snapshot."""
        def tx(conn: Connection) -> None:
            conn.execute(
                """INSERT INTO window_snapshot_chunk (pipeline_id, topic, partition, checkpoint_id, chunk,
                     window_count, payload) VALUES (%s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (pipeline_id, topic, partition, checkpoint_id, chunk) DO UPDATE
                     SET window_count = EXCLUDED.window_count, payload = EXCLUDED.payload""",
                (self.pipeline_id, self.topic, partition, checkpoint_id, chunk, table.num_rows,
                 window_rows.encode(table)))
        self.transaction(tx)

    def publish_snapshot(self, partition: int, checkpoint_id: int, chunks: int, owner_generation: int) -> bool:
        """Make the chunks written for `checkpoint_id` the partition's snapshot, atomically,
        and delete every other chunk of the partition. Fenced like a commit: only the
        current owner may publish (a zombie's snapshot is still correct for its
        checkpoint, but deleting chunks a restoring owner is reading would not be).
        Returns False when a snapshot of the same or a later checkpoint is already there."""
        def tx(conn: Connection) -> bool:
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
            (written, windows) = single_row(conn.execute(
                """SELECT count(*), coalesce(sum(window_count), 0) FROM window_snapshot_chunk
                   WHERE pipeline_id = %s AND topic = %s AND partition = %s AND checkpoint_id = %s""",
                (self.pipeline_id, self.topic, partition, checkpoint_id)))
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
            keep = checkpoint_id if published is not None else single_row(conn.execute(
                """SELECT checkpoint_id FROM window_snapshot
                   WHERE pipeline_id = %s AND topic = %s AND partition = %s""",
                (self.pipeline_id, self.topic, partition)))[0]
            conn.execute(
                """DELETE FROM window_snapshot_chunk
                   WHERE pipeline_id = %s AND topic = %s AND partition = %s AND checkpoint_id <> %s""",
                (self.pipeline_id, self.topic, partition, keep))
            return published is not None
        return self.transaction(tx)

    def commit(self, cp: Checkpoint) -> CommitResult:
        """Commit one checkpoint atomically. The steps, in order:

        1. lock the partitions' ledger rows and fence: each must still be owned by our
           generation and stand at the checkpoint's from_offset (a row already at our
           next_offset means a retry of a commit that did land: report it, change nothing);
        2. allocate the checkpoint id, which is the version of every row it emits; the
           pipeline's first checkpoint records its rules and input log (`self.pin`), every
           later one must carry the same (app/ledger/pipeline_rules.py);
        3. insert one sink batch per rollup table, id derived from the offset ranges;
        4. add the DLQ counts, and the totals of the windows it drops as final (settled_write.py);
        5. advance next_offset / watermark of every partition covered;
        6. commit. Until then nothing is visible to the sink; after it, all of it is.

        Snapshots of the open windows are not part of a commit: the processor writes them in
        chunks between checkpoints and publishes them with `publish_snapshot`.
        """
        started = time.monotonic()

        def tx(conn: Connection) -> CommitResult:
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
            (checkpoint_id, created_us) = single_row(conn.execute(
                """INSERT INTO ledger_checkpoint (pipeline_id, source, topic, partitions, records)
                   VALUES (%s, %s, %s, %s, %s)
                   RETURNING checkpoint_id, (extract(epoch FROM created_at) * 1000000)::bigint""",
                (self.pipeline_id, SOURCE, cp.topic, parts, cp.records)))
            if self.pin is not None:
                pipeline_rules.check_or_record(conn, self.pipeline_id, self.pin, int(checkpoint_id))
            # 3. sink batches
            ranges = cp.offset_ranges
            batch_ids: list[int] = []
            total_rows = 0
            for table_name, table in sorted(cp.tables.items()):
                if table.num_rows == 0:
                    continue
                bid = make_batch_id(self.pipeline_id, SOURCE, cp.topic, table_name, ranges)
                if not insert_sink_batch(conn, pipeline_id=self.pipeline_id, batch_id=bid,
                                         checkpoint_id=int(checkpoint_id), table_name=table_name, source=SOURCE,
                                         topic=cp.topic, rows=table, offset_ranges=ranges,
                                         kafka_ts_ms=cp.kafka_ts_ms):
                    # the fence (step 1) makes every range new: an existing id is a broken ledger
                    raise InvariantViolation(f"batch {bid} of {table_name} {ranges} is already in the ledger")
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
            add_settled(conn, self.pipeline_id, int(checkpoint_id), cp.settled)  # 4b. windows final now
            # 5. offsets and watermarks
            for a in cp.advances:
                conn.execute(
                    """UPDATE partition_state SET next_offset = %s, max_event_time_ms = %s, watermark_ms = %s,
                         last_checkpoint_id = %s, updated_at = now()
                       WHERE pipeline_id = %s AND topic = %s AND partition = %s""",
                    (a.next_offset, a.max_event_time_ms, a.watermark_ms, checkpoint_id,
                     self.pipeline_id, cp.topic, a.partition))
            crash_point("checkpoint.inside_commit")  # everything written, COMMIT not yet sent
            return CommitResult(int(checkpoint_id), tuple(batch_ids), total_rows, 0.0,
                                checkpoint_ref=checkpoint_ref(int(checkpoint_id), int(created_us)))

        # 6. commit happens when the transaction block exits
        result: CommitResult = self.transaction(tx)
        return CommitResult(result.checkpoint_id, result.batch_ids, result.rows,
                            time.monotonic() - started, result.already_committed, result.checkpoint_ref)

    def partition_offsets(self) -> dict[int, int]:
        def tx(conn: Connection) -> dict[int, int]:
            return {int(p): int(o) for p, o in conn.execute(
                "SELECT partition, next_offset FROM partition_state WHERE pipeline_id = %s AND topic = %s",
                (self.pipeline_id, self.topic))}
        return self.transaction(tx)

