"""Settled totals: what the windows that become final at a checkpoint add up to.

A window is final once its partition's watermark passed its end + allowed lateness: no
event can change it any more, and the checkpoint that moves the watermark past it drops
it from the state (`drop_final`, step 4). Just before that checkpoint's ledger transaction
(after step 2, so the store holds every value it emits), the windows it will drop are
summed per rollup table and window start, and the ledger adds the sums to its
settled totals in the same transaction (app/ledger/settled.py). Every window is counted
exactly once in its life: dropped windows never come back, and a restore starts from the
ledger's last checkpoint, whose sums are already in. The sink compares these totals with
ClickHouse FINAL over the same windows (app/sink/reconcile.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from app.processor.deltas import group_totals
from app.processor.state import WindowStore
from app.processor.windows import KINDS, LatenessPolicy

# (rollup table, window start ms) -> [windows, events, amount]
SettledTotals = dict[tuple[str, int], list[int]]


def settled_totals(stores: Iterable[tuple[WindowStore, int | None]], policy: LatenessPolicy) -> SettledTotals:
    """Sum the windows each (store, new watermark) will drop as final: grouped by (kind,
    window start) in numpy (a checkpoint may drop hundreds of thousands of windows), exact
    Python ints once per group."""
    out: SettledTotals = {}
    for store, watermark_ms in stores:
        keys, values = store.final_windows(policy, watermark_ms)
        if not len(keys):
            continue
        bucket = keys.bucket()
        order = np.argsort(bucket, kind="stable")
        bucket, values = bucket[order], values.take(order)
        first = np.flatnonzero(np.concatenate(([True], bucket[1:] != bucket[:-1])))
        windows = np.diff(np.append(first, bucket.size)).tolist()
        events = np.add.reduceat(values.count, first).tolist()  # < 2^64: at most one per Kafka record
        amounts = group_totals(values, first)
        for b, n, e, a in zip(bucket[first].tolist(), windows, events, amounts, strict=True):
            key = (KINDS[b >> 32].table, (b & 0xFFFFFFFF) * 1000)
            t = out.get(key)
            if t is None:
                out[key] = [n, e, a]
            else:
                t[0] += n
                t[1] += e
                t[2] += a
    return out
