"""Every invalid class of contract §2 is rejected; the valid edges are accepted."""

import orjson
import pytest

from app.processor.decode import InvalidEvent, decode_event, decode_record, decode_run
from app.processor.deltas import CODE_OF

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


def _record_verdicts(keys: list[bytes | None], values: list[bytes | None], limit: int) -> list[object]:
    out: list[object] = []
    for k, v in zip(keys, values, strict=True):
        try:
            ev = decode_record(k, v, limit)
            out.append((ev.account_id, CODE_OF[ev.country], ev.event_time, ev.amount))
        except InvalidEvent as e:
            out.append(str(e))
    return out


@pytest.mark.parametrize("limit", [400, 1 << 20])  # below and above the whole run's size
def test_a_run_decodes_as_its_records_do_one_by_one(limit: int) -> None:
    """decode_run's fast paths (the run's size and ASCII checked once, msgspec over the run,
    countries through a lookup table) give each record decode_record's verdict and error."""
    good = [enc(account_id=a, country=c, amount=a * 3) for a, c in ((1, "AA"), (22, "ZZ"), (333, "DE"), (4, "US"))]
    values: list[bytes | None] = [good[0], None, b"{not json", good[1], enc(country="de"), b"x" * 500,
                                  enc(kind="\u00e9t\u00e9").replace(b"\\u00e9", "\u00e9".encode()), good[2],
                                  enc(account_id=2**64), good[3], enc(account_id=7)]
    keys: list[bytes | None] = [b"1", b"5", b"5", b"22", b"8812", b"9", b"8812", b"0333", b"1", b"4", None]
    want = _record_verdicts(keys, values, limit)
    run = decode_run(keys, values, limit)
    got: list[object] = [run.errors[i] if not run.valid[i] else
                         (int(run.account[i]), int(run.country[i]), int(run.event_time[i]), int(run.amount[i]))
                         for i in range(len(values))]
    assert got == want
    # valid: good[0], good[1], good[3] and the UTF-8 kind; good[2]'s key has a leading zero
    assert sum(isinstance(v, tuple) for v in want) == 4
    assert sum(isinstance(v, str) for v in want) == len(values) - 4
