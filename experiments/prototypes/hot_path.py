"""Prototype: the processor's per-record hot path vs vectorised alternatives, in one process.

No Kafka, no Postgres: the generator's own records (app.gen.model, the bench's data) as
(offset, key, value) tuples of one "partition", micro-batches of --batch records (the
processor's --poll-records), and the checkpoint's emit path (dirty windows -> Arrow -> IPC)
every --checkpoint-every records. Medians of --repeat runs, events/s of one core.

  current   the processor's own code: app.processor.windows.fold_run per micro-batch (the
            function the engine calls per run of one partition), InMemoryWindowStore.fold,
            take_dirty_table -> tables_by_kind -> IPC (app.ledger.rows.encode)
  columnar  msgspec per record into a tuple-shaped Struct (array_like is not our JSON: we
            decode to a Struct with the same fields) then NumPy: running-max watermark,
            lateness mask, aggregation by sort + reduceat, state kept as a dict of
            (count, amount) updated from the aggregated keys only; emit builds Arrow columns
            straight from the dirty keys (no WindowRow objects) with int64 -> decimal128 cast
  checkpoint_fold  as columnar, but micro-batches only append packed 16-byte keys; once per
            checkpoint they are aggregated (sort + reduceat) and folded into the state dict
            once per distinct key, and the new totals are the emitted rows

Both paths must produce the same windows; the script checks that before timing. Neither
drops final windows (the same cost for both, left out).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from typing import Any

import numpy as np
import pyarrow as pa

from app.core.config import DEFAULT_MAX_RECORD_BYTES
from app.gen.model import GenSpec, chunk_columns, encode_columns
from app.ledger.rows import WINDOW_ROW_SCHEMA, encode
from app.processor.batch import tables_by_kind
from app.processor.decode import COUNTRIES, InvalidEvent, decode_record
from app.processor.engine import GC_THRESHOLDS
from app.processor.state import InMemoryWindowStore
from app.processor.windows import (
    KINDS,
    FoldRules,
    LatenessPolicy,
    Position,
    Record,
    WindowKey,
    WindowKind,
    fold_run,
)

POLICY = LatenessPolicy()
COUNTRY_LIST = sorted(COUNTRIES)
COUNTRY_INDEX = {c: i for i, c in enumerate(COUNTRY_LIST)}
COUNTRY_ARR = np.array(COUNTRY_LIST, dtype=object)


def make_records(n: int) -> list[Record]:
    spec = GenSpec(events=n)
    pairs: list[tuple[bytes, bytes]] = []
    for c in range(spec.chunks):
        pairs.extend(encode_columns(chunk_columns(spec, c)))
    return [(offset, key, value) for offset, (key, value) in enumerate(pairs[:n])]


class CountRejects:
    """fold_run's Rejects without a DLQ: the prototypes compare windows, not DLQ records."""

    def __init__(self) -> None:
        self.n = 0

    def on_invalid(self, offset: int, key: bytes | None, value: bytes | None, error: str) -> None:
        self.n += 1

    def on_late(self, offset: int, key: bytes | None, value: bytes | None, kind: WindowKind, error: str) -> None:
        self.n += 1


# ---- current path: the processor's own functions -----------------------------------------------


def current(
    records: list[Record], batch: int, checkpoint_every: int
) -> tuple[dict[str, float], dict[Any, list[int]]]:
    store = InMemoryWindowStore(0)
    rules = FoldRules(POLICY, DEFAULT_MAX_RECORD_BYTES)
    rejects = CountRejects()
    at = Position(0, None, None)
    t = {"decode+classify+fold": 0.0, "store.fold": 0.0, "take_dirty_table": 0.0, "tables_by_kind": 0.0,
         "ipc": 0.0}
    since = 0
    for lo in range(0, len(records), batch):
        t0 = time.perf_counter()
        deltas: dict[WindowKey, list[int]] = {}
        at = fold_run(records[lo : lo + batch], at, rules, deltas, rejects)
        t1 = time.perf_counter()
        store.fold(deltas)
        t2 = time.perf_counter()
        t["decode+classify+fold"] += t1 - t0
        t["store.fold"] += t2 - t1
        since += batch
        if since >= checkpoint_every or lo + batch >= len(records):
            since = 0
            t3 = time.perf_counter()
            table = store.take_dirty_table()
            t4 = time.perf_counter()
            tables = tables_by_kind([table])
            t5 = time.perf_counter()
            for tb in tables.values():
                encode(tb)
            t6 = time.perf_counter()
            t["take_dirty_table"] += t4 - t3
            t["tables_by_kind"] += t5 - t4
            t["ipc"] += t6 - t5
    return t, {k: list(v) for k, v in store.items()}


