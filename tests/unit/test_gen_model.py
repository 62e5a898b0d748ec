"""Pure tests of the generator: determinism, distributions, invalid classes, schedule, flags."""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import numpy as np
import orjson
import pytest

from app.gen.cli import parse_args
from app.gen.invalid import INVALID_CLASS_NAMES, INVALID_CLASSES, KEY_CLASSES, make_invalid, make_invalid_key
from app.gen.model import (
    CHUNK_SIZE,
    COUNTRIES,
    DEFAULT_START_MS,
    KINDS,
    LATE_MAX_MS,
    TRAVEL_FRACTION,
    GenSpec,
    account_for_rank,
    chunk_columns,
    encode_columns,
    event_dict,
    generate,
    generate_chunk,
    home_country,
)
from app.gen.partition import murmur2, partition_for_key, partitions_for_accounts
from app.gen.schedule import Burst, RateSchedule, parse_bursts
from app.gen.zipf import ZipfSampler

SMALL = GenSpec(events=5_000, accounts=100_000, invalid_fraction=0.01)


def reference_valid(value: bytes) -> bool:
    """Contract §2, written independently of the generator and the processor."""
    try:
        obj: Any = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    if not isinstance(obj, dict):
        return False
    if any(f not in obj for f in ("event_id", "account_id", "country", "event_time", "amount", "kind")):
        return False

    def is_int(x: object) -> bool:
        return type(x) is int

    eid = obj["event_id"]
    if not (is_int(eid) or (isinstance(eid, str) and 1 <= len(eid) <= 128)):
        return False
    if not (is_int(obj["account_id"]) and 0 <= obj["account_id"] < 2**64):
        return False
    c = obj["country"]
    if not (isinstance(c, str) and len(c) == 2 and all("A" <= ch <= "Z" for ch in c)):
        return False
    if not (is_int(obj["event_time"]) and 0 <= obj["event_time"] < 4_102_444_800_000):
        return False
    if not (is_int(obj["amount"]) and -(2**63) <= obj["amount"] < 2**63):
        return False
    k = obj["kind"]
    return isinstance(k, str) and 1 <= len(k) <= 32


# ---- determinism -------------------------------------------------------------------------


def test_same_spec_same_records() -> None:
    assert generate(SMALL) == generate(SMALL)


def test_seed_changes_records() -> None:
    other = GenSpec(**{**_spec_kwargs(SMALL), "seed": 43})
    assert generate(SMALL) != generate(other)


def test_record_does_not_depend_on_event_count() -> None:
    # Crosses a chunk boundary: a chunk is always drawn whole, then truncated.
    short = GenSpec(**{**_spec_kwargs(SMALL), "events": CHUNK_SIZE + 10})
    long = GenSpec(**{**_spec_kwargs(SMALL), "events": 2 * CHUNK_SIZE})
    assert generate(short) == generate(long)[: CHUNK_SIZE + 10]


def test_knobs_do_not_reshuffle_unrelated_columns() -> None:
    a = chunk_columns(SMALL, 0)
    b = chunk_columns(GenSpec(**{**_spec_kwargs(SMALL), "late_fraction": 0.5, "invalid_fraction": 0.2}), 0)
    assert np.array_equal(a.account_id, b.account_id)
    assert np.array_equal(a.amount, b.amount)
    assert np.array_equal(a.country, b.country)


def test_generate_chunk_is_encode_of_columns() -> None:
    assert generate_chunk(SMALL, 0) == encode_columns(chunk_columns(SMALL, 0))


def test_chunk_out_of_range_rejected() -> None:
    with pytest.raises(ValueError):
        chunk_columns(SMALL, 1)


# ---- record shape --------------------------------------------------------------------------


def test_valid_records_match_orjson_and_contract() -> None:
    cols = chunk_columns(SMALL, 0)
    records = encode_columns(cols)
    sizes = []
    for j, (key, value) in enumerate(records):
        assert key and key.isdigit()
        if cols.invalid_class[j] >= 0:
            continue
        assert key.decode("ascii") == str(int(cols.account_id[j]))
        # The fast template must be byte-identical to orjson's encoding of the same dict.
        assert value == orjson.dumps(event_dict(cols, j))
        assert reference_valid(value)
        obj = orjson.loads(value)
        assert obj["event_id"] == "e-%09d" % j
        assert obj["account_id"] == int(key)
        assert obj["kind"] in KINDS
        sizes.append(len(value))
    assert 200 <= min(sizes) and max(sizes) <= 400, (min(sizes), max(sizes))


