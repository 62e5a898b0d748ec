"""Input records -> validated events (contract §2). Invalid input is reported, never raised.

msgspec validates types, ranges and the country code in C, for every occurrence of a
repeated field (docs/input.md); the bound msgspec cannot express (uint64 account ids:
its integer constraints stop at int64) is checked here, and so are the
record-level rules: the value's size limit (`--max-record-bytes`) and the key, which must
be exactly the ASCII decimal form of the event's account_id (a null key included: the
processor relies on every event of an account being in one partition).
"""

from __future__ import annotations

import itertools
import operator
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import msgspec
import numpy as np

from app.processor.deltas import CODE_OF

_UINT64_END: Final = 1 << 64
_INT64_MIN: Final = -(1 << 63)
_INT64_END: Final = 1 << 63
_NO_LIMIT: Final = 1 << 62
EVENT_TIME_END_MS: Final = 4_102_444_800_000
COUNTRIES: Final = frozenset(a + b for a in string.ascii_uppercase for b in string.ascii_uppercase)
# Every valid code as a Literal: msgspec checks membership in C, once per occurrence.
Country = Literal[tuple(sorted(COUNTRIES))]  # type: ignore[valid-type]


class Event(msgspec.Struct, frozen=True, gc=False):
    """The fields the pipeline uses; extra fields in the JSON are ignored. Not tracked by the
    cyclic GC (gc=False): its fields are strings and ints, it can hold no cycle."""

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


@dataclass(frozen=True, slots=True)
class DecodedRun:
    """A run of records as columns. Invalid records have `valid` False, their reason in
    `errors` and zeros elsewhere."""

    valid: np.ndarray       # bool
    account: np.ndarray     # uint64
    country: np.ndarray     # uint16 country code (deltas.CODE_OF)
    event_time: np.ndarray  # int64, epoch ms
    amount: np.ndarray      # int64
    errors: dict[int, str]  # row -> why it is invalid


_DECODE_ERRORS: Final = (msgspec.ValidationError, msgspec.DecodeError, RecursionError)


def decode_run(keys: Sequence[bytes | None], values: Sequence[bytes | None], max_record_bytes: int) -> DecodedRun:
    """`decode_record` for every record of a run, as columns (the processor's hot path).

    Most records take the fast path: msgspec over the values with C-level map() (no Python
    frame per record), then the record-level rules checked for the whole run at once (size,
    ASCII, account_id < 2^64, key == the account_id in decimal). Any record that one of those
    checks does not clear, and every record msgspec rejected, goes through `decode_record`
    itself, which decides: the same verdict and error text as one record at a time."""
    n = len(values)
    try:
        joined = b"".join(values)  # type: ignore[arg-type]  # a run's bytes, for size and ASCII
    except TypeError:  # a null value
        joined = None
    # a run no larger than the limit holds no record larger than it (one length, not n)
    oversized = joined is None or (len(joined) > max_record_bytes
                                   and max(map(len, values)) > max_record_bytes)  # type: ignore[arg-type]
    unclear: set[int] = set()
    if oversized:
        unclear = {i for i, v in enumerate(values) if v is None or len(v) > max_record_bytes}
    todo = range(n) if not unclear else [i for i in range(n) if i not in unclear]
    todo_values = values if not unclear else [values[i] for i in todo]
    events: list[Event] = []
    failed: list[int] = []  # positions in todo msgspec rejected: decode_record says why
    dec = _decoder.decode
    while (done := len(events) + len(failed)) < len(todo):
        try:
            # extend() keeps what map() produced before an exception
            events.extend(map(dec, itertools.islice(todo_values, done, None)))  # type: ignore[arg-type]
        except _DECODE_ERRORS:
            failed.append(len(events) + len(failed))
    if failed:
        unclear.update(todo[j] for j in failed)
        rows = np.delete(np.asarray(todo), failed).tolist()
    else:
        rows = list(todo)
    accounts = list(map(_account_of, events))
    ascii_run = joined if todo_values is values and joined is not None else b"".join(todo_values)  # type: ignore
    if not ascii_run.isascii():  # one SIMD scan of the run
        unclear.update(i for i in rows if not values[i].isascii())  # type: ignore[union-attr]
    expected = [b"%d" % a for a in accounts]
    given = keys_of(keys, rows)
    if given != expected:
        unclear.update(i for i, k, e in zip(rows, given, expected, strict=True) if k != e)
    if accounts and max(accounts) >= _UINT64_END:
        unclear.update(i for i, a in zip(rows, accounts, strict=True) if a >= _UINT64_END)
        accounts = [a if a < _UINT64_END else 0 for a in accounts]  # invalid: decided below
    m = len(events)
    row_idx = np.array(rows, dtype=np.int64)
    account = np.array(accounts, dtype=np.uint64)
    country = _countries(events)
    event_time = np.fromiter(map(_time_of, events), np.int64, m)
    amount = np.fromiter(map(_amount_of, events), np.int64, m)
    errors: dict[int, str] = {}
    if unclear:
        rescued: list[tuple[int, Event]] = []
        for i in sorted(unclear):  # the deciding path, one record at a time (rare)
            try:
                rescued.append((i, decode_record(keys[i], values[i], max_record_bytes)))
            except InvalidEvent as e:
                errors[i] = str(e)
        keep = ~np.isin(row_idx, np.fromiter(unclear, np.int64, len(unclear)))
        extra = [e for _, e in rescued]
        row_idx = np.concatenate([row_idx[keep], np.array([i for i, _ in rescued], dtype=np.int64)])
        account = np.concatenate([account[keep], np.fromiter(map(_account_of, extra), np.uint64, len(extra))])
        country = np.concatenate([country[keep], _countries(extra)])
        event_time = np.concatenate([event_time[keep], np.fromiter(map(_time_of, extra), np.int64, len(extra))])
        amount = np.concatenate([amount[keep], np.fromiter(map(_amount_of, extra), np.int64, len(extra))])
    if not unclear and row_idx.size == n:  # every record valid, in order
        return DecodedRun(np.ones(n, dtype=bool), account, country, event_time, amount, errors)
    columns = []
    for col in (account, country, event_time, amount):
        full = np.zeros(n, dtype=col.dtype)
        full[row_idx] = col
        columns.append(full)
    valid = np.zeros(n, dtype=bool)
    valid[row_idx] = True
    return DecodedRun(valid, *columns, errors)


_account_of: Final = operator.attrgetter("account_id")
_country_of: Final = operator.attrgetter("country")
_time_of: Final = operator.attrgetter("event_time")
_amount_of: Final = operator.attrgetter("amount")


# the two ASCII letters of a country read as one little-endian uint16 -> its code
_CODE_OF_LETTERS: Final = np.zeros(1 << 16, np.uint16)
for _country, _code in CODE_OF.items():
    _CODE_OF_LETTERS[int.from_bytes(_country.encode("ascii"), "little")] = _code


def _countries(events: list[Event]) -> np.ndarray:
    """Country codes: every decoded country is two letters A-Z (the Country Literal), so the
    run's countries joined are 2 bytes each."""
    letters = "".join(map(_country_of, events)).encode("ascii")
    return _CODE_OF_LETTERS[np.frombuffer(letters, dtype="<u2")]


def keys_of(keys: Sequence[bytes | None], rows: list[int]) -> list[bytes | None]:
    return list(keys) if len(rows) == len(keys) else [keys[i] for i in rows]
