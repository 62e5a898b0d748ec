"""Open-window state of one input partition.

`WindowStore` is the seam: the in-memory store below keeps everything in a dict; a
LevelDB-backed store (state beyond RAM) implements the same protocol. Values are a
window's full (event_count, sum_amount); `dirty` is what changed since the last checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

import pyarrow as pa

from app.ledger.rows import WindowRow, rows_to_table
from app.processor.windows import KINDS, LatenessPolicy, WindowKind

# (kind, window_start_ms, account_id, country)
WindowKey = tuple[int, int, int, str]


class WindowStore(Protocol):
    partition: int

    def fold(self, deltas: dict[WindowKey, list[int]]) -> None:
        """Add per-window (count, amount) increments from one micro-batch."""

    def take_dirty(self) -> list[WindowRow]:
        """Full values of every window changed since the last call; clears the dirty set."""

    def drop_final(self, policy: LatenessPolicy, watermark_ms: int | None) -> int:
        """Forget windows that can no longer change; returns how many were dropped."""

    def snapshot(self) -> pa.Table:
        """Every open window, for the ledger's snapshot."""

    def load(self, rows: Iterable[WindowRow]) -> None:
        """Restore committed values (later rows overwrite earlier ones)."""

    def open_windows(self) -> dict[str, int]:
        """Count of open windows per kind label."""

    def close(self) -> None: ...


class InMemoryWindowStore:
    def __init__(self, partition: int) -> None:
        self.partition = partition
        self._values: dict[WindowKey, list[int]] = {}
        self._dirty: set[WindowKey] = set()
        # (kind, window_start_ms) -> keys, so finalisation touches only closed windows
        self._by_start: dict[tuple[int, int], set[WindowKey]] = {}

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
        self._dirty = set()
        return rows

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

    def snapshot(self) -> pa.Table:
        p = self.partition
        return rows_to_table(WindowRow(k[0], p, k[1] // 1000, k[2], k[3], v[0], v[1])
                             for k, v in self._values.items())

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
        self._by_start.clear()