def test_every_invalid_variant_is_invalid() -> None:
    cols = chunk_columns(SMALL, 0)
    j = int(np.nonzero(cols.valid)[0][0])
    event = event_dict(cols, j)
    key = b"%d" % event["account_id"]
    for class_index, (name, _) in enumerate(INVALID_CLASSES):
        seen = set()
        for variant in range(60):  # covers every sub-case (at most 10 per class, 9 combos for floats)
            value = make_invalid(class_index, variant, event)
            bad_key = make_invalid_key(class_index, variant, event, key)
            if class_index in KEY_CLASSES:  # contract §2: the key must be exactly the decimal account id
                seen.add(bad_key)
                assert reference_valid(value) and bad_key != key and bad_key.isdigit(), (name, variant, bad_key)
                continue
            seen.add(value)
            assert bad_key == key
            assert not reference_valid(value), (name, variant, value[:120])
        assert len(seen) >= 3, name


def test_invalid_classes_split_evenly_and_keys_stay_numeric() -> None:
    spec = GenSpec(events=CHUNK_SIZE, accounts=1_000, invalid_fraction=0.05)
    cols = chunk_columns(spec, 0)
    records = encode_columns(cols)
    counts = Counter(int(c) for c in cols.invalid_class if c >= 0)
    assert set(counts) == set(range(len(INVALID_CLASS_NAMES)))
    assert max(counts.values()) - min(counts.values()) <= 1
    total = sum(counts.values())
    assert abs(total / CHUNK_SIZE - 0.05) < 0.005
    for j in np.nonzero(~cols.valid)[0].tolist():
        key, value = records[j]
        assert key.isdigit()
        if int(cols.invalid_class[j]) in KEY_CLASSES:
            assert key != b"%d" % int(cols.account_id[j]) and reference_valid(value)
        else:
            assert int(key) == int(cols.account_id[j]) and not reference_valid(value)


def test_no_invalid_when_fraction_zero() -> None:
    spec = GenSpec(events=10_000, accounts=1_000, invalid_fraction=0.0)
    assert all(reference_valid(v) for _, v in generate(spec))


# ---- distributions -------------------------------------------------------------------------


def test_event_time_model() -> None:
    spec = GenSpec(events=CHUNK_SIZE, accounts=1_000, late_fraction=0.05, out_of_order_spread_ms=2_000,
                   event_time_rate=2_000.0)
    cols = chunk_columns(spec, 0)
    index = np.arange(CHUNK_SIZE)
    ingest = spec.start_ms + (index * 1000) // 2000
    assert spec.ingest_ms(12_345) == spec.start_ms + 12_345 * 1000 // 2000
    lag = ingest - cols.event_time
    normal = ~cols.late
    assert lag[normal].min() >= 0 and lag[normal].max() < 2_000
    assert lag[cols.late].max() <= 2_000 + LATE_MAX_MS
    assert abs(cols.late.mean() - 0.05) < 0.005
    # Roughly half the late events land more than ~95 s behind (too late for a minute window).
    assert 0.3 < (lag[cols.late] > 95_000).mean() < 0.7
    assert (cols.event_time >= 0).all()


def test_fractional_event_time_rate_and_clamp_at_zero() -> None:
    spec = GenSpec(events=1_000, accounts=10, start_ms=0, late_fraction=1.0, event_time_rate=3.5)
    cols = chunk_columns(spec, 0)
    assert (cols.event_time >= 0).all()
    assert spec.ingest_ms(7) == math.floor(7 * 1000 / 3.5)


def test_zipf_sampler_matches_pmf() -> None:
    for n, s in ((10, 1.1), (50, 0.7), (20, 1.0), (1, 1.1)):
        z = ZipfSampler.create(n, s)
        draws = z.sample(np.random.Generator(np.random.PCG64(7)), 200_000)
        assert draws.min() >= 1 and draws.max() <= n
        emp = np.bincount(draws, minlength=n + 1)[1:] / draws.size
        assert np.abs(emp - z.pmf(np.arange(1, n + 1))).max() < 0.005, (n, s)


