"""The columnar emit path: `take_dirty_table` gives exactly the table that
`rows_to_table(take_dirty())` gives (same rows, same order, same types), for both stores,
including sums beyond int64 (the exact fallback) and account ids beyond int63; and
`tables_by_kind` splits rows per rollup table in input order."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from app.ledger.rows import WINDOW_ROW_SCHEMA, encode, iter_rows, rows_to_table
from app.processor.batch import tables_by_kind, window_table
from app.processor.leveldb_store import LevelDBWindowStore
from app.processor.state import InMemoryWindowStore, WindowKey
from app.processor.windows import WindowKind

M, H = WindowKind.MINUTE, WindowKind.HOUR


def _deltas(rng: random.Random, n: int, big: bool) -> dict[WindowKey, list[int]]:
    out: dict[WindowKey, list[int]] = {}
    for _ in range(n):
        kind = rng.choice((M, H))
        start = rng.randrange(0, 10) * kind.size_ms
        acc = rng.choice((0, 7, 2**63 + 5, 2**64 - 1, rng.randrange(2**64)))
        amount = rng.choice((-(2**63), 2**63 - 1, 5)) if big else rng.randrange(-1000, 1000)
        d = out.setdefault((kind, start, acc, rng.choice(("DE", "FR", "US"))), [0, 0])
        d[0] += 1
        d[1] += amount
    return out


def _stores(tmp_path: Path) -> list[tuple[object, object]]:
    return [(InMemoryWindowStore(3), InMemoryWindowStore(3)),
            (LevelDBWindowStore(3, tmp_path / "a"), LevelDBWindowStore(3, tmp_path / "b"))]


@pytest.mark.parametrize("big", [False, True])
def test_take_dirty_table_equals_rows_to_table(tmp_path: Path, big: bool) -> None:
    rng = random.Random(7)
    for a, b in _stores(tmp_path / str(big)):
        for rnd in range(3):  # later rounds update windows that exist already
            deltas = _deltas(rng, 300, big)
            a.fold({k: list(v) for k, v in deltas.items()})  # type: ignore[attr-defined]
            b.fold({k: list(v) for k, v in deltas.items()})  # type: ignore[attr-defined]
            expected = rows_to_table(a.take_dirty())  # type: ignore[attr-defined]
            got = b.take_dirty_table()  # type: ignore[attr-defined]
            assert got.schema == WINDOW_ROW_SCHEMA
            assert got.equals(expected)
            assert list(iter_rows(got)) == list(iter_rows(expected))
            assert encode(got) == encode(expected)
            for s in (a, b):
                s.prepare(rnd + 1)  # type: ignore[attr-defined]
                s.commit(f"ref-{rnd}", rnd + 1)  # type: ignore[attr-defined]
        assert b.take_dirty_table().num_rows == 0  # type: ignore[attr-defined]
        a.close()  # type: ignore[attr-defined]
        b.close()  # type: ignore[attr-defined]


def test_take_dirty_table_then_abort_reemits(tmp_path: Path) -> None:
    s = LevelDBWindowStore(0, tmp_path / "s")
    s.fold({(M, 60_000, 1, "DE"): [2, 3]})
    assert s.take_dirty_table().num_rows == 1
    s.abort()
    s.fold({(M, 60_000, 1, "DE"): [1, 1]})
    assert [(r.event_count, r.sum_amount) for r in iter_rows(s.take_dirty_table())] == [(3, 4)]
    s.close()


def test_tables_by_kind_keeps_partition_order() -> None:
    t0 = window_table(0, [(M, 0, 1, "DE"), (H, 0, 1, "DE"), (M, 60_000, 2, "FR")], [1, 1, 2], [5, 5, 2**70])
    t1 = window_table(1, [(H, 3_600_000, 9, "US"), (M, 0, 9, "US")], [4, 1], [-1, -(2**63)])
    by = tables_by_kind([t0, WINDOW_ROW_SCHEMA.empty_table(), t1])
    assert set(by) == {"rollup_minute", "rollup_hour"}
    assert [(r.partition, r.window_start_s, r.account_id, r.sum_amount) for r in iter_rows(by["rollup_minute"])] == [
        (0, 0, 1, 5), (0, 60, 2, 2**70), (1, 0, 9, -(2**63))]
    assert [(r.partition, r.window_start_s, r.account_id) for r in iter_rows(by["rollup_hour"])] == [
        (0, 0, 1), (1, 3600, 9)]
    assert tables_by_kind([WINDOW_ROW_SCHEMA.empty_table()]) == {}


@pytest.mark.parametrize("amount", [5, -5, 2**63 - 1, -(2**63), 2**64 + 3, -(2**100)])
def test_prepare_packs_values_exactly(tmp_path: Path, amount: int) -> None:
    s = LevelDBWindowStore(0, tmp_path / "s")
    s.fold({(M, 0, 2**64 - 1, "DE"): [2, amount], (H, 0, 1, "FR"): [1, -1]})
    s.take_dirty_table()
    s.prepare(1)
    s.commit("ref", 1)
    s.close()
    s = LevelDBWindowStore(0, tmp_path / "s")
    assert dict(s.items()) == {(M, 0, 2**64 - 1, "DE"): [2, amount], (H, 0, 1, "FR"): [1, -1]}
    s.close()
