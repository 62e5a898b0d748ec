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

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NamedTuple, Protocol

from app.processor.decode import InvalidEvent, decode_record

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


def fold_run(records: Iterable[Record], at: Position, rules: FoldRules, deltas: dict[WindowKey, list[int]],
             rejects: Rejects) -> Position:
    """Classify and fold one partition's records, in offset order, starting `at` its position.

    Each record: skipped if below the next offset (already counted), else invalid
    (contract §2; `rejects.on_invalid`), else for each kind too late (`rejects.on_late`) or
    folded into `deltas[(kind, window_start_ms, account_id, country)]` as
    [count, amount] increments; then the watermark moves. Returns the position after the
    last record. After an exception the caller must not use anything this call changed.
    """
    policy = rules.policy
    ooo = policy.max_out_of_orderness_ms
    lateness = rules.lateness()
    max_bytes = rules.max_record_bytes
    # An event with et + slack >= W is on time for every kind: its window starts after
    # et - size, so start + size + allowed > et + allowed >= W (contract §3). Nearly
    # every event takes this branch, which skips the per-kind lateness arithmetic.
    slack = min(allowed for _k, _size, allowed in lateness)
    (k0, size0, _a0), (k1, size1, _a1) = lateness  # KINDS: minute, hour
    get = deltas.get
    next_off, max_et, wm = at
    for offset, key, value in records:
        if offset < next_off:
            continue  # already counted (a re-delivery; never expected after a seek)
        next_off = offset + 1
        try:
            ev = decode_record(key, value, max_bytes)
        except InvalidEvent as e:
            rejects.on_invalid(offset, key, value, str(e))
            continue
        et = ev.event_time
        if wm is None or et + slack >= wm:
            # the two kinds unrolled: a loop over them costs ~10 % of the hot path
            acc, country, amount = ev.account_id, ev.country, ev.amount
            wkey = (k0, et - et % size0, acc, country)
            d = get(wkey)
            if d is None:
                deltas[wkey] = [1, amount]
            else:
                d[0] += 1
                d[1] += amount
            wkey = (k1, et - et % size1, acc, country)
            d = get(wkey)
            if d is None:
                deltas[wkey] = [1, amount]
            else:
                d[0] += 1
                d[1] += amount
        else:
            for kind, size, allowed in lateness:
                start = et - et % size
                if start + size + allowed <= wm:
                    rejects.on_late(offset, key, value, kind,
                                 f"{kind.label} window [{start}, {start + size}) closed: watermark {wm}")
                    continue
                wkey = (kind, start, ev.account_id, ev.country)
                d = get(wkey)
                if d is None:
                    deltas[wkey] = [1, ev.amount]
                else:
                    d[0] += 1
                    d[1] += ev.amount
        if max_et is None or et > max_et:
            max_et = et
            wm = et - ooo
    return Position(next_off, max_et, wm)