def test_zipf_large_n_is_cheap_and_skewed() -> None:
    z = ZipfSampler.create(10_000_000, 1.1)
    draws = z.sample(np.random.Generator(np.random.PCG64(1)), 100_000)
    assert 0.10 < (draws == 1).mean() < 0.13   # 1 / H(10M, 1.1) ~ 0.117
    assert draws.max() > 1_000_000


def test_rank_bijection_and_hot_accounts_not_small() -> None:
    for accounts in (1, 7, 1_000, 1_024, 99_991):
        ids = account_for_rank(np.arange(1, accounts + 1), accounts, seed=42)
        assert np.array_equal(np.sort(ids), np.arange(accounts))
    hot = account_for_rank(np.arange(1, 4), 10_000_000, seed=42)
    assert set(hot.tolist()).isdisjoint({0, 1, 2})


def test_countries_home_and_travel() -> None:
    assert len(COUNTRIES) >= 60 and len(set(COUNTRIES)) == len(COUNTRIES)
    assert all(len(c) == 2 and c.isascii() and c.isupper() for c in COUNTRIES)
    ids = np.arange(100_000)
    homes = home_country(ids, 50)
    assert np.array_equal(homes, home_country(ids, 50)) and homes.min() >= 0 and homes.max() < 50
    assert len(set(homes.tolist())) == 50
    spec = GenSpec(events=CHUNK_SIZE, accounts=1_000_000, countries=50)
    cols = chunk_columns(spec, 0)
    away = cols.country != home_country(cols.account_id, 50)
    assert abs(away.mean() - TRAVEL_FRACTION) < 0.005
    one = chunk_columns(GenSpec(events=1_000, countries=1), 0)
    assert (one.country == 0).all()


def test_amounts_and_kinds() -> None:
    spec = GenSpec(events=CHUNK_SIZE, accounts=1_000)
    cols = chunk_columns(spec, 0)
    refund = cols.kind == KINDS.index("refund")
    assert (cols.amount[refund] < 0).all()
    assert 0.04 < (cols.amount < 0).mean() < 0.06
    assert (cols.amount[~refund] >= 0).all()
    assert set(np.unique(cols.kind).tolist()) == set(range(len(KINDS)))


# ---- partitioner -------------------------------------------------------------------------


def test_murmur2_matches_kafka_vectors() -> None:
    # From Kafka's UtilsTest.testMurmur2 (signed Java ints).
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829, b"abc": 479470107,
             b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971}
    for data, expected in cases.items():
        assert murmur2(data) == expected & 0xFFFFFFFF


def test_vectorised_partitions_match_scalar() -> None:
    ids = np.random.default_rng(0).integers(0, 2**40, 5_000)
    ids[:12] = [0, 1, 9, 10, 99, 100, 999, 1000, 9999, 10_000, 12_345_678, 2**31]
    got = partitions_for_accounts(ids, 8)
    assert got.tolist() == [partition_for_key(b"%d" % x, 8) for x in ids.tolist()]


# ---- schedule ----------------------------------------------------------------------------


def test_parse_bursts() -> None:
    assert parse_bursts("3x@60+30") == (Burst(3.0, 60.0, 30.0),)
    assert parse_bursts("2x@5m+1m, 1.5x@1s+500ms") == (Burst(1.5, 1.0, 0.5), Burst(2.0, 300.0, 60.0))
    for bad in ("3x@60", "x@1+1", "3@1+1", "3x@1+0", "2x@0+10,2x@5+10", "0x@1+1"):
        with pytest.raises(ValueError):
            parse_bursts(bad)


def test_rate_schedule_without_burst() -> None:
    s = RateSchedule.create(1_000.0)
    assert s.due_s(0) == 0.0 and s.due_s(1_000) == pytest.approx(1.0)
    assert s.due_count(0.0) == 1 and s.due_count(0.9995) == 1_000 and s.due_count(-1) == 0


