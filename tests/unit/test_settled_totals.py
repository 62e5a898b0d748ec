"""The settled totals (app/processor/settled.py) a checkpoint adds to the ledger: per rollup
table and window start, the windows it drops as final, their events and their amount,
summed exactly (the ledger's columns are numeric: a total may pass Int128 even though no
window does). Checked against a plain Python sum over the same windows."""

from __future__ import annotations

import random
from pathlib import Path

from app.processor.leveldb_store import LevelDBOptions, LevelDBWindowStore
from app.processor.settled import settled_totals
from app.processor.state import InMemoryWindowStore, WindowStore, window_items
from app.processor.windows import LatenessPolicy, WindowKey, WindowKind

POLICY = LatenessPolicy(5_000, 60_000, 60_000)
M, H = int(WindowKind.MINUTE), int(WindowKind.HOUR)
INT128_MAX = (1 << 127) - 1


def _naive(stores: list[tuple[WindowStore, int]]) -> dict[tuple[str, int], list[int]]:
    out: dict[tuple[str, int], list[int]] = {}
    for store, watermark in stores:
        for (kind, start_ms, _a, _c), (count, amount) in window_items(*store.final_windows(POLICY, watermark)):
            t = out.setdefault((WindowKind(kind).table, start_ms), [0, 0, 0])
            t[0] += 1
            t[1] += count
            t[2] += amount
    return out


def _fill(store: WindowStore, rnd: random.Random, windows: int, amount: int | None = None) -> None:
    deltas: dict[WindowKey, list[int]] = {}
    for _ in range(windows):
        kind = rnd.choice((M, H))
        size = 60_000 if kind == M else 3_600_000
        key = (kind, rnd.randrange(0, 5 * 3_600_000) // size * size, rnd.randrange(1 << 64), rnd.choice(("DE", "US")))
        d = deltas.setdefault(key, [0, 0])
        d[0] += rnd.randrange(1, 1 << 20)
        d[1] = amount if amount is not None else rnd.randrange(-(2**100), 2**100)
    store.fold(deltas)
    store.take_dirty_table()
    store.prepare(1)


def test_settled_totals_are_the_exact_sums_of_the_final_windows(tmp_path: Path) -> None:
    rnd = random.Random(7)
    memory, disk = InMemoryWindowStore(0), LevelDBWindowStore(1, tmp_path / "p", LevelDBOptions(cache_windows=50))
    for store in (memory, disk):
        _fill(store, rnd, 400)
    stores: list[tuple[WindowStore, int]] = [(memory, 3 * 3_600_000), (disk, 4 * 3_600_000)]
    want = _naive(stores)
    assert sum(t[0] for t in want.values()) > 200, "the check must settle windows"
    assert settled_totals(stores, POLICY) == want
    disk.close()


def test_a_settled_total_beyond_int128_is_exact() -> None:
    store = InMemoryWindowStore(0)
    deltas: dict[WindowKey, list[int]] = {(M, 60_000, account, "DE"): [1, INT128_MAX] for account in range(8)}
    deltas.update({(M, 60_000, account, "US"): [1, -INT128_MAX - 1] for account in range(3)})
    store.fold(deltas)
    store.take_dirty_table()
    store.prepare(1)
    assert settled_totals([(store, 10 * 60_000)], POLICY) == {
        ("rollup_minute", 60_000): [11, 11, 8 * INT128_MAX + 3 * (-INT128_MAX - 1)]}


def test_nothing_final_settles_nothing() -> None:
    store = InMemoryWindowStore(0)
    _fill(store, random.Random(1), 50)
    assert settled_totals([(store, 0)], POLICY) == {}
