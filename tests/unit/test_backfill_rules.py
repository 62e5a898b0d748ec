"""Backfill's pure parts: request resolution (settled windows), the replay against the
independent truth of app/verify, offset requests, and the diff against ClickHouse rows."""

from __future__ import annotations

import json
import random

import pytest

from app.backfill import recompute
from app.backfill.clickhouse import StoredRange
from app.backfill.compare import diff_table
from app.backfill.recompute import PartitionReplay
from app.backfill.request import BackfillRequest, OffsetRange, iso, select
from app.backfill.run import check_classification, check_out_of_orderness, rows_by_table
from app.core.errors import FatalError
from app.ledger.backfill_runs import Pin, PinnedPartition
from app.ledger.rows import WindowRow
from app.processor.windows import LatenessPolicy, WindowKind
from app.verify.truth import Rules, TruthBuilder

POLICY = LatenessPolicy(5_000, 60_000, 60_000)
T0 = 1_763_596_800_000  # 2025-11-20T00:00:00Z
MIN, HOUR = WindowKind.MINUTE, WindowKind.HOUR


def pin_of(*parts: tuple[int, int, int | None], dlq: dict[int, dict[tuple[str, str], int]] | None = None) -> Pin:
    """(partition, next_offset, max_event_time_ms) -> a pin with the policy's watermark."""
    return Pin(tuple(PinnedPartition(p, n, m, None if m is None else m - POLICY.max_out_of_orderness_ms,
                                     (dlq or {}).get(p, {})) for p, n, m in parts))


# ---- request and selection ---------------------------------------------------------------


def test_request_validation_and_canonical_key() -> None:
    with pytest.raises(ValueError, match="nothing to backfill"):
        BackfillRequest(POLICY)
    with pytest.raises(ValueError, match="go together"):
        BackfillRequest(POLICY, from_ms=T0)
    with pytest.raises(ValueError, match="before"):
        BackfillRequest(POLICY, from_ms=T0, to_ms=T0)
    with pytest.raises(ValueError, match="below"):
        BackfillRequest(POLICY, offsets=OffsetRange(0, 10, 10))
    a = BackfillRequest(POLICY, from_ms=T0, to_ms=T0 + 3_600_000)
    assert a.key == BackfillRequest(POLICY, from_ms=T0, to_ms=T0 + 3_600_000).key
    # other rules or another range: another request, other batch ids
    assert a.key != BackfillRequest(LatenessPolicy(5_000, 30_000, 60_000), from_ms=T0, to_ms=T0 + 3_600_000).key
    assert a.key != BackfillRequest(POLICY, from_ms=T0, to_ms=T0 + 60_000).key
    assert iso(T0) == "2025-11-20T00:00:00Z" and iso(T0 + 5) == "2025-11-20T00:00:00.005Z"


def test_settled_windows_are_final_under_the_smallest_pinned_watermark() -> None:
    req = BackfillRequest(POLICY, from_ms=T0, to_ms=T0 + 2 * 3_600_000)
    # partition 1 is behind: it holds the settled bound back; partition 2 has no watermark yet
    pin = pin_of((0, 500, T0 + 90 * 60_000), (1, 300, T0 + 70 * 60_000), (2, 4, None))
    sel = select(req, pin, [0, 1, 2, 3])
    w_min = T0 + 70 * 60_000 - 5_000
    # final iff start + size + 60 s <= W
    for start in range(T0, T0 + 2 * 3_600_000, 60_000):
        assert sel.slot_selected(MIN, start) == (start + 120_000 <= w_min)
    assert sel.slot_selected(HOUR, T0)  # hour 00:00 ends 01:00, + 60 s <= 01:09:55
    assert not sel.slot_selected(HOUR, T0 + 3_600_000)
    assert sel.first_open_ms(MIN) == T0 + 68 * 60_000
    assert sel.skipped_open(MIN) == (T0 + 68 * 60_000, T0 + 2 * 3_600_000)
    assert sel.skipped_open(HOUR) == (T0 + 3_600_000, T0 + 2 * 3_600_000)
    assert sel.time_bounds(MIN) == (T0, sel.settled_before_ms[MIN])
    assert sel.time_bounds(HOUR) == (T0, sel.settled_before_ms[HOUR])
    # every partition the ledger processed is replayed, up to its pinned position
    assert sel.replay_to == {0: 500, 1: 300, 2: 4}
    assert not sel.slot_selected(MIN, T0 - 60_000)  # outside the range