def test_rate_schedule_with_burst() -> None:
    s = RateSchedule.create(100.0, parse_bursts("3x@10+5"))
    assert s.rate_at(9.9) == 100 and s.rate_at(10) == 300 and s.rate_at(15) == 100
    assert s.due_s(1_000) == pytest.approx(10.0)
    assert s.due_s(1_000 + 1_500) == pytest.approx(15.0)
    assert s.due_s(2_600) == pytest.approx(16.0)
    for i in (0, 5, 999, 1_000, 1_700, 2_500, 9_999):
        assert s.due_count(s.due_s(i) + 1e-9) >= i + 1
        assert s.due_count(s.due_s(i) - 1e-6) <= i


# ---- flags -------------------------------------------------------------------------------


def test_a_caught_up_sender_waits_a_tick_and_then_sends_a_tick_of_records() -> None:
    """The send loop's pacing: once everything due is sent it does not wake for each next
    record (one every 10 us at 100k/s: the loop's own overhead then cost more CPU than the
    records), but sends when the oldest unsent record has been due for a tick, so each
    batch holds about rate x tick records and none goes out later than a tick."""
    tick = 0.005
    s = RateSchedule.create(100_000.0)
    sent = 1_000                     # records 0..999 sent
    due_at = s.due_s(sent)           # record 1000 is due now
    for elapsed in (due_at - 0.001, due_at, due_at + 0.0001, due_at + tick / 2):
        wait = s.wait_s(sent, elapsed, tick)
        assert wait == pytest.approx(due_at + tick - elapsed), elapsed   # a few records due: wait
    assert s.wait_s(sent, due_at + tick, tick) == 0.0
    assert s.due_count(due_at + tick) - sent >= 100_000 * tick       # the batch then sent
    assert s.wait_s(sent, due_at + 3.0, tick) == 0.0                 # behind the schedule: at once
    # at a rate below one record per tick each record still goes out within a tick of its time
    slow = RateSchedule.create(10.0)
    assert slow.wait_s(5, slow.due_s(5), tick) == pytest.approx(tick)
    assert slow.wait_s(5, slow.due_s(5) - 0.05, tick) == pytest.approx(0.05 + tick)


def test_cli_defaults() -> None:
    a = parse_args([])
    assert a.spec == GenSpec(seed=42, events=1_000_000, accounts=10_000_000, zipf_s=1.1, countries=50,
                             late_fraction=0.02, out_of_order_spread_ms=2_000, invalid_fraction=0.001,
                             start_ms=DEFAULT_START_MS, event_time_rate=1_000.0)
    assert a.plan.rate == 0 and a.plan.partitions == 8 and a.plan.bursts == ()
    assert a.metrics_port == 0


def test_cli_flags() -> None:
    a = parse_args(["--seed", "7", "--events", "10_000", "--rate", "5000", "--accounts", "1000",
                    "--zipf-s", "0.9", "--countries", "60", "--late-fraction", "0.1",
                    "--out-of-order-spread", "500ms", "--invalid-fraction", "0.5", "--partitions", "3",
                    "--burst", "3x@60+30", "--start-time", "2025-11-20T01:00:00Z", "--events-topic", "t1"])
    assert a.spec.event_time_rate == 5_000.0          # follows --rate unless given
    assert a.spec.out_of_order_spread_ms == 500 and a.spec.start_ms == DEFAULT_START_MS + 3_600_000
    assert a.plan.bursts == (Burst(3.0, 60.0, 30.0),) and a.plan.topic == "t1" and a.plan.partitions == 3
    assert parse_args(["--start-time", "1700000000000"]).spec.start_ms == 1_700_000_000_000
    assert parse_args(["--rate", "10", "--event-time-rate", "99"]).spec.event_time_rate == 99.0
    assert abs(parse_args(["--start-time", "now"]).spec.start_ms - DEFAULT_START_MS) > 0


@pytest.mark.parametrize("argv", [
    ["--rate", "-1"], ["--events", "x"], ["--zipf-s", "0"], ["--countries", "0"], ["--countries", "500"],
    ["--late-fraction", "1.5"], ["--out-of-order-spread", "soon"], ["--burst", "3x@60+30"],
    ["--rate", "10", "--burst", "nope"], ["--accounts", "0"], ["--start-time", "yesterday"], ["--bogus"],
    ["--partitions", "0"], ["--metrics-port", "70000"],
])
def test_cli_bad_flag_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err


def _spec_kwargs(spec: GenSpec) -> dict[str, Any]:
    return {f: getattr(spec, f) for f in GenSpec.__dataclass_fields__}
