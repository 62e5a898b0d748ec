"""The processor loop: Kafka -> windows -> ledger checkpoints.

One micro-batch: consume up to `poll_records` records, classify each against its
partition's watermark (contract §3), fold the valid ones into window deltas, send late
and invalid ones to the DLQ. Every `batch_max_wait` (or when `batch_rows` windows changed)
a checkpoint commits, in one Postgres transaction, the changed windows as sink batches,
the offsets and watermarks that produced them and the DLQ counts. Kafka offsets are
never committed to Kafka: on assignment each partition is restored from the ledger.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from app.core import metrics
from app.core.config import ServiceSettings
from app.core.errors import FatalError, OwnershipLost, RetryableError
from app.core.faults import crash_point
from app.core.kafka import consumer_config, end_offsets, ensure_topic
from app.core.retry import Backoff, retry_call
from app.ledger.ledger import Checkpoint, Ledger, PartitionAdvance
from app.ledger.rows import WindowRow, iter_rows, rows_to_table
from app.processor.decode import InvalidEvent, decode_event
from app.processor.dlq import DeadLetters
from app.processor.state import InMemoryWindowStore, WindowKey, WindowStore
from app.processor.windows import KINDS, LatenessPolicy, WindowKind

log = structlog.get_logger("processor")


@dataclass(frozen=True, slots=True)
class ProcessorConfig:
    services: ServiceSettings
    policy: LatenessPolicy
    batch_max_wait_s: float = 1.0
    batch_rows: int = 200_000
    poll_records: int = 10_000
    snapshot_interval_s: float = 60.0
    max_pending_rows: int = 2_000_000
    until_end: bool = False
    dlq_partitions: int = 1
    session_timeout_ms: int = 10_000
    instance_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")


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


class Processor:
    def __init__(self, cfg: ProcessorConfig) -> None:
        self.cfg = cfg
        s = cfg.services
        self.ledger = Ledger(s.database_url, s.pipeline_id, s.events_topic)
        self.dlq = DeadLetters(s.kafka_bootstrap_servers, s.dlq_topic, s.events_topic)
        self.consumer = Consumer(consumer_config(
            s.kafka_bootstrap_servers, s.pipeline_id,
            **{"partition.assignment.strategy": "cooperative-sticky", "client.id": cfg.instance_id,
               # a SIGKILLed owner's partitions move on after this long
               "session.timeout.ms": cfg.session_timeout_ms,
               "heartbeat.interval.ms": max(500, cfg.session_timeout_ms // 5)}))
        self.owned: dict[int, OwnedPartition] = {}
        self.paused = False
        self.stopping = False
        self.end_offsets: dict[int, int] = {}
        self._last_checkpoint = time.monotonic()
        self._dirty_estimate = 0

    # ---- lifecycle --------------------------------------------------------

    def run(self) -> int:
        s = self.cfg.services
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self._on_sigterm)
        retry_call(lambda: ensure_topic(s.kafka_bootstrap_servers, s.dlq_topic, self.cfg.dlq_partitions),
                   what="kafka_dlq_topic", should_stop=lambda: self.stopping)
        if self.cfg.until_end:
            self.end_offsets = retry_call(lambda: end_offsets(self.consumer, s.events_topic),
                                          what="kafka_end_offsets", should_stop=lambda: self.stopping)
            retry_call(lambda: self.ledger.start_run(self.end_offsets), what="postgres_start_run",
                       should_stop=lambda: self.stopping)
            log.info("until_end_target", end_offsets=self.end_offsets, records=sum(self.end_offsets.values()))
        self.consumer.subscribe([s.events_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        log.info("processor_started", instance=self.cfg.instance_id, **s.masked())
        try:
            while not self.stopping:
                self._backpressure()
                msgs = self.consumer.consume(self.cfg.poll_records, timeout=0.2)
                if msgs:
                    self._process(msgs)
                self.dlq.poll()
                if self._checkpoint_due():
                    self.checkpoint()
                if self.cfg.until_end and self._reached_end():
                    log.info("until_end_reached")
                    break
            self.checkpoint(force_snapshot=True)
        finally:
            self._close()
        return 0

    def _on_sigterm(self, *_: Any) -> None:
        log.info("processor_stopping")
        self.stopping = True

    def _close(self) -> None:
        try:
            self.consumer.close()  # revokes: _on_revoke has nothing left to commit
        except (KafkaException, RuntimeError) as e:
            log.warning("consumer_close_failed", error=str(e))
        for owned in self.owned.values():
            owned.store.close()
        self.owned.clear()
        self.ledger.close()

    # ---- rebalance --------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = []
        for tp in partitions:
            owned = retry_call(lambda p=tp.partition: self._restore(p), what="postgres_restore_partition")
            self.owned[tp.partition] = owned
            tps.append(TopicPartition(tp.topic, tp.partition, owned.next_offset))
        consumer.incremental_assign(tps)
        if self.paused:
            consumer.pause(tps)
        log.info("partitions_assigned", partitions=[tp.partition for tp in tps],
                 offsets={tp.partition: tp.offset for tp in tps})

    def _restore(self, partition: int) -> OwnedPartition:
        started = time.monotonic()
        claim = self.ledger.claim_partition(partition, self.cfg.instance_id)
        store = InMemoryWindowStore(partition)
        for table in self.ledger.restore_windows(partition):
            store.load(iter_rows(table))
        watermark = self.cfg.policy.watermark_ms(claim.max_event_time_ms)
        store.drop_final(self.cfg.policy, watermark)
        log.info("partition_restored", partition=partition, generation=claim.owner_generation,
                 next_offset=claim.next_offset, watermark_ms=watermark, windows=store.open_windows(),
                 seconds=round(time.monotonic() - started, 3))
        return OwnedPartition(partition, claim.owner_generation, store, claim.next_offset, claim.next_offset,
                              claim.max_event_time_ms, watermark)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = [tp.partition for tp in partitions if tp.partition in self.owned]
        if revoked:
            try:
                self.checkpoint(force_snapshot=True)
            except OwnershipLost as e:
                log.warning("revoke_commit_fenced", error=str(e))
        for p in revoked:
            self.owned.pop(p).store.close()
        log.info("partitions_revoked", partitions=revoked)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another owner may already have them: drop local state, commit nothing.
        for tp in partitions:
            owned = self.owned.pop(tp.partition, None)
            if owned is not None:
                owned.store.close()
        log.warning("partitions_lost", partitions=[tp.partition for tp in partitions])

    # ---- the hot path -----------------------------------------------------

    def _process(self, msgs: list[Message]) -> None:
        policy = self.cfg.policy
        ooo = policy.max_out_of_orderness_ms
        lateness = [(k, k.size_ms, policy.allowed_lateness_ms(k), k.label) for k in KINDS]
        deltas: dict[int, dict[WindowKey, list[int]]] = {}
        owned_map = self.owned
        for msg in msgs:
            err = msg.error()
            if err is not None:
                self._on_kafka_error(err)
                continue
            p = msg.partition()
            owned = owned_map.get(p)
            if owned is None:
                continue  # revoked while the record was in flight
            offset = msg.offset()
            if offset < owned.next_offset:
                continue  # already counted (never expected after a seek; defensive)
            owned.next_offset = offset + 1
            value = msg.value()
            try:
                ev = decode_event(value)
            except InvalidEvent as e:
                self._dead_letter(owned, msg, "invalid", None, str(e))
                continue
            et = ev.event_time
            wm = owned.watermark_ms
            part_deltas = deltas.get(p)
            if part_deltas is None:
                part_deltas = deltas[p] = {}
            for kind, size, allowed, label in lateness:
                start = et - et % size
                if wm is not None and start + size + allowed <= wm:
                    self._dead_letter(owned, msg, "late", label,
                                      f"{label} window [{start}, {start + size}) closed: watermark {wm}")
                    continue
                key = (kind, start, ev.account_id, ev.country)
                d = part_deltas.get(key)
                if d is None:
                    part_deltas[key] = [1, ev.amount]
                else:
                    d[0] += 1
                    d[1] += ev.amount
            if owned.max_event_time_ms is None or et > owned.max_event_time_ms:
                owned.max_event_time_ms = et
                owned.watermark_ms = et - ooo
        for p, part_deltas in deltas.items():
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
        if err.fatal():
            raise FatalError(f"Kafka fatal error: {err}")
        log.warning("kafka_error", error=str(err), retriable=err.retriable())

    # ---- checkpoint -------------------------------------------------------

    def _checkpoint_due(self) -> bool:
        return (time.monotonic() - self._last_checkpoint >= self.cfg.batch_max_wait_s
                or self._dirty_estimate >= self.cfg.batch_rows)

    def checkpoint(self, *, force_snapshot: bool = False) -> None:
        """Emit changed windows and commit them with their offsets (see Ledger.commit)."""
        self._last_checkpoint = time.monotonic()
        self._dirty_estimate = 0
        advances, emitted, snapshots, dlq_counts = [], [], {}, {}
        now = time.monotonic()
        for owned in self.owned.values():
            rows = owned.store.take_dirty()
            if owned.next_offset == owned.committed_offset and not rows:
                continue
            emitted.extend(rows)
            advances.append(PartitionAdvance(owned.partition, owned.committed_offset, owned.next_offset,
                                             owned.max_event_time_ms, owned.watermark_ms, owned.generation))
            for (reason, kind), n in owned.dlq_counts.items():
                dlq_counts[(owned.partition, reason, kind)] = n
            if force_snapshot or now - owned.last_snapshot_at >= self.cfg.snapshot_interval_s:
                snapshots[owned.partition] = owned.store.snapshot()
        if not advances:
            return
        cp = Checkpoint(source="live", topic=self.cfg.services.events_topic, advances=tuple(advances),
                        tables=_tables_by_kind(emitted), dlq_counts=dlq_counts, snapshots=snapshots)
        crash_point("checkpoint.before_dlq_flush")
        # DLQ records of this checkpoint are in Kafka before the ledger counts them.
        retry_call(self.dlq.flush, what="kafka_dlq_flush")
        crash_point("checkpoint.before_commit")
        result = retry_call(lambda: self.ledger.commit(cp), what="postgres_checkpoint_commit",
                            backoff=Backoff(0.2, 5.0))
        crash_point("checkpoint.after_commit")
        for a in advances:
            owned = self.owned[a.partition]
            owned.committed_offset = a.next_offset
            owned.dlq_counts.clear()
            if a.partition in snapshots:
                owned.last_snapshot_at = now
            owned.store.drop_final(self.cfg.policy, owned.watermark_ms)
            metrics.WATERMARK_MS.labels(partition=str(a.partition)).set(owned.watermark_ms or 0)
        metrics.CHECKPOINTS.labels(source="live").inc()
        metrics.CHECKPOINT_SECONDS.observe(result.seconds)
        log.info("checkpoint_committed", checkpoint_id=result.checkpoint_id, records=cp.records,
                 rows=result.rows, batches=len(result.batch_ids), partitions=len(advances),
                 snapshots=len(snapshots), dlq=sum(dlq_counts.values()), seconds=round(result.seconds, 4),
                 already_committed=result.already_committed)

    # ---- backpressure and end of run --------------------------------------

    def _backpressure(self) -> None:
        """Pause reading while ClickHouse is behind: pending ledger rows above the bound."""
        if not self.owned:
            return
        pending = retry_call(self.ledger.pending_rows, what="postgres_pending_rows")
        metrics.PENDING_ROWS.set(pending)
        tps = [TopicPartition(self.cfg.services.events_topic, p) for p in self.owned]
        if not self.paused and pending > self.cfg.max_pending_rows:
            self.consumer.pause(tps)
            self.paused = True
            log.warning("backpressure_paused", pending_rows=pending, bound=self.cfg.max_pending_rows)
        elif self.paused and pending <= self.cfg.max_pending_rows // 2:
            self.consumer.resume(tps)
            self.paused = False
            log.info("backpressure_resumed", pending_rows=pending)
        metrics.PAUSED_PARTITIONS.set(len(tps) if self.paused else 0)

    def _reached_end(self) -> bool:
        if any(o.next_offset < self.end_offsets.get(p, 0) for p, o in self.owned.items()):
            return False
        self.checkpoint()
        reached, _finished = retry_call(self.ledger.run_reached_end, what="postgres_run_state")
        if reached:
            retry_call(self.ledger.finish_run, what="postgres_finish_run")
        return reached


def _tables_by_kind(rows: list[WindowRow]) -> dict[str, pa.Table]:
    by_kind: dict[int, list[WindowRow]] = {}
    for r in rows:
        by_kind.setdefault(r.kind, []).append(r)
    return {WindowKind(k).table: rows_to_table(rs) for k, rs in by_kind.items()}