@pytest.mark.parametrize("request_", [
    BackfillRequest(POLICY, from_ms=T0 + 90_000, to_ms=T0 + 5_400_000),
    BackfillRequest(POLICY, offsets=OffsetRange(0, 10)),
    BackfillRequest(POLICY, from_ms=T0, to_ms=T0 + 60_000, offsets=OffsetRange(0, 10)),
])
def test_the_replay_loop_selects_exactly_the_selected_slots(request_: BackfillRequest) -> None:
    sel = select(request_, pin_of((0, 500, T0 + 3_600_000 + 777)), [0])
    r = PartitionReplay(0, sel)
    for kind in (MIN, HOUR):
        lo, hi = r._bounds(kind)
        for start in range(T0 - 2 * 3_600_000, T0 + 3 * 3_600_000, 60_000):
            assert (lo <= start < hi) == sel.slot_selected(kind, start), (kind, start)


def test_nothing_is_settled_before_any_watermark() -> None:
    sel = select(BackfillRequest(POLICY, from_ms=0, to_ms=T0), pin_of((0, 3, None)), [0])
    assert sel.settled_before_ms == {MIN: None, HOUR: None}
    assert not sel.slot_selected(MIN, 0)
    assert sel.skipped_open(MIN) == (0, T0)


def test_offset_request_is_bounded_by_the_committed_position() -> None:
    pin = pin_of((0, 100, T0), (1, 50, T0))
    sel = select(BackfillRequest(POLICY, offsets=OffsetRange(1, 10)), pin, [0, 1])
    assert sel.offset_window == (10, 50) and sel.replay_to == {1: 50}
    with pytest.raises(FatalError, match="beyond partition 1's committed position 50"):
        select(BackfillRequest(POLICY, offsets=OffsetRange(1, 10, 51)), pin, [0, 1])
    with pytest.raises(FatalError, match="does not exist"):
        select(BackfillRequest(POLICY, offsets=OffsetRange(5, 0)), pin, [0, 1])
    with pytest.raises(FatalError, match="empty"):
        select(BackfillRequest(POLICY, offsets=OffsetRange(0, 100)), pin, [0, 1])


# ---- the replay ------------------------------------------------------------------------


def key_of(value: bytes | None) -> bytes | None:
    """The key a producer keyed by account id gives the record (contract §2)."""
    try:
        ev = json.loads(value) if value else None
    except ValueError:
        return None
    return str(ev["account_id"]).encode() if isinstance(ev, dict) and "account_id" in ev else None


def test_the_replay_applies_the_key_and_size_rules() -> None:
    """The live processor's decode_record: a record whose key is not its account id, or whose
    value is above --max-record-bytes, is invalid in the replay too (else the replay's DLQ
    counts would disagree with the ledger's and the backfill would refuse)."""
    ev = {"event_id": "e", "account_id": 7, "country": "DE", "event_time": T0, "amount": 5, "kind": "k"}
    value = json.dumps(ev).encode()
    big = json.dumps({**ev, "pad": "x" * 2_000}).encode()
    request = BackfillRequest(POLICY, from_ms=T0, to_ms=T0 + 60_000, max_record_bytes=1_000)
    r = PartitionReplay(0, select(request, pin_of((0, 5, T0 + 3_600_000)), [0]))
    r.feed([(0, b"7", value), (1, b"8", value), (2, None, value), (3, b"07", value), (4, b"7", big)])
    assert r.invalid == 4 and r.records == 5


