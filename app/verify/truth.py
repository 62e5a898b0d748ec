"""Ground truth recomputed from the input log: validity (contract §2) and windows (§3).

Deliberately small, pure and independent of app/processor: verify is the referee, so it
must not share the code it judges. Only the stdlib json parser is used, so what counts as
valid here is exactly what the contract text says, read by the most conservative parser.

Besides rollups and counts, the truth holds what the DLQ topic must contain (the offsets of
every invalid and late record, per partition, reason and window kind) and every account
whose valid events sit in more than one partition (the processor assumes one).
"""

from __future__ import annotations

import gc
import json
import sys
from array import array
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count, product, repeat
from typing import Any, Final

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 3_600_000

NEG_INF: Final = float("-inf")
MAX_EVENT_TIME_MS: Final = 4_102_444_800_000  # 2100-01-01T00:00:00Z, exclusive
U64_LIMIT: Final = 2**64
I64_MIN: Final = -(2**63)
I64_LIMIT: Final = 2**63
MAX_EVENT_ID_CHARS: Final = 128
MAX_KIND_CHARS: Final = 32
MAX_RECORD_BYTES: Final = 1_048_576  # contract §2 default of --max-record-bytes

# Every valid country code; a lookup is both the fastest test and obviously right
# ('de', 'D1', 'DEU', 'DE\n' and non-ASCII look-alikes are simply not in it).
_UPPER: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
COUNTRIES: Final[frozenset[str]] = frozenset(a + b for a, b in product(_UPPER, repeat=2))
# code -> the one shared str object: millions of rollup keys then hold no copy of their own.
_COUNTRY: Final[dict[str, str]] = {c: c for c in COUNTRIES}

# DLQ count keys, as the ledger's dlq_count table spells them: (reason, window_kind).
INVALID: Final = ("invalid", "")
LATE_MINUTE: Final = ("late", "minute")
LATE_HOUR: Final = ("late", "hour")

# (window_start in epoch seconds, account_id, country)
RollupKey = tuple[int, int, str]
# (event_count, sum_amount); sums are unbounded Python ints (ClickHouse keeps Int128).
RollupValue = tuple[int, int]
# A DLQ record's identity without its offset: (source_partition, reason, window_kind or "").
DlqSlot = tuple[int, str, str]


@dataclass(frozen=True, slots=True)
class Rules:
    """The knobs of contract §3, in milliseconds."""

    max_out_of_orderness_ms: int = 5_000
    allowed_lateness_minute_ms: int = 60_000
    allowed_lateness_hour_ms: int = 60_000
    max_record_bytes: int = MAX_RECORD_BYTES  # a larger value is invalid (contract §2)

    def allowed_lateness_ms(self, kind: str) -> int:
        return self.allowed_lateness_minute_ms if kind == "minute" else self.allowed_lateness_hour_ms


@dataclass(frozen=True, slots=True)
class Event:
    """The fields of a valid input event that the rollups use (plus event_id/kind for tests)."""

    event_id: str | int
    account_id: int
    country: str
    event_time: int
    amount: int
    kind: str


@dataclass(frozen=True, slots=True)
class PartitionStats:
    records: int
    valid: int
    invalid: int
    late_minute: int
    late_hour: int
    max_event_time_ms: int | None  # None: no valid event in this partition

    def watermark_ms(self, rules: Rules) -> int | None:
        if self.max_event_time_ms is None:
            return None
        return self.max_event_time_ms - rules.max_out_of_orderness_ms


