"""Ground truth recomputed from the input log: validity (contract §2) and windows (§3).

Deliberately small, pure and independent of app/processor: verify is the referee, so it
must not share the code it judges. This is its own copy of the window and lateness rules
(the pipeline's one copy is app/processor/windows.py `fold_run`, which the live processor
and backfill share); the validity rule is validity.py, read with the stdlib json parser.

`Classifier` applies the rules: each partition's records, in offset order, become columns
of classified valid events (minute window, account, country, amount, too late for which
kinds) and the offsets that belong in the DLQ. `TruthBuilder` folds them into dicts (small
logs: tests, models); the command aggregates them in app/verify/store.py (any size).
"""

from __future__ import annotations

import gc
from array import array
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count, repeat
from typing import Final

from app.verify.validity import COUNTRIES, Event, parse_event, parse_fields

__all__ = ["COUNTRY_CODES", "HOUR_MS", "INVALID", "LATE_HOUR", "LATE_HOUR_BIT", "LATE_MINUTE", "LATE_MINUTE_BIT",
           "MINUTE_MS", "ClassifiedRun", "Classifier", "DlqSlot", "Event", "PartitionStats", "RollupKey",
           "RollupValue", "Rules", "Truth", "TruthBuilder", "TruthCounts", "compute_truth", "gc_paused",
           "is_too_late", "parse_event", "window_start_ms"]  # parse_event, Event: from validity.py

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 3_600_000

NEG_INF: Final = float("-inf")
MAX_RECORD_BYTES: Final = 1_048_576  # contract §2 default of --max-record-bytes

# DLQ count keys, as the ledger's dlq_count table spells them: (reason, window_kind).
INVALID: Final = ("invalid", "")
LATE_MINUTE: Final = ("late", "minute")
LATE_HOUR: Final = ("late", "hour")

# A classified event's lateness, one bit per window kind it is too late for.
LATE_MINUTE_BIT: Final = 1
LATE_HOUR_BIT: Final = 2

# Every valid country code in string order: a classified event carries its index (2 bytes).
COUNTRY_CODES: Final[tuple[str, ...]] = tuple(sorted(COUNTRIES))
_COUNTRY_INDEX: Final[dict[str, int]] = {c: i for i, c in enumerate(COUNTRY_CODES)}

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
class TruthCounts:
    """The per-partition counts of the truth: what the summary table shows."""

    rules: Rules
    dlq: Mapping[tuple[str, str], int]  # (reason, window_kind) -> count, all three keys present
    partitions: Mapping[int, PartitionStats]

    @property
    def records(self) -> int:
        return sum(s.records for s in self.partitions.values())

    @property
    def valid(self) -> int:
        return sum(s.valid for s in self.partitions.values())


@dataclass(frozen=True, slots=True)
class Truth:
    """What ClickHouse FINAL and the ledger's DLQ counts must show once the pipeline is drained
    (held in memory: TruthBuilder, for small logs)."""

    rules: Rules
    rollups: Mapping[str, Mapping[RollupKey, RollupValue]]  # kind -> key -> (count, sum)
    dlq: Mapping[tuple[str, str], int]  # (reason, window_kind) -> count, all three keys present
    partitions: Mapping[int, PartitionStats]
    # (partition, reason, window_kind) -> source offsets the DLQ topic must hold, ascending
    dlq_offsets: Mapping[DlqSlot, array[int]] = field(default_factory=dict)
    # account_id -> the partitions its valid events were read from, when more than one
    split_accounts: Mapping[int, tuple[int, ...]] = field(default_factory=dict)

    @property
    def counts(self) -> TruthCounts:
        return TruthCounts(self.rules, self.dlq, self.partitions)

    @property
    def records(self) -> int:
        return self.counts.records

    @property
    def valid(self) -> int:
        return self.counts.valid


def window_start_ms(event_time_ms: int, size_ms: int) -> int:
    """Tumbling windows aligned to the epoch: [start, start + size)."""
    return event_time_ms - event_time_ms % size_ms


