"""Which input partitions this instance owns, and each one's life:

    assign   the group hands us partitions: check the pinned rules and log, restore each
             (claim it in the ledger, fencing older owners; reconcile its state), then
             start reading it at the ledger's next offset;
    revoke   the group takes partitions away: commit what is done (nothing after an error),
             then release them;
    lost     another owner may already have them: release, commit nothing;
    release  forget a partition: abandon its snapshot, close its store (LevelDB stays on
             disk; reconciliation decides whether it can ever be used again).

Offsets always come from the ledger; window state is the local store only if it reflects
exactly the ledger's last checkpoint of the partition, else it is rebuilt from the ledger
(docs/state-and-rebalancing.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from confluent_kafka import Consumer, KafkaException, TopicPartition

from app.core import metrics
from app.core.config import DEFAULT_DATA_DIR
from app.core.retry import retry_call
from app.ledger.ledger import Ledger
from app.ledger.restore import restore_windows
from app.processor.config import ProcessorConfig
from app.processor.leveldb_store import LevelDBWindowStore, StateSlot
from app.processor.log_guard import LogGuard
from app.processor.partition import OwnedPartition
from app.processor.state import InMemoryWindowStore, WindowStore

log = structlog.get_logger("processor")


class Ownership:
    def __init__(self, cfg: ProcessorConfig, ledger: Ledger, guard: LogGuard, consumer: Consumer, *,
                 checkpoint: Callable[[], None], should_stop: Callable[[], bool]) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.guard = guard
        self.consumer = consumer
        self.checkpoint = checkpoint
        self.should_stop = should_stop
        self.owned: dict[int, OwnedPartition] = {}
        self.paused = False              # backpressure: newly assigned partitions start paused too
        self.slot: StateSlot | None = None

    def open_slot(self) -> None:
        """Take a LevelDB state slot (a restarted process finds its state again in it)."""
        if self.cfg.state_store == "leveldb":
            s = self.cfg.services
            self.slot = StateSlot(self.cfg.state_dir or DEFAULT_DATA_DIR / "state" / s.pipeline_id)

    # ---- the group's callbacks ------------------------------------------------

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.guard.check_assignment()
        tps = []
        for tp in partitions:
            owned = retry_call(lambda p=tp.partition: self.restore(p), what="postgres_restore_partition",
                               should_stop=self.should_stop)
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

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = [tp.partition for tp in partitions if tp.partition in self.owned]
        if revoked:
            self.checkpoint()  # what is done is committed (nothing after an error); fenced ones are dropped inside
        for p in revoked:
            self.release(p, "revoked")
        log.info("partitions_revoked", partitions=revoked)

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another owner may already have them: drop local state, commit nothing. The local
        # store stays on disk; reconciliation decides whether it can ever be used again.
        for tp in partitions:
            self.release(tp.partition, "lost")
        log.warning("partitions_lost", partitions=[tp.partition for tp in partitions])

    # ---- restore and release --------------------------------------------------

    def restore(self, partition: int) -> OwnedPartition:
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
                for table in restore_windows(self.ledger, partition):
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

    def release(self, partition: int, reason: str) -> None:
        """Forget a partition: abandon its snapshot, close its store (LevelDB stays on disk)."""
        owned = self.owned.pop(partition, None)
        if owned is None:
            return
        if owned.snapshot is not None:
            owned.snapshot.abandon()
            owned.snapshot = None
        owned.store.close()
        metrics.OWNED_PARTITIONS.set(len(self.owned))
        metrics.forget_partition(partition)
        if reason == "fenced":
            metrics.PARTITIONS_FENCED.inc()
            try:  # stop fetching it until the group assigns it to us again
                self.consumer.pause([TopicPartition(self.cfg.services.events_topic, partition)])
            except KafkaException as e:
                log.warning("pause_fenced_partition_failed", partition=partition, error=str(e))
        log.info("partition_released", partition=partition, reason=reason)

    def close(self) -> None:
        """After the consumer closed: release what is left, then the state slot."""
        for p in list(self.owned):
            self.release(p, "shutdown")
        if self.slot is not None:
            self.slot.release()

    def _open_store(self, partition: int) -> WindowStore:
        if self.slot is None:
            return InMemoryWindowStore(partition)
        return LevelDBWindowStore(partition, self.slot.partition_dir(self.cfg.services.events_topic, partition),
                                  self.cfg.leveldb)
