"""The ground truth's rules (contract §2 validity, §3 windows / watermark / lateness)."""

from __future__ import annotations

import json
import random

import pytest

from app.verify.truth import (
    HOUR_MS,
    INVALID,
    LATE_HOUR,
    LATE_MINUTE,
    MINUTE_MS,
    Event,
    Rules,
    TruthBuilder,
    compute_truth,
    is_too_late,
    parse_event,
    window_start_ms,
)

T0 = 1_764_115_200_000  # 2025-11-26T00:00:00Z, an hour (and day) boundary
BASE = {"event_id": "e-1", "account_id": 8812, "country": "DE", "event_time": T0 + 123,
        "amount": 1999, "kind": "purchase"}
RULES = Rules()  # 5 s out-of-orderness, 60 s lateness for both kinds


def raw(**fields: object) -> bytes:
    """An event's JSON bytes: BASE with overrides; a field given as ... is removed."""
    obj = {**BASE, **fields}
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


def ev(t: int, account: int = 1, amount: int = 1, country: str = "DE") -> bytes:
    return raw(event_time=t, account_id=account, amount=amount, country=country)


def minute_key(t: int, account: int = 1, country: str = "DE") -> tuple[int, int, str]:
    return ((t - t % MINUTE_MS) // 1000, account, country)


def hour_key(t: int, account: int = 1, country: str = "DE") -> tuple[int, int, str]:
    return ((t - t % HOUR_MS) // 1000, account, country)


# ---- validity ---------------------------------------------------------------------------


def test_the_contract_example_is_valid() -> None:
    value = (b'{"event_id": "e-000000042", "account_id": 8812, "country": "DE",'
             b' "event_time": 1764115200123, "amount": 1999, "kind": "purchase"}')
    assert parse_event(value) == Event("e-000000042", 8812, "DE", 1764115200123, 1999, "purchase")


@pytest.mark.parametrize("value", [
    b"not json",
    b"",
    b"   ",
    b'{"event_id": "e-1"',  # truncated
    b'{"event_id": "e-1", "account_id": 1, "country": "DE", "event_time": 1, "amount": 1, "kind": "k"} x',
    b'{"event_id": "e-1", "account_id": 1, "country": "DE", "event_time": 1, "amount": 1, "kind": "k"}{}',
    b"\xff\xfe{}",  # not UTF-8
    b'{"event_id": "\xe9", "account_id": 1, "country": "DE", "event_time": 1, "amount": 1, "kind": "k"}',  # latin-1
    b"\xef\xbb\xbf" + raw(),  # a UTF-8 BOM is not part of a JSON text
    raw().decode().encode("utf-16"),  # json.loads(bytes) would accept this; the contract says UTF-8
    raw().decode().encode("utf-32"),
    b'{"event_id": "e-1", "account_id": 1, "country": "DE", "event_time": 1, "amount": 1, "kind": "k", "x": NaN}',
    b'{"event_id": "e-1", "account_id": 1, "country": "DE", "event_time": 1, "amount": 1, "kind": "k", "x": Infinity}',
    b'{"event_id": "e-1", "account_id": 1, "country": "DE", "event_time": 1, "amount": 1, "kind": "k", "x": -Infinity}',
    b'{"event_id": "e-1", "account_id": 1, "country": "DE", "event_time": 1, "amount": NaN, "kind": "k"}',
    b"{'event_id': 'e-1'}",  # single quotes
    b'{"event_id": "e\x01", "account_id": 1, "country": "DE", "event_time": 1, "amount": 1, "kind": "k"}',
    b"[" * 100_000 + b"]" * 100_000,  # deeply nested: recursion, not a crash
    None,  # a tombstone
], ids=lambda v: repr(v)[:40])
def test_not_json_or_not_utf8_is_invalid(value: bytes | None) -> None:
    assert parse_event(value) is None


@pytest.mark.parametrize("value", [b"[]", b"null", b"1", b'"x"', b"true", b"1.5",
                                   b'[{"event_id": "e-1"}]', json.dumps([BASE]).encode()])
def test_not_an_object_is_invalid(value: bytes) -> None:
    assert parse_event(value) is None


@pytest.mark.parametrize("missing", list(BASE))
def test_missing_field_is_invalid(missing: str) -> None:
    assert parse_event(raw(**{missing: ...})) is None


@pytest.mark.parametrize("field", list(BASE))
def test_null_field_is_invalid(field: str) -> None:
    assert parse_event(raw(**{field: None})) is None


@pytest.mark.parametrize("field", ["account_id", "event_time", "amount"])
@pytest.mark.parametrize("bad", [1.0, 1.5, 0.0, True, False, "1", [1], {"v": 1}])
def test_non_integer_where_an_integer_is_required(field: str, bad: object) -> None:
    assert parse_event(raw(**{field: bad})) is None


@pytest.mark.parametrize("field", ["account_id", "event_time", "amount"])
@pytest.mark.parametrize("text", ["1e3", "1E3", "10.0", "-0.0", "1e0"])
def test_float_syntax_is_not_an_integer(field: str, text: str) -> None:
    value = raw(**{field: 7}).decode().replace(f'"{field}": 7', f'"{field}": {text}')
    assert text in value
    assert parse_event(value.encode()) is None


def test_negative_zero_is_the_integer_zero() -> None:
    value = raw(amount=7).decode().replace('"amount": 7', '"amount": -0').encode()
    parsed = parse_event(value)
    assert parsed is not None and parsed.amount == 0


@pytest.mark.parametrize("account_id, valid", [
    (-1, False), (0, True), (1, True), (2**63, True), (2**64 - 1, True), (2**64, False), (2**70, False),
])
def test_account_id_range(account_id: int, valid: bool) -> None:
    parsed = parse_event(raw(account_id=account_id))
    assert (parsed is not None) is valid
    if valid:
        assert parsed is not None and parsed.account_id == account_id


@pytest.mark.parametrize("country, valid", [
    ("DE", True), ("AA", True), ("ZZ", True),
    ("de", False), ("De", False), ("dE", False), ("DEU", False), ("D", False), ("", False),
    ("D1", False), ("1D", False), ("DE\n", False), ("\nDE", False), (" DE", False), ("DE ", False),
    ("D-", False), ("@A", False), ("[A", False),  # '@' and '[' sit right next to 'A' and 'Z'
    ("ÄÖ", False), ("\uff24\uff25", False),  # non-ASCII letters, full-width 'DE'
    (12, False), (True, False), (["DE"], False),
])
def test_country_is_two_ascii_uppercase_letters(country: object, valid: bool) -> None:
    assert (parse_event(raw(country=country)) is not None) is valid


def test_country_escaped_in_json_is_the_same_string() -> None:
    value = raw(country="DE").decode().replace('"country": "DE"', '"country": "\\u0044E"').encode()
    parsed = parse_event(value)
    assert parsed is not None and parsed.country == "DE"


@pytest.mark.parametrize("event_time, valid", [
    (-1, False), (0, True), (T0, True), (4102444800000 - 1, True), (4102444800000, False), (2**63, False),
])
def test_event_time_range(event_time: int, valid: bool) -> None:
    assert (parse_event(raw(event_time=event_time)) is not None) is valid


@pytest.mark.parametrize("amount, valid", [
    (-(2**63) - 1, False), (-(2**63), True), (-1, True), (0, True), (2**63 - 1, True), (2**63, False),
])
def test_amount_range(amount: int, valid: bool) -> None:
    parsed = parse_event(raw(amount=amount))
    assert (parsed is not None) is valid
    if valid:
        assert parsed is not None and parsed.amount == amount


@pytest.mark.parametrize("kind, valid", [
    ("", False), ("k", True), ("x" * 32, True), ("x" * 33, False), ("ü" * 32, True),
    (1, False), (True, False), (None, False), (["purchase"], False),
])
def test_kind_is_a_string_of_1_to_32_chars(kind: object, valid: bool) -> None:
    assert (parse_event(raw(kind=kind)) is not None) is valid


@pytest.mark.parametrize("event_id, valid", [
    ("", False), ("e", True), ("x" * 128, True), ("x" * 129, False), ("€" * 128, True),
    (0, True), (-5, True), (42, True), (2**64, True),  # any JSON integer
    (1.0, False), (1.5, False), (True, False), (False, False), (None, False), ([1], False), ({"a": 1}, False),
])
def test_event_id_is_a_short_string_or_an_integer(event_id: object, valid: bool) -> None:
    parsed = parse_event(raw(event_id=event_id))
    assert (parsed is not None) is valid
    if valid:
        assert parsed is not None and parsed.event_id == event_id


def test_integers_of_any_length_are_integers() -> None:
    # int() refuses > 4300 digits by default; a JSON integer has no such limit.
    huge = "9" * 5_000
    body = raw().decode()[:-1]
    assert parse_event((body + f', "x": {huge}}}').encode()) is not None  # ignored extra field
    parsed = parse_event(raw(event_id=0).decode().replace('"event_id": 0', f'"event_id": -{huge}').encode())
    assert parsed is not None and parsed.event_id == -(10**5_000 - 1)
    for field in ("account_id", "event_time", "amount"):
        assert parse_event(raw(**{field: 0}).decode().replace(f'"{field}": 0', f'"{field}": {huge}').encode()) is None
    assert parse_event(raw(amount=0).decode().replace('"amount": 0', f'"amount": -{huge}').encode()) is None
    import sys
    assert sys.get_int_max_str_digits() == 4300  # the guard is restored


def test_deep_nesting_is_invalid_not_a_crash() -> None:
    body = raw().decode()[:-1]
    assert parse_event((body + ', "x": ' + "[" * 50 + "]" * 50 + "}").encode()) is not None
    assert parse_event((body + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}").encode()) is None


def test_extra_fields_are_ignored() -> None:
    value = raw(extra="x", nested={"a": [1, 2.5, None, True]}, big=2**80, f=1.5, n=None)
    assert parse_event(value) == parse_event(raw())


def test_duplicate_keys_last_one_wins_and_every_occurrence_must_be_valid() -> None:
    body = raw().decode()[:-1]
    assert parse_event((body + ', "amount": 7}').encode()).amount == 7  # type: ignore[union-attr]
    assert parse_event((body + ', "amount": 1.5}').encode()) is None
    # docs/input.md: an invalid earlier occurrence makes the record invalid (as the processor does)
    assert parse_event(('{"country": "de", ' + body[1:] + "}").encode()) is None


def test_surrounding_whitespace_is_fine() -> None:
    assert parse_event(b" \n\t" + raw() + b"\r\n ") == parse_event(raw())


def test_non_ascii_utf8_strings_are_valid() -> None:
    value = json.dumps({**BASE, "kind": "Kauf €", "event_id": "é-1"}, ensure_ascii=False).encode()
    parsed = parse_event(value)
    assert parsed is not None and parsed.kind == "Kauf €"


def test_invalid_records_count_once_and_fold_nothing() -> None:
    bad = [b"not json", b"\xff", raw(country="de"), raw(amount=1.0), None, b"[]"]
    truth = compute_truth({0: bad}, RULES)
    assert truth.dlq == {INVALID: 6, LATE_MINUTE: 0, LATE_HOUR: 0}
    assert truth.rollups == {"minute": {}, "hour": {}}
    assert truth.partitions[0].records == 6 and truth.partitions[0].invalid == 6
    assert truth.partitions[0].max_event_time_ms is None


# ---- windows ----------------------------------------------------------------------------


@pytest.mark.parametrize("t, minute_start, hour_start", [
    (T0, T0, T0),  # exactly at a window start: that window
    (T0 + MINUTE_MS - 1, T0, T0),  # last ms of the minute
    (T0 + MINUTE_MS, T0 + MINUTE_MS, T0),  # a window's end is the next window's start
    (T0 + HOUR_MS - 1, T0 + HOUR_MS - MINUTE_MS, T0),
    (T0 + HOUR_MS, T0 + HOUR_MS, T0 + HOUR_MS),
    (0, 0, 0),
    (4102444800000 - 1, 4102444800000 - MINUTE_MS, 4102444800000 - HOUR_MS),
])
def test_window_boundaries(t: int, minute_start: int, hour_start: int) -> None:
    assert window_start_ms(t, MINUTE_MS) == minute_start
    assert window_start_ms(t, HOUR_MS) == hour_start
    truth = compute_truth({0: [ev(t)]}, RULES)
    assert truth.rollups["minute"] == {(minute_start // 1000, 1, "DE"): (1, 1)}
    assert truth.rollups["hour"] == {(hour_start // 1000, 1, "DE"): (1, 1)}


def test_keys_are_account_and_country() -> None:
    truth = compute_truth({0: [ev(T0, 1, 10, "DE"), ev(T0 + 1, 1, 20, "DE"), ev(T0 + 2, 1, 5, "FR"),
                               ev(T0 + 3, 2, 7, "DE"), ev(T0 + MINUTE_MS, 1, 100, "DE")]}, RULES)
    assert truth.rollups["minute"] == {
        minute_key(T0, 1, "DE"): (2, 30),
        minute_key(T0, 1, "FR"): (1, 5),
        minute_key(T0, 2, "DE"): (1, 7),
        minute_key(T0 + MINUTE_MS, 1, "DE"): (1, 100),
    }
    assert truth.rollups["hour"] == {hour_key(T0, 1, "DE"): (3, 130), hour_key(T0, 1, "FR"): (1, 5),
                                     hour_key(T0, 2, "DE"): (1, 7)}


def test_sums_go_beyond_int64() -> None:
    big = 2**63 - 1
    truth = compute_truth({0: [ev(T0, amount=big)] * 3 + [ev(T0, 2, -(2**63))] * 3}, RULES)
    assert truth.rollups["minute"][minute_key(T0)] == (3, 3 * big)
    assert truth.rollups["hour"][hour_key(T0, 2)] == (3, -3 * 2**63)


def test_refunds_are_negative_and_can_cancel_out() -> None:
    truth = compute_truth({0: [ev(T0, amount=500), ev(T0 + 1, amount=-500)]}, RULES)
    assert truth.rollups["minute"][minute_key(T0)] == (2, 0)


# ---- watermark and lateness ---------------------------------------------------------------


def test_first_event_is_never_late() -> None:
    truth = compute_truth({0: [ev(0)]}, RULES)
    assert truth.dlq[LATE_MINUTE] == truth.dlq[LATE_HOUR] == 0


def late_threshold_time(watermark: int, size: int, lateness: int) -> int:
    """The largest window end (a multiple of size) with end + lateness <= watermark."""
    return (watermark - lateness) // size * size


def test_lateness_boundary_is_inclusive() -> None:
    # W = max - 5 s. Minute window [T0, T0+60s) is too late iff T0 + 60s + 60s <= W.
    end = T0 + MINUTE_MS
    exact_max = end + 60_000 + 5_000  # W == end + lateness: too late
    truth = compute_truth({0: [ev(exact_max), ev(T0)]}, RULES)
    assert truth.dlq[LATE_MINUTE] == 1 and truth.dlq[LATE_HOUR] == 0
    assert truth.rollups["minute"] == {minute_key(exact_max): (1, 1)}

    truth = compute_truth({0: [ev(exact_max - 1), ev(T0)]}, RULES)  # W one ms short: on time
    assert truth.dlq[LATE_MINUTE] == 0
    assert truth.rollups["minute"][minute_key(T0)] == (1, 1)


def test_last_ms_of_a_window_has_the_same_deadline_as_its_first() -> None:
    end = T0 + MINUTE_MS
    head = ev(end + 65_000)  # W = end + 60 s exactly
    truth = compute_truth({0: [head, ev(T0), ev(end - 1), ev(end)]}, RULES)
    assert truth.dlq[LATE_MINUTE] == 2  # T0 and end-1 (window [T0, end)); end is the next window
    assert truth.rollups["minute"] == {minute_key(end + 65_000): (1, 1), minute_key(end): (1, 1)}


def test_classification_uses_the_watermark_before_the_event() -> None:
    # An event whose own time would make its window late (if W were updated first) is on time.
    truth = compute_truth({0: [ev(T0 + 10 * MINUTE_MS)]}, RULES)
    assert truth.dlq[LATE_MINUTE] == 0

    # Two events in one batch: the first sets max, the second is judged against it.
    truth = compute_truth({0: [ev(T0), ev(T0 + 10 * MINUTE_MS), ev(T0 + 1)]}, RULES)
    assert truth.dlq[LATE_MINUTE] == 1
    assert truth.rollups["minute"][minute_key(T0)] == (1, 1)
    assert truth.rollups["hour"][hour_key(T0)] == (3, 3)


def test_far_future_event_jumps_the_watermark() -> None:
    future = T0 + 24 * HOUR_MS
    normal = [ev(T0 + i * 1000) for i in range(5)]
    truth = compute_truth({0: [normal[0], ev(future), *normal[1:]]}, RULES)
    # The far-future event itself is on time (W before it was T0 - 5 s) and is folded.
    assert truth.rollups["minute"][minute_key(future)] == (1, 1)
    assert truth.rollups["hour"][hour_key(future)] == (1, 1)
    # Every normal event after it is too late for both kinds.
    assert truth.dlq[LATE_MINUTE] == 4 and truth.dlq[LATE_HOUR] == 4
    assert truth.rollups["minute"][minute_key(T0)] == (1, 1)
    assert truth.partitions[0].max_event_time_ms == future
    assert truth.partitions[0].watermark_ms(RULES) == future - 5_000


def test_watermark_never_goes_back() -> None:
    late = T0
    truth = compute_truth({0: [ev(T0 + HOUR_MS * 2), ev(late), ev(late), ev(T0 + HOUR_MS * 2 - 1)]}, RULES)
    assert truth.partitions[0].max_event_time_ms == T0 + HOUR_MS * 2
    assert truth.dlq[LATE_MINUTE] == 2 and truth.dlq[LATE_HOUR] == 2


def test_minute_late_but_hour_folded() -> None:
    # W = T0 + 10 min: minute window [T0, T0+1m) closed long ago, hour [T0, T0+1h) still open.
    head = ev(T0 + 10 * MINUTE_MS + 5_000, amount=100)
    truth = compute_truth({0: [head, ev(T0, amount=7)]}, RULES)
    assert truth.dlq == {INVALID: 0, LATE_MINUTE: 1, LATE_HOUR: 0}
    assert minute_key(T0) not in truth.rollups["minute"]
    assert truth.rollups["hour"][hour_key(T0)] == (2, 107)
    assert truth.partitions[0].late_minute == 1 and truth.partitions[0].late_hour == 0


def test_hour_late_boundary() -> None:
    end = T0 + HOUR_MS
    truth = compute_truth({0: [ev(end + 60_000 + 5_000), ev(end - 1)]}, RULES)
    assert truth.dlq[LATE_HOUR] == 1 and truth.dlq[LATE_MINUTE] == 1
    truth = compute_truth({0: [ev(end + 60_000 + 5_000 - 1), ev(end - 1)]}, RULES)
    assert truth.dlq[LATE_HOUR] == 0 and truth.dlq[LATE_MINUTE] == 0


def test_allowed_lateness_per_kind() -> None:
    rules = Rules(max_out_of_orderness_ms=0, allowed_lateness_minute_ms=0, allowed_lateness_hour_ms=2 * HOUR_MS)
    # W = T0 + 1h + 1m: minute [T0, T0+1m) late (end <= W); hour [T0, T0+1h) + 2h > W: on time.
    truth = compute_truth({0: [ev(T0 + HOUR_MS + MINUTE_MS), ev(T0)]}, rules)
    assert truth.dlq[LATE_MINUTE] == 1 and truth.dlq[LATE_HOUR] == 0

    rules = Rules(max_out_of_orderness_ms=0, allowed_lateness_minute_ms=10 * HOUR_MS, allowed_lateness_hour_ms=0)
    truth = compute_truth({0: [ev(T0 + HOUR_MS + MINUTE_MS), ev(T0)]}, rules)
    assert truth.dlq[LATE_MINUTE] == 0 and truth.dlq[LATE_HOUR] == 1
    # Odd case the contract allows: hour late while the minute inside it is folded.
    assert truth.rollups["minute"][minute_key(T0)] == (1, 1)
    assert hour_key(T0) not in truth.rollups["hour"]


def test_max_out_of_orderness_shifts_the_watermark() -> None:
    end = T0 + MINUTE_MS
    head = ev(end + 60_000 + 30_000)
    assert compute_truth({0: [head, ev(T0)]}, Rules(max_out_of_orderness_ms=30_000)).dlq[LATE_MINUTE] == 1
    assert compute_truth({0: [head, ev(T0)]}, Rules(max_out_of_orderness_ms=30_001)).dlq[LATE_MINUTE] == 0


def test_invalid_events_do_not_move_the_watermark() -> None:
    future = T0 + 24 * HOUR_MS
    truth = compute_truth({0: [ev(T0), raw(event_time=future, country="de"), b"{}", ev(T0 + 1)]}, RULES)
    assert truth.dlq == {INVALID: 2, LATE_MINUTE: 0, LATE_HOUR: 0}
    assert truth.partitions[0].max_event_time_ms == T0 + 1


def test_late_events_count_per_kind_not_per_event() -> None:
    future = T0 + 24 * HOUR_MS
    truth = compute_truth({0: [ev(future), ev(T0), ev(T0)]}, RULES)
    assert truth.dlq == {INVALID: 0, LATE_MINUTE: 2, LATE_HOUR: 2}
    stats = truth.partitions[0]
    assert (stats.records, stats.valid, stats.invalid, stats.late_minute, stats.late_hour) == (3, 3, 0, 2, 2)


def test_watermark_is_per_partition() -> None:
    future = T0 + 24 * HOUR_MS
    truth = compute_truth({0: [ev(future)], 1: [ev(T0), ev(T0 + 1)]}, RULES)
    assert truth.dlq[LATE_MINUTE] == 0 and truth.dlq[LATE_HOUR] == 0
    assert truth.rollups["minute"][minute_key(T0)] == (2, 2)
    assert truth.partitions[0].max_event_time_ms == future
    assert truth.partitions[1].max_event_time_ms == T0 + 1


def test_feeding_in_batches_equals_feeding_at_once() -> None:
    rng = random.Random(7)
    records = [ev(T0 + rng.randint(-300_000, 3_600_000), rng.randint(1, 5), rng.randint(-9, 9))
               for _ in range(2_000)]
    whole = compute_truth({0: records}, RULES)
    builder = TruthBuilder(RULES)
    i = 0
    while i < len(records):
        n = rng.randint(1, 50)
        builder.feed(0, records[i:i + n])
        i += n
    assert builder.build() == whole


def test_empty_partitions_are_listed() -> None:
    truth = compute_truth({0: [], 3: [ev(T0)]}, RULES)
    assert sorted(truth.partitions) == [0, 3]
    assert truth.partitions[0].records == 0 and truth.partitions[0].watermark_ms(RULES) is None
    assert truth.records == 1 and truth.valid == 1


def reference_truth(records_by_partition: dict[int, list[bytes | None]], rules: Rules) -> tuple[dict, dict]:
    """The contract text, transcribed as literally as possible (slow and obvious)."""
    rollups: dict[str, dict] = {"minute": {}, "hour": {}}
    dlq = {INVALID: 0, LATE_MINUTE: 0, LATE_HOUR: 0}
    for values in records_by_partition.values():
        max_t: int | None = None
        for value in values:
            e = parse_event(value)
            if e is None:
                dlq[INVALID] += 1
                continue
            watermark = None if max_t is None else max_t - rules.max_out_of_orderness_ms
            for kind, size in (("minute", MINUTE_MS), ("hour", HOUR_MS)):
                if is_too_late(e.event_time, size, rules.allowed_lateness_ms(kind), watermark):
                    dlq[("late", kind)] += 1
                    continue
                key = (window_start_ms(e.event_time, size) // 1000, e.account_id, e.country)
                count, total = rollups[kind].get(key, (0, 0))
                rollups[kind][key] = (count + 1, total + e.amount)
            max_t = e.event_time if max_t is None else max(max_t, e.event_time)
    return rollups, dlq


@pytest.mark.parametrize("seed", range(5))
def test_fast_path_agrees_with_the_literal_reading(seed: int) -> None:
    rng = random.Random(seed)
    rules = Rules(max_out_of_orderness_ms=rng.choice([0, 1_000, 5_000]),
                  allowed_lateness_minute_ms=rng.choice([0, 30_000, 60_000]),
                  allowed_lateness_hour_ms=rng.choice([0, 60_000, 600_000]))
    parts: dict[int, list[bytes | None]] = {}
    for p in range(3):
        recs: list[bytes | None] = []
        t = T0
        for _ in range(3_000):
            r = rng.random()
            if r < 0.03:
                recs.append(rng.choice([b"junk", None, raw(amount=1.0), raw(country="xx"), raw(kind="")]))
                continue
            if r < 0.05:
                t_ev = t + rng.randint(0, 3 * HOUR_MS)  # a jump ahead
            elif r < 0.15:
                t_ev = t - rng.randint(0, 2 * HOUR_MS)  # late-ish
            else:
                t_ev = t + rng.randint(-10_000, 2_000)
            t = max(t, t_ev)
            recs.append(ev(t_ev, rng.randint(0, 20), rng.randint(-(2**63), 2**63 - 1), rng.choice(["DE", "FR"])))
        parts[p] = recs
    truth = compute_truth(parts, rules)
    rollups, dlq = reference_truth(parts, rules)
    assert truth.rollups == rollups
    assert truth.dlq == dlq
    assert dlq[LATE_MINUTE] > 0 and dlq[INVALID] > 0  # the draw exercised the interesting paths
