"""Event-time windows, the watermark and the lateness rule of contract §3. Pure: no I/O.

Windows are tumbling `[start, end)` aligned to the epoch, per kind. The watermark of a
partition is max(event_time read so far) - max_out_of_orderness; an event is classified
against the watermark as it stood *before* the event: too late for kind K iff
`end + allowed_lateness_K <= W`.

`fold_run` is the one place records are classified and folded: the live processor calls
it for each run of one partition's records, backfill for each piece of a partition it
replays. app/verify/truth.py keeps its own copy of these rules on purpose: verify must
not share code with what it checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NamedTuple, Protocol

import numpy as np

from app.processor.decode import DecodedRun, decode_run
from app.processor.deltas import COUNTRY_OF, WindowDeltas

# (kind, window_start_ms, account_id, country)
WindowKey = tuple[int, int, int, str]
# (offset, key, value) of one input record; a partition's records ascend by offset
Record = tuple[int, bytes | None, bytes | None]


class WindowKind(IntEnum):
    MINUTE = 0
    HOUR = 1

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def size_ms(self) -> int:
        return _SIZES_MS[self]

    @property
    def table(self) -> str:
        return _TABLES[self]


_LABELS: Final = {WindowKind.MINUTE: "minute", WindowKind.HOUR: "hour"}
_SIZES_MS: Final = {WindowKind.MINUTE: 60_000, WindowKind.HOUR: 3_600_000}
_TABLES: Final = {WindowKind.MINUTE: "rollup_minute", WindowKind.HOUR: "rollup_hour"}
KINDS: Final = (WindowKind.MINUTE, WindowKind.HOUR)


def window_start_ms(event_time_ms: int, kind: WindowKind) -> int:
    size = kind.size_ms
    return event_time_ms - event_time_ms % size


@dataclass(frozen=True, slots=True)
class LatenessPolicy:
    """max_out_of_orderness shapes the watermark; allowed lateness decides 'too late'."""

    max_out_of_orderness_ms: int = 5_000
    allowed_lateness_minute_ms: int = 60_000
    allowed_lateness_hour_ms: int = 60_000

    def allowed_lateness_ms(self, kind: WindowKind) -> int:
        return self.allowed_lateness_minute_ms if kind is WindowKind.MINUTE else self.allowed_lateness_hour_ms

    def watermark_ms(self, max_event_time_ms: int | None) -> int | None:
        """None stands for -infinity (no valid event read yet)."""
        return None if max_event_time_ms is None else max_event_time_ms - self.max_out_of_orderness_ms

    def is_too_late(self, kind: WindowKind, window_start: int, watermark_ms: int | None) -> bool:
        if watermark_ms is None:
            return False
        return window_start + kind.size_ms + self.allowed_lateness_ms(kind) <= watermark_ms

    def is_final(self, kind: WindowKind, window_start: int, watermark_ms: int | None) -> bool:
        """A final window can no longer change: every event for it would be too late."""
        return self.is_too_late(kind, window_start, watermark_ms)

    def oldest_open_start_ms(self, kind: WindowKind, watermark_ms: int | None) -> int | None:
        """Windows starting before this are final; None = every window is open."""
        if watermark_ms is None:
            return None
        # final iff start + size + L <= W  <=>  start <= W - size - L
        return watermark_ms - kind.size_ms - self.allowed_lateness_ms(kind) + 1


class Position(NamedTuple):
    """Where a partition's fold stands: the next offset to read and the watermark so far
    (None: no valid event yet, W = -infinity)."""

    next_offset: int
    max_event_time_ms: int | None
    watermark_ms: int | None


class Rejects(Protocol):
    """Where a record that is not folded goes: the processor sends it to the DLQ and counts
    it for the next checkpoint; backfill counts it."""

    def on_invalid(self, offset: int, key: bytes | None, value: bytes | None, error: str) -> None: ...

    def on_late(self, offset: int, key: bytes | None, value: bytes | None, kind: WindowKind, error: str) -> None: ...


@dataclass(frozen=True, slots=True)
class FoldRules:
    """The classification rules in the shape the fold loop reads them (built once)."""

    policy: LatenessPolicy
    max_record_bytes: int

    def lateness(self) -> tuple[tuple[WindowKind, int, int], ...]:
        """(kind, size_ms, allowed_lateness_ms) per kind, in KINDS order."""
        return tuple((k, k.size_ms, self.policy.allowed_lateness_ms(k)) for k in KINDS)


def fold_run(records: Iterable[Record], at: Position, rules: FoldRules,
             deltas: dict[WindowKey, list[int]] | WindowDeltas, rejects: Rejects) -> Position:
    """Classify and fold one partition's records, in offset order, starting `at` its position.

    Each record: skipped if below the next offset (already counted), else invalid
    (contract §2; `rejects.on_invalid`), else for each kind too late (`rejects.on_late`) or
    folded into its window (kind, window_start, account_id, country) as a (count, amount)
    increment: into `deltas[(kind, window_start_ms, account_id, country)]` when `deltas` is
    a dict, appended as columns when it is a WindowDeltas (the processor); then the
    watermark moves. Rejects are reported in record order (for one record, minute before
    hour). Returns the position after the last record. After an exception the caller must
    not use anything this call changed.
    """
    rows = list(records)
    if not rows:
        return at
    offsets, keys, values = zip(*rows, strict=True)
    return fold_columns(offsets, keys, values, at, rules, deltas, rejects)


def fold_columns(offsets: Sequence[int] | np.ndarray, keys: Sequence[bytes | None], values: Sequence[bytes | None], at: Position,
                 rules: FoldRules, deltas: dict[WindowKey, list[int]] | WindowDeltas, rejects: Rejects) -> Position:
    """fold_run over a run given as columns (the processor reads them so from Kafka records).

    Vectorised, with the semantics of contract §3 record by record: the watermark before
    record i is the running maximum of the event times of the valid records before it
    (and of the position's), minus max_out_of_orderness."""
    n = len(offsets)
    if n == 0:
        return at
    offs = offsets if isinstance(offsets, np.ndarray) else np.fromiter(offsets, np.int64, n)
    # the next offset before each record: a record below it was counted already
    before = np.empty(n, np.int64)
    before[0] = at.next_offset
    np.maximum.accumulate(np.maximum(offs[:-1] + 1, at.next_offset), out=before[1:])
    np.maximum(before[1:], at.next_offset, out=before[1:])
    fresh = offs >= before
    next_offset = max(at.next_offset, int(offs.max()) + 1)
    if not fresh.all():
        idx = np.flatnonzero(fresh).tolist()
        offs, keys, values = offs[idx], [keys[i] for i in idx], [values[i] for i in idx]
        n = len(idx)
        if n == 0:
            return Position(next_offset, at.max_event_time_ms, at.watermark_ms)
    run = decode_run(keys, values, rules.max_record_bytes)
    valid, et = run.valid, run.event_time
    # max event time before each record (NO_TIME: none yet, W = -infinity)
    seen = np.where(valid, et, _NO_TIME)
    max_before = np.empty(n, np.int64)
    max_before[0] = _NO_TIME if at.max_event_time_ms is None else at.max_event_time_ms
    np.maximum.accumulate(np.maximum(seen[:-1], max_before[0]), out=max_before[1:])
    has_wm = max_before != _NO_TIME
    ooo = rules.policy.max_out_of_orderness_ms
    wm_before = max_before - min(ooo, _FAR)  # clamped: a larger value never makes an event late either
    late_rows: list[tuple[int, int]] = []  # (row, kind)
    folded = []
    for kind, size, allowed in rules.lateness():
        start = et - et % size
        late = valid & has_wm & (start + (size + min(allowed, _FAR)) <= wm_before)
        if late.any():
            late_rows.extend((i, int(kind)) for i in np.flatnonzero(late).tolist())
        folded.append((kind, start, valid & ~late))
    if run.errors or late_rows:
        _reject(run.errors, late_rows, offs, keys, values, et, max_before, rules, rejects)
    _fold(folded, run, deltas)
    top = int(seen.max())
    max_et = at.max_event_time_ms if top == _NO_TIME else max(top, at.max_event_time_ms or 0)
    return Position(next_offset, max_et, rules.policy.watermark_ms(max_et))


_NO_TIME: Final = -(1 << 62)  # "no valid event yet": below every event time (>= 0)
_FAR: Final = 1 << 45         # beyond every event time (< 2^42 ms): lateness and ooo clamp to it


def _reject(errors: dict[int, str], late_rows: list[tuple[int, int]], offs: np.ndarray,
            keys: Sequence[bytes | None], values: Sequence[bytes | None], et: np.ndarray, max_before: np.ndarray,
            rules: FoldRules, rejects: Rejects) -> None:
    """The run's invalid and late records to `rejects`, in record order."""
    ooo = rules.policy.max_out_of_orderness_ms
    for i, k in sorted([(i, -1) for i in errors] + late_rows):
        offset = int(offs[i])
        if k < 0:
            rejects.on_invalid(offset, keys[i], values[i], errors[i])
            continue
        kind = WindowKind(k)
        size = kind.size_ms
        t = int(et[i])
        start = t - t % size
        wm = int(max_before[i]) - ooo
        rejects.on_late(offset, keys[i], values[i], kind,
                        f"{kind.label} window [{start}, {start + size}) closed: watermark {wm}")


def _fold(folded: list[tuple[WindowKind, np.ndarray, np.ndarray]], run: DecodedRun,
          deltas: dict[WindowKey, list[int]] | WindowDeltas) -> None:
    for kind, start, keep in folded:
        if isinstance(deltas, WindowDeltas):
            if keep.all():
                deltas.add_events(int(kind), start // 1000, run.account, run.country, run.amount)
            else:
                deltas.add_events(int(kind), start[keep] // 1000, run.account[keep], run.country[keep],
                                  run.amount[keep])
            continue
        get = deltas.get
        for s, acc, code, amount in zip(start[keep].tolist(), run.account[keep].tolist(),
                                        run.country[keep].tolist(), run.amount[keep].tolist(), strict=True):
            wkey = (kind, s, acc, COUNTRY_OF[code])
            d = get(wkey)
            if d is None:
                deltas[wkey] = [1, amount]
            else:
                d[0] += 1
                d[1] += amount