@dataclass(frozen=True, slots=True)
class Truth:
    """What ClickHouse FINAL and the ledger's DLQ counts must show once the pipeline is drained."""

    rules: Rules
    rollups: Mapping[str, Mapping[RollupKey, RollupValue]]  # kind -> key -> (count, sum)
    dlq: Mapping[tuple[str, str], int]  # (reason, window_kind) -> count, all three keys present
    partitions: Mapping[int, PartitionStats]
    # (partition, reason, window_kind) -> source offsets the DLQ topic must hold, ascending
    dlq_offsets: Mapping[DlqSlot, array[int]] = field(default_factory=dict)
    # account_id -> the partitions its valid events were read from, when more than one
    split_accounts: Mapping[int, tuple[int, ...]] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(s.records for s in self.partitions.values())

    @property
    def valid(self) -> int:
        return sum(s.valid for s in self.partitions.values())


# ---- validity (contract §2) ----------------------------------------------------------


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
    fields = _parse(value)
    return None if fields is None else Event(*fields)


def _parse(value: bytes | None, check_repeats: bool = True) -> tuple[str | int, int, str, int, int, str] | None:
    """parse_event without the dataclass: a plain tuple is ~0.5 µs cheaper per record."""
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
            if _parse(json.dumps(probe).encode(), check_repeats=False) is None:
                return False
    return True


def window_start_ms(event_time_ms: int, size_ms: int) -> int:
    """Tumbling windows aligned to the epoch: [start, start + size)."""
    return event_time_ms - event_time_ms % size_ms


def is_too_late(event_time_ms: int, size_ms: int, allowed_lateness_ms: int, watermark_ms: int | None) -> bool:
    """Contract §3: too late for a kind iff end + allowed_lateness <= W (W before this event)."""
    if watermark_ms is None:  # W = -infinity before the first valid event
        return False
    end = window_start_ms(event_time_ms, size_ms) + size_ms
    return end + allowed_lateness_ms <= watermark_ms


# ---- aggregation (contract §3) -------------------------------------------------------


@dataclass(slots=True)
class _PartitionState:
    records: int = 0
    valid: int = 0
    invalid: int = 0
    late_minute: int = 0
    late_hour: int = 0
    max_event_time_ms: int | None = None
    next_offset: int = 0  # after the last record fed (offsets default to consecutive from here)
    invalid_offsets: array[int] = field(default_factory=lambda: array("q"))
    late_minute_offsets: array[int] = field(default_factory=lambda: array("q"))
    late_hour_offsets: array[int] = field(default_factory=lambda: array("q"))


