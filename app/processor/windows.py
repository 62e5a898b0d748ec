"""Event-time windows, the watermark and the lateness rule of contract §3. Pure: no I/O.

Windows are tumbling `[start, end)` aligned to the epoch, per kind. The watermark of a
partition is max(event_time read so far) - max_out_of_orderness; an event is classified
against the watermark as it stood *before* the event: too late for kind K iff
`end + allowed_lateness_K <= W`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final


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
