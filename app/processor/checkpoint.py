"""The checkpoint: one numbered sequence that makes the processor's progress durable.

`Checkpointer.commit` runs these steps, in this order (the code carries the same numbers);
after each, what a crash leaves and what the next owner replays:

0. collect: per owned partition with progress, its changed windows (they become the
   store's pending values), its input range [committed_offset, next_offset), watermark
   and DLQ counts. Nothing is written yet.
1. DLQ acknowledged: every DLQ record this checkpoint counts is acknowledged by Kafka
   (failed ones are sent again until they are). Crash after: the ledger is unchanged; the
   records since the last checkpoint are read again and their DLQ records sent again (the
   topic may hold a record twice, with the same identity; the ledger counts it once).
2. prepare the local store: the pending values written locally, marked "prepared" (ahead of
   the ledger). Crash after: restore does not trust a prepared store; it rebuilds the
   partition from the ledger, and the records are read again.
3. the Postgres transaction, `Ledger.commit` (app/ledger/ledger.py, its own numbered
   steps): THE commit point of windows, offsets, watermarks and DLQ counts together. A
   partition fenced by a newer owner aborts all of it: pending values become dirty again,
   the fenced partitions are released, the others are committed again at once. Crash
   after: the ledger holds the checkpoint, the store is still "prepared": restore rebuilds
   it from the ledger, reading resumes after the checkpoint; nothing is read twice.
4. local commit: the store marked as exactly this checkpoint; the partition's committed
   offset moves, its DLQ counts restart, windows final under its watermark are dropped.
   Crash after: restore reuses the store as it is.
5. snapshot: a partition due for one starts a snapshot of this checkpoint's view
   (processor/snapshots.py writes it one chunk per loop turn and publishes it). Crash
   before it is published: the previous snapshot stays the restore base, and the orphan
   chunks are deleted by the next publish.

6. advisory, after the commit point and apart from it: the committed next offsets are
   published to the Kafka consumer group (processor/group_offsets.py) for Kafka's lag
   tools. Never read back: a crash before or after it changes nothing the pipeline reads.

After an error anywhere in the processing path nothing commits any more (`failed()`): not
from the loop, not from the revoke callback while the consumer closes, because the
in-memory state may be ahead of what was applied.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace

import pyarrow as pa
import structlog

from app.core import metrics
from app.core.faults import crash_point
from app.core.retry import Backoff, retry_call
from app.ledger.ledger import Checkpoint, Ledger, PartitionAdvance, PartitionFenced
from app.processor.batch import tables_by_kind
from app.processor.config import ProcessorConfig
from app.processor.dlq import DeadLetters
from app.processor.group_offsets import GroupOffsets
from app.processor.ownership import Ownership
from app.processor.partition import OwnedPartition
from app.processor.settled import settled_totals
from app.processor.snapshots import Snapshots
from app.processor.windows import KINDS

log = structlog.get_logger("processor")


class Checkpointer:
    def __init__(self, cfg: ProcessorConfig, ledger: Ledger, dlq: DeadLetters, ownership: Ownership,
                 snapshots: Snapshots, *, failed: Callable[[], BaseException | None],
                 should_stop: Callable[[], bool], group_offsets: GroupOffsets | None = None) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.dlq = dlq
        self.ownership = ownership
        self.snapshots = snapshots
        self.failed = failed
        self.should_stop = should_stop
        self.group_offsets = group_offsets
        self.last_commit_s = time.monotonic()
        self.dirty_estimate = 0          # windows folded since the last checkpoint (upper bound)
        self._counted = 0                # dirty_estimate when it was last made exact

    def due(self) -> bool:
        if time.monotonic() - self.last_commit_s >= self.cfg.batch_max_wait_s:
            return True
        if self.dirty_estimate < self.cfg.batch_rows or self.dirty_estimate - self._counted < self.cfg.batch_rows // 4:
            return False
        # the estimate counts folded (event, kind) pairs; the bound is on distinct windows:
        # group the deltas (work the checkpoint reuses) and count again, at most every
        # batch_rows / 4 new pairs
        self.dirty_estimate = self._counted = sum(o.store.deltas.distinct() for o in self.ownership.owned.values())
        return self.dirty_estimate >= self.cfg.batch_rows

    def commit(self) -> None:
        """Steps 0-6 of the module docstring; nothing at all after an error."""
        failed = self.failed()
        if failed is not None:
            log.warning("checkpoint_refused_after_error", error=f"{type(failed).__name__}: {failed}")
            return
        self.last_commit_s = time.monotonic()
        self.dirty_estimate = self._counted = 0
        steps = metrics.StepTimer()
        owned = self.ownership.owned
        # 0. collect
        advances: list[PartitionAdvance] = []
        emitted: list[pa.Table] = []
        dlq_counts: dict[tuple[int, str, str], int] = {}
        for o in owned.values():
            table = o.store.take_dirty_table()
            if o.next_offset == o.committed_offset and not table.num_rows:
                continue
            emitted.append(table)
            advances.append(PartitionAdvance(o.partition, o.committed_offset, o.next_offset, o.max_event_time_ms,
                                             o.watermark_ms, o.generation))
            for (reason, kind), n in o.dlq_counts.items():
                dlq_counts[(o.partition, reason, kind)] = n
        if not advances:
            return
        cp = Checkpoint(topic=self.cfg.services.events_topic, advances=tuple(advances),
                        tables=tables_by_kind(emitted), dlq_counts=dlq_counts,
                        kafka_ts_ms=kafka_time_range(owned[a.partition] for a in advances))
        steps.lap("collect")
        # 1. DLQ acknowledged
        crash_point("checkpoint.before_dlq_flush")
        retry_call(self.dlq.flush, what="kafka_dlq_flush", should_stop=self.should_stop)
        steps.lap("dlq_flush")
        # 2. prepare the local store
        for a in advances:
            owned[a.partition].store.prepare(a.next_offset)
        # what step 4 will drop as final, summed for the ledger's settled totals (processor/settled.py)
        cp = replace(cp, settled=settled_totals(((owned[a.partition].store, a.watermark_ms) for a in advances),
                                                self.cfg.policy))
        steps.lap("prepare")
        crash_point("state.after_local_before_commit")
        crash_point("checkpoint.before_commit")
        # 3. the Postgres transaction
        try:
            result = retry_call(lambda: self.ledger.commit(cp), what="postgres_checkpoint_commit",
                                backoff=Backoff(0.2, 5.0), should_stop=self.should_stop)
        except PartitionFenced as e:
            for a in advances:
                owned[a.partition].store.abort()
            log.warning("checkpoint_fenced", partitions=list(e.partitions), error=str(e))
            for p in e.partitions:
                self.ownership.release(p, "fenced")
            self.commit()  # the partitions still ours
            return
        steps.lap("ledger_commit")
        crash_point("checkpoint.after_commit")
        crash_point("state.after_commit_before_local")
        ref = result.checkpoint_ref
        assert ref is not None
        # 4. local commit
        for a in advances:
            o = owned[a.partition]
            o.store.commit(ref, a.next_offset)
            o.committed_offset = a.next_offset
            o.dlq_counts.clear()
            o.kafka_ts_min = o.kafka_ts_max = None
            o.store.drop_final(self.cfg.policy, o.watermark_ms)
            metrics.WATERMARK_MS.labels(partition=str(a.partition)).set(o.watermark_ms or 0)
        steps.lap("local_commit")
        # 5. snapshot
        now = time.monotonic()
        for a in advances:
            self.snapshots.start_if_due(owned[a.partition], result.checkpoint_id, now)
        steps.lap("snapshot")
        # 6. advisory: the group's offsets for Kafka's lag tools, never read back
        if self.group_offsets is not None:
            self.group_offsets.publish(advances)
            steps.lap("group_offsets")
        metrics.CHECKPOINTS.labels(source="live").inc()
        metrics.CHECKPOINT_SECONDS.observe(result.seconds)
        metrics.count_folded(cp.records, dlq_counts)  # once per process: a landed retry was not counted yet
        open_windows = {p: o.store.open_windows() for p, o in owned.items()}
        for k in KINDS:
            metrics.OPEN_WINDOWS.labels(window_kind=k.label).set(sum(w[k.label] for w in open_windows.values()))
        for p, w in open_windows.items():
            metrics.STATE_KEYS.labels(partition=str(p)).set(sum(w.values()))
        log.info("checkpoint_committed", checkpoint_id=result.checkpoint_id, records=cp.records,
                 rows=result.rows, batches=len(result.batch_ids), partitions=len(advances),
                 dlq=sum(dlq_counts.values()), seconds=round(result.seconds, 4),
                 already_committed=result.already_committed)


def kafka_time_range(partitions: Iterable[OwnedPartition]) -> tuple[int, int] | None:
    """The Kafka timestamps of the records a checkpoint covers (min, max), if the broker gave any."""
    seen = [(o.kafka_ts_min, o.kafka_ts_max) for o in partitions if o.kafka_ts_min is not None]
    if not seen:
        return None
    return min(lo for lo, _ in seen), max(hi for _, hi in seen if hi is not None)