@dataclass(slots=True)
class TruthBuilder:
    """Feeds records partition by partition, in offset order, without holding the log.

    Batches of one partition may be fed in several calls; the watermark carries over.
    """

    rules: Rules = field(default_factory=Rules)
    _minute: dict[RollupKey, RollupValue] = field(default_factory=dict)
    _hour: dict[RollupKey, RollupValue] = field(default_factory=dict)
    _parts: dict[int, _PartitionState] = field(default_factory=dict)
    _home: dict[int, int] = field(default_factory=dict)  # account_id -> first partition it was read from
    _split: dict[int, set[int]] = field(default_factory=dict)  # account_id -> every partition, when > 1

    def feed(self, partition: int, values: Iterable[bytes | None], keys: Iterable[bytes | None] | None = None,
             offsets: Iterable[int] | None = None) -> None:
        """Classify and fold the next records of `partition` (offset order): their values,
        keys and offsets. Without `offsets` they continue consecutively from the last fed
        one (from 0). Without `keys` the key rule is not applied (in-process callers whose
        records carry no key; the command always passes the keys it read)."""
        st = self._parts.get(partition)
        if st is None:
            st = self._parts[partition] = _PartitionState()
        oo = self.rules.max_out_of_orderness_ms
        lat_m = self.rules.allowed_lateness_minute_ms
        lat_h = self.rules.allowed_lateness_hour_ms
        max_bytes = self.rules.max_record_bytes
        check_keys = keys is not None
        minute, hour = self._minute, self._hour
        home = self._home
        mx = st.max_event_time_ms
        # W before this event; -inf before the first valid one (int/float comparisons are exact).
        w: float = NEG_INF if mx is None else mx - oo
        records = valid = late_m = late_h = 0
        invalid_at, late_m_at, late_h_at = (st.invalid_offsets.append, st.late_minute_offsets.append,
                                            st.late_hour_offsets.append)
        off = st.next_offset - 1
        parse = _parse
        rows = zip(count(st.next_offset) if offsets is None else offsets,
                   repeat(None) if keys is None else keys, values)
        # The loop is the hot path (millions of records): locals only. It spells out the
        # same rule as is_too_late(); the unit tests check the two agree.
        with gc_paused():
            for off, key, value in rows:
                records += 1
                if value is not None and len(value) > max_bytes:
                    invalid_at(off)
                    continue
                ev = parse(value)
                if ev is None:
                    invalid_at(off)
                    continue
                _, acct, country, t, amount, _ = ev
                # contract §2: the key is exactly the account id in ASCII decimal (None fails too)
                if check_keys and key != str(acct).encode("ascii"):
                    invalid_at(off)
                    continue
                valid += 1
                if home.setdefault(acct, partition) != partition:
                    self._split.setdefault(acct, {home[acct]}).add(partition)

                start = t - t % MINUTE_MS
                if start + MINUTE_MS + lat_m <= w:
                    late_m += 1
                    late_m_at(off)
                else:
                    key = (start // 1000, acct, country)
                    acc = minute.get(key)
                    minute[key] = (1, amount) if acc is None else (acc[0] + 1, acc[1] + amount)

                start = t - t % HOUR_MS
                if start + HOUR_MS + lat_h <= w:
                    late_h += 1
                    late_h_at(off)
                else:
                    key = (start // 1000, acct, country)
                    acc = hour.get(key)
                    hour[key] = (1, amount) if acc is None else (acc[0] + 1, acc[1] + amount)

                if mx is None or t > mx:
                    mx = t
                    w = mx - oo
        st.records += records
        st.valid += valid
        st.invalid += records - valid
        st.late_minute += late_m
        st.late_hour += late_h
        st.max_event_time_ms = mx
        if records:
            st.next_offset = off + 1

    def touch(self, partition: int) -> None:
        """Record that a partition exists even when it holds no records."""
        self._parts.setdefault(partition, _PartitionState())

    def build(self) -> Truth:
        """The truth so far; the builder must not be fed afterwards (the dicts are shared)."""
        parts = {
            p: PartitionStats(s.records, s.valid, s.invalid, s.late_minute, s.late_hour, s.max_event_time_ms)
            for p, s in sorted(self._parts.items())
        }
        dlq = {
            INVALID: sum(s.invalid for s in parts.values()),
            LATE_MINUTE: sum(s.late_minute for s in parts.values()),
            LATE_HOUR: sum(s.late_hour for s in parts.values()),
        }
        dlq_offsets = {}
        for p, s in sorted(self._parts.items()):
            for (reason, kind), offsets in ((INVALID, s.invalid_offsets), (LATE_MINUTE, s.late_minute_offsets),
                                            (LATE_HOUR, s.late_hour_offsets)):
                if offsets:
                    dlq_offsets[(p, reason, kind)] = offsets
        split = {acct: tuple(sorted(ps)) for acct, ps in sorted(self._split.items())}
        return Truth(rules=self.rules, rollups={"minute": self._minute, "hour": self._hour}, dlq=dlq,
                     partitions=parts, dlq_offsets=dlq_offsets, split_accounts=split)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Building the truth allocates millions of long-lived tuples and no cycles; the cyclic
    GC would rescan the growing heap again and again (measured: it halves the throughput)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def compute_truth(records_by_partition: Mapping[int, Iterable[bytes | None]], rules: Rules = Rules()) -> Truth:
    """Ground truth of a whole log: partition -> record values in offset order."""
    builder = TruthBuilder(rules)
    for partition, values in records_by_partition.items():
        builder.touch(partition)
        builder.feed(partition, values)
    return builder.build()
