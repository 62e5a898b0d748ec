"""Open-model send schedule: record i is due at a fixed time, whatever the broker does.

The rate is piecewise constant: --rate, multiplied during each --burst. Burst syntax
`<mult>x@<start>+<duration>`, e.g. `3x@60+30` or `3x@1m+30s` = three times the rate from
60 s into the run for 30 s; several bursts are comma-separated and must not overlap.
Pure and clock-free so it can be unit-tested; produce.py supplies the clock.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from dataclasses import dataclass

from app.core.config import parse_duration_s

_BURST_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*x\s*@\s*([^+]+?)\s*\+\s*(.+?)\s*$")


@dataclass(frozen=True, slots=True)
class Burst:
    multiplier: float
    start_s: float
    duration_s: float

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


def parse_bursts(text: str) -> tuple[Burst, ...]:
    """'3x@60+30,2x@5m+1m' -> bursts sorted by start; ValueError with the reason if malformed."""
    bursts: list[Burst] = []
    for part in (p for p in text.split(",") if p.strip()):
        m = _BURST_RE.match(part)
        if not m:
            raise ValueError(f"invalid burst {part.strip()!r}: use <mult>x@<start>+<duration>, e.g. 3x@60+30")
        mult = float(m.group(1))
        if not (mult > 0 and math.isfinite(mult)):
            raise ValueError(f"invalid burst {part.strip()!r}: the multiplier must be > 0")
        start_s, duration_s = parse_duration_s(m.group(2)), parse_duration_s(m.group(3))
        if duration_s <= 0:
            raise ValueError(f"invalid burst {part.strip()!r}: the duration must be > 0")
        bursts.append(Burst(mult, start_s, duration_s))
    bursts.sort(key=lambda b: b.start_s)
    for a, b in itertools.pairwise(bursts):
        if b.start_s < a.end_s:
            raise ValueError(f"bursts overlap: {a.multiplier:g}x@{a.start_s:g}+{a.duration_s:g} "
                             f"and {b.multiplier:g}x@{b.start_s:g}+{b.duration_s:g}")
    return tuple(bursts)


@dataclass(frozen=True, slots=True)
class RateSchedule:
    """Cumulative sends N(t) = integral of the rate; record i is due when N(t) reaches i.

    Segment k starts at time starts_s[k] with N = counts[k] and runs at rates[k] events/s;
    the last segment runs forever at the base rate.
    """

    starts_s: tuple[float, ...]
    counts: tuple[float, ...]
    rates: tuple[float, ...]

    @classmethod
    def create(cls, rate: float, bursts: tuple[Burst, ...] = ()) -> RateSchedule:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError("rate must be > 0 for a schedule")
        starts, counts, rates = [0.0], [0.0], [rate]
        for b in bursts:
            for t, r in ((b.start_s, rate * b.multiplier), (b.end_s, rate)):
                counts.append(counts[-1] + (t - starts[-1]) * rates[-1])
                starts.append(t)
                rates.append(r)
        return cls(tuple(starts), tuple(counts), tuple(rates))

    def due_s(self, index: int) -> float:
        """Seconds after the start at which record `index` is due (record 0 at 0)."""
        k = bisect.bisect_right(self.counts, index) - 1
        return self.starts_s[k] + (index - self.counts[k]) / self.rates[k]

    def due_count(self, elapsed_s: float) -> int:
        """How many records are due by `elapsed_s` (records 0..due_count-1)."""
        if elapsed_s < 0:
            return 0
        k = bisect.bisect_right(self.starts_s, elapsed_s) - 1
        return math.floor(self.counts[k] + (elapsed_s - self.starts_s[k]) * self.rates[k]) + 1

    def wait_s(self, sent: int, elapsed_s: float, tick_s: float) -> float:
        """Seconds to wait before the next send, 0 = send now: when the oldest unsent record
        (index `sent`) has been due for a tick. So a sender on schedule sends about
        rate x tick records at a time, each at most a tick after its due time, instead of
        waking for every next record."""
        return max(self.due_s(sent) + tick_s - elapsed_s, 0.0)

    def rate_at(self, elapsed_s: float) -> float:
        return self.rates[max(bisect.bisect_right(self.starts_s, elapsed_s) - 1, 0)]
