"""The processor loop: Kafka -> windows -> ledger checkpoints.

One loop turn: check backpressure, consume up to `poll_records` records, classify and fold
each run of one partition's records (`windows.fold_columns`: late and invalid ones go to the
DLQ), then commit a checkpoint when one is due (every `batch_max_wait`, or once
`batch_rows` windows changed) and advance a snapshot by one chunk. Kafka offsets are never
committed to Kafka: on assignment each partition's offset comes from the ledger.

The loop's parts, each in its own module, in the manner of Quix Streams' Application:
    ownership.py     assign / revoke / lost / restore / release (the group's callbacks)
    checkpoint.py    the checkpoint, one numbered sequence
    snapshots.py     chunked snapshots of the state in the ledger
    backpressure.py  pausing while ClickHouse is behind, consumer lag
This module keeps the loop, the hot path, the failed state and the end of an --until-end run.
"""

from __future__ import annotations

import gc
import signal
import time
from collections.abc import Callable
from itertools import groupby
from typing import Any, Final, cast

import numpy as np
import structlog
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from app.core import health, metrics
from app.core.errors import FatalError, KafkaUnreachable, RetryableError
from app.core.kafka import consumer_config, end_offsets, ensure_topic, every_broker_down_lately
from app.core.retry import retry_call
from app.ledger import until_end
from app.ledger.ledger import Ledger
from app.processor.backpressure import Backpressure
from app.processor.checkpoint import Checkpointer
from app.processor.config import ProcessorConfig
from app.processor.dlq import DeadLetters, PartitionDeadLetters
from app.processor.group_offsets import GroupOffsets
from app.processor.log_guard import LogGuard, rules_of
from app.processor.ownership import Ownership
from app.processor.partition import OwnedPartition
from app.processor.shutdown import LedgerStopTimer
from app.processor.snapshots import Snapshots
from app.processor.windows import FoldRules, fold_columns

__all__ = ["Processor", "ProcessorConfig"]

log = structlog.get_logger("processor")

GC_THRESHOLDS: Final = (100_000, 20, 100)  # generation 0, 1, 2 (CPython defaults: 700, 10, 10)
# C-level accessors: the hot path reads records through map()/groupby(), not Python calls.
# Typed as a consumed record's (the stubs allow None for records that are errors).
_partition = cast(Callable[[Message], int], Message.partition)
_offset = cast(Callable[[Message], int], Message.offset)
_key = cast(Callable[[Message], "bytes | None"], Message.key)
_value = cast(Callable[[Message], "bytes | None"], Message.value)
_error = cast(Callable[[Message], "KafkaError | None"], Message.error)
_timestamp = cast(Callable[[Message], "tuple[int, int]"], Message.timestamp)