def random_log(rng: random.Random, n: int, accounts: range = range(30)) -> list[bytes | None]:
    """Mostly in-order events with a long tail of late ones, some invalid records. Each
    partition gets its own accounts (Kafka's key partitioning)."""
    out: list[bytes | None] = []
    t = T0
    for i in range(n):
        t += rng.randint(0, 4_000)
        r = rng.random()
        if r < 0.02:
            out.append(rng.choice([None, b"not json", b'{"event_id": 1}', b'{"account_id": 1.5}']))
            continue
        lag = rng.randint(0, 4_000) if r < 0.9 else rng.randint(0, 3 * 3_600_000)
        ev = {"event_id": f"e{i}", "account_id": rng.choice(accounts), "country": rng.choice(["DE", "FR", "US"]),
              "event_time": max(0, t - lag), "amount": rng.randint(-500, 10_000), "kind": "purchase"}
        out.append(json.dumps(ev).encode())
    return out


def replay(sel_request: BackfillRequest, pin: Pin, logs: dict[int, list[bytes | None]],
           chunk: int = 97) -> dict[int, PartitionReplay]:
    sel = select(sel_request, pin, sorted(logs))
    out = {p: PartitionReplay(p, sel) for p in sel.replay_to}
    for p, r in out.items():
        values = logs[p][:sel.replay_to[p]]
        records = [(off, key_of(v), v) for off, v in enumerate(values)]
        for i in range(0, len(records), chunk):  # fed in pieces, as Kafka hands them out
            r.feed(records[i:i + chunk])
    return out


def pinned_from_truth(logs: dict[int, list[bytes | None]]) -> Pin:
    """What the live processor's ledger would hold after reading every record: its max event
    time and DLQ counts, here from the independent implementation in app/verify."""
    parts = []
    for p, values in logs.items():
        b = TruthBuilder(Rules(5_000, 60_000, 60_000))
        b.feed(p, values, [key_of(v) for v in values])
        st = b.build().partitions[p]
        dlq = {("invalid", ""): st.invalid, ("late", "minute"): st.late_minute, ("late", "hour"): st.late_hour}
        parts.append(PinnedPartition(p, len(values), st.max_event_time_ms, st.watermark_ms(b.rules),
                                     {k: n for k, n in dlq.items() if n}))
    return Pin(tuple(parts))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replay_of_a_time_range_equals_the_independent_truth(seed: int) -> None:
    rng = random.Random(seed)
    logs = {p: random_log(rng, 3_000, range(p * 100, p * 100 + 30)) for p in range(3)}
    pin = pinned_from_truth(logs)
    lo, hi = T0 + 3_600_000 // 2, T0 + 3_600_000 * 3 // 2
    request = BackfillRequest(POLICY, from_ms=lo, to_ms=hi)
    replays = replay(request, pin, logs)
    check_classification(replays, pin, request)  # same watermark and DLQ counts as "the ledger"
    truth_builder = TruthBuilder(Rules(5_000, 60_000, 60_000))
    for p, values in logs.items():
        truth_builder.feed(p, values, [key_of(v) for v in values])
    truth = truth_builder.build()
    sel = select(request, pin, sorted(logs))
    tables = rows_by_table(replays)
    for kind in (MIN, HOUR):
        want = {k: v for k, v in truth.rollups[kind.label].items() if sel.slot_selected(kind, k[0] * 1000)}
        got = {(r.window_start_s, r.account_id, r.country): (r.event_count, r.sum_amount) for r in tables[kind.table]}
        assert got == want
        assert want or kind is HOUR  # the range does select minute windows


def test_a_replay_with_other_lateness_rules_is_refused() -> None:
    rng = random.Random(9)
    logs = {0: random_log(rng, 2_000)}
    pin = pinned_from_truth(logs)  # the live run used 60 s
    request = BackfillRequest(LatenessPolicy(5_000, 30_000, 60_000), from_ms=T0, to_ms=T0 + 3_600_000)
    with pytest.raises(FatalError, match="other rules"):
        check_classification(replay(request, pin, logs), pin, request)
    with pytest.raises(FatalError, match="--max-out-of-orderness 5000ms"):
        check_out_of_orderness(pin, BackfillRequest(LatenessPolicy(2_000), from_ms=T0, to_ms=T0 + 1))


