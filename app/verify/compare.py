"""The report of a verification, the ledger reads, and the in-memory per-key diff of a
`Truth` against hand-made snapshots (small data: tests). The command diffs in SQL instead
(sql_diff.py), into the same Report."""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.clickhouse.schema import TABLE_OF_KIND
from app.verify.dlq_topic import DlqTopicSnapshot
from app.verify.truth import INVALID, LATE_HOUR, LATE_MINUTE, DlqSlot, RollupKey, RollupValue, Truth

DLQ_KEYS: tuple[tuple[str, str], ...] = (INVALID, LATE_MINUTE, LATE_HOUR)


# ---- reading ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TableSnapshot:
    """One rollup table as `SELECT ... FINAL` shows it."""

    table: str
    rows: dict[RollupKey, RollupValue]
    duplicates: tuple[RollupKey, ...] = ()  # keys FINAL returned more than once (must never happen)
    exists: bool = True


def read_ledger_dlq(conn: Any, pipeline_id: str, topic: str) -> dict[tuple[str, str], int]:
    """(reason, window_kind) -> count from the ledger (psycopg 3 connection)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT reason, window_kind, sum(count) FROM dlq_count "
            "WHERE pipeline_id = %s AND topic = %s GROUP BY 1, 2",
            (pipeline_id, topic),
        )
        return {(str(r), str(k)): int(n) for r, k, n in cur.fetchall()}


def read_ledger_positions(conn: Any, pipeline_id: str, topic: str) -> dict[int, int]:
    """partition -> next offset the processor will read; only for the summary (where it stands)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT partition, next_offset FROM partition_state WHERE pipeline_id = %s AND topic = %s",
            (pipeline_id, topic),
        )
        return {int(p): int(o) for p, o in cur.fetchall()}


# ---- diffing ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyDiff:
    key: RollupKey
    truth: RollupValue | None  # None: extra in ClickHouse
    clickhouse: RollupValue | None  # None: missing in ClickHouse
    duplicate: bool = False  # FINAL returned the key more than once

    @property
    def what(self) -> str:
        if self.duplicate:
            return "duplicate"
        if self.clickhouse is None:
            return "missing"
        if self.truth is None:
            return "extra"
        return "different"


@dataclass(frozen=True, slots=True)
class TableReport:
    kind: str
    table: str
    truth_rows: int
    truth_events: int
    truth_amount: int
    clickhouse_rows: int
    clickhouse_events: int
    clickhouse_amount: int
    missing: int
    extra: int
    different: int
    duplicates: int
    table_exists: bool
    examples: tuple[KeyDiff, ...]  # the first differing keys, in key order

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.different or self.duplicates)


@dataclass(frozen=True, slots=True)
class DlqLine:
    reason: str
    window_kind: str
    truth: int
    ledger: int


@dataclass(frozen=True, slots=True)
class DlqReport:
    lines: tuple[DlqLine, ...]

    @property
    def equal(self) -> bool:
        return all(line.truth == line.ledger for line in self.lines)


@dataclass(frozen=True, slots=True)
class DlqTopicLine:
    """One (source partition, reason, window kind) of the DLQ topic against the truth."""

    partition: int
    reason: str
    window_kind: str
    truth: int                       # records the truth sends to the DLQ
    topic: int                       # distinct identities found in the DLQ topic
    missing: tuple[int, ...]         # source offsets the topic lacks (the first few)
    missing_count: int
    extra: tuple[int, ...]           # source offsets the topic holds but the truth does not
    extra_count: int


@dataclass(frozen=True, slots=True)
class DlqTopicReport:
    topic: str
    exists: bool
    records: int                     # read, duplicates included
    lines: tuple[DlqTopicLine, ...]
    unreadable: int
    foreign: int
    trimmed: dict[int, int]          # DLQ partition -> first offset still in the log, when not 0

    @property
    def missing(self) -> int:
        return sum(line.missing_count for line in self.lines)

    @property
    def extra(self) -> int:
        return sum(line.extra_count for line in self.lines)

    @property
    def equal(self) -> bool:
        return not (self.missing or self.extra or self.unreadable)


