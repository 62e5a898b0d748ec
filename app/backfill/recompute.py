"""Replay one partition's log with the live processor's rules and keep the selected windows.
Pure: records in, windows out.

Classification and folding are `app.processor.windows.fold_run`, the very function the live
processor calls (validity by `decode_record`: value, size and key rules; lateness by
`LatenessPolicy`), and the replay starts at offset 0 because the watermark depends on the
whole prefix: every record is classified exactly as the live run classified it. The replay
also counts what the ledger counts (late per kind, invalid) and ends on the same watermark,
so the caller can prove the classification matched before landing anything.

The window selection (the request's settled slots; in offset mode, the windows the offset
range touched) is applied to each fed piece's folded windows, not per record.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter

from app.backfill.request import BackfillRequest, Selection, iso
from app.core.errors import FatalError
from app.ledger.backfill_runs import DlqKey, Pin
from app.ledger.rows import WindowRow
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

Slot = tuple[int, int]                 # (kind, window_start_ms)
KeyOfSlot = tuple[int, str]            # (account_id, country)

# In offset mode, how often (in records) windows that can no longer be touched are forgotten.
_PRUNE_EVERY = 20_000
_offset = itemgetter(0)


@dataclass(slots=True)
class PartitionReplay:
    """Feed a partition's records in offset order from offset 0; read the windows after."""

    partition: int
    selection: Selection
    records: int = 0
    next_offset: int = 0
    max_event_time_ms: int | None = None
    watermark_ms: int | None = None
    invalid: int = 0
    late: dict[WindowKind, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    windows: dict[Slot, dict[KeyOfSlot, list[int]]] = field(default_factory=dict)
    # offset mode: the windows records in the offset range were folded into
    touched: set[WindowKey] | None = None
    _since_prune: int = 0
    _rules: FoldRules | None = None
    _bounds_by_kind: dict[int, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.selection.offset_window is not None:
            self.touched = set()
        self._rules = FoldRules(self.policy, self.selection.request.max_record_bytes)
        self._bounds_by_kind = {k: self._bounds(k) for k in KINDS}

    @property
    def policy(self) -> LatenessPolicy:
        return self.selection.request.policy

    def feed(self, records: Sequence[Record]) -> None:
        """(offset, key, value) of this partition's records, ascending, continuing where the last
        call ended."""
        fresh = records[bisect_left(records, self.next_offset, key=_offset):]  # a re-delivery counts once
        if not fresh:
            return
        self.records += len(fresh)
        offsets = self.selection.offset_window
        if offsets is None:
            self._fold(fresh, "all")
            return
        # offset mode: records before the range may fold into windows it touches later, and
        # past the range only windows it touched still matter
        a, b = offsets
        i, j = bisect_left(fresh, a, key=_offset), bisect_left(fresh, b, key=_offset)
        self._fold(fresh[:i], "all")
        self._fold(fresh[i:j], "touching")
        self._fold(fresh[j:], "touched")
        self._since_prune += len(fresh)
        if self._since_prune >= _PRUNE_EVERY:
            self._prune()

    # ---- fold_run's Rejects: counted as the ledger counts them --------------------------

    def on_invalid(self, offset: int, key: bytes | None, value: bytes | None, error: str) -> None:
        self.invalid += 1

    def on_late(self, offset: int, key: bytes | None, value: bytes | None, kind: WindowKind, error: str) -> None:
        self.late[kind] += 1

    # ---- internals ----------------------------------------------------------------------

    def _fold(self, records: Sequence[Record], keep: str) -> None:
        """Fold `records`; keep the windows of selected slots: 'all', 'touching' (and mark
        them touched) or 'touched' (only windows already touched)."""
        if not records:
            return
        assert self._rules is not None
        deltas: dict[WindowKey, list[int]] = {}
        at = Position(self.next_offset, self.max_event_time_ms, self.watermark_ms)
        self.next_offset, self.max_event_time_ms, self.watermark_ms = fold_run(records, at, self._rules, deltas,
                                                                               self)
        windows, bounds, touched = self.windows, self._bounds_by_kind, self.touched
        for wkey, (count, amount) in deltas.items():
            kind, start, account, country = wkey
            lo, hi = bounds[kind]
            if not lo <= start < hi:
                continue
            if touched is not None:
                if keep == "touching":
                    touched.add(wkey)
                elif keep == "touched" and wkey not in touched:
                    continue
            slot = windows.get((kind, start))
            if slot is None:
                slot = windows[(kind, start)] = {}
            v = slot.get((account, country))
            if v is None:
                slot[(account, country)] = [count, amount]
            else:
                v[0] += count
                v[1] += amount

    def _bounds(self, kind: WindowKind) -> tuple[float, float]:
        """[lo, hi) of the window starts Selection.slot_selected accepts for `kind`."""
        sel = self.selection
        settled, r = sel.settled_before_ms[kind], sel.request
        if settled is None:
            return (0.0, 0.0)
        lo = float("-inf") if r.from_ms is None else r.from_ms
        hi = settled if r.to_ms is None else min(settled, r.to_ms)
        return (lo, hi)

    def _prune(self) -> None:
        """Offset mode: a window final under the current watermark can receive no later record,
        so one the offset range has not touched (yet) never will be: forget it."""
        self._since_prune = 0
        touched = self.touched
        assert touched is not None
        for slot in [s for s in self.windows if self.policy.is_final(WindowKind(s[0]), s[1], self.watermark_ms)]:
            keys = self.windows[slot]
            kept = {k: v for k, v in keys.items() if (slot[0], slot[1], *k) in touched}
            if kept:
                self.windows[slot] = kept
            else:
                del self.windows[slot]

    def dlq_counts(self) -> dict[DlqKey, int]:
        """What the ledger's dlq_count holds for this partition after the same records."""
        counts = {("invalid", ""): self.invalid}
        for kind, n in self.late.items():
            counts[("late", kind.label)] = n
        return {k: n for k, n in counts.items() if n}

    def rows(self) -> list[WindowRow]:
        """The recomputed windows: every selected one (time request), or those the offset
        range touched (offset request); full values, sorted by (kind, start, key)."""
        p, touched = self.partition, self.touched
        out = []
        for (kind, start), keys in sorted(self.windows.items()):
            for (account, country), (count, amount) in sorted(keys.items()):
                if touched is not None and (kind, start, account, country) not in touched:
                    continue
                out.append(WindowRow(kind, p, start // 1000, account, country, count, amount))
        return out


def check_out_of_orderness(pin: Pin, request: BackfillRequest) -> None:
    """The ledger stores both max event time and watermark: their gap is the live run's
    max_out_of_orderness. A different value would classify records differently."""
    ooo = request.policy.max_out_of_orderness_ms
    for p in pin.partitions:
        if p.max_event_time_ms is None or p.watermark_ms is None:
            continue
        live = p.max_event_time_ms - p.watermark_ms
        if live != ooo:
            raise FatalError(f"the live processor runs with --max-out-of-orderness {live}ms (ledger, partition "
                             f"{p.partition}), not {ooo}ms: pass the processor's flags")


def check_classification(replays: dict[int, PartitionReplay], pin: Pin, request: BackfillRequest) -> None:
    """At the pinned position the replay must stand where the live run stood: same max event
    time and the same late and invalid counts as the ledger. Otherwise the rules (the
    lateness flags) or the input differ, and the recomputed windows would be wrong."""
    for p, replay in sorted(replays.items()):
        pinned = pin.get(p)
        if replay.max_event_time_ms != pinned.max_event_time_ms:
            raise FatalError(f"partition {p}: replay up to offset {pinned.next_offset} ends at max event time "
                             f"{iso(replay.max_event_time_ms)}, the ledger at {iso(pinned.max_event_time_ms)}: "
                             "the input differs from what the live processor read")
        got = replay.dlq_counts()
        want = {k: n for k, n in pinned.dlq.items() if n}
        if got != want:
            def show(d: dict[tuple[str, str], int]) -> str:
                return ", ".join(f"{r}{'/' + k if k else ''} {n}" for (r, k), n in sorted(d.items())) or "none"
            p_ = request.policy
            raise FatalError(
                f"partition {p}: replaying offsets [0, {pinned.next_offset}) gives DLQ counts {show(got)}, the "
                f"ledger holds {show(want)}: the live processor classified records with other rules than "
                f"--allowed-lateness-minute {p_.allowed_lateness_minute_ms}ms / --allowed-lateness-hour "
                f"{p_.allowed_lateness_hour_ms}ms; pass the processor's flags")


def rows_by_table(replays: dict[int, PartitionReplay]) -> dict[str, list[WindowRow]]:
    out: dict[str, list[WindowRow]] = {k.table: [] for k in KINDS}
    for _p, replay in sorted(replays.items()):
        for r in replay.rows():
            out[WindowKind(r.kind).table].append(r)
    for rows in out.values():
        rows.sort(key=lambda r: (r.window_start_s, r.account_id, r.country, r.partition))
    return out
