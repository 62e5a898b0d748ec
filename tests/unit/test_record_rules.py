"""Record-level rules of contract §2, applied independently by the processor's decoder and
by verify's truth: the key is exactly the account id in ASCII decimal (a null key is
invalid), a value larger than --max-record-bytes is invalid. Both must agree."""

from __future__ import annotations

import pytest

from app.processor.decode import InvalidEvent, decode_record
from app.verify.truth import Rules, TruthBuilder

VALUE = b'{"event_id":"e","account_id":8812,"country":"DE","event_time":5,"amount":7,"kind":"k"}'
LIMIT = 1 << 20


def _processor_valid(key: bytes | None, value: bytes | None, limit: int = LIMIT) -> tuple[bool, str]:
    try:
        decode_record(key, value, limit)
    except InvalidEvent as e:
        return False, str(e)
    return True, ""


def _verify_valid(key: bytes | None, value: bytes | None, limit: int = LIMIT) -> bool:
    b = TruthBuilder(Rules(max_record_bytes=limit))
    b.feed(0, [value], [key], [0])
    return b.build().valid == 1


@pytest.mark.parametrize("key, valid", [
    (b"8812", True),
    (None, False),              # a null key: the default partitioner scatters it
    (b"", False),
    (b"08812", False),          # leading zero: int() would accept it, the partitioner would not
    (b"+8812", False),
    (b" 8812", False),
    (b"8812 ", False),
    (b"8812\x00", False),
    (b"8_812", False),
    (b"8813", False),           # another account
    (b"\xd9\xa8\xd9\xa8", False),  # Arabic-Indic digits
    (b"8812" * 20_000, False),  # long
])
def test_key_must_be_the_decimal_account_id(key: bytes | None, valid: bool) -> None:
    ok, error = _processor_valid(key, VALUE)
    assert ok is valid and _verify_valid(key, VALUE) is valid
    if not valid:
        assert "key" in error and "account_id 8812" in error and len(error) < 200, error


def test_key_of_a_big_account_id() -> None:
    value = VALUE.replace(b"8812", b"18446744073709551615")
    assert _processor_valid(b"18446744073709551615", value)[0] and _verify_valid(b"18446744073709551615", value)


@pytest.mark.parametrize("pad, valid", [(0, True), (-1, True), (1, False)])
def test_size_limit_is_inclusive(pad: int, valid: bool) -> None:
    value = VALUE[:-1] + b',"x":"' + b"y" * 100 + b'"}'
    limit = len(value) - pad  # pad 1: the value is one byte over the limit
    ok, error = _processor_valid(b"8812", value, limit)
    assert ok is valid and _verify_valid(b"8812", value, limit) is valid
    if not valid:
        assert error == f"value of {len(value)} bytes is larger than --max-record-bytes {limit}"


def test_size_is_checked_before_anything_else() -> None:
    big = b"\xff" * (LIMIT + 1)  # not UTF-8 either: the size is what the error names
    ok, error = _processor_valid(None, big)
    assert not ok and "--max-record-bytes" in error and not _verify_valid(None, big)


def test_invalid_key_records_are_dlq_offsets_in_the_truth() -> None:
    b = TruthBuilder(Rules())
    b.feed(0, [VALUE, VALUE, VALUE], [b"8812", b"1", None], [10, 11, 13])
    truth = b.build()
    assert truth.dlq[("invalid", "")] == 2
    assert list(truth.dlq_offsets[(0, "invalid", "")]) == [11, 13]


BODY = '"event_id":"e","account_id":8812,"country":"DE","event_time":5,"amount":7,"kind":"k"'


@pytest.mark.parametrize("first", ['"amount":9223372036854775808', '"amount":-9223372036854775809',
                                   '"country":"de"', '"country":"DEU"'])
def test_an_earlier_occurrence_out_of_range_makes_the_record_invalid(first: str) -> None:
    """docs/input.md: every occurrence of a repeated contract field must be valid, the last
    one wins. The processor used to check amount and country on the last one only, and
    agreed with verify only when an earlier occurrence had the wrong type (all four cases
    were valid for the processor on 6e6c674 and invalid for verify)."""
    value = ("{" + first + "," + BODY + "}").encode()
    ok, error = _processor_valid(b"8812", value)
    assert not ok and not _verify_valid(b"8812", value), error
