"""The in-memory window store: folding, dirty tracking, finalisation, snapshot/restore."""

from app.ledger.rows import iter_rows
from app.processor.state import InMemoryWindowStore
from app.processor.windows import LatenessPolicy, WindowKind

M, H = int(WindowKind.MINUTE), int(WindowKind.HOUR)


def test_fold_accumulates_and_reports_full_values_once() -> None:
    s = InMemoryWindowStore(partition=2)
    s.fold({(M, 60_000, 7, "DE"): [2, 10], (H, 0, 7, "DE"): [2, 10]})
    s.fold({(M, 60_000, 7, "DE"): [1, 2**70]})
    rows = {(r.kind, r.window_start_s): (r.event_count, r.sum_amount, r.partition) for r in s.take_dirty()}
    assert rows == {(M, 60): (3, 10 + 2**70, 2), (H, 0): (2, 10, 2)}
    assert s.take_dirty() == []
    s.fold({(H, 0, 7, "DE"): [1, -5]})
    assert [(r.kind, r.event_count, r.sum_amount) for r in s.take_dirty()] == [(H, 3, 5)]


def test_drop_final_forgets_only_closed_windows() -> None:
    policy = LatenessPolicy(5_000, 60_000, 60_000)
    s = InMemoryWindowStore(0)
    s.fold({(M, 0, 1, "DE"): [1, 1], (M, 60_000, 1, "DE"): [1, 1], (H, 0, 1, "DE"): [1, 1]})
    s.take_dirty()
    assert s.drop_final(policy, 119_999) == 0
    assert s.drop_final(policy, 120_000) == 1  # [0, 60000) + 60 s lateness reached
    assert s.open_windows() == {"minute": 1, "hour": 1}


def test_dirty_windows_are_never_dropped_before_emission() -> None:
    policy = LatenessPolicy(5_000, 60_000, 60_000)
    s = InMemoryWindowStore(0)
    s.fold({(M, 0, 1, "DE"): [1, 1]})
    assert s.drop_final(policy, 10**9) == 0
    assert len(s.take_dirty()) == 1
    assert s.drop_final(policy, 10**9) == 1


def test_snapshot_and_load_restore_the_same_state() -> None:
    s = InMemoryWindowStore(5)
    s.fold({(M, 60_000, 2**64 - 1, "ZZ"): [4, -(2**65)], (H, 3_600_000, 0, "AA"): [1, 3]})
    restored = InMemoryWindowStore(5)
    restored.load(iter_rows(s.snapshot()))
    assert dict(restored.items()) == dict(s.items())
    assert restored.take_dirty() == []
