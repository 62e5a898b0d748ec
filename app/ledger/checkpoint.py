"""The values of the processor's side of the ledger: what a claim returns, what one
checkpoint commits (`Ledger.commit`) and what the commit returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from app.core.errors import OwnershipLost


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
    """Everything one ledger transaction commits together (the live processor's; a
    backfill commits its batches through app/ledger/backfill_runs.py)."""

    topic: str
    advances: tuple[PartitionAdvance, ...]
    tables: Mapping[str, pa.Table]                     # rollup table -> window rows emitted
    dlq_counts: Mapping[tuple[int, str, str], int]     # (partition, reason, window_kind) -> n
    kafka_ts_ms: tuple[int, int] | None = None         # Kafka timestamps of the records covered: min, max
    # windows this checkpoint drops as final: (table, window start ms) -> [windows, events, amount]
    settled: Mapping[tuple[str, int], Sequence[int]] = field(default_factory=dict)

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
