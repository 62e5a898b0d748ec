"""Open-window state in LevelDB (plyvel): state beyond RAM, one database per partition.

One database per owned partition (`<state-dir>/slot-N/<topic>-<partition>/`), laid out as
leveldb_layout.py says: keys sort by (kind, window_start) first, so every final window of
a kind is one key range at the front and finalisation is a range scan + delete from where
the last one stopped; snapshots and restores convert whole columns with numpy.

Memory: LevelDB's block cache and write buffers are set by options (per partition), and so
is the read cache in front of LevelDB: the partition's open windows as numpy columns
(open_windows.py, 47 bytes per window, at most `cache_windows` of them). While that cache
holds every window of a (kind, window start) - always, for windows started since the
store opened, until it overflows - a checkpoint never reads LevelDB: a window missing from
the cache is new. Windows the cache may not hold (those of a reused store, or after an
overflow cleared it) are read with one LevelDB get each, as before. Nothing but the
bounded cache grows with the number of keys.

Writes happen once per checkpoint, never per event: `prepare` puts every pending value
and the "prepared" marker in one WriteBatch (atomic in LevelDB's log, keys in nearly
sorted order), `commit` replaces the marker with the ledger's checkpoint ref. See
state.py for the lifecycle and docs/exactly-once.md for the reconciliation rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import plyvel
import pyarrow as pa

from app.core.errors import FatalError
from app.ledger.rows import WINDOW_ROW_SCHEMA, WindowRow, rows_to_table
from app.processor.batch import table_columns
from app.processor.deltas import Keys, Values, count_distinct
from app.processor.leveldb_layout import (
    META_KEY,
    PREFIX,
    pack_columns,
    put_packed,
    table_from_raw,
    unpack_key,
    unpack_value,
)
from app.processor.state import ColumnarWindowStore, final_stops, window_items
from app.processor.state_slot import StateSlot
from app.processor.windows import KINDS, LatenessPolicy, WindowKey

__all__ = ["LevelDBOptions", "LevelDBWindowStore", "StateSlot"]  # StateSlot: in state_slot.py


@dataclass(frozen=True, slots=True)
class LevelDBOptions:
    """Per-partition LevelDB memory: block cache + up to two write buffers (the active and
    the one being flushed) + index/filter blocks of at most max_open_files tables."""

    cache_bytes: int = 32 * 1024 * 1024
    write_buffer_bytes: int = 8 * 1024 * 1024
    max_open_files: int = 200
    bloom_filter_bits: int = 10  # most folds of a new window miss: the filter saves the disk read
    cache_windows: int = 1_000_000  # open windows cached as columns (47 bytes each)


_COUNT_SEED = 0x0C0_0A7


class LevelDBWindowStore(ColumnarWindowStore):
    def __init__(self, partition: int, path: Path, options: LevelDBOptions | None = None) -> None:
        super().__init__(partition)
        self.path = path
        self.options = options or LevelDBOptions()
        self._windows = [0] * len(KINDS)
        self._recount = False
        self._final_from = [0] * len(KINDS)  # start_s below which a kind holds no key any more
        # per kind: the cache holds every window starting after this (-1: every window)
        self._cached_after = [-1] * len(KINDS)
        self._ref: str | None = None
        self._next_offset = 0
        # rows loaded by a restore, for the cache (None: more than it holds)
        self._restored: list[tuple[Keys, Values]] | None = []
        self._restored_rows = 0
        self._loaded: list[tuple[np.ndarray, np.ndarray]] = []  # (kind, key hash) of restored rows
        self._open_before_restore = False  # the store held windows before the rows loaded
        self._db = self._open_db()
        self._read_meta()

    # ---- database --------------------------------------------------------

    def _open_db(self) -> plyvel.DB:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        o = self.options
        try:
            return plyvel.DB(str(self.path), create_if_missing=True, lru_cache_size=o.cache_bytes,
                             write_buffer_size=o.write_buffer_bytes, max_open_files=o.max_open_files,
                             bloom_filter_bits=o.bloom_filter_bits)
        except plyvel.Error as e:
            raise FatalError(f"cannot open LevelDB state at {self.path}: {e}") from e

    def _read_meta(self) -> None:
        raw = self._db.get(META_KEY)
        meta = orjson.loads(raw) if raw else {}
        if meta.get("state") == "committed":
            self._ref = meta.get("checkpoint")
            self._next_offset = int(meta.get("next_offset", 0))
            self._windows = list(meta.get("windows", [0] * len(KINDS)))
            self._final_from = list(meta.get("final_from", [0] * len(KINDS)))
        else:
            self._ref = None
            self._recount = raw is not None
        self._cached_after = self._last_starts()  # what is on disk now is not in the cache
        self._open_before_restore = max(self._cached_after) >= 0

    def _last_starts(self) -> list[int]:
        """Per kind, the latest window start on disk (-1: none)."""
        out = []
        for kind in KINDS:
            last = next(self._db.iterator(start=PREFIX.pack(kind, 0), stop=PREFIX.pack(kind + 1, 0), reverse=True,
                                          include_value=False), None)
            out.append(-1 if last is None else PREFIX.unpack(last[:PREFIX.size])[1])
        return out

    def _meta(self, state: str, ref: str | None, next_offset: int) -> bytes:
        return orjson.dumps({"version": 1, "state": state, "checkpoint": ref, "partition": self.partition,
                             "next_offset": next_offset, "windows": self._counts(),
                             "final_from": self._final_from})

    def _counts(self) -> list[int]:
        if self._recount:
            counts = [0] * len(KINDS)
            for kind in KINDS:
                for _ in self._db.iterator(start=PREFIX.pack(kind, self._final_from[kind]),
                                           stop=PREFIX.pack(kind + 1, 0), include_value=False):
                    counts[kind] += 1
            self._windows, self._recount = counts, False
        return self._windows

    # ---- lifecycle (state.py) ---------------------------------------------

    def committed_ref(self) -> str | None:
        return self._ref

    def reset(self) -> None:
        self._db.close()
        plyvel.destroy_db(str(self.path))
        self._open.clear()
        self.deltas.clear()
        self._pending = []
        self._windows, self._recount, self._final_from = [0] * len(KINDS), False, [0] * len(KINDS)
        self._cached_after = [-1] * len(KINDS)
        self._restored, self._restored_rows, self._open_before_restore, self._loaded = [], 0, False, []
        self._ref = None
        self._db = self._open_db()

    def _missing(self, keys: Keys, old: Values, missing: np.ndarray) -> None:
        """A window missing from the cache is new unless it may be on disk only: read those."""
        after = np.array(self._cached_after, dtype=np.int64)[keys.kind]
        unsure = missing & (keys.start_s.astype(np.int64) <= after)
        if unsure.any():
            idx = np.flatnonzero(unsure)
            packed, _ = pack_columns(keys.take(idx), None, in_put_order=False)
            for j, raw in zip(idx.tolist(), map(self._db.get, packed), strict=True):
                if raw is not None:
                    count, total = unpack_value(raw)
                    old.count[j], old.lo[j], old.hi[j] = count, total & 0xFFFF_FFFF_FFFF_FFFF, total >> 64
                    missing[j] = False  # on disk: not a new window
        new = np.bincount(keys.kind[missing], minlength=len(KINDS)).tolist()
        for kind in KINDS:
            self._windows[kind] += new[kind]

    def prepare(self, next_offset: int) -> None:
        parts = self._pending
        keys = Keys.concat([k for k, _ in parts]) if parts else Keys.empty()
        values = Values.concat([v for _, v in parts]) if parts else Values.zeros(0)
        if len(parts) > 1:  # a checkpoint that neither committed nor aborted: the latest value wins
            keep = keys.last_of_each()
            keys, values = keys.take(keep), values.take(keep)
        packed_keys, packed_values = pack_columns(keys, values)
        with self._db.write_batch() as wb:
            put_packed(wb, packed_keys, packed_values)
            wb.put(META_KEY, self._meta("prepared", self._ref, next_offset))
        self._ref = None  # ahead of the ledger until commit() says otherwise

    def commit(self, ref: str, next_offset: int) -> None:
        self._settle()
        self._db.put(META_KEY, self._meta("committed", ref, next_offset))
        self._ref, self._next_offset = ref, next_offset
        self._pending = []
        if len(self._open) > self.options.cache_windows:  # overflow: everything is on disk now
            self._forget_cache()

    def _forget_cache(self) -> None:
        for kind in KINDS:
            starts = self._open.keys.start_s[self._open.keys.kind == kind]
            if starts.size:
                self._cached_after[kind] = max(self._cached_after[kind], int(starts.max()))
        self._open.clear()

    def drop_final(self, policy: LatenessPolicy, watermark_ms: int | None) -> int:
        self._settle()
        stops = final_stops(policy, watermark_ms)
        guarded = self._guarded(True)
        final = self._open.final_mask(stops, guarded)
        cached = self._open.keys.take(final)
        self._open.drop(final)
        dropped = 0
        for kind in KINDS:
            start_s, stop_s = self._final_from[kind], stops[kind]
            if stop_s <= start_s:
                continue
            kept = any(k == kind and start_s <= s < stop_s for k, s in guarded)
            with self._db.write_batch() as wb:
                if self._cached_after[kind] < start_s and not kept:  # the cache knew every key of the range
                    doomed, _ = pack_columns(cached.take(cached.kind == kind), None)
                else:
                    doomed = list(self._db.iterator(start=PREFIX.pack(kind, start_s), stop=PREFIX.pack(kind, stop_s),
                                                    include_value=False))
                    if kept:
                        doomed = [kb for kb in doomed if (kind, PREFIX.unpack(kb[:PREFIX.size])[1]) not in guarded]
                for kb in doomed:
                    wb.delete(kb)
                dropped += len(doomed)
                if not self._recount:
                    self._windows[kind] -= len(doomed)
                if not kept:
                    self._final_from[kind] = stop_s
                if self._ref is not None and not self._recount:
                    # still that checkpoint's state (minus windows final under its watermark,
                    # which a rebuild drops too); the counts must say so
                    wb.put(META_KEY, self._meta("committed", self._ref, self._next_offset))
        return dropped

    def final_windows(self, policy: LatenessPolicy, watermark_ms: int | None) -> tuple[Keys, Values]:
        """The windows `drop_final` will drop at step 4, with their values (called after
        prepare: the latest). Mirrors drop_final's choice per kind: from the cache when it
        knows every key of the range, else from disk; guarded as drop_final will guard
        (after the local commit nothing is pending, only deltas not taken yet)."""
        self._settle()
        stops = final_stops(policy, watermark_ms)
        guarded = self._guarded(False)
        final = self._open.final_mask(stops, guarded)
        cached_keys, cached_values = self._open.keys.take(final), self._open.values.take(final)
        parts: list[tuple[Keys, Values]] = []
        for kind in KINDS:
            start_s, stop_s = self._final_from[kind], stops[kind]
            if stop_s <= start_s:
                continue
            kept = any(k == kind and start_s <= s < stop_s for k, s in guarded)
            if self._cached_after[kind] < start_s and not kept:
                mine = cached_keys.kind == kind
                parts.append((cached_keys.take(mine), cached_values.take(mine)))
                continue
            entries = [(kb, v) for kb, v in self._db.iterator(start=PREFIX.pack(kind, start_s),
                                                              stop=PREFIX.pack(kind, stop_s))
                       if not (kept and (kind, PREFIX.unpack(kb[:PREFIX.size])[1]) in guarded)]
            if entries:
                raw_keys, raw_values = zip(*entries, strict=True)
                parts.append(table_columns(table_from_raw(self.partition, list(raw_keys), list(raw_values))))
        if not parts:
            return Keys.empty(), Values.zeros(0)
        return Keys.concat([k for k, _ in parts]), Values.concat([v for _, v in parts])

    # ---- snapshot and restore ---------------------------------------------

    def snapshot_chunks(self, rows_per_chunk: int) -> Iterator[pa.Table]:
        snap = self._db.snapshot()  # a fixed view: later prepares and drops do not show
        starts = list(self._final_from)

        def chunks() -> Iterator[pa.Table]:
            keys: list[bytes] = []
            values: list[bytes] = []
            try:
                for kind in KINDS:
                    for k, v in snap.iterator(start=PREFIX.pack(kind, starts[kind]),
                                              stop=PREFIX.pack(kind + 1, 0)):
                        keys.append(k)
                        values.append(v)
                        if len(keys) >= rows_per_chunk:
                            yield table_from_raw(self.partition, keys, values)
                            keys, values = [], []
                if keys:
                    yield table_from_raw(self.partition, keys, values)
            finally:
                snap.close()
        return chunks()

    def snapshot(self) -> pa.Table:
        tables = list(self.snapshot_chunks(1 << 20))
        return pa.concat_tables(tables) if tables else WINDOW_ROW_SCHEMA.empty_table()

    def load_table(self, table: pa.Table) -> None:
        """Restore: these rows' values on disk; kept for the cache too while they fit in it
        (moved there in one piece by `_settle`, later rows overwriting earlier ones)."""
        if table.num_rows == 0:
            return
        keys, values = table_columns(table)
        packed_keys, packed_values = pack_columns(keys, values)
        with self._db.write_batch() as wb:
            put_packed(wb, packed_keys, packed_values)
        self._recount = True
        # the windows are counted at the end without reading them back: distinct 64-bit key
        # hashes (a shared hash would undercount the open-windows gauge by one, ~1e-7 odds)
        self._loaded.append((keys.kind, keys.hash(_COUNT_SEED)))
        if self._restored is not None and self._restored_rows + len(keys) <= self.options.cache_windows:
            self._restored.append((keys, values))
            self._restored_rows += len(keys)
            return
        self._restored, self._restored_rows = None, 0  # more than the cache holds: on disk only
        self._forget_cache()
        self._cached_after = self._last_starts()

    def _settle(self) -> None:
        """After a restore: the loaded rows into the cache at once, and the windows counted."""
        if self._restored:
            self._open.assign(Keys.concat([k for k, _ in self._restored]),
                              Values.concat([v for _, v in self._restored]))
        if self._loaded and self._recount and not self._open_before_restore:
            kinds = np.concatenate([k for k, _ in self._loaded])
            hashes = np.concatenate([h for _, h in self._loaded])
            self._windows = [count_distinct(hashes[kinds == kind]) for kind in KINDS]
            self._recount = False
        self._restored, self._restored_rows, self._loaded = [], 0, []
        self._open_before_restore = True

    def _take(self) -> tuple[Keys, Values]:
        self._settle()
        return super()._take()

    def load(self, rows: Iterable[WindowRow]) -> None:
        self.load_table(rows_to_table(rows))

    def open_windows(self) -> dict[str, int]:
        self._settle()
        counts = self._counts()
        return {k.label: counts[k] for k in KINDS}

    def items(self) -> Iterator[tuple[WindowKey, list[int]]]:
        """Committed content (tests)."""
        for k, v in self._db.iterator(stop=META_KEY):
            yield unpack_key(k), list(unpack_value(v))

    def close(self) -> None:
        if not self._db.closed:
            self._db.close()
        self._restored, self._restored_rows, self._loaded = [], 0, []
        self._open.clear()
        self.deltas.clear()
        self._pending = []

