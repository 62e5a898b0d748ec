"""The processor loop: Kafka -> windows -> ledger checkpoints.

One micro-batch: consume up to `poll_records` records, classify each against its
partition's watermark (contract §3), fold the valid ones into window deltas, send late
and invalid ones to the DLQ. Every `batch_max_wait` (or when `batch_rows` windows changed)
a checkpoint commits, in one Postgres transaction, the changed windows as sink batches,
the offsets and watermarks that produced them and the DLQ counts. Kafka offsets are
never committed to Kafka: on assignment each partition's offset comes from the ledger,
and its window state is the local LevelDB store if that store reflects exactly the
ledger's last checkpoint of the partition, else it is rebuilt from the ledger
(docs/state-and-rebalancing.md). Snapshots of the state go to the ledger in chunks, one
chunk per loop turn, so a partition of 10M windows never stalls the loop.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from app.core import metrics
from app.core.config import DEFAULT_MAX_RECORD_BYTES, ServiceSettings
from app.core.errors import FatalError, RetryableError
from app.core.faults import crash_point
from app.core.kafka import consumer_config, end_offsets, ensure_topic
from app.core.retry import Backoff, retry_call
from app.ledger.ledger import Checkpoint, Ledger, PartitionAdvance, PartitionFenced
from app.ledger.rows import WINDOW_ROW_SCHEMA
from app.processor.batch import tables_by_kind
from app.processor.decode import InvalidEvent, decode_record
from app.processor.dlq import DeadLetters
from app.processor.leveldb_store import LevelDBOptions, LevelDBWindowStore, StateSlot
from app.processor.log_guard import LogGuard, rules_of
from app.processor.shutdown import LedgerStopTimer
from app.processor.state import InMemoryWindowStore, WindowKey, WindowStore
from app.processor.windows import KINDS, LatenessPolicy

log = structlog.get_logger("processor")

_GC_THRESHOLDS: Final = (100_000, 20, 100)  # generation 0, 1, 2 (CPython defaults: 700, 10, 10)


@dataclass(frozen=True, slots=True)
class ProcessorConfig:
    services: ServiceSettings
    policy: LatenessPolicy
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES  # contract §2: larger input values are invalid
    batch_max_wait_s: float = 1.0
    batch_rows: int = 200_000
    poll_records: int = 10_000
    snapshot_interval_s: float = 60.0
    max_pending_rows: int = 2_000_000
    max_pending_bytes: int = 1 << 30     # payload bytes awaiting ClickHouse; 0 = no byte bound
    backpressure_check_s: float = 0.5    # how often the ledger backlog is read
    lag_check_s: float = 5.0             # how often consumer lag is published
    until_end: bool = False
    dlq_partitions: int = 1
    dlq_delivery_timeout_s: float = 60.0   # a DLQ record not acknowledged by then is re-sent
    session_timeout_ms: int = 10_000
    instance_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    state_store: str = "leveldb"           # "leveldb" (state beyond RAM) or "memory"
    state_dir: Path | None = None          # None: <repo>/.data/state/<pipeline_id>
    leveldb: LevelDBOptions = field(default_factory=LevelDBOptions)
    snapshot_chunk_rows: int = 100_000


@dataclass(slots=True)
class SnapshotJob:
    """A chunked snapshot of one partition's windows as of checkpoint `checkpoint_id`,
    written one chunk per loop turn and published (made the restore base) at the end."""

    checkpoint_id: int
    chunks: Iterator[pa.Table]
    written: int = 0
    rows: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class OwnedPartition:
    """Runtime of one partition this instance owns."""

    partition: int
    generation: int
    store: WindowStore
    committed_offset: int            # ledger's next_offset as of the last commit
    next_offset: int                 # next record to read
    max_event_time_ms: int | None
    watermark_ms: int | None
    dlq_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    last_snapshot_at: float = field(default_factory=time.monotonic)
    snapshot: SnapshotJob | None = None


class Processor:
    def __init__(self, cfg: ProcessorConfig) -> None:
        self.cfg = cfg
        s = cfg.services
        self.ledger = Ledger(s.database_url, s.pipeline_id, s.events_topic)
        self.dlq = DeadLetters(s.kafka_bootstrap_servers, s.dlq_topic, s.events_topic,
                               delivery_timeout_s=cfg.dlq_delivery_timeout_s, should_stop=lambda: self.stopping)
        self.guard = LogGuard(s.kafka_bootstrap_servers, self.ledger, s.events_topic,
                              rules_of(cfg.policy, cfg.max_record_bytes), should_stop=lambda: self.stopping)
        self.consumer = Consumer(consumer_config(
            s.kafka_bootstrap_servers, s.pipeline_id,
            **{"partition.assignment.strategy": "cooperative-sticky", "client.id": cfg.instance_id,
               # never jump over records the ledger has not read: an out-of-range fetch is an error
               "auto.offset.reset": "error",
               # a SIGKILLed owner's partitions move on after this long
               "session.timeout.ms": cfg.session_timeout_ms,
               "heartbeat.interval.ms": max(500, cfg.session_timeout_ms // 5)}))
        self.owned: dict[int, OwnedPartition] = {}
        self.paused = False
        self.stopping = False
        self.end_offsets: dict[int, int] = {}
        self._last_checkpoint = time.monotonic()
        self._last_end_check = 0.0
        self._dirty_estimate = 0
        self.slot: StateSlot | None = None
        # The first error in the processing path (loop, callbacks, checkpoint): from then on
        # this process commits nothing, because its in-memory state may be ahead of what
        # was applied (e.g. offsets advanced past a record whose windows were never folded).
        self.failed: BaseException | None = None
        # after a stop request, a Postgres call that hangs is interrupted (app/processor/shutdown.py)
        self._stop_timer = LedgerStopTimer(lambda: self.ledger.busy)

    # ---- lifecycle --------------------------------------------------------

    def run(self) -> int:
        s = self.cfg.services
        # The hot path allocates a tuple and a list per window and holds hundreds of thousands
        # of them (dirty, pending and clean values) but makes no reference cycles. With the
        # default thresholds (700) the cyclic GC ran every few hundred records and its older
        # generations kept re-scanning every live window: ~30 % of the processor's CPU in a
        # 1M-event catch-up. Rarer collections still reclaim any cycle, just later.
        gc.set_threshold(*_GC_THRESHOLDS)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self._on_sigterm)
        self.guard.check_start()  # the pinned rules and input log, before anything is read
        retry_call(lambda: ensure_topic(s.kafka_bootstrap_servers, s.dlq_topic, self.cfg.dlq_partitions),
                   what="kafka_dlq_topic", should_stop=lambda: self.stopping)
        if self.cfg.until_end:
            self.end_offsets = retry_call(lambda: end_offsets(self.consumer, s.events_topic),
                                          what="kafka_end_offsets", should_stop=lambda: self.stopping)
            retry_call(lambda: self.ledger.start_run(self.end_offsets), what="postgres_start_run",
                       should_stop=lambda: self.stopping)
            log.info("until_end_target", end_offsets=self.end_offsets, records=sum(self.end_offsets.values()))
        if self.cfg.state_store == "leveldb":
            from app.core.config import DEFAULT_DATA_DIR
            self.slot = StateSlot(self.cfg.state_dir or DEFAULT_DATA_DIR / "state" / s.pipeline_id)
        self.consumer.subscribe([s.events_topic], on_assign=self._guarded(self._on_assign),
                                on_revoke=self._guarded(self._on_revoke), on_lost=self._guarded(self._on_lost))
        log.info("processor_started", instance=self.cfg.instance_id, state_store=self.cfg.state_store,
                 state_dir=None if self.slot is None else str(self.slot.path), **s.masked())
        try:
            while not self.stopping:
                self._backpressure()
                msgs = self.consumer.consume(self.cfg.poll_records, timeout=0.2)
                if msgs:
                    self._process(msgs)
                self.dlq.poll()
                if self._checkpoint_due():
                    self.checkpoint()
                # every turn, checkpoint or not: when every turn checkpoints (a short
                # --batch-max-wait, or --batch-rows reached under load) a snapshot must still
                # be published, else payloads are never prunable and restores read every batch
                self._snapshot_step()
                if self.cfg.until_end and self._reached_end():
                    log.info("until_end_reached")
                    break
            if self.stopping:
                log.info("processor_stopping")
            self.checkpoint()
        except RetryableError as e:
            self._fail(e)
            if not self.stopping:
                raise
            # A stop request cut a retry short (a service is down): a clean stop, nothing more
            # is committed; the records after the last checkpoint are read again at the next start.
        except BaseException as e:
            self._fail(e)
            raise
        finally:
            try:
                self._close()
            finally:
                self._stop_timer.disarm()
        log.info("processor_stopped", final_checkpoint=self.failed is None,
                 reason=None if self.failed is None else f"{type(self.failed).__name__}: {self.failed}")
        return 0

    def _fail(self, error: BaseException) -> None:
        """Enter the failed state: no checkpoint commits in this process any more."""
        if self.failed is not None:
            return
        self.failed = error
        uncommitted = {p: o.next_offset - o.committed_offset for p, o in self.owned.items()}
        if self.stopping and isinstance(error, RetryableError):
            log.warning("processor_stopping_without_commit", error=f"{type(error).__name__}: {error}",
                        uncommitted=uncommitted, hint="these records are read again at the next start")
        else:
            log.error("processor_error_commits_stopped", error=f"{type(error).__name__}: {error}",
                      uncommitted=uncommitted)

    def _on_sigterm(self, *_: Any) -> None:
        if self.stopping:
            return
        # no logging here: a handler may run in the middle of a write to the same stream;
        # the loop logs processor_stopping when it sees the flag
        self.stopping = True
        self._stop_timer.arm()

    def _close(self) -> None:
        try:
            # revokes: _on_revoke commits what is done, or nothing after an error
            self.consumer.close()
        except Exception as e:  # noqa: BLE001 - shutting down: say what failed, release the rest
            # (an error in our revoke callback has already put us in the failed state)
            log.warning("consumer_close_failed", error=f"{type(e).__name__}: {e}")
        for p in list(self.owned):
            self._release(p, reason="shutdown")
        if self.slot is not None:
            self.slot.release()
        self.ledger.close()

    # ---- rebalance --------------------------------------------------------

    def _guarded(self, callback: Callable[[Consumer, list[TopicPartition]], None],
                 ) -> Callable[[Consumer, list[TopicPartition]], None]:
        """librdkafka calls the rebalance callbacks from inside consume() and close(); an
        exception in one propagates from there, but the failed state must hold at once,
        before anything else runs (e.g. the revoke callback of close())."""
        def call(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            try:
                callback(consumer, partitions)
            except BaseException as e:
                self._fail(e)
                raise
        return call

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.guard.check_assignment()
        tps = []
        for tp in partitions:
            owned = retry_call(lambda p=tp.partition: self._restore(p), what="postgres_restore_partition",
                               should_stop=lambda: self.stopping)
            self.owned[tp.partition] = owned
            tps.append(TopicPartition(tp.topic, tp.partition, owned.next_offset))
        consumer.incremental_assign(tps)
        if self.paused:
            consumer.pause(tps)
        else:
            consumer.resume(tps)  # a partition paused when it was fenced comes back unpaused
        metrics.OWNED_PARTITIONS.set(len(self.owned))
        log.info("partitions_assigned", partitions=[tp.partition for tp in tps],
                 offsets={tp.partition: tp.offset for tp in tps})

    def _open_store(self, partition: int) -> WindowStore:
        if self.slot is None:
            return InMemoryWindowStore(partition)
        return LevelDBWindowStore(partition, self.slot.partition_dir(self.cfg.services.events_topic, partition),
                                  self.cfg.leveldb)

    def _restore(self, partition: int) -> OwnedPartition:
        """Claim the partition (fencing older owners), then reconcile its state with the ledger:
        the local store is used as it is only if it reflects exactly the ledger's last
        checkpoint of the partition; otherwise it is discarded and rebuilt from the ledger
        (latest snapshot + later batches). Offsets always come from the ledger."""
        started = time.monotonic()
        claim = self.ledger.claim_partition(partition, self.cfg.instance_id)
        self.guard.check_position(self.consumer, partition, claim.next_offset)
        store = self._open_store(partition)
        try:
            local = store.committed_ref()
            reused = claim.last_checkpoint is not None and local == claim.last_checkpoint
            restored_rows = 0
            if not reused:
                store.reset()
                for table in self.ledger.restore_windows(partition):
                    store.load_table(table)
                    restored_rows += table.num_rows
            watermark = self.cfg.policy.watermark_ms(claim.max_event_time_ms)
            store.drop_final(self.cfg.policy, watermark)
            if not reused and claim.last_checkpoint is not None:
                store.commit(claim.last_checkpoint, claim.next_offset)  # now exactly that checkpoint
            windows = store.open_windows()
        except BaseException:
            store.close()
            raise
        mode = "reused" if reused else "rebuilt"
        seconds = time.monotonic() - started
        metrics.STATE_RESTORES.labels(mode=mode).inc()
        metrics.STATE_RESTORE_SECONDS.labels(mode=mode).observe(seconds)
        log.info("partition_restored", partition=partition, generation=claim.owner_generation, state=mode,
                 ledger_checkpoint=claim.last_checkpoint, local_checkpoint=local, restored_rows=restored_rows,
                 next_offset=claim.next_offset, watermark_ms=watermark, windows=windows,
                 seconds=round(seconds, 3))
        return OwnedPartition(partition, claim.owner_generation, store, claim.next_offset, claim.next_offset,
                              claim.max_event_time_ms, watermark)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = [tp.partition for tp in partitions if tp.partition in self.owned]
        if revoked:
            self.checkpoint()  # what is done is committed (nothing after an error); fenced ones are dropped inside
        for p in revoked:
            self._release(p, reason="revoked")
        log.info("partitions_revoked", partitions=revoked)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another owner may already have them: drop local state, commit nothing. The local
        # store stays on disk; reconciliation decides whether it can ever be used again.
        for tp in partitions:
            self._release(tp.partition, reason="lost")
        log.warning("partitions_lost", partitions=[tp.partition for tp in partitions])

    def _release(self, partition: int, *, reason: str) -> None:
        """Forget a partition: abandon its snapshot, close its store (LevelDB stays on disk)."""
        owned = self.owned.pop(partition, None)
        if owned is None:
            return
        if owned.snapshot is not None:
            close = getattr(owned.snapshot.chunks, "close", None)
            if close is not None:
                close()
            owned.snapshot = None
        owned.store.close()
        metrics.OWNED_PARTITIONS.set(len(self.owned))
        if reason == "fenced":
            metrics.PARTITIONS_FENCED.inc()
            try:  # stop fetching it until the group assigns it to us again
                self.consumer.pause([TopicPartition(self.cfg.services.events_topic, partition)])
            except KafkaException as e:
                log.warning("pause_fenced_partition_failed", partition=partition, error=str(e))
        log.info("partition_released", partition=partition, reason=reason)

    # ---- the hot path -----------------------------------------------------

    def _process(self, msgs: list[Message]) -> None:
        policy = self.cfg.policy
        ooo = policy.max_out_of_orderness_ms
        lateness = [(k, k.size_ms, policy.allowed_lateness_ms(k), k.label) for k in KINDS]
        # An event with et + slack >= W is on time for every kind: its window starts after
        # et - size, so start + size + allowed > et + allowed >= W (contract §3). Nearly
        # every event takes this branch, which skips the per-kind lateness arithmetic.
        slack = min(allowed for _k, _size, allowed, _label in lateness)
        (k0, size0, _a0, _l0), (k1, size1, _a1, _l1) = lateness  # KINDS: minute, hour
        deltas: dict[int, dict[WindowKey, list[int]]] = {}
        owned_map = self.owned
        max_bytes = self.cfg.max_record_bytes
        # consume() returns records in runs of one partition: look the partition up per run,
        # and keep its position and watermark in locals for the run (written back at its end;
        # after an exception nothing is written back, and nothing is committed either)
        last_p = -1
        owned: OwnedPartition | None = None
        part_deltas: dict[WindowKey, list[int]] = {}
        get = part_deltas.get
        next_off = 0
        max_et: int | None = None
        wm: int | None = None
        for msg in msgs:
            err = msg.error()
            if err is not None:
                self._on_kafka_error(err)
                continue
            p = msg.partition()
            if p != last_p:
                if owned is not None:
                    owned.next_offset, owned.max_event_time_ms, owned.watermark_ms = next_off, max_et, wm
                last_p = p
                owned = owned_map.get(p)
                if owned is not None:
                    next_off, max_et, wm = owned.next_offset, owned.max_event_time_ms, owned.watermark_ms
                    part_deltas = deltas.get(p)  # type: ignore[assignment]
                    if part_deltas is None:
                        part_deltas = deltas[p] = {}
                    get = part_deltas.get
            if owned is None:
                continue  # revoked while the record was in flight
            offset = msg.offset()
            if offset < next_off:
                continue  # already counted (never expected after a seek; defensive)
            next_off = offset + 1
            try:
                ev = decode_record(msg.key(), msg.value(), max_bytes)
            except InvalidEvent as e:
                self._dead_letter(owned, msg, "invalid", None, str(e))
                continue
            et = ev.event_time
            if wm is None or et + slack >= wm:
                # the two kinds unrolled: a loop over them costs ~10 % of the hot path
                acc, country, amount = ev.account_id, ev.country, ev.amount
                key = (k0, et - et % size0, acc, country)
                d = get(key)
                if d is None:
                    part_deltas[key] = [1, amount]
                else:
                    d[0] += 1
                    d[1] += amount
                key = (k1, et - et % size1, acc, country)
                d = get(key)
                if d is None:
                    part_deltas[key] = [1, amount]
                else:
                    d[0] += 1
                    d[1] += amount
            else:
                for kind, size, allowed, label in lateness:
                    start = et - et % size
                    if start + size + allowed <= wm:
                        self._dead_letter(owned, msg, "late", label,
                                          f"{label} window [{start}, {start + size}) closed: watermark {wm}")
                        continue
                    key = (kind, start, ev.account_id, ev.country)
                    d = get(key)
                    if d is None:
                        part_deltas[key] = [1, ev.amount]
                    else:
                        d[0] += 1
                        d[1] += ev.amount
            if max_et is None or et > max_et:
                max_et = et
                wm = et - ooo
        if owned is not None:
            owned.next_offset, owned.max_event_time_ms, owned.watermark_ms = next_off, max_et, wm
        for p, part_deltas in deltas.items():
            if part_deltas:
                owned_map[p].store.fold(part_deltas)
                self._dirty_estimate += len(part_deltas)
        metrics.EVENTS_READ.labels(partition="all").inc(len(msgs))

    def _dead_letter(self, owned: OwnedPartition, msg: Message, reason: str, kind: str | None,
                     error: str) -> None:
        self.dlq.send(reason=reason, window_kind=kind, partition=owned.partition, offset=msg.offset(),
                      key=msg.key(), value=msg.value(), error=error)
        k = (reason, kind or "")
        owned.dlq_counts[k] = owned.dlq_counts.get(k, 0) + 1
        metrics.DLQ_RECORDS.labels(reason=reason, window_kind=kind or "").inc()

    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._AUTO_OFFSET_RESET:  # the log no longer holds our next offset
            raise self.guard.fetch_out_of_range(self.consumer, err,
                                                {p: o.next_offset for p, o in self.owned.items()})
        if err.fatal():
            raise FatalError(f"Kafka fatal error: {err}")
        log.warning("kafka_error", error=str(err), retriable=err.retriable())

    # ---- checkpoint -------------------------------------------------------

    def _checkpoint_due(self) -> bool:
        return (time.monotonic() - self._last_checkpoint >= self.cfg.batch_max_wait_s
                or self._dirty_estimate >= self.cfg.batch_rows)

    def checkpoint(self) -> None:
        """Emit changed windows and commit them with their offsets (see Ledger.commit).

        Local state and ledger: the pending values are written to LevelDB first, marked
        "prepared" (LevelDB may now be ahead of the ledger); the ledger commit is the
        commit point; then LevelDB is marked with the committed checkpoint. A crash
        anywhere in between leaves a store that reconciliation will not trust.
        A partition fenced by a newer owner aborts the whole commit: its state is
        dropped and the other partitions are committed again, at once.

        After an error in the processing path (self.failed) it commits nothing: not from
        the loop, not from the revoke callback while the consumer closes.
        """
        if self.failed is not None:
            log.warning("checkpoint_refused_after_error", error=f"{type(self.failed).__name__}: {self.failed}")
            return
        self._last_checkpoint = time.monotonic()
        self._dirty_estimate = 0
        advances, emitted, dlq_counts = [], [], {}
        for owned in self.owned.values():
            table = owned.store.take_dirty_table()
            if owned.next_offset == owned.committed_offset and not table.num_rows:
                continue
            emitted.append(table)
            advances.append(PartitionAdvance(owned.partition, owned.committed_offset, owned.next_offset,
                                             owned.max_event_time_ms, owned.watermark_ms, owned.generation))
            for (reason, kind), n in owned.dlq_counts.items():
                dlq_counts[(owned.partition, reason, kind)] = n
        if not advances:
            return
        cp = Checkpoint(source="live", topic=self.cfg.services.events_topic, advances=tuple(advances),
                        tables=tables_by_kind(emitted), dlq_counts=dlq_counts)
        crash_point("checkpoint.before_dlq_flush")
        # Every DLQ record this checkpoint counts is acknowledged by Kafka before the ledger
        # counts it; failed ones are sent again until they are (the checkpoint waits).
        retry_call(self.dlq.flush, what="kafka_dlq_flush", should_stop=lambda: self.stopping)
        for a in advances:
            self.owned[a.partition].store.prepare(a.next_offset)
        crash_point("state.after_local_before_commit")
        crash_point("checkpoint.before_commit")
        try:
            result = retry_call(lambda: self.ledger.commit(cp), what="postgres_checkpoint_commit",
                                backoff=Backoff(0.2, 5.0), should_stop=lambda: self.stopping)
        except PartitionFenced as e:
            for a in advances:
                self.owned[a.partition].store.abort()
            log.warning("checkpoint_fenced", partitions=list(e.partitions), error=str(e))
            for p in e.partitions:
                self._release(p, reason="fenced")
            self.checkpoint()  # the partitions still ours
            return
        crash_point("checkpoint.after_commit")
        crash_point("state.after_commit_before_local")
        assert result.checkpoint_ref is not None
        now = time.monotonic()
        for a in advances:
            owned = self.owned[a.partition]
            owned.store.commit(result.checkpoint_ref, a.next_offset)
            owned.committed_offset = a.next_offset
            owned.dlq_counts.clear()
            owned.store.drop_final(self.cfg.policy, owned.watermark_ms)
            if owned.snapshot is None and now - owned.last_snapshot_at >= self.cfg.snapshot_interval_s:
                # the store holds exactly this checkpoint now; the chunks see this view only
                owned.snapshot = SnapshotJob(result.checkpoint_id,
                                             owned.store.snapshot_chunks(self.cfg.snapshot_chunk_rows))
            metrics.WATERMARK_MS.labels(partition=str(a.partition)).set(owned.watermark_ms or 0)
        metrics.CHECKPOINTS.labels(source="live").inc()
        metrics.CHECKPOINT_SECONDS.observe(result.seconds)
        open_windows = [o.store.open_windows() for o in self.owned.values()]
        for k in KINDS:
            metrics.OPEN_WINDOWS.labels(window_kind=k.label).set(sum(w[k.label] for w in open_windows))
        log.info("checkpoint_committed", checkpoint_id=result.checkpoint_id, records=cp.records,
                 rows=result.rows, batches=len(result.batch_ids), partitions=len(advances),
                 dlq=sum(dlq_counts.values()), seconds=round(result.seconds, 4),
                 already_committed=result.already_committed)

    def _snapshot_step(self) -> None:
        """Advance at most one partition's snapshot by one chunk (or publish it)."""
        for owned in self.owned.values():
            job = owned.snapshot
            if job is not None:
                break
        else:
            return
        p = owned.partition
        table = next(job.chunks, None)
        if table is None and job.written == 0:
            table = WINDOW_ROW_SCHEMA.empty_table()  # an empty state is one empty chunk
        if table is not None:
            retry_call(lambda: self.ledger.write_snapshot_chunk(p, job.checkpoint_id, job.written, table),
                       what="postgres_snapshot_chunk", should_stop=lambda: self.stopping)
            job.written += 1
            job.rows += table.num_rows
            return
        try:
            published = retry_call(lambda: self.ledger.publish_snapshot(p, job.checkpoint_id, job.written,
                                                                        owned.generation),
                                   what="postgres_publish_snapshot", should_stop=lambda: self.stopping)
        except PartitionFenced as e:
            log.warning("snapshot_fenced", partition=p, error=str(e))
            self._release(p, reason="fenced")
            return
        owned.snapshot = None
        owned.last_snapshot_at = time.monotonic()
        metrics.SNAPSHOTS.inc()
        log.info("snapshot_published", partition=p, checkpoint_id=job.checkpoint_id, chunks=job.written,
                 windows=job.rows, published=published, seconds=round(owned.last_snapshot_at - job.started, 3))

    # ---- backpressure and end of run --------------------------------------

    def _backpressure(self) -> None:
        """Pause reading while ClickHouse is behind, instead of buffering: when the ledger's
        unacknowledged work (rows, or payload bytes) exceeds its bound, every owned
        partition is paused (the records wait in Kafka); at half the bound they resume.
        Checked at most every `backpressure_check_s`; also publishes the backlog and
        the consumer lag (end offset - next offset) of each owned partition."""
        from app.ledger.insert_groups import pending_work  # the sink-side backlog query

        if not self.owned:
            return
        now = time.monotonic()
        # throttle state lives on the instance, created on first use (keeps the loop untouched)
        if now < getattr(self, "_backpressure_next_s", 0.0):
            return
        self._backpressure_next_s = now + self.cfg.backpressure_check_s
        cfg = self.cfg
        work = retry_call(lambda: pending_work(self.ledger), what="postgres_pending_work",
                          should_stop=lambda: self.stopping)
        metrics.PENDING_ROWS.set(work.rows)
        metrics.PENDING_BYTES.set(work.payload_bytes)
        over = work.rows > cfg.max_pending_rows or (cfg.max_pending_bytes > 0
                                                    and work.payload_bytes > cfg.max_pending_bytes)
        drained = work.rows <= cfg.max_pending_rows // 2 and (cfg.max_pending_bytes == 0
                                                              or work.payload_bytes <= cfg.max_pending_bytes // 2)
        topic = cfg.services.events_topic
        tps = [TopicPartition(topic, p) for p in self.owned]
        if not self.paused and over:
            self.consumer.pause(tps)
            self.paused = True
            metrics.BACKPRESSURE_PAUSES.inc()
            log.warning("backpressure_paused", pending_rows=work.rows, pending_bytes=work.payload_bytes,
                        max_pending_rows=cfg.max_pending_rows, max_pending_bytes=cfg.max_pending_bytes,
                        oldest_pending_s=round(work.oldest_age_s, 1), partitions=sorted(self.owned))
        elif self.paused and drained:
            self.consumer.resume(tps)
            self.paused = False
            log.info("backpressure_resumed", pending_rows=work.rows, pending_bytes=work.payload_bytes,
                     partitions=sorted(self.owned))
        metrics.PAUSED_PARTITIONS.set(len(tps) if self.paused else 0)
        if now >= getattr(self, "_lag_next_s", 0.0):
            self._lag_next_s = now + cfg.lag_check_s
            for p, owned in self.owned.items():
                try:
                    # fetch responses keep the cached end offset fresh, except while paused
                    _low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=1.0,
                                                                     cached=not self.paused)
                except KafkaException as e:
                    log.debug("consumer_lag_unavailable", partition=p, error=str(e))
                    continue
                if high is not None and high >= 0:
                    metrics.CONSUMER_LAG.labels(partition=str(p)).set(max(0, high - owned.next_offset))

    def _reached_end(self) -> bool:
        """Every partition of the run at or past its end offset in the ledger, whoever
        processed it: with several instances, each exits once all of them are there."""
        if any(o.next_offset < self.end_offsets.get(p, 0) for p, o in self.owned.items()):
            return False
        now = time.monotonic()
        if now - self._last_end_check < 0.5:
            return False  # our partitions are done; others may not be: ask the ledger twice a second
        self._last_end_check = now
        self.checkpoint()
        reached, finished = retry_call(self.ledger.run_reached_end, what="postgres_run_state",
                                       should_stop=lambda: self.stopping)
        if reached and not finished:
            retry_call(self.ledger.finish_run, what="postgres_finish_run", should_stop=lambda: self.stopping)
        return reached