@dataclass(frozen=True, slots=True)
class Report:
    tables: tuple[TableReport, ...]
    dlq: DlqReport
    dlq_topic: DlqTopicReport | None = None                # None: the topic was not read (in-process diffs)
    # account -> partitions: every split account, or the first ones when split_account_count says more
    split_accounts: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    split_account_count: int | None = None  # None: len(split_accounts)

    @property
    def split_count(self) -> int:
        return len(self.split_accounts) if self.split_account_count is None else self.split_account_count

    @property
    def exact(self) -> bool:
        return (self.dlq.equal and all(t.equal for t in self.tables)
                and (self.dlq_topic is None or self.dlq_topic.equal) and not self.split_count)

    def mismatches(self) -> list[str]:
        """One short phrase per difference, for the verdict line."""
        out = []
        for t in self.tables:
            parts = [f"{n} {what}" for n, what in ((t.missing, "missing"), (t.extra, "extra"),
                                                   (t.different, "different"), (t.duplicates, "duplicate"))
                     if n]
            if parts:
                out.append(f"{t.table}: " + ", ".join(parts))
        for line in self.dlq.lines:
            if line.truth != line.ledger:
                name = line.reason + (f"/{line.window_kind}" if line.window_kind else "")
                out.append(f"dlq {name}: truth {line.truth} ledger {line.ledger}")
        t = self.dlq_topic
        if t is not None and not t.equal:
            parts = [f"{n} {what}" for n, what in ((t.missing, "missing"), (t.extra, "extra"),
                                                   (t.unreadable, "unreadable")) if n]
            out.append(f"dlq topic {t.topic}: " + ", ".join(parts) + " identities")
        if self.split_count:
            out.append(f"{self.split_count} accounts in more than one partition")
        return out


def diff_table(kind: str, truth_rows: Mapping[RollupKey, RollupValue], snapshot: TableSnapshot,
               max_diffs: int = 20) -> TableReport:
    """Per-key diff of one kind's truth against its table; totals on both sides."""
    ch_rows = snapshot.rows
    missing: list[RollupKey] = []
    different: list[RollupKey] = []
    for key, value in truth_rows.items():
        got = ch_rows.get(key)
        if got is None:
            missing.append(key)
        elif got != value:
            different.append(key)
    extra = [k for k in ch_rows if k not in truth_rows]
    dup = set(snapshot.duplicates)
    first = heapq.nsmallest(max_diffs, {*missing, *different, *extra, *dup})
    examples = tuple(KeyDiff(k, truth_rows.get(k), ch_rows.get(k), k in dup) for k in first)
    return TableReport(
        kind=kind,
        table=snapshot.table,
        truth_rows=len(truth_rows),
        truth_events=sum(c for c, _ in truth_rows.values()),
        truth_amount=sum(a for _, a in truth_rows.values()),
        clickhouse_rows=len(ch_rows) + len(snapshot.duplicates),
        clickhouse_events=sum(c for c, _ in ch_rows.values()),
        clickhouse_amount=sum(a for _, a in ch_rows.values()),
        missing=len(missing),
        extra=len(extra),
        different=len(different),
        duplicates=len(snapshot.duplicates),
        table_exists=snapshot.exists,
        examples=examples,
    )


def diff_dlq(truth_dlq: Mapping[tuple[str, str], int], ledger_dlq: Mapping[tuple[str, str], int]) -> DlqReport:
    """The three known (reason, window_kind) counts, plus anything unexpected the ledger holds."""
    keys = list(DLQ_KEYS) + sorted(k for k in ledger_dlq if k not in DLQ_KEYS)
    return DlqReport(tuple(DlqLine(r, k, truth_dlq.get((r, k), 0), ledger_dlq.get((r, k), 0)) for r, k in keys))


def diff_dlq_topic(truth: Truth, snapshot: DlqTopicSnapshot, max_diffs: int = 20) -> DlqTopicReport:
    """Distinct (source_partition, source_offset, reason, window_kind) of the topic against the
    truth's, per (partition, reason, kind): which offsets are missing, which are extra."""
    slots: set[DlqSlot] = set(truth.dlq_offsets) | set(snapshot.offsets)
    empty = np.empty(0, dtype=np.int64)
    lines = []
    for slot in sorted(slots):
        want = np.frombuffer(truth.dlq_offsets[slot], dtype=np.int64) if slot in truth.dlq_offsets else empty
        got = snapshot.offsets.get(slot, empty)
        missing = np.setdiff1d(want, got, assume_unique=True)
        extra = np.setdiff1d(got, want, assume_unique=True)
        p, reason, kind = slot
        lines.append(DlqTopicLine(p, reason, kind, len(want), len(got), tuple(missing[:max_diffs].tolist()),
                                  len(missing), tuple(extra[:max_diffs].tolist()), len(extra)))
    return DlqTopicReport(snapshot.topic, snapshot.exists, snapshot.records, tuple(lines), snapshot.unreadable,
                          snapshot.foreign, dict(snapshot.trimmed))


def diff(truth: Truth, clickhouse: Mapping[str, TableSnapshot], ledger_dlq: Mapping[tuple[str, str], int],
         max_diffs: int = 20, dlq_topic: DlqTopicSnapshot | None = None) -> Report:
    """The whole verdict: `clickhouse` maps a window kind ('minute', 'hour') to its table snapshot;
    `dlq_topic` is what the DLQ topic holds (the command always reads it)."""
    tables = tuple(diff_table(kind, truth.rollups[kind], clickhouse[kind], max_diffs) for kind in TABLE_OF_KIND)
    topic = None if dlq_topic is None else diff_dlq_topic(truth, dlq_topic, max_diffs)
    return Report(tables=tables, dlq=diff_dlq(truth.dlq, ledger_dlq), dlq_topic=topic,
                  split_accounts=truth.split_accounts)
