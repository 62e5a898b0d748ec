"""The LevelDB window store: same semantics as the in-memory store, exact Int128 values,
the prepare/commit marker that reconciliation relies on, finalisation by key range, and
columnar snapshot/restore."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from app.core.errors import InvariantViolation
from app.ledger.rows import iter_rows, rows_to_table
from app.processor.leveldb_layout import (
    pack_key,
    pack_value,
    raw_from_table,
    table_from_raw,
    unpack_key,
    unpack_value,
)
from app.processor.leveldb_store import LevelDBWindowStore, StateSlot
from app.processor.state import InMemoryWindowStore, WindowKey
from app.processor.windows import LatenessPolicy, WindowKind

M, H = int(WindowKind.MINUTE), int(WindowKind.HOUR)
I128_MIN, I128_MAX = -(2**127), 2**127 - 1
D38 = 10**38 - 1  # the ledger's Arrow payloads are decimal128(38, 0): the end-to-end limit
POLICY = LatenessPolicy(5_000, 60_000, 60_000)


def _checkpoint(store: LevelDBWindowStore | InMemoryWindowStore, ref: str, next_offset: int = 1) -> list:
    rows = store.take_dirty()
    store.prepare(next_offset)
    store.commit(ref, next_offset)
    return rows


def test_keys_sort_by_kind_then_window_start_and_round_trip() -> None:
    keys: list[WindowKey] = [(H, 0, 1, "AA"), (M, 120_000, 0, "ZZ"), (M, 60_000, 2**64 - 1, "DE"),
                             (M, 60_000, 5, "AA"), (M, 4_102_444_740_000, 3, "US")]
    assert sorted(keys, key=pack_key) == sorted(keys)
    for k in keys:
        assert unpack_key(pack_key(k)) == k


@pytest.mark.parametrize("amount", [0, 1, -1, 2**63, -(2**63) - 1, 2**64 + 12345, -(2**64 + 12345),
                                    I128_MIN, I128_MAX])
def test_values_are_exact_over_the_int128_range(amount: int) -> None:
    assert unpack_value(pack_value(2**64 - 1, amount)) == (2**64 - 1, amount)


def test_a_sum_beyond_int128_is_an_invariant_violation() -> None:
    with pytest.raises(InvariantViolation):
        pack_value(1, I128_MAX + 1)


def test_fold_take_dirty_and_reopen(tmp_path: Path) -> None:
    s = LevelDBWindowStore(2, tmp_path / "p2")
    s.fold({(M, 60_000, 7, "DE"): [2, 10], (H, 0, 7, "DE"): [2, 10]})
    s.fold({(M, 60_000, 7, "DE"): [1, 2**70]})
    rows = {(r.kind, r.window_start_s): (r.event_count, r.sum_amount, r.partition) for r in _checkpoint(s, "1@1")}
    assert rows == {(M, 60): (3, 10 + 2**70, 2), (H, 0): (2, 10, 2)}
    assert s.take_dirty() == []
    s.fold({(H, 0, 7, "DE"): [1, -5]})  # from the clean cache
    assert [(r.kind, r.event_count, r.sum_amount) for r in _checkpoint(s, "2@2")] == [(H, 3, 5)]
    s.close()
    s = LevelDBWindowStore(2, tmp_path / "p2")
    assert s.committed_ref() == "2@2"
    assert s.open_windows() == {"minute": 1, "hour": 1}
    s.fold({(H, 0, 7, "DE"): [1, 1]})  # from LevelDB
    assert [(r.event_count, r.sum_amount) for r in s.take_dirty()] == [(4, 6)]


def test_prepared_but_not_committed_state_is_never_trusted(tmp_path: Path) -> None:
    s = LevelDBWindowStore(0, tmp_path / "p0")
    s.fold({(M, 0, 1, "DE"): [1, 1]})
    _checkpoint(s, "5@9")
    s.fold({(M, 0, 1, "DE"): [1, 1]})
    s.take_dirty()
    s.prepare(2)  # LevelDB ahead of the ledger
    assert s.committed_ref() is None
    s.close()
    s = LevelDBWindowStore(0, tmp_path / "p0")
    assert s.committed_ref() is None  # a crash here: reconciliation rebuilds
    s.reset()
    assert list(s.items()) == [] and s.open_windows() == {"minute": 0, "hour": 0}


def test_abort_makes_pending_windows_dirty_again(tmp_path: Path) -> None:
    s = LevelDBWindowStore(0, tmp_path / "p0")
    s.fold({(M, 0, 1, "DE"): [1, 3], (M, 0, 2, "DE"): [1, 4]})
    first = s.take_dirty()
    s.prepare(2)
    s.abort()
    s.fold({(M, 0, 1, "DE"): [1, 3]})
    again = {(r.account_id, r.event_count, r.sum_amount) for r in _checkpoint(s, "1@1", 3)}
    assert len(first) == 2 and again == {(1, 2, 6), (2, 1, 4)}


def test_drop_final_deletes_a_key_range_and_keeps_unemitted_windows(tmp_path: Path) -> None:
    s = LevelDBWindowStore(0, tmp_path / "p0")
    s.fold({(M, 0, 1, "DE"): [1, 1], (M, 60_000, 1, "DE"): [1, 1], (H, 0, 1, "DE"): [1, 1]})
    _checkpoint(s, "1@1")
    assert s.drop_final(POLICY, 119_999) == 0
    assert s.drop_final(POLICY, 120_000) == 1  # [0, 60000) + 60 s lateness reached
    assert s.open_windows() == {"minute": 1, "hour": 1}
    s.fold({(M, 60_000, 1, "DE"): [1, 1]})  # dirty: must survive finalisation until emitted
    assert s.drop_final(POLICY, 10**9) == 1  # only the hour window
    assert [(r.kind, r.event_count) for r in _checkpoint(s, "2@2")] == [(M, 2)]
    assert s.drop_final(POLICY, 10**9) == 1
    assert list(s.items()) == [] and s.open_windows() == {"minute": 0, "hour": 0}


def test_columnar_conversion_round_trips() -> None:
    s = InMemoryWindowStore(3)
    s.fold({(M, 60_000, 2**64 - 1, "ZZ"): [4, -D38], (H, 3_600_000, 0, "AA"): [1, D38],
            (M, 0, 17, "DE"): [2**64 - 1, -(2**64)]})
    table = s.snapshot()
    keys, values = raw_from_table(table.slice(1))  # a sliced table: offsets must be honoured
    kb, vb = keys.tobytes(), values.tobytes()
    back = table_from_raw(3, [kb[i * 15:(i + 1) * 15] for i in range(2)],
                          [vb[i * 24:(i + 1) * 24] for i in range(2)])
    assert back.equals(table.slice(1).combine_chunks())
    assert list(iter_rows(back)) == list(iter_rows(table))[1:]


def test_snapshot_chunks_are_a_fixed_view_and_restore_the_same_state(tmp_path: Path) -> None:
    s = LevelDBWindowStore(5, tmp_path / "a")
    s.fold({(M, 60_000 * i, i, "DE"): [i + 1, -(2**65) * i] for i in range(250)})
    s.fold({(H, 0, 2**64 - 1, "ZZ"): [4, D38]})
    _checkpoint(s, "1@1")
    chunks = s.snapshot_chunks(100)
    s.fold({(M, 0, 0, "DE"): [100, 100]})  # after the view was taken
    _checkpoint(s, "2@2")
    tables = list(chunks)
    assert [t.num_rows for t in tables] == [100, 100, 51]
    restored = LevelDBWindowStore(5, tmp_path / "b")
    for t in tables:
        restored.load_table(t)
    restored.commit("1@1", 1)
    expected = {k: v for k, v in s.items()}
    expected[(M, 0, 0, "DE")] = [1, 0]
    assert dict(restored.items()) == expected
    assert restored.open_windows() == {"minute": 250, "hour": 1}


def test_a_restore_counts_each_window_once_however_often_it_was_loaded(tmp_path: Path) -> None:
    """A later batch repeats windows of the snapshot (their newer values): the gauge counts
    distinct windows, not rows loaded."""
    s = LevelDBWindowStore(5, tmp_path / "a")
    s.fold({(M, 60_000 * i, i, "DE"): [1, i] for i in range(300)})
    s.fold({(H, 0, i, "DE"): [1, i] for i in range(7)})
    _checkpoint(s, "1@1")
    tables = list(s.snapshot_chunks(64))
    restored = LevelDBWindowStore(5, tmp_path / "b")
    for t in tables + tables[::2] + tables[:1]:
        restored.load_table(t)
    restored.commit("1@1", 1)
    assert restored.open_windows() == {"minute": 300, "hour": 7}
    assert dict(restored.items()) == dict(s.items())


def test_same_results_as_the_in_memory_store(tmp_path: Path) -> None:
    """Random folds, checkpoints and finalisations: both stores emit the same rows and hold
    the same open windows."""
    rnd = random.Random(11)
    mem = InMemoryWindowStore(1)
    ldb = LevelDBWindowStore(1, tmp_path / "p1")
    watermark = 0
    for step in range(60):
        deltas: dict[WindowKey, list[int]] = {}
        for _ in range(rnd.randrange(1, 80)):
            kind = rnd.choice((M, H))
            size = 60_000 if kind == M else 3_600_000
            start = (watermark + rnd.randrange(-30_000, 200_000)) // size * size
            if POLICY.is_final(WindowKind(kind), start, watermark) or start < 0:
                continue
            key = (kind, start, rnd.randrange(20), rnd.choice(("DE", "US")))
            d = deltas.setdefault(key, [0, 0])
            d[0] += 1
            d[1] += rnd.randrange(-(2**70), 2**70)
        mem.fold({k: list(v) for k, v in deltas.items()})
        ldb.fold({k: list(v) for k, v in deltas.items()})
        if step % 3 == 2:
            a = sorted(_checkpoint(mem, f"{step}@0"), key=lambda r: (r.kind, r.window_start_s, r.account_id,
                                                                    r.country))
            b = sorted(_checkpoint(ldb, f"{step}@0"), key=lambda r: (r.kind, r.window_start_s, r.account_id,
                                                                    r.country))
            assert a == b
            watermark += rnd.randrange(0, 40_000)
            assert mem.drop_final(POLICY, watermark) == ldb.drop_final(POLICY, watermark)
            assert mem.open_windows() == ldb.open_windows()
    assert dict(mem.items()) == dict(ldb.items())


def test_state_slots_are_exclusive_per_live_process(tmp_path: Path) -> None:
    a = StateSlot(tmp_path)
    b = StateSlot(tmp_path)  # the same process, a second holder: flock is per open file
    assert a.path != b.path
    a.release()
    c = StateSlot(tmp_path)
    assert c.path == a.path  # a freed slot (a dead process) is taken again, with its state
    b.release()
    c.release()


def test_an_empty_table_loads_nothing(tmp_path: Path) -> None:
    s = LevelDBWindowStore(0, tmp_path / "p")
    s.load_table(rows_to_table([]))
    assert list(s.items()) == [] and s.open_windows() == {"minute": 0, "hour": 0}


def test_counts_and_finalisation_survive_a_reopen(tmp_path: Path) -> None:
    s = LevelDBWindowStore(0, tmp_path / "p0")
    s.fold({(M, 0, 1, "DE"): [1, 1], (M, 60_000, 1, "DE"): [1, 1], (H, 0, 1, "DE"): [1, 1]})
    _checkpoint(s, "1@1")
    assert s.drop_final(POLICY, 120_000) == 1  # after the last commit, as the processor does
    s.close()
    s = LevelDBWindowStore(0, tmp_path / "p0")
    assert s.committed_ref() == "1@1"
    assert s.open_windows() == {"minute": 1, "hour": 1}
    assert s.drop_final(POLICY, 120_000) == 0
