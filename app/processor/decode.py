"""Input records -> validated events (contract §2). Invalid input is reported, never raised.

msgspec validates types, ranges and the country code in C, for every occurrence of a
repeated field (docs/input.md); the bound msgspec cannot express (uint64 account ids:
its integer constraints stop at int64) is checked here, and so are the
record-level rules: the value's size limit (`--max-record-bytes`) and the key, which must
be exactly the ASCII decimal form of the event's account_id (a null key included: the
processor relies on every event of an account being in one partition).
"""

from __future__ import annotations

import string
from typing import Annotated, Final, Literal

import msgspec

_UINT64_END: Final = 1 << 64
_INT64_MIN: Final = -(1 << 63)
_INT64_END: Final = 1 << 63
_NO_LIMIT: Final = 1 << 62
EVENT_TIME_END_MS: Final = 4_102_444_800_000
COUNTRIES: Final = frozenset(a + b for a in string.ascii_uppercase for b in string.ascii_uppercase)
# Every valid code as a Literal: msgspec checks membership in C, once per occurrence.
Country = Literal[tuple(sorted(COUNTRIES))]  # type: ignore[valid-type]


class Event(msgspec.Struct, frozen=True):
    """The fields the pipeline uses; extra fields in the JSON are ignored."""

    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | int
    account_id: Annotated[int, msgspec.Meta(ge=0)]
    country: Country
    event_time: Annotated[int, msgspec.Meta(ge=0, lt=EVENT_TIME_END_MS)]
    amount: Annotated[int, msgspec.Meta(ge=_INT64_MIN, le=_INT64_END - 1)]
    kind: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class InvalidEvent(Exception):
    """Why a record is invalid, in words for the DLQ record's `error` field."""


_decoder: Final = msgspec.json.Decoder(Event)


def decode_record(key: bytes | None, value: bytes | None, max_record_bytes: int, *,
                  check_key: bool = True) -> Event:
    """Contract §2 for one Kafka record: the event, or InvalidEvent with the reason.

    Order: size first (a 10 MB value is never parsed), then the value, then the key. The
    key check formats the account id once and compares bytes: no parse of the key. One
    function on purpose: it runs once per record on the processor's hot path."""
    if value is None:
        raise InvalidEvent("null value")
    if len(value) > max_record_bytes:
        raise InvalidEvent(f"value of {len(value)} bytes is larger than --max-record-bytes {max_record_bytes}")
    if not value.isascii():
        # msgspec does not check UTF-8 inside fields it skips; the contract wants UTF-8 text.
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidEvent(f"not UTF-8: {e}") from None
    try:
        ev = _decoder.decode(value)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise InvalidEvent(str(e)) from None
    except RecursionError:
        raise InvalidEvent("JSON nested too deeply") from None
    account_id = ev.account_id
    if account_id >= _UINT64_END:
        raise InvalidEvent("account_id out of range [0, 2^64)")
    if check_key and key != b"%d" % account_id:
        raise InvalidEvent(_key_error(key, account_id))
    return ev


def decode_event(value: bytes | None) -> Event:
    """The value's rules only (no key, no size limit): the event or InvalidEvent with the reason."""
    return decode_record(None, value, _NO_LIMIT, check_key=False)


def _key_error(key: bytes | None, account_id: int) -> str:
    if key is None:
        return f"key is null; it must be the account_id {account_id} in ASCII decimal"
    shown = key[:40]
    return (f"key {shown!r}{'...' if len(key) > 40 else ''} is not the account_id {account_id} "
            "in ASCII decimal")
