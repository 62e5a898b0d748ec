"""Proven delivery: before acknowledging a group, the sink checks in ClickHouse that every
row landed, and repairs what did not (docs/sink.md, "Proven delivery").

A retried insert is exactly-once only if ClickHouse's block deduplication behaves as
docs/sink.md describes. One known window says it may not: ClickHouse logs a part's dedup
id just before it renames the part into place, so a kill in that instant leaves the id
without the part, and the retry's block is dropped as a duplicate of rows that are not
there. Dedup rules also change between versions. So the sink does not take it on trust:

- when: `retried`, the group's token was sent more than once (a crash-resumed group, an
  error retried, an operator replay), which is where dedup decides what lands; `sampled`,
  a deterministic fraction of first attempts (`--check-sample-rate`), so a surprise on a
  new ClickHouse version shows in steady state too;
- what: every row of the group is in the table with its version or a newer one for its
  key, FINAL semantics (app/clickhouse/presence.py);
- repair: the missing rows, in the group's order, cut by the group's recorded layout, sent
  under a token of their own (`<group token>:r<n>`) whose number is recorded in the ledger
  first and never reused; then check again.

Why a repair can never double count: it sends only rows the table holds at neither their
version nor a newer one, so no row it sends is stored twice by it; if it were stored twice
anyway (a repair whose success was not seen, re-sent after its dedup id was evicted), both
copies have the same key and version, and ReplacingMergeTree(version) keeps one row per key,
the highest version: FINAL and the argMax view show the one value, and a merge removes the
copy. A version is a checkpoint id and a row carries the full window value, so no version
of a key can hold two different values.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import structlog

from app.clickhouse.schema import ROLLUP_TABLES
from app.core import metrics
from app.core.errors import InvariantViolation
from app.core.faults import crash_point
from app.core.retry import Backoff
from app.ledger import sink_groups as groups_ledger
from app.ledger.ledger import Ledger
from app.ledger.sink_groups import InsertGroup
from app.sink.groups import cut_blocks
from app.sink.writer import RollupWriter

log = structlog.get_logger("sink")
T = TypeVar("T")

DEFAULT_CHECK_SAMPLE_RATE: Final = 0.02
MAX_REPAIRS: Final = 3            # a ClickHouse that keeps losing acknowledged rows stops the sink
_SAMPLE_SCALE: Final = 1_000_000


class Call(Protocol):
    """The sink's way to call a service: retried while it is unavailable, given up on stop."""

    def __call__(self, fn: Callable[[], T], *, what: str, backoff: Backoff | None = None) -> T: ...


def sampled(group_id: int, rate: float) -> bool:
    """Is a first attempt of this group in the check sample? Deterministic: a group always
    gets the same answer (a test or an audit can tell which groups were checked), and group
    ids are hashes, so `rate` of all groups are."""
    return group_id % _SAMPLE_SCALE < rate * _SAMPLE_SCALE


def check_reason(group_id: int, attempts: int, sample_rate: float) -> str | None:
    """Why this group is checked before its acknowledgement, or None. `attempts` counts
    every send of the group's token, earlier runs of the sink included."""
    if attempts > 1:
        return "retried"
    if sampled(group_id, sample_rate):
        return "sampled"
    return None


@dataclass(frozen=True, slots=True)
class Proof:
    checks: int
    repairs: int
    repaired_rows: int


class DeliveryProof:
    def __init__(self, ledger: Ledger, writer: RollupWriter, call: Call, *, max_repairs: int = MAX_REPAIRS) -> None:
        self.ledger = ledger
        self.writer = writer
        self.call = call
        self.max_repairs = max_repairs
        for table in ROLLUP_TABLES:  # zero from the start: a repair is rare, and rate() needs the series
            metrics.SINK_REPAIRS.labels(table=table)
            metrics.SINK_REPAIRED_ROWS.labels(table=table)

    def prove(self, group: InsertGroup, data: pa.Table, why: str) -> Proof:
        """Check, repair what is missing, check again, until nothing is missing. `data` is
        the group's rows exactly as inserted (group_rows order)."""
        repaired = 0
        for check in range(1, self.max_repairs + 2):
            missing = self._check(group, data, why, check)
            if missing.size == 0:
                return Proof(checks=check, repairs=check - 1, repaired_rows=repaired)
            if check > self.max_repairs:
                raise InvariantViolation(
                    f"group {group.group_id} ({group.table_name}): {missing.size} of {data.num_rows} rows still "
                    f"missing in ClickHouse after {self.max_repairs} repair inserts it acknowledged; the group "
                    f"stays open")
            repaired += self._repair(group, data, missing, why)
        raise AssertionError("unreachable: the last check either passes or raises")

    def _check(self, group: InsertGroup, data: pa.Table, why: str, check: int) -> np.ndarray:
        table = group.table_name
        t0 = time.monotonic()
        missing = self.call(lambda: self.writer.missing_rows(table, data), what="clickhouse_check")
        metrics.SINK_CHECKS.labels(table=table, reason=why).inc()
        fields = {"group_id": group.group_id, "table": table, "why": why, "check": check, "rows": data.num_rows,
                  "missing": int(missing.size), "seconds": round(time.monotonic() - t0, 4)}
        (log.warning if missing.size else log.info)("group_checked", **fields)
        return missing

    def _repair(self, group: InsertGroup, data: pa.Table, missing: np.ndarray, why: str) -> int:
        """One repair: recorded (number, token) before the missing rows are sent."""
        layout = group.layout
        assert layout is not None
        table = group.table_name
        rows = self._rows(data, missing, layout.block_rows, layout.cut)
        repair = self.call(lambda: groups_ledger.record_repair(self.ledger, group, rows.num_rows, why),
                           what="postgres_record_repair")
        crash_point("sink.before_repair")
        self.call(lambda: self.writer.insert(table, rows, repair.token, layout.settings),
                  what="clickhouse_repair_insert", backoff=Backoff(0.2, 10.0))
        metrics.SINK_REPAIRS.labels(table=table).inc()
        metrics.SINK_REPAIRED_ROWS.labels(table=table).inc(rows.num_rows)
        log.warning("group_repair_sent", group_id=group.group_id, table=table, why=why, repair_no=repair.repair_no,
                    token=repair.token, rows=rows.num_rows, blocks=rows.column(0).num_chunks)
        crash_point("sink.after_repair")
        return rows.num_rows

    @staticmethod
    def _rows(data: pa.Table, missing: np.ndarray, block_rows: int, cut: str) -> pa.Table:
        """The missing rows, still in the group's order, as blocks by the group's layout rules.

        The layout is not recorded for a repair: its token is sent only by the process that
        recorded it, with these very blocks (a retry after an error included); after a crash
        the next run checks again and records a new number. The group's rules are used so
        that a block still touches one day partition and is sent with the group's settings."""
        return cut_blocks(data.take(pa.array(missing)), block_rows, cut)
