"""Step 6 of the checkpoint (issue 14, item 4): the ledger's committed next offsets are
published to the consumer group after the Postgres commit and its local steps, never
before it, and never when the commit did not happen. The fakes of
tests/unit/test_checkpoint_sequence.py stand for the ledger, DLQ and stores."""

from __future__ import annotations

from collections.abc import Sequence

from app.core.errors import InvariantViolation
from app.ledger.ledger import PartitionAdvance
from tests.unit.test_checkpoint_sequence import Calls, setup


class FakeGroupOffsets:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def publish(self, advances: Sequence[PartitionAdvance]) -> None:
        self.calls.append(("group_offsets", {a.partition: a.next_offset for a in advances}))


def test_positions_are_published_last_after_the_commit() -> None:
    cp, calls, _owned, _ledger = setup(dirty={0: (10, 25, 2), 1: (4, 9, 1)})
    cp.group_offsets = FakeGroupOffsets(calls)  # type: ignore[assignment]
    cp.commit()
    names = [c[0] for c in calls]
    assert names.index("ledger_commit") < names.index("store_commit") < names.index("group_offsets")
    assert calls[-1] == ("group_offsets", {0: 25, 1: 9})


def test_nothing_is_published_when_the_commit_fails_or_after_an_error() -> None:
    cp, calls, _owned, _ledger = setup(dirty={0: (10, 25, 2)}, ledger_errors=[InvariantViolation("broken")])
    cp.group_offsets = FakeGroupOffsets(calls)  # type: ignore[assignment]
    try:
        cp.commit()
    except InvariantViolation:
        pass
    assert "group_offsets" not in [c[0] for c in calls]
    cp, calls, _owned, _ledger = setup(dirty={0: (10, 25, 2)}, failed=RuntimeError("earlier"))
    cp.group_offsets = FakeGroupOffsets(calls)  # type: ignore[assignment]
    cp.commit()
    assert calls == []
