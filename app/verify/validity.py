"""Validity of an input record (contract §2), as verify reads it: independent of
app/processor/decode.py on purpose (verify must not share the code it judges). Only the
stdlib json parser is used, so what counts as valid here is exactly what the contract text
says, read by the most conservative parser.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from itertools import product
from typing import Any, Final

MAX_EVENT_TIME_MS: Final = 4_102_444_800_000  # 2100-01-01T00:00:00Z, exclusive
U64_LIMIT: Final = 2**64
I64_MIN: Final = -(2**63)
I64_LIMIT: Final = 2**63
MAX_EVENT_ID_CHARS: Final = 128
MAX_KIND_CHARS: Final = 32

# Every valid country code; a lookup is both the fastest test and obviously right
# ('de', 'D1', 'DEU', 'DE\n' and non-ASCII look-alikes are simply not in it).
_UPPER: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
COUNTRIES: Final[frozenset[str]] = frozenset(a + b for a, b in product(_UPPER, repeat=2))
# code -> the one shared str object: millions of rollup keys then hold no copy of their own.
_COUNTRY: Final[dict[str, str]] = {c: c for c in COUNTRIES}


@dataclass(frozen=True, slots=True)
class Event:
    """The fields of a valid input event that the rollups use (plus event_id/kind for tests)."""

    event_id: str | int
    account_id: int
    country: str
    event_time: int
    amount: int
    kind: str


def _reject_constant(name: str) -> Any:
    # NaN / Infinity / -Infinity are not JSON; the stdlib accepts them unless told not to.
    raise ValueError(f"non-standard JSON constant {name}")


def _any_int(digits: str) -> int:
    """A JSON integer of any length. int() refuses more than sys.int_max_str_digits (4300)
    digits as a DoS guard; the contract has no such limit (an ignored extra field, or an
    integer event_id, may be that long), so lift it for this one conversion."""
    try:
        return int(digits)
    except ValueError:
        limit = sys.get_int_max_str_digits()
        sys.set_int_max_str_digits(0)
        try:
            return int(digits)
        finally:
            sys.set_int_max_str_digits(limit)


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)
_SCAN: Final = _DECODER.scan_once
# Only for a text the fast decoder refused: a Python parse_int costs ~20% on every record.
_DECODER_ANY_INT: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_any_int)


def parse_event(value: bytes | None) -> Event | None:
    """A valid event, or None when the record is invalid in any way (contract §2)."""
    fields = parse_fields(value)
    return None if fields is None else Event(*fields)


def parse_fields(value: bytes | None, check_repeats: bool = True) -> tuple[str | int, int, str, int, int, str] | None:
    """parse_event without the dataclass: a plain tuple is ~0.5 µs cheaper per record
    (event_id, account_id, country, event_time, amount, kind)."""
    if value is None:  # a tombstone has no JSON object
        return None
    try:
        # Strict UTF-8 first: json.loads(bytes) would also guess UTF-16/32, which the
        # contract does not allow. A leading BOM stays in the text and json rejects it.
        text = value.decode("utf-8")
        obj = None
        if text[:1] == "{":
            # Fast path, same result as _DECODER.decode(): an object that starts at 0 and
            # ends exactly at the end of the text has no whitespace to skip on either side.
            try:
                obj, end = _SCAN(text, 0)
                if end != len(text):
                    obj = None
            except (StopIteration, ValueError):
                obj = None  # let the full decoder below have the last word
        if obj is None:
            try:
                obj = _DECODER.decode(text)
            except ValueError:
                # Invalid JSON fails again here; only a very long integer parses now.
                obj = _DECODER_ANY_INT.decode(text)
    except (ValueError, RecursionError):
        # ValueError covers UnicodeDecodeError, JSONDecodeError and a rejected constant.
        # RecursionError: nesting deeper than Python's recursion limit (~1000 levels, a
        # parser limit RFC 8259 §9 allows) counts as invalid rather than crashing verify.
        return None
    if type(obj) is not dict:
        return None
    if "\\u" in text and _has_lone_surrogate(obj):
        return None  # an escaped lone surrogate is not Unicode text
    if check_repeats and any(text.count(q) > 1 for q in _QUOTED_FIELDS) and not _repeated_fields_valid(text):
        return None
    try:
        event_id = obj["event_id"]
        account_id = obj["account_id"]
        country = obj["country"]
        event_time = obj["event_time"]
        amount = obj["amount"]
        kind = obj["kind"]
    except KeyError:
        return None
    # `type(x) is int` on purpose: bool is a subclass of int and must be rejected.
    t = type(event_id)
    if t is str:
        if not 1 <= len(event_id) <= MAX_EVENT_ID_CHARS:
            return None
    elif t is not int:
        return None
    if type(account_id) is not int or not 0 <= account_id < U64_LIMIT:
        return None
    if type(country) is not str:
        return None
    country = _COUNTRY.get(country)
    if country is None:
        return None
    if type(event_time) is not int or not 0 <= event_time < MAX_EVENT_TIME_MS:
        return None
    if type(amount) is not int or not I64_MIN <= amount < I64_LIMIT:
        return None
    if type(kind) is not str or not 1 <= len(kind) <= MAX_KIND_CHARS:
        return None
    return (event_id, account_id, country, event_time, amount, kind)


_FIELDS: Final = ("event_id", "account_id", "country", "event_time", "amount", "kind")
_QUOTED_FIELDS: Final = tuple(f'"{f}"' for f in _FIELDS)


def _has_lone_surrogate(obj: object) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class _Pairs(dict):  # type: ignore[type-arg]
    """A decoded object that also remembers every (key, value) pair, duplicates included."""

    pairs: list[tuple[str, Any]]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> _Pairs:
    d = _Pairs(pairs)
    d.pairs = pairs
    return d


def _repeated_fields_valid(text: str) -> bool:
    """Rule for a key repeated at the top level: every occurrence of a contract field must
    be valid on its own (the last one wins). Rare, so it may be slow."""
    obj = json.loads(text, object_pairs_hook=_pairs_hook, parse_constant=_reject_constant)
    for name, value in obj.pairs:
        if name in _FIELDS:
            probe = {f: v for f, v in obj.items()}
            probe[name] = value
            if parse_fields(json.dumps(probe).encode(), check_repeats=False) is None:
                return False
    return True