# ---- columnar path -----------------------------------------------------------------------------


def decode_columns(records: list[Record]) -> tuple[np.ndarray, ...]:
    """(valid mask, account u64, country idx i16, event_time i64, amount i64) for a batch."""
    n = len(records)
    acc = np.zeros(n, dtype=np.uint64)
    cty = np.zeros(n, dtype=np.int16)
    et = np.zeros(n, dtype=np.int64)
    amt = np.zeros(n, dtype=np.int64)
    ok = np.ones(n, dtype=bool)
    a_l, c_l, e_l, m_l = [], [], [], []
    ci = COUNTRY_INDEX
    for i, (_offset, key, value) in enumerate(records):
        try:
            ev = decode_record(key, value, DEFAULT_MAX_RECORD_BYTES)
        except InvalidEvent:
            ok[i] = False
            a_l.append(0)
            c_l.append(0)
            e_l.append(0)
            m_l.append(0)
            continue
        a_l.append(ev.account_id)
        c_l.append(ci[ev.country])
        e_l.append(ev.event_time)
        m_l.append(ev.amount)
    acc[:] = a_l
    cty[:] = c_l
    et[:] = e_l
    amt[:] = m_l
    return ok, acc, cty, et, amt


class ColumnarState:
    """Open windows as a dict (kind, start, account, country idx) -> [count, amount];
    dirty keys collected as arrays per micro-batch."""

    def __init__(self) -> None:
        self.values: dict[tuple[int, int, int, int], list[int]] = {}
        self.dirty: set[tuple[int, int, int, int]] = set()

    def fold(
        self, kind: int, start: np.ndarray, acc: np.ndarray, cty: np.ndarray, cnt: np.ndarray, amt: np.ndarray
    ) -> None:
        values = self.values
        keys = list(zip([kind] * len(start), start.tolist(), acc.tolist(), cty.tolist(), strict=True))
        for key, c, a in zip(keys, cnt.tolist(), amt.tolist(), strict=True):
            v = values.get(key)
            if v is None:
                values[key] = [c, a]
            else:
                v[0] += c
                v[1] += a
        self.dirty.update(keys)

    def take_dirty_tables(self) -> list[pa.Table]:
        keys = list(self.dirty)
        self.dirty = set()
        if not keys:
            return []
        kind, start, acc, cty = (np.array(col) for col in zip(*keys, strict=True))
        vals = [self.values[k] for k in keys]
        cnt = np.fromiter((v[0] for v in vals), dtype=np.uint64, count=len(vals))
        sums = [v[1] for v in vals]
        try:
            s64 = np.array(sums, dtype=np.int64)
            sum_arr = pa.array(s64).cast(pa.decimal128(38, 0))
        except OverflowError:  # beyond int64: the exact (slow) conversion
            sum_arr = pa.array(sums, pa.decimal128(38, 0))
        out = []
        for k in (0, 1):
            m = kind == k
            if not m.any():
                continue
            idx = np.flatnonzero(m)
            out.append(
                pa.Table.from_arrays(
                    [
                        pa.array(np.full(idx.size, k, dtype=np.int8)),
                        pa.array(np.zeros(idx.size, dtype=np.int32)),
                        pa.array(start[idx] // 1000),
                        pa.array(acc[idx].astype(np.uint64)),
                        pa.DictionaryArray.from_arrays(
                            pa.array(cty[idx].astype(np.int16)), pa.array(COUNTRY_LIST)
                        ).cast(pa.string()),
                        pa.array(cnt[idx]),
                        sum_arr.take(pa.array(idx)),
                    ],
                    schema=WINDOW_ROW_SCHEMA,
                )
            )
        return out


def columnar(
    records: list[Record], batch: int, checkpoint_every: int
) -> tuple[dict[str, float], dict[Any, list[int]]]:
    state = ColumnarState()
    ooo = POLICY.max_out_of_orderness_ms
    max_et = -(2**62)
    t = {
        "decode": 0.0,
        "classify+aggregate (numpy)": 0.0,
        "state fold": 0.0,
        "emit -> Arrow": 0.0,
        "ipc": 0.0,
    }
    since = 0
    for lo in range(0, len(records), batch):
        t0 = time.perf_counter()
        ok, acc, cty, et, amt = decode_columns(records[lo : lo + batch])
        t1 = time.perf_counter()
        # watermark before each event: running max of earlier valid event times - ooo
        et_valid = np.where(ok, et, -(2**62))
        run_max = np.maximum.accumulate(np.concatenate([[max_et], et_valid]))[:-1]
        wm_before = np.where(run_max > -(2**61), run_max - ooo, -(2**62))
        folded = []
        for kind, size, allowed in [(int(k), k.size_ms, POLICY.allowed_lateness_ms(k)) for k in KINDS]:
            start = et - et % size
            keep = ok & ~(start + size + allowed <= wm_before)
            s, a, c, m = start[keep], acc[keep], cty[keep], amt[keep]
            order = np.lexsort((c, a, s))
            s, a, c, m = s[order], a[order], c[order], m[order]
            brk = np.flatnonzero((s[1:] != s[:-1]) | (a[1:] != a[:-1]) | (c[1:] != c[:-1])) + 1
            first = np.concatenate([[0], brk]) if s.size else np.zeros(0, dtype=np.int64)
            cnt = np.diff(np.concatenate([first, [s.size]])) if s.size else np.zeros(0, dtype=np.int64)
            sums = np.add.reduceat(m, first) if s.size else np.zeros(0, dtype=np.int64)
            folded.append((kind, s[first], a[first], c[first], cnt, sums))
        max_et = max(max_et, int(et_valid.max()) if et_valid.size else max_et)
        t2 = time.perf_counter()
        for f in folded:
            state.fold(*f)
        t3 = time.perf_counter()
        t["decode"] += t1 - t0
        t["classify+aggregate (numpy)"] += t2 - t1
        t["state fold"] += t3 - t2
        since += batch
        if since >= checkpoint_every or lo + batch >= len(records):
            since = 0
            t4 = time.perf_counter()
            tables = state.take_dirty_tables()
            t5 = time.perf_counter()
            for tb in tables:
                encode(tb)
            t6 = time.perf_counter()
            t["emit -> Arrow"] += t5 - t4
            t["ipc"] += t6 - t5
    result = {(k[0], k[1], k[2], COUNTRY_LIST[k[3]]): v for k, v in state.values.items()}
    return t, result


# ---- columnar, state folded once per checkpoint ---------------------------------------------------

KEY = np.dtype([("hi", ">u8"), ("lo", ">u8")])  # big-endian fields: bytewise order = numeric order


def pack(kind: int, start: np.ndarray, acc: np.ndarray, cty: np.ndarray) -> np.ndarray:
    """(kind, window start, account, country) -> one 16-byte sortable key per row."""
    k = np.empty(start.size, dtype=KEY)
    k["hi"] = acc
    k["lo"] = (
        (np.uint64(kind) << np.uint64(60))
        | ((start // 1000).astype(np.uint64) << np.uint64(16))
        | cty.astype(np.uint64)
    )
    return k.view("V16")


def unpack(keys: np.ndarray) -> tuple[np.ndarray, ...]:
    k = keys.view(KEY)
    lo = k["lo"].astype(np.uint64)
    return (
        (lo >> np.uint64(60)).astype(np.int8),
        ((lo >> np.uint64(16)) & np.uint64((1 << 44) - 1)).astype(np.int64),
        k["hi"].astype(np.uint64),
        (lo & np.uint64(0xFFFF)).astype(np.int16),
    )


class CheckpointFoldState:
    """Micro-batches only append packed keys and amounts; at a checkpoint they are
    aggregated once (sort + reduceat) and folded into the dict once per distinct key,
    whose new totals are exactly the rows to emit."""

    def __init__(self) -> None:
        self.values: dict[bytes, list[int]] = {}
        self.pending_keys: list[np.ndarray] = []
        self.pending_amounts: list[np.ndarray] = []

    def add(self, keys: np.ndarray, amounts: np.ndarray) -> None:
        self.pending_keys.append(keys)
        self.pending_amounts.append(amounts)

    def checkpoint(self) -> list[pa.Table]:
        if not self.pending_keys:
            return []
        keys = np.concatenate(self.pending_keys)
        amts = np.concatenate(self.pending_amounts)
        self.pending_keys, self.pending_amounts = [], []
        order = np.argsort(keys, kind="stable")
        keys, amts = keys[order], amts[order]
        brk = np.flatnonzero(keys[1:] != keys[:-1]) + 1
        first = np.concatenate([[0], brk])
        cnt = np.diff(np.concatenate([first, [keys.size]]))
        sums = np.add.reduceat(amts, first)
        ukeys = keys[first]
        values = self.values
        new_cnt = np.empty(ukeys.size, dtype=np.uint64)
        new_sum: list[int] = []
        for i, (kb, c, a) in enumerate(zip(ukeys.tolist(), cnt.tolist(), sums.tolist(), strict=True)):
            v = values.get(kb)
            if v is None:
                values[kb] = v = [c, a]
            else:
                v[0] += c
                v[1] += a
            new_cnt[i] = v[0]
            new_sum.append(v[1])
        kind, start_s, acc, cty = unpack(ukeys)
        try:
            sum_arr = pa.array(np.array(new_sum, dtype=np.int64)).cast(pa.decimal128(38, 0))
        except OverflowError:
            sum_arr = pa.array(new_sum, pa.decimal128(38, 0))
        out = []
        for k in (0, 1):
            idx = np.flatnonzero(kind == k)
            if idx.size == 0:
                continue
            out.append(
                pa.Table.from_arrays(
                    [
                        pa.array(np.full(idx.size, k, dtype=np.int8)),
                        pa.array(np.zeros(idx.size, dtype=np.int32)),
                        pa.array(start_s[idx]),
                        pa.array(acc[idx]),
                        pa.DictionaryArray.from_arrays(pa.array(cty[idx]), pa.array(COUNTRY_LIST)).cast(
                            pa.string()
                        ),
                        pa.array(new_cnt[idx]),
                        sum_arr.take(pa.array(idx)),
                    ],
                    schema=WINDOW_ROW_SCHEMA,
                )
            )
        return out


def checkpoint_fold(
    records: list[Record], batch: int, checkpoint_every: int
) -> tuple[dict[str, float], dict[Any, list[int]]]:
    state = CheckpointFoldState()
    ooo = POLICY.max_out_of_orderness_ms
    max_et = -(2**62)
    t = {
        "decode": 0.0,
        "classify + pack keys (numpy)": 0.0,
        "checkpoint: aggregate + fold + emit": 0.0,
        "ipc": 0.0,
    }
    since = 0
    for lo in range(0, len(records), batch):
        t0 = time.perf_counter()
        ok, acc, cty, et, amt = decode_columns(records[lo : lo + batch])
        t1 = time.perf_counter()
        et_valid = np.where(ok, et, -(2**62))
        run_max = np.maximum.accumulate(np.concatenate([[max_et], et_valid]))[:-1]
        wm_before = np.where(run_max > -(2**61), run_max - ooo, -(2**62))
        for kind, size, allowed in [(int(k), k.size_ms, POLICY.allowed_lateness_ms(k)) for k in KINDS]:
            start = et - et % size
            keep = ok & ~(start + size + allowed <= wm_before)
            state.add(pack(kind, start[keep], acc[keep], cty[keep]), amt[keep])
        max_et = max(max_et, int(et_valid.max()) if et_valid.size else max_et)
        t2 = time.perf_counter()
        t["decode"] += t1 - t0
        t["classify + pack keys (numpy)"] += t2 - t1
        since += batch
        if since >= checkpoint_every or lo + batch >= len(records):
            since = 0
            t3 = time.perf_counter()
            tables = state.checkpoint()
            t4 = time.perf_counter()
            for tb in tables:
                encode(tb)
            t5 = time.perf_counter()
            t["checkpoint: aggregate + fold + emit"] += t4 - t3
            t["ipc"] += t5 - t4
    result = {}
    for kb, v in state.values.items():
        kind, start_s, acc, cty = (x[0] for x in unpack(np.frombuffer(kb, dtype="V16")))
        result[(int(kind), int(start_s) * 1000, int(acc), COUNTRY_LIST[int(cty)])] = v
    return t, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--batch", type=int, default=10_000, help="records per micro-batch (default 10000)")
    ap.add_argument(
        "--checkpoint-every",
        type=int,
        default=150_000,
        help="records between emits (a 1 s checkpoint at ~150k events/s; default 150000)",
    )
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    gc.set_threshold(*GC_THRESHOLDS)  # as the processor runs
    records = make_records(args.events)
    _, a = current(records, args.batch, args.checkpoint_every)
    for fn in (columnar, checkpoint_fold):
        _, b = fn(records, args.batch, args.checkpoint_every)
        if a != b:
            diff = sum(1 for k in a if a[k] != b.get(k))
            print(f"MISMATCH in {fn.__name__}: {len(a)} vs {len(b)} windows, {diff} differ", file=sys.stderr)
            return 1
    out: dict[str, Any] = {"events": args.events, "windows": len(a)}
    for name, fn in (("current", current), ("columnar", columnar), ("checkpoint_fold", checkpoint_fold)):
        runs = [fn(records, args.batch, args.checkpoint_every)[0] for _ in range(args.repeat)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        total = sum(med.values())
        out[name] = {
            "events_per_s": round(args.events / total),
            "us_per_event": {k: round(v / args.events * 1e6, 3) for k, v in med.items()},
        }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
