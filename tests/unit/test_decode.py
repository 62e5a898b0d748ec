"""Every invalid class of contract §2 is rejected; the valid edges are accepted."""

import orjson
import pytest

from app.processor.decode import InvalidEvent, decode_event

BASE = {"event_id": "e-1", "account_id": 8812, "country": "DE", "event_time": 1764115200123,
        "amount": 1999, "kind": "purchase"}


def enc(**over: object) -> bytes:
    d = dict(BASE)
    d.update(over)
    return orjson.dumps(d, option=orjson.OPT_PASSTHROUGH_DATACLASS) if not any(
        isinstance(v, int) and abs(v) >= 2**63 for v in d.values()) else _big(d)


def _big(d: dict[str, object]) -> bytes:
    import json
    return json.dumps(d).encode()


def test_valid_event() -> None:
    ev = decode_event(enc())
    assert (ev.account_id, ev.country, ev.event_time, ev.amount) == (8812, "DE", 1764115200123, 1999)


@pytest.mark.parametrize("over", [
    {"account_id": 0}, {"account_id": 2**64 - 1}, {"amount": -2**63}, {"amount": 2**63 - 1},
    {"event_time": 0}, {"event_time": 4102444799999}, {"event_id": 42}, {"event_id": "x" * 128},
    {"kind": "k" * 32}, {"extra": [1, {"nested": True}]},
])
def test_valid_edges(over: dict[str, object]) -> None:
    decode_event(enc(**over))


@pytest.mark.parametrize("raw", [
    b"not json", b"", b"\xff\xfe", b"[1, 2]", b"42", b"null", b'"text"',
    b'{"event_id": "e", "account_id": 1}',
])
def test_not_an_event(raw: bytes) -> None:
    with pytest.raises(InvalidEvent):
        decode_event(raw)


def test_null_value() -> None:
    with pytest.raises(InvalidEvent):
        decode_event(None)


@pytest.mark.parametrize("field", ["event_id", "account_id", "country", "event_time", "amount", "kind"])
def test_missing_field(field: str) -> None:
    d = dict(BASE)
    del d[field]
    with pytest.raises(InvalidEvent):
        decode_event(orjson.dumps(d))


@pytest.mark.parametrize("over", [
    {"account_id": 1.0}, {"account_id": True}, {"account_id": -1}, {"account_id": 2**64},
    {"account_id": "8812"}, {"event_time": 1.5e12}, {"event_time": False}, {"event_time": -1},
    {"event_time": 4102444800000}, {"amount": 19.99}, {"amount": True}, {"amount": 2**63},
    {"amount": -2**63 - 1}, {"country": "de"}, {"country": "DEU"}, {"country": "D1"}, {"country": "DE\n"},
    {"country": "ÄB"}, {"country": ""}, {"country": 49}, {"kind": ""}, {"kind": "k" * 33}, {"kind": 3},
    {"event_id": ""}, {"event_id": "x" * 129}, {"event_id": 1.5}, {"event_id": True}, {"event_id": None},
])
def test_invalid_fields(over: dict[str, object]) -> None:
    with pytest.raises(InvalidEvent):
        decode_event(_big({**BASE, **over}))
