"""The processor's checkpoint as one numbered sequence (app/processor/checkpoint.py), with a
fake ledger, DLQ and stores: which step calls what, in which order, and that nothing
commits after an error: not after the processor failed, and not past a step that raised.

Fakes stand only for the seams the checkpoint drives; the real ledger transaction is
covered by tests/integration/test_rebalance_fencing.py and test_pipeline_rules.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

from app.core.config import ServiceSettings
from app.core.errors import InvariantViolation
from app.ledger.ledger import Checkpoint, CommitResult, PartitionFenced
from app.processor.batch import window_table
from app.processor.checkpoint import Checkpointer
from app.processor.config import ProcessorConfig
from app.processor.deltas import Keys, Values
from app.processor.partition import OwnedPartition
from app.processor.snapshots import Snapshots
from app.processor.windows import LatenessPolicy, WindowKind

Calls = list[tuple[Any, ...]]


class FakeStore:
    def __init__(self, partition: int, calls: Calls, dirty_rows: int) -> None:
        self.partition, self.calls, self.dirty_rows = partition, calls, dirty_rows

    def take_dirty_table(self) -> pa.Table:
        self.calls.append(("take_dirty", self.partition))
        keys = [(WindowKind.MINUTE, 60_000 * i, 7, "DE") for i in range(self.dirty_rows)]
        self.dirty_rows = 0
        return window_table(self.partition, keys, [1] * len(keys), [5] * len(keys))

    def prepare(self, next_offset: int) -> None:
        self.calls.append(("prepare", self.partition, next_offset))

    def commit(self, ref: str, next_offset: int) -> None:
        self.calls.append(("store_commit", self.partition, ref, next_offset))

    def abort(self) -> None:
        self.calls.append(("abort", self.partition))

    def drop_final(self, policy: LatenessPolicy, watermark_ms: int | None) -> int:
        self.calls.append(("drop_final", self.partition, watermark_ms))
        return 0

    def final_windows(self, policy: LatenessPolicy, watermark_ms: int | None) -> tuple[Keys, Values]:
        return Keys.empty(), Values.zeros(0)  # the settled totals (app/processor/settled.py): nothing final

    def snapshot_chunks(self, rows_per_chunk: int) -> Iterator[pa.Table]:
        self.calls.append(("snapshot_start", self.partition))
        return iter([])

    def open_windows(self) -> dict[str, int]:
        return {"minute": 0, "hour": 0}


class FakeDlq:
    def __init__(self, calls: Calls, error: BaseException | None = None) -> None:
        self.calls, self.error = calls, error

    def flush(self) -> None:
        self.calls.append(("dlq_flush",))
        if self.error is not None:
            raise self.error


class FakeLedger:
    def __init__(self, calls: Calls, errors: list[BaseException] | None = None) -> None:
        self.calls, self.errors = calls, list(errors or [])
        self.committed: list[Checkpoint] = []

    def commit(self, cp: Checkpoint) -> CommitResult:
        self.calls.append(("ledger_commit", cp.offset_ranges, dict(cp.dlq_counts)))
        if self.errors:
            raise self.errors.pop(0)
        self.committed.append(cp)
        return CommitResult(41 + len(self.committed), (1,), sum(t.num_rows for t in cp.tables.values()), 0.01,
                            checkpoint_ref=f"{41 + len(self.committed)}@1")


class FakeOwnership:
    def __init__(self, calls: Calls, owned: dict[int, OwnedPartition]) -> None:
        self.calls, self.owned = calls, owned

    def release(self, partition: int, reason: str) -> None:
        self.calls.append(("release", partition, reason))
        self.owned.pop(partition)


def setup(*, dirty: dict[int, tuple[int, int, int]], dlq_error: BaseException | None = None,
          ledger_errors: list[BaseException] | None = None, failed: BaseException | None = None,
          ) -> tuple[Checkpointer, Calls, dict[int, OwnedPartition], FakeLedger]:
    """dirty: partition -> (committed_offset, next_offset, changed windows)."""
    calls: Calls = []
    owned = {p: OwnedPartition(p, 3, FakeStore(p, calls, rows), committed, nxt, 1_000_000, 995_000)  # type: ignore[arg-type]
             for p, (committed, nxt, rows) in dirty.items()}
    for o in owned.values():
        o.dlq_counts[("late", "minute")] = 2
    services = ServiceSettings("k", "postgresql://x", "chdb:///x", "events", "dlq", "p")
    cfg = ProcessorConfig(services=services, policy=LatenessPolicy(), snapshot_interval_s=0.0)
    ledger = FakeLedger(calls, ledger_errors)
    ownership = FakeOwnership(calls, owned)
    snapshots = Snapshots(cfg, ledger, owned, ownership.release, lambda: False)  # type: ignore[arg-type]
    checkpointer = Checkpointer(cfg, ledger, FakeDlq(calls, dlq_error), ownership, snapshots,  # type: ignore[arg-type]
                                failed=lambda: failed, should_stop=lambda: False)
    return checkpointer, calls, owned, ledger


def test_the_steps_run_in_their_numbered_order() -> None:
    cp, calls, owned, ledger = setup(dirty={0: (10, 25, 2), 1: (4, 9, 1)})
    cp.commit()
    assert calls == [
        ("take_dirty", 0), ("take_dirty", 1),                                     # 0. collect
        ("dlq_flush",),                                                           # 1. DLQ acknowledged
        ("prepare", 0, 25), ("prepare", 1, 9),                                    # 2. prepare the local store
        ("ledger_commit", {0: (10, 25), 1: (4, 9)},                               # 3. the Postgres transaction
         {(0, "late", "minute"): 2, (1, "late", "minute"): 2}),
        ("store_commit", 0, "42@1", 25), ("drop_final", 0, 995_000),              # 4. local commit
        ("store_commit", 1, "42@1", 9), ("drop_final", 1, 995_000),
        ("snapshot_start", 0), ("snapshot_start", 1),                             # 5. snapshot
    ]
    assert ledger.committed[0].tables["rollup_minute"].num_rows == 3
    for o in owned.values():
        assert o.committed_offset == o.next_offset and o.dlq_counts == {}
        assert o.snapshot is not None and o.snapshot.checkpoint_id == 42


def test_a_partition_without_progress_is_left_out_and_nothing_at_all_commits_without_progress() -> None:
    cp, calls, _owned, ledger = setup(dirty={0: (10, 25, 1), 1: (9, 9, 0)})
    cp.commit()
    assert ledger.committed[0].offset_ranges == {0: (10, 25)}
    assert ("prepare", 1, 9) not in calls and ("store_commit", 1, "42@1", 9) not in calls
    calls.clear()
    cp.commit()
    assert calls == [("take_dirty", 0), ("take_dirty", 1)] and len(ledger.committed) == 1


def test_nothing_commits_after_the_processor_failed() -> None:
    cp, calls, owned, ledger = setup(dirty={0: (10, 25, 2)}, failed=InvariantViolation("earlier error"))
    cp.commit()
    assert calls == [] and ledger.committed == []
    assert owned[0].committed_offset == 10 and owned[0].dlq_counts


@pytest.mark.parametrize("step", ["dlq_flush", "ledger_commit"])
def test_a_step_that_raises_stops_the_sequence_before_anything_later(step: str) -> None:
    error = InvariantViolation(f"{step} failed")
    cp, calls, owned, ledger = setup(dirty={0: (10, 25, 2)}, dlq_error=error if step == "dlq_flush" else None,
                                     ledger_errors=[error] if step == "ledger_commit" else None)
    with pytest.raises(InvariantViolation):
        cp.commit()
    assert calls[-1][0] == step  # the failing step is the last thing that happened
    assert not any(c[0] in ("store_commit", "drop_final", "snapshot_start") for c in calls)
    assert ledger.committed == [] and owned[0].committed_offset == 10 and owned[0].snapshot is None


def test_fenced_partitions_are_aborted_released_and_the_others_committed_again_at_once() -> None:
    cp, calls, owned, ledger = setup(dirty={0: (10, 25, 2), 1: (4, 9, 1)},
                                     ledger_errors=[PartitionFenced("newer owner", (1,))])
    cp.commit()
    first = calls.index(("abort", 0))
    assert calls[first:first + 3] == [("abort", 0), ("abort", 1), ("release", 1, "fenced")]
    assert [c[1] for c in calls if c[0] == "ledger_commit"] == [{0: (10, 25), 1: (4, 9)}, {0: (10, 25)}]
    assert [c.offset_ranges for c in ledger.committed] == [{0: (10, 25)}]
    assert list(owned) == [0] and owned[0].committed_offset == 25
    assert not any(c[0] == "store_commit" and c[1] == 1 for c in calls)
