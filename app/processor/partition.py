"""The runtime of one partition this instance owns: its store, its position and watermark,
what the next checkpoint counts, and its snapshot in progress."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from app.processor.state import WindowStore
from app.processor.windows import Position


@dataclass(slots=True)
class SnapshotJob:
    """A chunked snapshot of one partition's windows as of checkpoint `checkpoint_id`,
    written one chunk per loop turn and published (made the restore base) at the end."""

    checkpoint_id: int
    chunks: Iterator[pa.Table]
    written: int = 0
    rows: int = 0
    started: float = field(default_factory=time.monotonic)

    def abandon(self) -> None:
        close = getattr(self.chunks, "close", None)  # a generator holds a LevelDB snapshot open
        if close is not None:
            close()


@dataclass(slots=True)
class OwnedPartition:
    partition: int
    generation: int
    store: WindowStore
    committed_offset: int            # ledger's next_offset as of the last commit
    next_offset: int                 # next record to read
    max_event_time_ms: int | None
    watermark_ms: int | None
    dlq_counts: dict[tuple[str, str], int] = field(default_factory=dict)  # since the last commit
    last_snapshot_at: float = field(default_factory=time.monotonic)
    snapshot: SnapshotJob | None = None
    # Kafka timestamps (ms) of the records read since the last commit, first and last of each
    # run: the ledger keeps them per batch for the end-to-end latency (app/sink/latency.py)
    kafka_ts_min: int | None = None
    kafka_ts_max: int | None = None

    def note_kafka_times(self, first_ms: int, last_ms: int) -> None:
        lo, hi = (first_ms, last_ms) if first_ms <= last_ms else (last_ms, first_ms)
        if lo < 0:
            return  # the broker gave no timestamp
        if self.kafka_ts_min is None or lo < self.kafka_ts_min:
            self.kafka_ts_min = lo
        if self.kafka_ts_max is None or hi > self.kafka_ts_max:
            self.kafka_ts_max = hi

    @property
    def position(self) -> Position:
        return Position(self.next_offset, self.max_event_time_ms, self.watermark_ms)

    @position.setter
    def position(self, at: Position) -> None:
        self.next_offset, self.max_event_time_ms, self.watermark_ms = at
