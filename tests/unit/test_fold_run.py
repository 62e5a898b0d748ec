"""`windows.fold_run`, the one classify-and-fold both the live processor and backfill call,
fed plain (offset, key, value) tuples, no Kafka: against a slow reference written from
contract §3 with LatenessPolicy's readable predicates, under any split into runs, with
re-deliveries, and with the DLQ reasons and texts the processor sends."""

from __future__ import annotations

import json
import random

import pytest

from app.processor.decode import InvalidEvent, decode_record
from app.processor.windows import (
    KINDS,
    FoldRules,
    LatenessPolicy,
    Position,
    Record,
    WindowKey,
    WindowKind,
    fold_run,
    window_start_ms,
)

T0 = 1_763_596_800_000  # 2025-11-20T00:00:00Z
START = Position(0, None, None)


class Counted:
    """A Rejects that remembers what it was given."""

    def __init__(self) -> None:
        self.invalid: list[tuple[int, str]] = []
        self.late: list[tuple[int, WindowKind, str]] = []

    def on_invalid(self, offset: int, key: bytes | None, value: bytes | None, error: str) -> None:
        self.invalid.append((offset, error))

    def on_late(self, offset: int, key: bytes | None, value: bytes | None, kind: WindowKind, error: str) -> None:
        self.late.append((offset, kind, error))


def record(offset: int, account: int, event_time: int, amount: int = 10, country: str = "DE") -> Record:
    value = json.dumps({"event_id": offset, "account_id": account, "country": country, "event_time": event_time,
                        "amount": amount, "kind": "purchase"}).encode()
    return (offset, str(account).encode(), value)


def random_log(rng: random.Random, n: int) -> list[Record]:
    out: list[Record] = []
    t = T0
    for off in range(n):
        t += rng.randint(0, 3_000)
        r = rng.random()
        if r < 0.03:
            out.append((off, b"1", rng.choice([None, b"{}", b"not json", b'{"account_id": 1.5}'])))
        elif r < 0.05:  # a key that is not the account id
            out.append((off, b"01", record(off, 1, t)[2]))
        else:
            lag = rng.randint(0, 4_000) if r < 0.9 else rng.randint(0, 3 * 3_600_000)
            out.append(record(off, rng.randint(0, 20), max(0, t - lag), rng.randint(-500, 10_000),
                              rng.choice(["DE", "FR"])))
    return out


def reference(records: list[Record], policy: LatenessPolicy, max_bytes: int = 1 << 20,
              ) -> tuple[dict[WindowKey, list[int]], list[int], list[tuple[int, WindowKind]], Position]:
    """Contract §3 one record at a time: W before the record, per kind too late or folded."""
    deltas: dict[WindowKey, list[int]] = {}
    invalid, late = [], []
    mx: int | None = None
    nxt = 0
    for offset, key, value in records:
        if offset < nxt:
            continue
        nxt = offset + 1
        try:
            ev = decode_record(key, value, max_bytes)
        except InvalidEvent:
            invalid.append(offset)
            continue
        w = policy.watermark_ms(mx)
        for kind in KINDS:
            start = window_start_ms(ev.event_time, kind)
            if policy.is_too_late(kind, start, w):
                late.append((offset, kind))
                continue
            v = deltas.setdefault((kind, start, ev.account_id, ev.country), [0, 0])
            v[0] += 1
            v[1] += ev.amount
        mx = ev.event_time if mx is None else max(mx, ev.event_time)
    return deltas, invalid, late, Position(nxt, mx, policy.watermark_ms(mx))


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("policy", [LatenessPolicy(5_000, 60_000, 60_000), LatenessPolicy(2_000, 0, 600_000)])
def test_fold_run_equals_the_reference_under_any_split_into_runs(seed: int, policy: LatenessPolicy) -> None:
    rng = random.Random(seed)
    records = random_log(rng, 2_000)
    want_deltas, want_invalid, want_late, want_at = reference(records, policy)
    assert want_late and want_invalid  # the log exercises both rejections
    rules = FoldRules(policy, 1 << 20)
    deltas: dict[WindowKey, list[int]] = {}
    rejects = Counted()
    at, i = START, 0
    while i < len(records):  # runs of random length, as consume() hands them out
        j = i + rng.randint(1, 300)
        at = fold_run(records[i:j], at, rules, deltas, rejects)
        i = j
    assert deltas == want_deltas
    assert at == want_at
    assert [o for o, _ in rejects.invalid] == want_invalid
    assert [(o, k) for o, k, _ in rejects.late] == want_late


def test_a_record_below_the_next_offset_counts_once() -> None:
    rules = FoldRules(LatenessPolicy(), 1 << 20)
    deltas: dict[WindowKey, list[int]] = {}
    records = [record(0, 7, T0), record(1, 7, T0 + 1)]
    at = fold_run(records, START, rules, deltas, Counted())
    at = fold_run(records + [record(2, 7, T0 + 2)], at, rules, deltas, Counted())  # 0 and 1 again
    assert at.next_offset == 3
    assert deltas[(WindowKind.MINUTE, T0, 7, "DE")] == [3, 30]


def test_late_and_invalid_records_carry_the_texts_the_dlq_sends() -> None:
    rules = FoldRules(LatenessPolicy(5_000, 60_000, 60_000), 200)
    rejects = Counted()
    h1 = T0 + 3_600_000
    latest = h1 + 600_000  # 10 minutes into hour 1
    records = [record(0, 7, latest), record(1, 7, h1 + 60_000), record(2, 7, T0), (3, b"7", b"x" * 201)]
    deltas: dict[WindowKey, list[int]] = {}
    at = fold_run(records, START, rules, deltas, rejects)
    w = latest - 5_000
    assert rejects.late == [
        (1, WindowKind.MINUTE, f"minute window [{h1 + 60_000}, {h1 + 120_000}) closed: watermark {w}"),
        (2, WindowKind.MINUTE, f"minute window [{T0}, {T0 + 60_000}) closed: watermark {w}"),
        (2, WindowKind.HOUR, f"hour window [{T0}, {h1}) closed: watermark {w}"),
    ]
    assert rejects.invalid == [(3, "value of 201 bytes is larger than --max-record-bytes 200")]
    # record 1 is too late for its minute, not for its hour (contract §3)
    assert deltas[(WindowKind.HOUR, h1, 7, "DE")] == [2, 20]
    assert at == Position(4, latest, w)
