"""Hostile records for a chaos run: every invalid class of contract §2 (every variant the
generator knows, app/gen/invalid.py), keys that do not match, oversized values, and valid
but adversarial events (window edges, sums beyond int64, accounts near 2^64, unicode
kinds, repeated event ids, far-past times). Seeded: the same seed gives the same burst.

Far-future event times are valid too, but one moves its partition's watermark to the
year 2099 and makes every later event of that partition late: `final=True` adds them,
for the last burst of a run only.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from app.gen.invalid import INVALID_CLASSES, MAX_EVENT_TIME_MS

MIB = 1 << 20
COUNTRIES = ("DE", "FR", "US", "JP", "BR")


@dataclass(frozen=True, slots=True)
class HostileRecord:
    label: str           # what it is, for the report
    key: bytes | None
    value: bytes | None


def _event(rng: random.Random, now_ms: int, **over: Any) -> dict[str, Any]:
    acc = rng.randrange(1_000, 100_000)
    ev: dict[str, Any] = {"event_id": f"h-{rng.randrange(1 << 40)}", "account_id": acc,
                          "country": rng.choice(COUNTRIES), "event_time": now_ms - rng.randrange(0, 2_000),
                          "amount": rng.randrange(-10_000, 10_000), "kind": "purchase"}
    ev.update(over)
    return ev


def _rec(label: str, ev: dict[str, Any]) -> HostileRecord:
    return HostileRecord(label, str(ev["account_id"]).encode(), orjson.dumps(ev))


def _padded(ev: dict[str, Any], size: int) -> bytes:
    """The event with an ignored extra field that brings the value to `size` bytes."""
    base = orjson.dumps({**ev, "pad": ""})
    return orjson.dumps({**ev, "pad": "x" * max(0, size - len(base))})


def burst(seed: int, now_ms: int, *, oversized: bool = True, final: bool = False) -> Iterator[HostileRecord]:
    """One burst. `now_ms` is the generator's current event time, so 'on time' means on time."""
    rng = random.Random(seed)
    # every invalid class and variant the generator knows
    for name, make in INVALID_CLASSES:
        for variant in range(12):
            ev = _event(rng, now_ms)
            yield HostileRecord(f"invalid:{name}", str(ev["account_id"]).encode(), make(ev, variant))
    # keys that are not the account id's decimal form
    ev = _event(rng, now_ms)
    acc = ev["account_id"]
    for key in (None, b"", str(acc + 1).encode(), f"0{acc}".encode(), f" {acc}".encode(), f"{acc}.0".encode(),
                str(acc).encode() + b"\x00"):
        yield HostileRecord("invalid:key_mismatch", key, orjson.dumps(ev))
    yield HostileRecord("invalid:null_value", str(acc).encode(), None)
    # valid, adversarial
    edge = now_ms - now_ms % 60_000
    for t in (edge, edge - 1, edge + 59_999):
        yield _rec("valid:window_edge", _event(rng, now_ms, event_time=t))
    big = _event(rng, now_ms, account_id=2**64 - 1 - rng.randrange(3))
    for amount in (2**63 - 1, 2**63 - 1, 2**63 - 1, -(2**63), -(2**63)):  # sums beyond int64 both ways
        yield _rec("valid:int128_sum", {**big, "amount": amount})
    yield _rec("valid:account_near_2^64", _event(rng, now_ms, account_id=2**64 - 1))
    yield _rec("valid:unicode_kind", _event(rng, now_ms, kind="€uro-🚀"))
    dup = _event(rng, now_ms)
    for _ in range(3):  # event ids are not used for dedup: each record counts
        yield _rec("valid:repeated_event_id", dup)
    yield _rec("valid:far_past", _event(rng, now_ms, event_time=rng.randrange(0, 10**12)))
    yield _rec("valid:event_time_zero", _event(rng, now_ms, event_time=0))
    if oversized:
        for size in (600 * 1024, 2 * MIB, 10 * MIB):
            on_time = _event(rng, now_ms)
            yield HostileRecord(f"oversized:{size}:on_time", str(on_time["account_id"]).encode(),
                                _padded(on_time, size))
            late = _event(rng, now_ms, event_time=now_ms - 3 * 3_600_000)
            yield HostileRecord(f"oversized:{size}:late", str(late["account_id"]).encode(), _padded(late, size))
            yield HostileRecord(f"oversized:{size}:invalid", str(acc).encode(), b"{" + b"x" * (size - 1))
    if final:
        yield _rec("valid:far_future", _event(rng, now_ms, event_time=MAX_EVENT_TIME_MS - 1))
