"""The processor's columnar path (app/processor/deltas.py, open_windows.py, both stores):
what fold_run appends as columns, grouped once per checkpoint and added to the open
windows, equals the per-record dict fold; exact Int128 sums; a LevelDB store whose window
cache overflows (or that was reopened) reads the windows it no longer caches from disk;
and a hash shared by two keys is detected and survived, never trusted."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from app.ledger.rows import iter_rows
from app.processor import deltas as deltas_mod
from app.processor.deltas import HashCollision, Keys, Values, group
from app.processor.leveldb_store import LevelDBOptions, LevelDBWindowStore
from app.processor.open_windows import FIRST_SEED
from app.processor.state import InMemoryWindowStore
from app.processor.windows import FoldRules, LatenessPolicy, Position, WindowKey, WindowKind, fold_run
from tests.unit.test_fold_run import Counted, random_log

POLICY = LatenessPolicy(5_000, 60_000, 60_000)
M, H = int(WindowKind.MINUTE), int(WindowKind.HOUR)


def _rows(table) -> dict[WindowKey, list[int]]:  # type: ignore[no-untyped-def]
    return {(r.kind, r.window_start_s * 1000, r.account_id, r.country): [r.event_count, r.sum_amount]
            for r in iter_rows(table)}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_columns_folded_into_a_store_equal_the_dict_fold(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    records = random_log(rng, 3_000)
    rules = FoldRules(POLICY, 1 << 20)
    stores = [InMemoryWindowStore(0), LevelDBWindowStore(0, tmp_path / "s")]
    for store in stores:
        want: dict[WindowKey, list[int]] = {}
        at_dict = at_cols = Position(0, None, None)
        emitted: dict[WindowKey, list[int]] = {}
        i = 0
        while i < len(records):  # runs of random length, a checkpoint every few runs
            j = i + rng.randint(1, 400)
            at_dict = fold_run(records[i:j], at_dict, rules, want, Counted())
            at_cols = fold_run(records[i:j], at_cols, rules, store.deltas, Counted())
            assert at_cols == at_dict
            if rng.random() < 0.4:
                emitted.update(_rows(store.take_dirty_table()))
                store.prepare(j)
                store.commit(f"{j}@0", j)
            i = j
        emitted.update(_rows(store.take_dirty_table()))
        assert emitted == {(int(k[0]), k[1], k[2], k[3]): v for k, v in want.items()}
        store.close()


@pytest.mark.parametrize("n", [1, 7, 5_000])
def test_group_sums_are_exact_int128(n: int) -> None:
    rng = np.random.default_rng(n)
    sums = [int(x) for x in rng.integers(-(2**62), 2**62, n)]
    sums += [2**126 - 1, -(2**126), 2**64 + 5, -(2**64) - 5, 2**63, -(2**63) - 1][: max(0, n - 1)]
    accounts = rng.integers(0, 3, len(sums)).astype(np.uint64)
    keys = Keys(np.zeros(len(sums), np.uint8), np.zeros(len(sums), np.uint32), accounts,
                np.zeros(len(sums), np.uint16))
    g = group(keys, Values.of_ints([1] * len(sums), sums), seed=5)
    want: dict[int, int] = {}
    for a, s in zip(accounts.tolist(), sums, strict=True):
        want[a] = want.get(a, 0) + s
    assert dict(zip(g.keys.account.tolist(), g.values.sums(), strict=True)) == want
    assert sorted(g.values.count.tolist()) == sorted(c for c in np.bincount(accounts.astype(np.int64)).tolist() if c)


def _random_checkpoints(stores: list, steps: int, seed: int, watermark: int = 0) -> int:  # type: ignore[type-arg]
    """Random folds, checkpoints and finalisations on every store; they must agree. Returns
    the watermark reached (it never goes back)."""
    rnd = random.Random(seed)
    for step in range(steps):
        deltas: dict[WindowKey, list[int]] = {}
        for _ in range(rnd.randrange(1, 60)):
            kind = rnd.choice((M, H))
            size = 60_000 if kind == M else 3_600_000
            start = (watermark + rnd.randrange(-30_000, 400_000)) // size * size
            if start < 0 or POLICY.is_final(WindowKind(kind), start, watermark):
                continue
            d = deltas.setdefault((kind, start, rnd.randrange(30), rnd.choice(("DE", "US"))), [0, 0])
            d[0] += 1
            d[1] += rnd.randrange(-(2**70), 2**70)
        for s in stores:
            s.fold({k: list(v) for k, v in deltas.items()})
        if step % 3 == 2:
            emitted = [sorted(_rows(s.take_dirty_table()).items()) for s in stores]
            assert all(e == emitted[0] for e in emitted)
            for s in stores:
                s.prepare(step)
                s.commit(f"{step}@0", step)
            watermark += rnd.randrange(0, 60_000)
            assert len({s.drop_final(POLICY, watermark) for s in stores}) == 1
            assert all(s.open_windows() == stores[0].open_windows() for s in stores)
    return watermark


def test_a_leveldb_store_whose_cache_overflows_reads_disk(tmp_path: Path) -> None:
    mem = InMemoryWindowStore(1)
    small = LevelDBWindowStore(1, tmp_path / "small", LevelDBOptions(cache_windows=5))
    big = LevelDBWindowStore(1, tmp_path / "big")
    _random_checkpoints([mem, small, big], 90, seed=3)
    assert dict(mem.items()) == dict(small.items()) == dict(big.items())


def test_a_reopened_leveldb_store_reads_the_windows_it_did_not_cache(tmp_path: Path) -> None:
    mem = InMemoryWindowStore(1)
    ldb = LevelDBWindowStore(1, tmp_path / "p")
    watermark = _random_checkpoints([mem, ldb], 30, seed=4)
    ldb.close()
    ldb = LevelDBWindowStore(1, tmp_path / "p")  # reused: nothing cached, everything on disk
    assert ldb.committed_ref() is not None
    _random_checkpoints([mem, ldb], 30, seed=5, watermark=watermark)
    assert dict(mem.items()) == dict(ldb.items())


def test_a_hash_shared_by_two_keys_is_detected_and_survived(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = deltas_mod.Keys.hash

    def colliding(self: Keys, seed: int) -> np.ndarray:
        h = real(self, seed)
        if seed == FIRST_SEED:  # every key of account 1 or 2 hashes alike under the first seed
            h[(self.account == 1) | (self.account == 2)] = 12345
        return h

    monkeypatch.setattr(deltas_mod.Keys, "hash", colliding)
    keys = Keys(np.zeros(2, np.uint8), np.zeros(2, np.uint32), np.array([1, 2], np.uint64), np.zeros(2, np.uint16))
    with pytest.raises(HashCollision):
        group(keys, Values.of_ints([1, 1], [1, 1]), FIRST_SEED)
    for store in (InMemoryWindowStore(0), LevelDBWindowStore(0, tmp_path / "c")):
        store.fold({(M, 0, 1, "DE"): [1, 10]})
        assert _rows(store.take_dirty_table()) == {(M, 0, 1, "DE"): [1, 10]}
        store.fold({(M, 0, 2, "DE"): [1, 20], (M, 0, 1, "DE"): [1, 1]})  # 2 collides with 1 in the cache
        assert _rows(store.take_dirty_table()) == {(M, 0, 1, "DE"): [2, 11], (M, 0, 2, "DE"): [1, 20]}
        store.close()
