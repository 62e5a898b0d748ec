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

from app.processor.state import WindowStore
from app.processor.windows import LatenessPolicy, WindowKind

# (rollup table, window start ms) -> [windows, events, amount]
SettledTotals = dict[tuple[str, int], list[int]]


def settled_totals(stores: Iterable[tuple[WindowStore, int | None]], policy: LatenessPolicy) -> SettledTotals:
    """Sum the windows each (store, new watermark) will drop as final."""
    out: SettledTotals = {}
    for store, watermark_ms in stores:
        for (kind, start_ms, _account, _country), (count, amount) in store.final_items(policy, watermark_ms):
            key = (WindowKind(kind).table, start_ms)
            t = out.get(key)
            if t is None:
                out[key] = [1, int(count), int(amount)]
            else:
                t[0] += 1
                t[1] += int(count)
                t[2] += int(amount)
    return out
