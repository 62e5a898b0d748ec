"""Invalid records, one class per way contract §2 says an input can be wrong.

Each class has a few variants so the processor's validation is exercised at its edges
(e.g. exactly 2**64, exactly 4102444800000, a float written as `1999.0`). None of them is
valid under §2; tests/unit/test_gen_model.py checks every variant against a reference
validator. Values are bytes because several are not JSON, and numbers outside 64 bits or
in float notation need raw JSON fragments (orjson.Fragment) that orjson would not emit.

All classes but the last break the value. The last, `key_mismatch`, keeps the value valid
and breaks the key instead: still ASCII digits (so it partitions deterministically, like
every generated key), but not exactly the account id in decimal (a leading zero, another
account). A null key is left out on purpose: the partitioner places it at random, and the
generator's records must land in the same partitions on every run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

Event = dict[str, Any]

REQUIRED_FIELDS: tuple[str, ...] = ("event_id", "account_id", "country", "event_time", "amount", "kind")
INT_FIELDS: tuple[str, ...] = ("account_id", "event_time", "amount")

MAX_EVENT_TIME_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z, exclusive
MAX_KIND_LEN = 32
MAX_EVENT_ID_LEN = 128


def _raw(text: str) -> orjson.Fragment:
    return orjson.Fragment(text.encode())


def _with(event: Event, field: str, value: object) -> bytes:
    bad = dict(event)
    bad[field] = value
    return orjson.dumps(bad)


def _not_json(event: Event, v: int) -> bytes:
    good = orjson.dumps(event)
    options: tuple[bytes, ...] = (
        good[: len(good) // 2],                      # truncated mid-record
        b"account_id=%d amount=%d" % (event["account_id"], event["amount"]),
        b"\xff\xfe" + good[2:],                      # not even UTF-8
        b"",                                         # empty value
        good + b"}",                                 # trailing garbage
        repr(event).encode(),                        # a Python dict repr: single quotes
    )
    return options[v % len(options)]


def _not_object(event: Event, v: int) -> bytes:
    options: tuple[bytes, ...] = (
        orjson.dumps([event]),
        orjson.dumps(event["event_id"]),
        b"%d" % event["amount"],
        b"null",
        b"true",
        orjson.dumps(list(event.items())),
    )
    return options[v % len(options)]


def _missing_field(event: Event, v: int) -> bytes:
    bad = dict(event)
    del bad[REQUIRED_FIELDS[v % len(REQUIRED_FIELDS)]]
    return orjson.dumps(bad)


def _float_for_int(event: Event, v: int) -> bytes:
    field = INT_FIELDS[v % len(INT_FIELDS)]
    value = event[field]
    forms = ("%d.0", "%d.5", "%de0")   # `1999.0` is a float in JSON even though it is whole
    return _with(event, field, _raw(forms[(v // len(INT_FIELDS)) % len(forms)] % value))


def _bool_for_int(event: Event, v: int) -> bytes:
    field = INT_FIELDS[v % len(INT_FIELDS)]
    return _with(event, field, bool((v // len(INT_FIELDS)) % 2))


def _account_id_range(event: Event, v: int) -> bytes:
    acc = event["account_id"]
    options = (-1, -acc - 1, 2**64, 2**64 + acc, 10**20)
    return _with(event, "account_id", _raw(str(options[v % len(options)])))


def _bad_country(event: Event, v: int) -> bytes:
    code: str = event["country"]
    options = (
        code.lower(),
        code + "X",
        "Ä" + code[1],
        "\uff24\uff25",          # full-width "DE": upper-case letters, not ASCII
        code[0],
        "",
        code[0] + "1",
        code[0] + code[1].lower(),
    )
    return _with(event, "country", options[v % len(options)])


def _event_time_range(event: Event, v: int) -> bytes:
    t = event["event_time"]
    options = (-1, -t, MAX_EVENT_TIME_MS, MAX_EVENT_TIME_MS + t, 2**63, 2**64 + 1)
    return _with(event, "event_time", _raw(str(options[v % len(options)])))


def _amount_range(event: Event, v: int) -> bytes:
    options = (2**63, -(2**63) - 1, 10**25, -(10**25), 2**64)
    return _with(event, "amount", _raw(str(options[v % len(options)])))


def _bad_kind(event: Event, v: int) -> bytes:
    options = ("", "k" * (MAX_KIND_LEN + 1), (event["kind"] + "_") * 20)
    return _with(event, "kind", options[v % len(options)])


def _bad_event_id(event: Event, v: int) -> bytes:
    options = ("", "e-" + "9" * (MAX_EVENT_ID_LEN - 1), event["event_id"] * 40)
    return _with(event, "event_id", options[v % len(options)])


def _wrong_type(event: Event, v: int) -> bytes:
    """Not listed by name in §2 but covered by 'anything else': strings, nulls, objects."""
    options: tuple[tuple[str, object], ...] = (
        ("account_id", str(event["account_id"])),
        ("amount", None),
        ("event_time", "2025-11-20T00:00:00Z"),
        ("country", 49),
        ("kind", 7),
        ("kind", None),
        ("event_id", 1.5),
        ("event_id", True),
        ("event_id", None),
        ("amount", {"value": event["amount"]}),
    )
    field, value = options[v % len(options)]
    return _with(event, field, value)


def _valid_value(event: Event, v: int) -> bytes:
    return orjson.dumps(event)


def _mismatched_key(event: Event, v: int) -> bytes:
    acc: int = event["account_id"]
    options = (b"0%d" % acc, b"%d" % (acc + 1), b"00%d" % acc, b"%d0" % acc)
    return options[v % len(options)]


# Order is part of the data: a class's index feeds the deterministic round-robin.
INVALID_CLASSES: tuple[tuple[str, Callable[[Event, int], bytes]], ...] = (
    ("not_json", _not_json),
    ("not_object", _not_object),
    ("missing_field", _missing_field),
    ("float_for_int", _float_for_int),
    ("bool_for_int", _bool_for_int),
    ("account_id_range", _account_id_range),
    ("bad_country", _bad_country),
    ("event_time_range", _event_time_range),
    ("amount_range", _amount_range),
    ("bad_kind", _bad_kind),
    ("bad_event_id", _bad_event_id),
    ("wrong_type", _wrong_type),
    ("key_mismatch", _valid_value),
)
INVALID_CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in INVALID_CLASSES)
# class index -> how its key is made (the others keep the account id in decimal)
KEY_CLASSES: dict[int, Callable[[Event, int], bytes]] = {INVALID_CLASS_NAMES.index("key_mismatch"): _mismatched_key}


def make_invalid(class_index: int, variant: int, event: Event) -> bytes:
    """The value of an invalid record of class `class_index` (variant picks the sub-case)
    built from `event`: invalid itself, except for a key class (see make_invalid_key)."""
    return INVALID_CLASSES[class_index][1](event, variant)


def make_invalid_key(class_index: int, variant: int, event: Event, key: bytes) -> bytes:
    """The key of that record: `key` (the account id in decimal) unless the class breaks it."""
    make = KEY_CLASSES.get(class_index)
    return key if make is None else make(event, variant)