class Processor:
    def __init__(self, cfg: ProcessorConfig) -> None:
        self.cfg = cfg
        s = cfg.services
        self.ledger = Ledger(s.database_url, s.pipeline_id, s.events_topic)
        self.dlq = DeadLetters(s.kafka_bootstrap_servers, s.dlq_topic, s.events_topic,
                               delivery_timeout_s=cfg.dlq_delivery_timeout_s, should_stop=self._should_stop)
        self.guard = LogGuard(s.kafka_bootstrap_servers, self.ledger, s.events_topic,
                              rules_of(cfg.policy, cfg.max_record_bytes), should_stop=self._should_stop)
        self.consumer = Consumer(consumer_config(
            s.kafka_bootstrap_servers, s.pipeline_id,
            **{"partition.assignment.strategy": "cooperative-sticky", "client.id": cfg.instance_id,
               # never jump over records the ledger has not read: an out-of-range fetch is an error
               "auto.offset.reset": "error",
               # a SIGKILLed owner's partitions move on after this long
               "session.timeout.ms": cfg.session_timeout_ms,
               "heartbeat.interval.ms": max(500, cfg.session_timeout_ms // 5)}))
        self.stopping = False
        # The first error in the processing path (loop, callbacks, checkpoint): from then on
        # this process commits nothing, because its in-memory state may be ahead of what
        # was applied (e.g. offsets advanced past a record whose windows were never folded).
        self.failed: BaseException | None = None
        self.consumer_left_open = False   # _close skipped consumer.close(): exit without its destructor
        self.ownership = Ownership(cfg, self.ledger, self.guard, self.consumer, checkpoint=self.checkpoint,
                                   should_stop=self._should_stop)
        self.snapshots = Snapshots(cfg, self.ledger, self.ownership.owned, self.ownership.release,
                                   self._should_stop)
        self.checkpointer = Checkpointer(cfg, self.ledger, self.dlq, self.ownership, self.snapshots,
                                         failed=lambda: self.failed, should_stop=self._should_stop,
                                         group_offsets=GroupOffsets(self.consumer, s.events_topic))
        self.backpressure = Backpressure(cfg, self.ledger, self.consumer, self.ownership, self._should_stop)
        self.end_offsets: dict[int, int] = {}
        self._last_end_check = 0.0
        self._fold_rules = FoldRules(cfg.policy, cfg.max_record_bytes)
        # after a stop request, a Postgres call that hangs is interrupted (app/processor/shutdown.py)
        self._stop_timer = LedgerStopTimer(lambda: self.ledger.busy)

    @property
    def owned(self) -> dict[int, OwnedPartition]:
        return self.ownership.owned

    def checkpoint(self) -> None:
        """Commit what is done (processor/checkpoint.py); nothing after an error."""
        self.checkpointer.commit()

    # ---- lifecycle --------------------------------------------------------

    def run(self) -> int:
        s = self.cfg.services
        # The hot path allocates a tuple and a list per window and holds hundreds of thousands
        # of them (dirty, pending and clean values) but makes no reference cycles. With the
        # default thresholds (700) the cyclic GC ran every few hundred records and its older
        # generations kept re-scanning every live window: ~30 % of the processor's CPU in a
        # 1M-event catch-up. Rarer collections still reclaim any cycle, just later.
        gc.set_threshold(*GC_THRESHOLDS)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self._on_sigterm)
        self.guard.check_start()  # the pinned rules and input log, before anything is read
        retry_call(lambda: ensure_topic(s.kafka_bootstrap_servers, s.dlq_topic, self.cfg.dlq_partitions),
                   what="kafka_dlq_topic", should_stop=self._should_stop)
        if self.cfg.until_end:
            self.end_offsets = retry_call(lambda: end_offsets(self.consumer, s.events_topic),
                                          what="kafka_end_offsets", should_stop=self._should_stop)
            retry_call(lambda: until_end.start_run(self.ledger, self.end_offsets), what="postgres_start_run",
                       should_stop=self._should_stop)
            log.info("until_end_target", end_offsets=self.end_offsets, records=sum(self.end_offsets.values()))
        self.ownership.open_slot()
        own = self.ownership
        self.consumer.subscribe([s.events_topic], on_assign=self._guarded(own.on_assign),
                                on_revoke=self._guarded(own.on_revoke), on_lost=self._guarded(own.on_lost))
        log.info("processor_started", instance=self.cfg.instance_id, state_store=self.cfg.state_store,
                 state_dir=None if own.slot is None else str(own.slot.path), **s.masked())
        try:
            while not self.stopping:
                health.beat()
                self.backpressure.check()
                msgs = self.consumer.consume(self.cfg.poll_records, timeout=0.2)
                if msgs:
                    self._process(msgs)
                self.dlq.poll()
                if self.checkpointer.due():
                    self.checkpoint()
                # every turn, checkpoint or not: when every turn checkpoints (a short
                # --batch-max-wait, or --batch-rows reached under load) a snapshot must still
                # be published, else payloads are never prunable and restores read every batch
                self.snapshots.step()
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

    def _should_stop(self) -> bool:
        return self.stopping

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
            if isinstance(self.failed, KafkaUnreachable) or every_broker_down_lately():
                # close() may wait on the unreachable coordinator for minutes (seen past a
                # 10 s stop budget); nothing is committed to Kafka (offsets live in the ledger,
                # the final checkpoint ran or was refused before this), and the group drops this
                # member after its session timeout. The command exits without the destructor.
                self.consumer_left_open = True
                log.warning("consumer_not_closed", reason="Kafka unreachable")
            else:
                # revokes: the revoke callback commits what is done, or nothing after an error
                self.consumer.close()
        except Exception as e:  # noqa: BLE001 - shutting down: say what failed, release the rest
            # (an error in our revoke callback has already put us in the failed state)
            log.warning("consumer_close_failed", error=f"{type(e).__name__}: {e}")
        self.ownership.close()
        self.ledger.close()

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

    # ---- the hot path -----------------------------------------------------

    def _process(self, msgs: list[Message]) -> None:
        if any(map(_error, msgs)):  # rare: the errors first, in order (one may stop us), then the records
            for err in [e for e in map(_error, msgs) if e is not None]:
                self._on_kafka_error(err)
            msgs = [m for m in msgs if m.error() is None]
        owned_map = self.ownership.owned
        rules, dlq = self._fold_rules, self.dlq
        # consume() returns records in runs of one partition: one fold call per run, its
        # records read through C-level accessors (no Python call per record for them); the
        # folded windows are appended to the store's deltas as columns (grouped at the checkpoint)
        for p, group in groupby(msgs, _partition):
            owned = owned_map.get(p)
            if owned is None:
                continue  # revoked while the records were in flight
            run = list(group)
            deltas = owned.store.deltas
            before = deltas.rows
            # after an exception nothing is written back (and nothing is committed either)
            owned.position = fold_columns(np.fromiter(map(_offset, run), np.int64, len(run)), list(map(_key, run)),
                                          list(map(_value, run)),
                                          owned.position, rules, deltas, PartitionDeadLetters(dlq, p, owned.dlq_counts))
            owned.note_kafka_times(_timestamp(run[0])[1], _timestamp(run[-1])[1])
            metrics.EVENTS_READ.labels(partition=str(p)).inc(len(run))
            self.checkpointer.dirty_estimate += deltas.rows - before

    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._AUTO_OFFSET_RESET:  # the log no longer holds our next offset
            raise self.guard.fetch_out_of_range(self.consumer, err,
                                                {p: o.next_offset for p, o in self.owned.items()})
        if err.fatal():
            raise FatalError(f"Kafka fatal error: {err}")
        log.warning("kafka_error", error=str(err), retriable=err.retriable())

    # ---- end of an --until-end run ----------------------------------------

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
        reached, finished = retry_call(lambda: until_end.run_reached_end(self.ledger), what="postgres_run_state",
                                       should_stop=self._should_stop)
        if reached and not finished:
            retry_call(lambda: until_end.finish_run(self.ledger), what="postgres_finish_run",
                       should_stop=self._should_stop)
        return reached
