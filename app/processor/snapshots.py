"""Snapshots of each owned partition's open windows in the ledger, written in chunks so a
partition of 10M windows never stalls the loop (docs/state-and-rebalancing.md).

A snapshot starts right after a checkpoint commits (step 5 of processor/checkpoint.py), as
a fixed view of the store at exactly that checkpoint; `step()` writes one chunk per loop
turn, whether the turn checkpointed or not, and publishes the snapshot after its last
chunk: from then on a new owner restores from it plus later batches, and the payloads of
batches before it can be pruned.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from app.core import metrics
from app.core.retry import retry_call
from app.ledger.ledger import Ledger, PartitionFenced
from app.ledger.rows import WINDOW_ROW_SCHEMA
from app.processor.config import ProcessorConfig
from app.processor.partition import OwnedPartition, SnapshotJob

log = structlog.get_logger("processor")


class Snapshots:
    def __init__(self, cfg: ProcessorConfig, ledger: Ledger, owned: dict[int, OwnedPartition],
                 release: Callable[[int, str], None], should_stop: Callable[[], bool]) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.owned = owned
        self.release = release
        self.should_stop = should_stop

    def start_if_due(self, owned: OwnedPartition, checkpoint_id: int, now: float) -> None:
        """Right after a commit: the store holds exactly checkpoint `checkpoint_id` now, and
        the chunks see this view only."""
        if owned.snapshot is None and now - owned.last_snapshot_at >= self.cfg.snapshot_interval_s:
            owned.snapshot = SnapshotJob(checkpoint_id, owned.store.snapshot_chunks(self.cfg.snapshot_chunk_rows))

    def step(self) -> None:
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
                       what="postgres_snapshot_chunk", should_stop=self.should_stop)
            job.written += 1
            job.rows += table.num_rows
            return
        try:
            published = retry_call(lambda: self.ledger.publish_snapshot(p, job.checkpoint_id, job.written,
                                                                        owned.generation),
                                   what="postgres_publish_snapshot", should_stop=self.should_stop)
        except PartitionFenced as e:
            log.warning("snapshot_fenced", partition=p, error=str(e))
            self.release(p, "fenced")
            return
        owned.snapshot = None
        owned.last_snapshot_at = time.monotonic()
        metrics.SNAPSHOTS.inc()
        log.info("snapshot_published", partition=p, checkpoint_id=job.checkpoint_id, chunks=job.written,
                 windows=job.rows, published=published, seconds=round(owned.last_snapshot_at - job.started, 3))
