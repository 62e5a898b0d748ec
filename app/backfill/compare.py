"""Recomputed windows vs what ClickHouse holds in the range. Pure."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from app.backfill.clickhouse import RollupKey, StoredRange
from app.ledger.rows import WindowRow


@dataclass(frozen=True, slots=True)
class KeyChange:
    key: RollupKey
    truth: tuple[int, int] | None           # None: extra in ClickHouse (deleted)
    stored: tuple[int, int, int] | None     # None: missing in ClickHouse

    @property
    def what(self) -> str:
        if self.stored is None:
            return "missing"
        if self.truth is None:
            return "extra"
        return "different"


@dataclass(frozen=True, slots=True)
class TableDiff:
    table: str
    windows: int                 # recomputed windows, all of them landed
    events: int
    amount: int
    readable: bool               # False: ClickHouse could not be read, the counts below are 0
    stored_rows: int = 0
    equal: int = 0
    missing: int = 0
    different: int = 0
    extra: tuple[RollupKey, ...] = ()     # keys to delete (time requests only)
    max_version: int = 0
    examples: tuple[KeyChange, ...] = ()
    after_pin: int = 0                    # keys written after the pin (a newer version): left alone

    @property
    def changes(self) -> int:
        return self.missing + self.different + len(self.extra)


def diff_table(table: str, truth: Sequence[WindowRow], stored: StoredRange | None, *, extras: bool,
               version: int | None = None, max_examples: int = 10) -> TableDiff:
    """Per key: missing, different, equal; `extras` (time requests): keys ClickHouse holds in
    the range that the recomputation does not have. An offset request says nothing about
    keys it did not touch, so it reports none.

    `version` is the run's (or, in a dry run, the one a run would get now): a stored row
    above it was written after the pin -- by the live processor, for a window a partition
    without a watermark at the pin folded an event into -- so the pin says nothing about
    it. It is counted as `after_pin`, never compared, deleted or replaced (it outranks the
    backfill's row anyway)."""
    events = sum(r.event_count for r in truth)
    amount = sum(r.sum_amount for r in truth)
    if stored is None:
        return TableDiff(table, len(truth), events, amount, readable=False)
    newer = {k for k, v in stored.rows.items() if version is not None and v[2] > version}
    if newer:
        stored = StoredRange(stored.table, stored.lo_s, stored.hi_s,
                             {k: v for k, v in stored.rows.items() if k not in newer}, stored.max_version)
    want = {(r.window_start_s, r.account_id, r.country): (r.event_count, r.sum_amount) for r in truth}
    missing: list[RollupKey] = []
    different: list[RollupKey] = []
    equal = 0
    for key, value in want.items():
        if key in newer:
            continue
        got = stored.rows.get(key)
        if got is None:
            missing.append(key)
        elif got[:2] != value:
            different.append(key)
        else:
            equal += 1
    extra = tuple(sorted(k for k in stored.rows if k not in want)) if extras else ()
    first = heapq.nsmallest(max_examples, [*missing, *different, *extra])
    examples = tuple(KeyChange(k, want.get(k), stored.rows.get(k)) for k in first)
    stored_rows = len(stored.rows) if extras else sum(1 for k in want if k in stored.rows)
    after_pin = len(newer) if extras else sum(1 for k in want if k in newer)
    return TableDiff(table, len(truth), events, amount, True, stored_rows, equal, len(missing), len(different),
                     extra, stored.max_version, examples, after_pin)