def brute_force_offset_windows(values: list[bytes | None], a: int, b: int) -> dict[tuple[int, int, int, str], list[int]]:
    """Windows the records [a, b) were folded into, with their full values over the log."""
    folded: list[tuple[int, tuple[int, int, int, str], int]] = []
    mx = None
    for off, v in enumerate(values):
        try:
            ev = json.loads(v) if v else None
            ok = (isinstance(ev, dict) and isinstance(ev.get("account_id"), int) and "event_time" in ev
                  and isinstance(ev.get("amount"), int) and "country" in ev and "event_id" in ev and "kind" in ev)
        except ValueError:
            ok = False
        if not ok:
            continue
        et = ev["event_time"]
        w = None if mx is None else mx - 5_000
        for kind in (MIN, HOUR):
            start = et - et % kind.size_ms
            if w is not None and start + kind.size_ms + 60_000 <= w:
                continue
            folded.append((off, (int(kind), start, ev["account_id"], ev["country"]), ev["amount"]))
        mx = et if mx is None else max(mx, et)
    touched = {k for off, k, _ in folded if a <= off < b}
    out: dict[tuple[int, int, int, str], list[int]] = {}
    for _off, k, amount in folded:
        if k in touched:
            v = out.setdefault(k, [0, 0])
            v[0] += 1
            v[1] += amount
    return out


@pytest.mark.parametrize("prune_every", [50, 1_000_000])
def test_offset_request_recomputes_the_windows_its_records_touched(monkeypatch: pytest.MonkeyPatch,
                                                                   prune_every: int) -> None:
    monkeypatch.setattr(recompute, "_PRUNE_EVERY", prune_every)  # pruning must not change the result
    rng = random.Random(5)
    logs = {0: random_log(rng, 4_000)}
    # a pin far ahead, so every window is settled (the offset range decides alone)
    far = Pin((PinnedPartition(0, 4_000, T0 + 10**9, T0 + 10**9 - 5_000, {}),))
    request = BackfillRequest(POLICY, offsets=OffsetRange(0, 1_500, 1_700))
    replays = replay(request, far, logs)
    got = {(r.kind, r.window_start_s * 1000, r.account_id, r.country): [r.event_count, r.sum_amount]
           for r in replays[0].rows()}
    assert got == brute_force_offset_windows(logs[0], 1_500, 1_700)
    assert got


# ---- diff against ClickHouse ---------------------------------------------------------------


def test_diff_counts_missing_different_and_extra_keys() -> None:
    truth = [WindowRow(0, 0, 60, 1, "DE", 3, 30), WindowRow(0, 0, 60, 2, "DE", 1, 5),
             WindowRow(0, 1, 120, 3, "FR", 2, -7)]
    stored = StoredRange("rollup_minute", 0, 180, {(60, 1, "DE"): (3, 30, 10), (60, 2, "DE"): (9, 5, 99),
                                                   (120, 9, "ZZ"): (1, 1, 4)}, max_version=99)
    d = diff_table("rollup_minute", truth, stored, extras=True)
    assert (d.windows, d.events, d.amount, d.stored_rows) == (3, 6, 28, 3)
    assert (d.equal, d.missing, d.different, d.extra) == (1, 1, 1, ((120, 9, "ZZ"),))
    assert [e.what for e in d.examples] == ["different", "missing", "extra"]
    assert d.max_version == 99 and d.changes == 3
    # an offset request says nothing about keys it did not touch
    assert diff_table("rollup_minute", truth, stored, extras=False).extra == ()
    blind = diff_table("rollup_minute", truth, None, extras=True)
    assert not blind.readable and blind.windows == 3
