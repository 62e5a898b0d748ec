"""Input records -> validated events (contract §2). Invalid input is reported, never raised.

msgspec validates types and most ranges in C; the bounds msgspec cannot express
(uint64 account ids, int64 amounts) and the country rule are checked here.
"""

from __future__ import annotations

import string
from typing import Annotated, Final

import msgspec

_UINT64_END: Final = 1 << 64
_INT64_MIN: Final = -(1 << 63)
_INT64_END: Final = 1 << 63
EVENT_TIME_END_MS: Final = 4_102_444_800_000
COUNTRIES: Final = frozenset(a + b for a in string.ascii_uppercase for b in string.ascii_uppercase)


class Event(msgspec.Struct, frozen=True):
    """The fields the pipeline uses; extra fields in the JSON are ignored."""

    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | int
    account_id: Annotated[int, msgspec.Meta(ge=0)]
    country: str
    event_time: Annotated[int, msgspec.Meta(ge=0, lt=EVENT_TIME_END_MS)]
    amount: int
    kind: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class InvalidEvent(Exception):
    """Why a record is invalid, in words for the DLQ record's `error` field."""


_decoder: Final = msgspec.json.Decoder(Event)


def decode_event(value: bytes | None) -> Event:
    """Return the event or raise InvalidEvent with the reason."""
    if value is None:
        raise InvalidEvent("null value")
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
    if ev.account_id >= _UINT64_END:
        raise InvalidEvent("account_id out of range [0, 2^64)")
    if not _INT64_MIN <= ev.amount < _INT64_END:
        raise InvalidEvent("amount out of range [-2^63, 2^63)")
    if ev.country not in COUNTRIES:
        raise InvalidEvent("country must be two ASCII upper-case letters")
    return ev
