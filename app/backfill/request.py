"""What a backfill is asked to recompute, and which windows that selects. Pure: no I/O.

A request names a window range `[from_ms, to_ms)` (a window is in it iff its start is),
and/or an offset range of one partition (the windows its records were folded into). The
windows actually recomputed are those of the request that are *settled*: final under the
pinned watermark of every partition (docs/backfill.md, "open windows").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from app.core.config import DEFAULT_MAX_RECORD_BYTES
from app.core.errors import FatalError
from app.ledger.backfill_runs import Pin
from app.processor.windows import KINDS, LatenessPolicy, WindowKind


@dataclass(frozen=True, slots=True)
class OffsetRange:
    """Records [from_offset, to_offset) of one partition; to_offset None = up to the pin."""

    partition: int
    from_offset: int
    to_offset: int | None = None


@dataclass(frozen=True, slots=True)
class BackfillRequest:
    policy: LatenessPolicy
    from_ms: int | None = None
    to_ms: int | None = None
    offsets: OffsetRange | None = None
    # a rule (contract §2), not part of the request's identity: the pipeline pins it
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES

    def __post_init__(self) -> None:
        if (self.from_ms is None) != (self.to_ms is None):
            raise ValueError("--from-time and --to-time go together")
        if self.from_ms is None and self.offsets is None:
            raise ValueError("nothing to backfill: give --from-time/--to-time and/or --partition/--from-offset")
        if self.from_ms is not None and self.to_ms is not None and self.from_ms >= self.to_ms:
            raise ValueError("--from-time must be before --to-time")
        o = self.offsets
        if o is not None and o.to_offset is not None and o.from_offset >= o.to_offset:
            raise ValueError("--from-offset must be below --to-offset")

    @property
    def key(self) -> str:
        """Canonical text: the same request always yields the same batch ids."""
        parts = []
        if self.from_ms is not None:
            parts.append(f"time=[{self.from_ms},{self.to_ms})")
        if self.offsets is not None:
            o = self.offsets
            parts.append(f"offsets={o.partition}:[{o.from_offset},{'pin' if o.to_offset is None else o.to_offset})")
        p = self.policy
        parts.append(f"rules=ooo:{p.max_out_of_orderness_ms},lateness:{p.allowed_lateness_minute_ms}/"
                     f"{p.allowed_lateness_hour_ms}")
        return ";".join(parts)

    def describe(self) -> str:
        out = []
        if self.from_ms is not None and self.to_ms is not None:
            out.append(f"windows starting in [{iso(self.from_ms)}, {iso(self.to_ms)})")
        if self.offsets is not None:
            o = self.offsets
            end = "pinned position" if o.to_offset is None else str(o.to_offset)
            out.append(f"windows of partition {o.partition} offsets [{o.from_offset}, {end})")
        return " and ".join(out)


@dataclass(frozen=True, slots=True)
class Selection:
    """The request resolved against a pin: which window slots to recompute, which partitions
    to replay and up to which offset."""

    request: BackfillRequest
    settled_before_ms: dict[WindowKind, int | None]   # starts below this are final everywhere; None: none
    replay_to: dict[int, int]                         # partition -> next_offset to replay up to (exclusive)
    offset_window: tuple[int, int] | None             # [from, to) offsets of the offset range, resolved

    def slot_selected(self, kind: WindowKind, start_ms: int) -> bool:
        settled = self.settled_before_ms[kind]
        if settled is None or start_ms >= settled:
            return False
        r = self.request
        return r.from_ms is None or r.from_ms <= start_ms < r.to_ms  # type: ignore[operator]

    def first_open_ms(self, kind: WindowKind) -> int | None:
        """The first window start that is not settled (None: no window is settled)."""
        settled = self.settled_before_ms[kind]
        return None if settled is None else _aligned_up(settled, kind)

    def time_bounds(self, kind: WindowKind) -> tuple[int, int] | None:
        """[lo, hi) window starts a time request covers once open windows are left out."""
        r = self.request
        settled = self.settled_before_ms[kind]
        if r.from_ms is None or r.to_ms is None or settled is None:
            return None
        lo, hi = r.from_ms, min(r.to_ms, settled)
        return (lo, hi) if lo < hi else None

    def skipped_open(self, kind: WindowKind) -> tuple[int, int] | None:
        """[lo, hi) of window starts in the time range that are still open (not recomputed)."""
        r = self.request
        if r.from_ms is None or r.to_ms is None:
            return None
        settled = self.settled_before_ms[kind]
        first_open = _aligned_up(r.from_ms if settled is None else max(r.from_ms, settled), kind)
        return (first_open, r.to_ms) if first_open < r.to_ms else None


def select(request: BackfillRequest, pin: Pin, partitions: list[int]) -> Selection:
    """Resolve `request` against the pinned ledger positions of the topic's `partitions`.

    A window slot is settled when it is final under the smallest pinned watermark: no
    partition can fold another record into it, and the live processor will never emit it
    again. Partitions without a watermark hold no window yet and do not hold it back.
    """
    policy = request.policy
    watermarks = [p.watermark_ms for p in pin.partitions if p.watermark_ms is not None]
    w_min = min(watermarks) if watermarks else None
    settled = {k: policy.oldest_open_start_ms(k, w_min) for k in KINDS}
    if request.offsets is None:
        replay_to = {p: pin.get(p).next_offset for p in partitions}
        return Selection(request, settled, {p: n for p, n in replay_to.items() if n > 0}, None)
    o = request.offsets
    if o.partition not in partitions:
        raise FatalError(f"partition {o.partition} does not exist (the topic has {len(partitions)})")
    position = pin.get(o.partition).next_offset
    to_offset = position if o.to_offset is None else o.to_offset
    if to_offset > position:
        raise FatalError(f"--to-offset {to_offset} is beyond partition {o.partition}'s committed position "
                         f"{position}: the live processor has not processed those records yet")
    if o.from_offset >= to_offset:
        raise FatalError(f"offset range [{o.from_offset}, {to_offset}) of partition {o.partition} is empty "
                         f"(committed position {position})")
    return Selection(request, settled, {o.partition: position}, (o.from_offset, to_offset))


def _aligned_up(ms: int, kind: WindowKind) -> int:
    size = kind.size_ms
    return -(-ms // size) * size


def iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{ms % 1000:03d}Z" if ms % 1000 else "Z")