def is_too_late(event_time_ms: int, size_ms: int, allowed_lateness_ms: int, watermark_ms: int | None) -> bool:
    """Contract §3: too late for a kind iff end + allowed_lateness <= W (W before this event)."""
    if watermark_ms is None:  # W = -infinity before the first valid event
        return False
    end = window_start_ms(event_time_ms, size_ms) + size_ms
    return end + allowed_lateness_ms <= watermark_ms


# ---- classification (contract §2-§3) --------------------------------------------------


@dataclass(slots=True)
class ClassifiedRun:
    """The outcome of one fed run of a partition's records: its valid events as parallel
    columns (offset order), and the offsets of the records that belong in the DLQ."""

    partition: int
    minute_start_s: array[int] = field(default_factory=lambda: array("I"))  # minute window start, epoch s
    account_id: array[int] = field(default_factory=lambda: array("Q"))
    country: array[int] = field(default_factory=lambda: array("H"))  # index into COUNTRY_CODES
    amount: array[int] = field(default_factory=lambda: array("q"))
    late: array[int] = field(default_factory=lambda: array("B"))  # LATE_MINUTE_BIT | LATE_HOUR_BIT
    invalid_offsets: array[int] = field(default_factory=lambda: array("q"))
    late_minute_offsets: array[int] = field(default_factory=lambda: array("q"))
    late_hour_offsets: array[int] = field(default_factory=lambda: array("q"))

    def dlq_offsets(self) -> tuple[tuple[tuple[str, str], array[int]], ...]:
        return (INVALID, self.invalid_offsets), (LATE_MINUTE, self.late_minute_offsets), (LATE_HOUR,
                                                                                         self.late_hour_offsets)


@dataclass(slots=True)
class _PartitionState:
    records: int = 0
    valid: int = 0
    invalid: int = 0
    late_minute: int = 0
    late_hour: int = 0
    max_event_time_ms: int = -1  # -1: no valid event yet (event times are >= 0)
    next_offset: int = 0  # after the last record fed (offsets default to consecutive from here)


