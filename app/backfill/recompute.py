"""Replay one partition's log with the live processor's rules and keep the selected windows.
Pure: records in, windows out.

Validity is `app.processor.decode.decode_record` (value, size and key rules) and lateness is
`app.processor.windows.LatenessPolicy`, the very functions the live processor uses, and the
replay starts at offset 0 because the watermark depends on the whole prefix: every record
is classified exactly as the live run classified it. The replay also counts what the
ledger counts (late per kind, invalid) and ends on the same watermark, so the caller can
prove the classification matched before landing anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from app.backfill.request import Selection
from app.ledger.backfill import DlqKey
from app.ledger.rows import WindowRow
from app.processor.decode import InvalidEvent, decode_record
from app.processor.windows import KINDS, LatenessPolicy, WindowKind

Slot = tuple[int, int]                 # (kind, window_start_ms)
KeyOfSlot = tuple[int, str]            # (account_id, country)

# In offset mode, how often windows that can no longer be touched are forgotten.
_PRUNE_EVERY = 20_000


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
    touched: set[tuple[int, int, int, str]] | None = None
    _since_prune: int = 0

    def __post_init__(self) -> None:
        if self.selection.offset_window is not None:
            self.touched = set()

    @property
    def policy(self) -> LatenessPolicy:
        return self.selection.request.policy

    def feed(self, records: Iterable[tuple[int, bytes | None, bytes | None]]) -> None:
        """(offset, key, value) of this partition's records, ascending, continuing where the last
        call ended."""
        policy, windows, touched = self.policy, self.windows, self.touched
        offsets = self.selection.offset_window
        # The hot loop spells out LatenessPolicy.is_too_late and Selection.slot_selected with
        # per-kind constants, as the live engine does (tests/unit/test_backfill_rules.py checks the
        # result against the independent truth of app/verify).
        kinds = [(k, k.size_ms, policy.allowed_lateness_ms(k), *self._bounds(k)) for k in KINDS]
        ooo = policy.max_out_of_orderness_ms
        late = self.late
        next_offset, mx, wm = self.next_offset, self.max_event_time_ms, self.watermark_ms
        max_bytes = self.selection.request.max_record_bytes
        for offset, key, value in records:
            if offset < next_offset:
                continue  # a re-delivery must not count twice
            next_offset = offset + 1
            self.records += 1
            try:
                ev = decode_record(key, value, max_bytes)
            except InvalidEvent:
                self.invalid += 1
                continue
            et = ev.event_time
            # wm is W before this record, as contract §3 says
            in_offsets = offsets is not None and offsets[0] <= offset < offsets[1]
            for kind, size, allowed, lo, hi in kinds:
                start = et - et % size
                if wm is not None and start + size + allowed <= wm:
                    late[kind] += 1
                    continue
                if not lo <= start < hi:
                    continue
                wkey = (ev.account_id, ev.country)
                if touched is not None:
                    if in_offsets:
                        touched.add((kind, start, *wkey))
                    elif offsets is not None and offset >= offsets[1] and (kind, start, *wkey) not in touched:
                        continue  # past the range: only windows it touched still matter
                slot = windows.get((kind, start))
                if slot is None:
                    slot = windows[(kind, start)] = {}
                v = slot.get(wkey)
                if v is None:
                    slot[wkey] = [1, ev.amount]
                else:
                    v[0] += 1
                    v[1] += ev.amount
            if mx is None or et > mx:
                mx = et
                wm = et - ooo
            if touched is not None:
                self._since_prune += 1
                if self._since_prune >= _PRUNE_EVERY:
                    self.max_event_time_ms, self.watermark_ms = mx, wm
                    self._prune()
        self.next_offset, self.max_event_time_ms, self.watermark_ms = next_offset, mx, wm

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
