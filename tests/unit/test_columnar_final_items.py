"""The settled totals (app/processor/settled.py) sum `final_windows` after step 2 of a
checkpoint; step 4's `drop_final` then forgets windows. Every window is counted exactly once
only if the two agree: final_windows (called before the local commit) lists exactly the windows
drop_final drops right after it, with the values they had. Checked on the columnar stores
in every state they can be in: the in-memory one, a LevelDB store with its whole window
cache, one whose cache overflowed, one reopened (nothing cached), and with windows not yet
emitted (guarded: never dropped, never settled)."""

from __future__ import annotations

import random
from pathlib import Path

from app.processor.leveldb_store import LevelDBOptions, LevelDBWindowStore
from app.processor.state import InMemoryWindowStore, WindowStore, window_items
from app.processor.windows import LatenessPolicy, WindowKey, WindowKind

POLICY = LatenessPolicy(5_000, 60_000, 60_000)
M, H = int(WindowKind.MINUTE), int(WindowKind.HOUR)


def _random_deltas(rnd: random.Random, watermark: int) -> dict[WindowKey, list[int]]:
    deltas: dict[WindowKey, list[int]] = {}
    for _ in range(rnd.randrange(1, 80)):
        kind = rnd.choice((M, H))
        size = 60_000 if kind == M else 3_600_000
        start = (watermark + rnd.randrange(-30_000, 400_000)) // size * size
        if start < 0 or POLICY.is_final(WindowKind(kind), start, watermark):
            continue
        d = deltas.setdefault((kind, start, rnd.randrange(40), rnd.choice(("DE", "US"))), [0, 0])
        d[0] += 1
        d[1] += rnd.randrange(-(2**70), 2**70)
    return deltas


def _check_final_windows_match_drop_final(store: WindowStore, steps: int, seed: int, watermark: int = 0) -> tuple[int, int]:
    """Random checkpoints; at each, final_windows (after prepare) == what drop_final drops.
    Returns (the watermark reached, windows settled)."""
    rnd = random.Random(seed)
    settled = 0
    for step in range(steps):
        store.fold(_random_deltas(rnd, watermark))
        if step % 3 != 2:
            continue
        store.take_dirty_table()
        new_watermark = watermark + rnd.randrange(0, 90_000)
        if rnd.random() < 0.3:  # folded after the take: not emitted yet, so guarded from dropping
            store.fold(_random_deltas(rnd, new_watermark))
        store.prepare(step)
        keys, values = store.final_windows(POLICY, new_watermark)
        final = dict(window_items(keys, values))
        assert len(final) == len(keys), "a window listed twice"
        store.commit(f"{step}@0", step)
        before = {k: list(v) for k, v in store.items()}  # type: ignore[attr-defined]
        dropped = store.drop_final(POLICY, new_watermark)
        after = {k for k, _ in store.items()}  # type: ignore[attr-defined]
        gone = {k: v for k, v in before.items() if k not in after}
        assert dropped == len(gone)
        assert {k: list(v) for k, v in final.items()} == gone
        settled += len(gone)
        watermark = new_watermark
    return watermark, settled


def test_final_windows_are_what_drop_final_drops_in_memory() -> None:
    store = InMemoryWindowStore(0)
    _, settled = _check_final_windows_match_drop_final(store, 120, seed=1)
    assert settled > 100, "the run must finalise windows for the check to mean anything"


def test_final_windows_are_what_drop_final_drops_in_leveldb(tmp_path: Path) -> None:
    for name, options in (("whole", LevelDBOptions()), ("overflowing", LevelDBOptions(cache_windows=7))):
        store = LevelDBWindowStore(0, tmp_path / name, options)
        _, settled = _check_final_windows_match_drop_final(store, 120, seed=2)
        assert settled > 100, f"{name}: the run must finalise windows"
        store.close()


def test_final_windows_of_a_reopened_leveldb_store_come_from_disk(tmp_path: Path) -> None:
    store = LevelDBWindowStore(0, tmp_path / "p")
    watermark, _ = _check_final_windows_match_drop_final(store, 30, seed=3)
    store.close()
    store = LevelDBWindowStore(0, tmp_path / "p")  # nothing cached: the final ones are on disk only
    assert store.committed_ref() is not None
    _, settled = _check_final_windows_match_drop_final(store, 60, seed=4, watermark=watermark)
    assert settled > 50, "the reopened store must finalise windows it did not cache"
    store.close()
