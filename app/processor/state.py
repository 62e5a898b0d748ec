"""Open-window state of one input partition.

`WindowStore` is the seam: the in-memory store below keeps everything in a dict; the
LevelDB store (`leveldb_store.py`, state beyond RAM) implements the same protocol. Values
are a window's full (event_count, sum_amount); `dirty` is what changed since the last
checkpoint.

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

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import pyarrow as pa

from app.ledger.rows import WindowRow, iter_rows, rows_to_table
from app.processor.batch import counts_sums, window_table
from app.processor.windows import KINDS, LatenessPolicy, WindowKey, WindowKind

__all__ = ["InMemoryWindowStore", "WindowKey", "WindowStore"]  # WindowKey: defined in windows.py


class WindowStore(Protocol):
    partition: int

    def committed_ref(self) -> str | None:
        """The ledger checkpoint this store's content is exactly, or None if unknown."""

    def reset(self) -> None:
        """Forget everything (before a rebuild from the ledger)."""

    def fold(self, deltas: dict[WindowKey, list[int]]) -> None:
        """Add per-window (count, amount) increments from one micro-batch."""

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

    def final_items(self, policy: LatenessPolicy, watermark_ms: int | None,
                    ) -> Iterator[tuple[WindowKey, Sequence[int]]]:
        """The windows `drop_final(policy, watermark_ms)` would drop now, with their values
        (called after `prepare`: the latest ones). The settled totals (app/processor/settled.py)."""

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


class InMemoryWindowStore:
    """Everything in dicts: fast, bounded only by the number of open windows. Nothing
    survives the process, so `committed_ref()` is None and every assignment rebuilds."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self._values: dict[WindowKey, list[int]] = {}
        self._dirty: set[WindowKey] = set()
        self._pending: set[WindowKey] = set()
        # (kind, window_start_ms) -> keys, so finalisation touches only closed windows
        self._by_start: dict[tuple[int, int], set[WindowKey]] = {}

    def committed_ref(self) -> str | None:
        return None

    def reset(self) -> None:
        self.close()

    def prepare(self, next_offset: int) -> None:
        pass  # nothing durable to write

    def commit(self, ref: str, next_offset: int) -> None:
        self._pending = set()

    def abort(self) -> None:
        self._dirty |= self._pending
        self._pending = set()

    def fold(self, deltas: dict[WindowKey, list[int]]) -> None:
        values, by_start = self._values, self._by_start
        for key, (count, amount) in deltas.items():
            v = values.get(key)
            if v is None:
                values[key] = [count, amount]
                slot = (key[0], key[1])
                keys = by_start.get(slot)
                if keys is None:
                    by_start[slot] = {key}
                else:
                    keys.add(key)
            else:
                v[0] += count
                v[1] += amount
        self._dirty.update(deltas)

    def take_dirty(self) -> list[WindowRow]:
        p, values = self.partition, self._values
        rows = [WindowRow(k[0], p, k[1] // 1000, k[2], k[3], values[k][0], values[k][1])
                for k in self._dirty if k in values]
        self._pending |= self._dirty
        self._dirty = set()
        return rows

    def take_dirty_table(self) -> pa.Table:
        values = self._values
        keys = [k for k in self._dirty if k in values]
        counts, sums = counts_sums(values, keys)
        table = window_table(self.partition, keys, counts, sums)
        self._pending |= self._dirty
        self._dirty = set()
        return table

    def drop_final(self, policy: LatenessPolicy, watermark_ms: int | None) -> int:
        dropped = 0
        for slot in [s for s in self._by_start if policy.is_final(WindowKind(s[0]), s[1], watermark_ms)]:
            for key in self._by_start.pop(slot):
                if key in self._dirty:
                    # never drop what has not been emitted: the next checkpoint emits it first
                    self._by_start.setdefault(slot, set()).add(key)
                    continue
                del self._values[key]
                dropped += 1
        return dropped

    def final_items(self, policy: LatenessPolicy, watermark_ms: int | None) -> Iterator[tuple[WindowKey, list[int]]]:
        """The windows `drop_final` would drop now, with their values."""
        for slot, keys in list(self._by_start.items()):
            if policy.is_final(WindowKind(slot[0]), slot[1], watermark_ms):
                yield from ((k, self._values[k]) for k in keys)

    def snapshot(self) -> pa.Table:
        p = self.partition
        return rows_to_table(WindowRow(k[0], p, k[1] // 1000, k[2], k[3], v[0], v[1])
                             for k, v in self._values.items())

    def snapshot_chunks(self, rows_per_chunk: int) -> Iterator[pa.Table]:
        # copied now: the dict keeps changing while the chunks are written
        p, items = self.partition, list(self._values.items())
        tables = [rows_to_table(WindowRow(k[0], p, k[1] // 1000, k[2], k[3], v[0], v[1])
                                for k, v in items[i:i + rows_per_chunk])
                  for i in range(0, len(items), rows_per_chunk)]
        return iter(tables)

    def load_table(self, table: pa.Table) -> None:
        self.load(iter_rows(table))

    def load(self, rows: Iterable[WindowRow]) -> None:
        for r in rows:
            key = (r.kind, r.window_start_s * 1000, r.account_id, r.country)
            if key not in self._values:
                self._by_start.setdefault((key[0], key[1]), set()).add(key)
            self._values[key] = [r.event_count, r.sum_amount]

    def open_windows(self) -> dict[str, int]:
        counts = {k.label: 0 for k in KINDS}
        for (kind, _start), keys in self._by_start.items():
            counts[WindowKind(kind).label] += len(keys)
        return counts

    def items(self) -> Iterator[tuple[WindowKey, list[int]]]:
        return iter(self._values.items())

    def close(self) -> None:
        self._values.clear()
        self._dirty.clear()
        self._pending.clear()
        self._by_start.clear()