@dataclass(slots=True)
class Classifier:
    """Classifies records partition by partition, in offset order, without holding the log.

    Runs of one partition may be fed in several calls; the watermark carries over."""

    rules: Rules = field(default_factory=Rules)
    _parts: dict[int, _PartitionState] = field(default_factory=dict)

    def feed(self, partition: int, values: Iterable[bytes | None], keys: Iterable[bytes | None] | None = None,
             offsets: Iterable[int] | None = None) -> ClassifiedRun:
        """Classify the next records of `partition` (offset order): their values, keys and
        offsets. Without `offsets` they continue consecutively from the last fed one (from 0).
        Without `keys` the key rule is not applied (in-process callers whose records carry no
        key; the command always passes the keys it read)."""
        st = self._parts.get(partition)
        if st is None:
            st = self._parts[partition] = _PartitionState()
        run = ClassifiedRun(partition)
        oo = self.rules.max_out_of_orderness_ms
        lat_m = self.rules.allowed_lateness_minute_ms
        lat_h = self.rules.allowed_lateness_hour_ms
        max_bytes = self.rules.max_record_bytes
        check_keys = keys is not None
        code = _COUNTRY_INDEX
        minute_at, account_at, country_at, amount_at, late_at = (
            run.minute_start_s.append, run.account_id.append, run.country.append, run.amount.append,
            run.late.append)
        invalid_at, late_m_at, late_h_at = (run.invalid_offsets.append, run.late_minute_offsets.append,
                                            run.late_hour_offsets.append)
        mx = st.max_event_time_ms
        # W before this event; -inf before the first valid one (int/float comparisons are exact).
        w: float = NEG_INF if mx < 0 else mx - oo
        records = 0
        off = st.next_offset - 1
        parse = parse_fields
        rows = zip(count(st.next_offset) if offsets is None else offsets,
                   repeat(None) if keys is None else keys, values)
        # The loop is the hot path (hundreds of millions of records): locals only, and
        # appends to typed columns rather than dicts. It spells out the same rule as
        # is_too_late(); the unit tests check the two agree.
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
                start = t - t % MINUTE_MS
                if start + MINUTE_MS + lat_m <= w:
                    late = LATE_MINUTE_BIT
                    late_m_at(off)
                else:
                    late = 0
                if t - t % HOUR_MS + HOUR_MS + lat_h <= w:
                    late |= LATE_HOUR_BIT
                    late_h_at(off)
                minute_at(start // 1000)
                account_at(acct)
                country_at(code[country])
                amount_at(amount)
                late_at(late)
                if t > mx:
                    mx = t
                    w = mx - oo
        valid = len(run.late)
        st.records += records
        st.valid += valid
        st.invalid += records - valid
        st.late_minute += len(run.late_minute_offsets)
        st.late_hour += len(run.late_hour_offsets)
        st.max_event_time_ms = mx
        if records:
            st.next_offset = off + 1
        return run

    def touch(self, partition: int) -> None:
        """Record that a partition exists even when it holds no records."""
        self._parts.setdefault(partition, _PartitionState())

    def counts(self) -> TruthCounts:
        parts = {p: PartitionStats(s.records, s.valid, s.invalid, s.late_minute, s.late_hour,
                                   None if s.max_event_time_ms < 0 else s.max_event_time_ms)
                 for p, s in sorted(self._parts.items())}
        dlq = {INVALID: sum(s.invalid for s in parts.values()),
               LATE_MINUTE: sum(s.late_minute for s in parts.values()),
               LATE_HOUR: sum(s.late_hour for s in parts.values())}
        return TruthCounts(self.rules, dlq, parts)


# ---- aggregation in memory ------------------------------------------------------------


@dataclass(slots=True)
class TruthBuilder:
    """Classifies and folds into dicts: the whole truth in memory, for small logs (tests and
    models; the command aggregates in app/verify/store.py instead)."""

    rules: Rules = field(default_factory=Rules)
    _classifier: Classifier = field(init=False)
    _minute: dict[RollupKey, RollupValue] = field(default_factory=dict)
    _hour: dict[RollupKey, RollupValue] = field(default_factory=dict)
    _dlq_offsets: dict[DlqSlot, array[int]] = field(default_factory=dict)
    _home: dict[int, int] = field(default_factory=dict)  # account_id -> first partition it was read from
    _split: dict[int, set[int]] = field(default_factory=dict)  # account_id -> every partition, when > 1

    def __post_init__(self) -> None:
        self._classifier = Classifier(self.rules)

    def feed(self, partition: int, values: Iterable[bytes | None], keys: Iterable[bytes | None] | None = None,
             offsets: Iterable[int] | None = None) -> None:
        """Classifier.feed, then fold the run."""
        run = self._classifier.feed(partition, values, keys, offsets)
        minute, hour, home = self._minute, self._hour, self._home
        for start_s, acct, c, amount, late in zip(run.minute_start_s, run.account_id, run.country, run.amount,
                                                  run.late):
            country = COUNTRY_CODES[c]
            if home.setdefault(acct, partition) != partition:
                self._split.setdefault(acct, {home[acct]}).add(partition)
            if not late & LATE_MINUTE_BIT:
                key = (start_s, acct, country)
                acc = minute.get(key)
                minute[key] = (1, amount) if acc is None else (acc[0] + 1, acc[1] + amount)
            if not late & LATE_HOUR_BIT:
                key = (start_s - start_s % 3600, acct, country)
                acc = hour.get(key)
                hour[key] = (1, amount) if acc is None else (acc[0] + 1, acc[1] + amount)
        for (reason, kind), offsets_of_run in run.dlq_offsets():
            if offsets_of_run:
                self._dlq_offsets.setdefault((partition, reason, kind), array("q")).extend(offsets_of_run)

    def touch(self, partition: int) -> None:
        """Record that a partition exists even when it holds no records."""
        self._classifier.touch(partition)

    def build(self) -> Truth:
        """The truth so far; the builder must not be fed afterwards (the dicts are shared)."""
        counts = self._classifier.counts()
        split = {acct: tuple(sorted(ps)) for acct, ps in sorted(self._split.items())}
        return Truth(rules=self.rules, rollups={"minute": self._minute, "hour": self._hour}, dlq=counts.dlq,
                     partitions=counts.partitions, dlq_offsets=dict(sorted(self._dlq_offsets.items())),
                     split_accounts=split)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Classifying allocates millions of short-lived tuples and no cycles; the cyclic GC would
    rescan the heap again and again (measured: it halves the throughput)."""
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
