"""Open-window state in LevelDB (plyvel): state beyond RAM, one database per partition.

One database per owned partition (`<state-dir>/slot-N/<topic>-<partition>/`), laid out as
leveldb_layout.py says: keys sort by (kind, window_start) first, so every final window of
a kind is one key range at the front and finalisation is a range scan + delete from where
the last one stopped; snapshots and restores convert whole columns with numpy.

Memory: LevelDB's block cache and write buffers are set by options (per partition); the
Python side holds only the windows changed since the last checkpoint (`dirty`, bounded by
--batch-rows because a checkpoint is forced at that many) and the previous checkpoint's
values as a read cache (`clean`, same bound). Nothing grows with the number of keys.

Writes happen once per checkpoint, never per event: `prepare` puts every pending value
and the "prepared" marker in one WriteBatch (atomic in LevelDB's log), `commit` replaces
the marker with the ledger's checkpoint ref. See state.py for the lifecycle and
docs/exactly-once.md for the reconciliation rule.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import plyvel
import pyarrow as pa

from app.core.errors import FatalError
from app.ledger.rows import WINDOW_ROW_SCHEMA, WindowRow
from app.processor.leveldb_layout import (
    KEY,
    MAX_START_S,
    META_KEY,
    PREFIX,
    VALUE,
    VALUE_DTYPE,
    pack_value,
    raw_from_table,
    table_from_packed,
    table_from_raw,
    unpack_key,
    unpack_value,
)
from app.processor.windows import KINDS, LatenessPolicy, WindowKey, WindowKind


@dataclass(frozen=True, slots=True)
class LevelDBOptions:
    """Per-partition LevelDB memory: block cache + up to two write buffers (the active and
    the one being flushed) + index/filter blocks of at most max_open_files tables."""

    cache_bytes: int = 32 * 1024 * 1024
    write_buffer_bytes: int = 8 * 1024 * 1024
    max_open_files: int = 200
    bloom_filter_bits: int = 10  # most folds of a new window miss: the filter saves the disk read


class StateSlot:
    """An exclusive sub-directory of --state-dir for this process (flock'ed `slot-N.lock`).

    A restarted instance gets slot 0 back (the lock died with the old process) and so finds
    the state it left; two live instances on one host, or a zombie and its successor, never
    share a LevelDB directory.
    """

    def __init__(self, root: Path, max_slots: int = 64) -> None:
        root.mkdir(parents=True, exist_ok=True)
        for i in range(max_slots):
            fd = os.open(root / f"slot-{i}.lock", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.fd: int | None = fd
            self.path = root / f"slot-{i}"
            self.path.mkdir(exist_ok=True)
            return
        raise FatalError(f"all {max_slots} state slots under {root} are in use by live processes")

    def partition_dir(self, topic: str, partition: int) -> Path:
        return self.path / f"{topic}-{partition}"

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None


class LevelDBWindowStore:
    def __init__(self, partition: int, path: Path, options: LevelDBOptions | None = None) -> None:
        self.partition = partition
        self.path = path
        self.options = options or LevelDBOptions()
        # key -> [count, sum, packed key]: windows changed since the last take_dirty
        self._dirty: dict[WindowKey, list[Any]] = {}
        self._pending: dict[WindowKey, list[Any]] = {}   # taken, not yet committed
        self._clean: dict[WindowKey, list[Any]] = {}     # values of the last commit (read cache)
        self._windows = [0] * len(KINDS)
        self._recount = False
        self._final_from = [0] * len(KINDS)  # start_s below which a kind holds no key any more
        self._ref: str | None = None
        self._next_offset = 0
        self._db = self._open()
        self._read_meta()

    # ---- database --------------------------------------------------------

    def _open(self) -> plyvel.DB:
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
        self._dirty, self._pending, self._clean = {}, {}, {}
        self._windows, self._recount, self._final_from = [0] * len(KINDS), False, [0] * len(KINDS)
        self._ref = None
        self._db = self._open()

    def fold(self, deltas: dict[WindowKey, list[int]]) -> None:
        dirty, pending, clean, get = self._dirty, self._pending, self._clean, self._db.get
        pack, unpack = KEY.pack, VALUE.unpack
        new = [0] * len(KINDS)
        for key, (count, amount) in deltas.items():
            v = dirty.get(key)
            if v is not None:
                v[0] += count
                v[1] += amount
                continue
            base = pending.get(key) if pending else None
            if base is None:
                base = clean.get(key)
            if base is not None:
                dirty[key] = [base[0] + count, base[1] + amount, base[2]]
                continue
            kb = pack(key[0], key[1] // 1000, key[2], key[3].encode("ascii"))
            raw = get(kb)
            if raw is None:
                new[key[0]] += 1
                dirty[key] = [count, amount, kb]
            else:
                c, lo, hi = unpack(raw)
                dirty[key] = [c + count, ((hi << 64) | lo) + amount, kb]
        for kind, n in enumerate(new):
            self._windows[kind] += n

    def take_dirty(self) -> list[WindowRow]:
        p = self.partition
        rows = [WindowRow(k[0], p, k[1] // 1000, k[2], k[3], v[0], v[1]) for k, v in self._dirty.items()]
        if self._pending:  # a checkpoint that neither committed nor aborted: keep its values too
            self._pending.update(self._dirty)
        else:
            self._pending = self._dirty
        self._dirty = {}
        return rows

    def take_dirty_table(self) -> pa.Table:
        vals = list(self._dirty.values())
        # the key columns come from the packed keys each dirty value carries (no tuple unpacking)
        table = table_from_packed(self.partition, b"".join([v[2] for v in vals]), [v[0] for v in vals],
                                  [v[1] for v in vals])
        if self._pending:  # as take_dirty
            self._pending.update(self._dirty)
        else:
            self._pending = self._dirty
        self._dirty = {}
        return table

    def prepare(self, next_offset: int) -> None:
        vals = list(self._pending.values())
        try:  # all values packed at once while they fit uint64/int64 (the usual case)
            packed = np.empty(len(vals), dtype=VALUE_DTYPE)
            packed["count"] = np.array([v[0] for v in vals], dtype=np.uint64)
            sums = np.array([v[1] for v in vals], dtype=np.int64)
            packed["lo"], packed["hi"] = sums.view(np.uint64), sums >> 63  # the Int128's two halves
            raw = packed.tobytes()
        except OverflowError:
            raw = None
        vs = VALUE.size
        with self._db.write_batch() as wb:
            if raw is None:
                for count, amount, kb in vals:
                    wb.put(kb, pack_value(count, amount))
            else:
                for i, v in enumerate(vals):
                    wb.put(v[2], raw[i * vs:(i + 1) * vs])
            wb.put(META_KEY, self._meta("prepared", self._ref, next_offset))
        self._ref = None  # ahead of the ledger until commit() says otherwise

    def commit(self, ref: str, next_offset: int) -> None:
        self._db.put(META_KEY, self._meta("committed", ref, next_offset))
        self._ref, self._next_offset = ref, next_offset
        self._clean = self._pending
        self._pending = {}

    def abort(self) -> None:
        for key, v in self._pending.items():
            self._dirty.setdefault(key, v)  # a newer dirty value already includes it
        self._pending = {}

    def drop_final(self, policy: LatenessPolicy, watermark_ms: int | None) -> int:
        dropped = 0
        guarded = bool(self._dirty or self._pending)
        for kind in KINDS:
            bound_ms = policy.oldest_open_start_ms(WindowKind(kind), watermark_ms)
            if bound_ms is None:
                continue
            stop_s = min(max(-(-bound_ms // 1000), 0), MAX_START_S)  # final iff start_s < stop_s
            start_s = self._final_from[kind]
            if stop_s <= start_s:
                continue
            kept = False
            with self._db.write_batch() as wb:
                for kb in self._db.iterator(start=PREFIX.pack(kind, start_s), stop=PREFIX.pack(kind, stop_s),
                                            include_value=False):
                    if guarded:
                        key = unpack_key(kb)
                        if key in self._dirty or key in self._pending:
                            kept = True  # never drop what has not been emitted
                            continue
                    wb.delete(kb)
                    dropped += 1
                    if not self._recount:
                        self._windows[kind] -= 1
                if not kept:
                    self._final_from[kind] = stop_s
                if self._ref is not None and not self._recount:
                    # still that checkpoint's state (minus windows final under its watermark,
                    # which a rebuild drops too); the counts must say so
                    wb.put(META_KEY, self._meta("committed", self._ref, self._next_offset))
        return dropped

    def final_items(self, policy: LatenessPolicy, watermark_ms: int | None,
                    ) -> Iterator[tuple[WindowKey, tuple[int, int]]]:
        """The stored windows `drop_final` would drop now, with their values (after prepare: the latest)."""
        for kind in KINDS:
            bound_ms = policy.oldest_open_start_ms(WindowKind(kind), watermark_ms)
            stop_s = 0 if bound_ms is None else min(max(-(-bound_ms // 1000), 0), MAX_START_S)
            if stop_s > self._final_from[kind]:
                for kb, v in self._db.iterator(start=PREFIX.pack(kind, self._final_from[kind]),
                                               stop=PREFIX.pack(kind, stop_s)):
                    yield unpack_key(kb), unpack_value(v)

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
        n = table.num_rows
        if n == 0:
            return
        keys, values = raw_from_table(table)
        kb, vb = keys.tobytes(), values.tobytes()
        ks, vs = KEY.size, VALUE.size
        with self._db.write_batch() as wb:
            for i in range(n):
                wb.put(kb[i * ks:(i + 1) * ks], vb[i * vs:(i + 1) * vs])
        self._recount = True
        self._clean = {}

    def load(self, rows: Iterable[WindowRow]) -> None:
        with self._db.write_batch() as wb:
            for r in rows:
                wb.put(KEY.pack(r.kind, r.window_start_s, r.account_id, r.country.encode("ascii")),
                       pack_value(r.event_count, r.sum_amount))
        self._recount = True
        self._clean = {}

    def open_windows(self) -> dict[str, int]:
        counts = self._counts()
        return {k.label: counts[k] for k in KINDS}

    def items(self) -> Iterator[tuple[WindowKey, list[int]]]:
        """Committed content (tests)."""
        for k, v in self._db.iterator(stop=META_KEY):
            yield unpack_key(k), list(unpack_value(v))

    def close(self) -> None:
        if not self._db.closed:
            self._db.close()
        self._dirty, self._pending, self._clean = {}, {}, {}
