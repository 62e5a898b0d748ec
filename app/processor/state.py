"""Open-window state of one input partition.

`WindowStore` is the seam: the in-memory store below keeps everything in a dict; the
LevelDB store (`leveldb_store.py`, state beyond RAM) implements the same protocol. Values
are a window's full (event_count, sum_amount). Folding only appends columns to `deltas`
(app/processor/deltas.py); `take_dirty_table` groups them once per checkpoint, adds them to
the windows' values (looked up in the columnar `OpenWindows`) and emits the new values:
the "dirty" windows are the keys folded since the last take.

Lifecycle of one checkpoint, as the processor drives it (docs/state-and-rebalancing.md):

    take_dirty()          rows to emit; the dirty set becomes the pending set
    prepare(next_offset)  durable local write of the pending values, marked "prepared"
    -- Ledger.commit --   the commit point
    commit(ref)           local state marked as reflecting checkpoint `ref`
    abort()               (instead of commit, when the ledger refused) pending -> dirty again

`committed_ref()` is what reconciliation compares with the ledger's last checkpoint of the
partition: equal means the local state is exactly the ledger's; anything else (None,
prepared, another ref) means it must be rebuilt from the ledger.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

import numpy as np
import pyarrow as pa

from app.ledger.rows import WindowRow, iter_rows, rows_to_table
from app.processor.batch import rows_table, table_columns
from app.processor.deltas import CODE_OF, COUNTRY_OF, HashCollision, Keys, Values, WindowDeltas
from app.processor.open_windows import OpenWindows
from app.processor.windows import KINDS, LatenessPolicy, WindowKey

__all__ = ["InMemoryWindowStore", "WindowKey", "WindowStore"]  # WindowKey: defined in windows.py


class WindowStore(Protocol):
    partition: int

    def committed_ref(self) -> str | None:
        """The ledger checkpoint this store's content is exactly, or None if unknown."""

    def reset(self) -> None:
        """Forget everything (before a rebuild from the ledger)."""

    deltas: WindowDeltas  # what was folded since the last take: fold_run appends to it

    def fold(self, deltas: dict[WindowKey, list[int]]) -> None:
        """Add per-window (count, amount) increments (as fold_run's dict gives them)."""

    def take_dirty(self) -> list[WindowRow]:
        """Full values of every window changed since the last call; they become pending."""

    def take_dirty_table(self) -> pa.Table:
        """take_dirty() as one table of window rows, in the same order (the emit hot path)."""

    def prepare(self, next_offset: int) -> None:
        """Write the pending values locally, marked as not yet committed."""

    def commit(self, ref: str, next_offset: int) -> None:
        """The ledger committed checkpoint `ref`: the local state now reflects it."""

    def abort(self) -> None:
        """The ledger refused the checkpoint: pending values are dirty again."""

    def drop_final(self, policy: LatenessPolicy, watermark_ms: int | None) -> int:
        """Forget windows that can no longer change (never a dirty or pending one);
        returns how many were dropped."""

    def final_windows(self, policy: LatenessPolicy, watermark_ms: int | None) -> tuple[Keys, Values]:
        """The windows `drop_final(policy, watermark_ms)` would drop now, with their values
        (called after `prepare`: the latest ones), as columns. The settled totals
        (app/processor/settled.py)."""

    def snapshot_chunks(self, rows_per_chunk: int) -> Iterator[pa.Table]:
        """Every open window as of now, in tables of at most rows_per_chunk rows. The view
        is fixed when this is called: later folds and commits do not show in it."""

    def snapshot(self) -> pa.Table:
        """Every open window in one table (small states and tests)."""

    def load(self, rows: Iterable[WindowRow]) -> None:
        """Restore committed values (later rows overwrite earlier ones)."""

    def load_table(self, table: pa.Table) -> None:
        """load() for a table of window rows (the ledger's payloads)."""

    def open_windows(self) -> dict[str, int]:
        """Count of open windows per kind label."""

    def close(self) -> None: ...


class ColumnarWindowStore:
    """The fold and emit half both stores share: deltas grouped per checkpoint, values in
    OpenWindows. Subclasses say where a window missing from OpenWindows may still be
    (`_missing`) and what is durable."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.deltas = WindowDeltas()
        self._open = OpenWindows()
        self._pending: list[tuple[Keys, Values]] = []  # taken, not yet committed

    def fold(self, deltas: dict[WindowKey, list[int]]) -> None:
        if not deltas:
            return
        keys = list(deltas)
        kind, start, account, country = zip(*keys, strict=True)
        self.deltas.add(Keys(np.array(kind, np.uint8), (np.array(start, np.int64) // 1000).astype(np.uint32),
                             np.array(account, np.uint64), np.array([CODE_OF[c] for c in country], np.uint16)),
                        Values.of_ints([v[0] for v in deltas.values()], [v[1] for v in deltas.values()]))

    def take_dirty_table(self) -> pa.Table:
        keys, values = self._take()
        if len(keys):
            self._pending.append((keys, values))
        return rows_table(self.partition, keys, values)

    def take_dirty(self) -> list[WindowRow]:
        return list(iter_rows(self.take_dirty_table()))

    def _take(self) -> tuple[Keys, Values]:
        """Group the deltas, add them to the windows' values; returns the keys and new values."""
        while True:
            try:
                g = self.deltas.grouped(self._open.seed)
                if g is None:
                    return Keys.empty(), Values.zeros(0)
                pos, found = self._open.find(g.keys, g.hashes)
                break
            except HashCollision:
                self._open.reseed()
        old = Values.zeros(len(g))
        if found.any():
            got = self._open.get(pos[found])
            old.count[found], old.lo[found], old.hi[found] = got.count, got.lo, got.hi
        if not found.all():
            self._missing(g.keys, old, ~found)
        new = old.plus(g.values)
        self._open.put(g.keys, g.hashes, new, pos, found)
        self.deltas.clear()
        return g.keys, new

    def _missing(self, keys: Keys, old: Values, missing: np.ndarray) -> None:
        """Fill `old` for keys OpenWindows does not hold (new windows stay zero)."""

    def _absorb(self) -> None:
        """Fold the deltas into the values without emitting them (they stay dirty)."""
        keys, _ = self._take()
        self.deltas.add(keys, Values.zeros(len(keys)))

    def abort(self) -> None:
        for keys, _values in self._pending:  # emitted again at the next take, with current values
            self.deltas.add(keys, Values.zeros(len(keys)))
        self._pending = []

    def _guarded(self, with_pending: bool) -> set[tuple[int, int]]:
        """(kind, start_s) of windows not emitted yet: never dropped."""
        guarded = self.deltas.buckets()
        if with_pending:
            for keys, _ in self._pending:
                b = np.unique(keys.bucket())
                guarded |= {(int(x) >> 32, int(x) & 0xFFFFFFFF) for x in b.tolist()}
        return guarded


class InMemoryWindowStore(ColumnarWindowStore):
    """Everything in RAM (OpenWindows, 47 bytes per window): fast, bounded only by the number
    of open windows. Nothing survives the process, so `committed_ref()` is None and every
    assignment rebuilds."""

    def committed_ref(self) -> str | None:
        return None

    def reset(self) -> None:
        self.close()

    def prepare(self, next_offset: int) -> None:
        pass  # nothing durable to write

    def commit(self, ref: str, next_offset: int) -> None:
        self._pending = []

    def drop_final(self, policy: LatenessPolicy, watermark_ms: int | None) -> int:
        final = self._open.final_mask(final_stops(policy, watermark_ms), self._guarded(False))
        self._open.drop(final)
        return int(final.sum())

    def final_windows(self, policy: LatenessPolicy, watermark_ms: int | None) -> tuple[Keys, Values]:
        """The windows `drop_final` would drop now, with their values."""
        final = self._open.final_mask(final_stops(policy, watermark_ms), self._guarded(False))
        return self._open.keys.take(final), self._open.values.take(final)

    def snapshot(self) -> pa.Table:
        self._absorb()
        return rows_table(self.partition, *self._open.sorted_rows())

    def snapshot_chunks(self, rows_per_chunk: int) -> Iterator[pa.Table]:
        self._absorb()
        keys, values = self._open.sorted_rows()  # copies: later folds do not show
        n = len(keys)
        return iter([rows_table(self.partition, keys.take(np.s_[i:i + rows_per_chunk]),
                                values.take(np.s_[i:i + rows_per_chunk])) for i in range(0, n, rows_per_chunk)])

    def load_table(self, table: pa.Table) -> None:
        if table.num_rows:
            self._open.assign(*table_columns(table))

    def load(self, rows: Iterable[WindowRow]) -> None:
        self.load_table(rows_to_table(rows))

    def open_windows(self) -> dict[str, int]:
        counts = self._open.counts(len(KINDS))
        return {k.label: counts[k] for k in KINDS}

    def items(self) -> Iterator[tuple[WindowKey, list[int]]]:
        self._absorb()
        return window_items(*self._open.sorted_rows())

    def close(self) -> None:
        self._open.clear()
        self.deltas.clear()
        self._pending = []


def window_items(keys: Keys, values: Values) -> Iterator[tuple[WindowKey, list[int]]]:
    """Columns as (window key, [count, sum]) pairs (the dict API: tests, settled totals)."""
    for kind, start, acc, code, count, total in zip(keys.kind.tolist(), keys.start_s.tolist(),
                                                      keys.account.tolist(), keys.country.tolist(),
                                                      values.count.tolist(), values.sums(), strict=True):
        yield (kind, start * 1000, acc, COUNTRY_OF[code]), [count, total]


def final_stops(policy: LatenessPolicy, watermark_ms: int | None) -> list[int]:
    """Per kind: windows starting (epoch s) below this are final under `watermark_ms`."""
    stops = []
    for kind in KINDS:
        bound_ms = policy.oldest_open_start_ms(kind, watermark_ms)
        stops.append(0 if bound_ms is None else min(max(-(-bound_ms // 1000), 0), (1 << 32) - 1))
    return stops
