"""Insert fault injection at the RollupWriter seam (`--fail-insert-*` flags of the sink).

FaultyWriter wraps any writer and makes chosen insert calls raise a RetryableError,
which the sink retries like a real ClickHouse error — same group, same rows, same token:

- `before`: nothing is written (a refused connection, a rejected insert);
- `after`:  the whole insert is written, then the call fails (a lost response, a client
            timeout while the server finished);
- `mid`:    the first half of the insert's blocks is written, then the call fails (the
            server or the sink died part way through a multi-block insert). The prefix is
            sent as its own insert with the same token; ClickHouse numbers blocks within
            an insert, so the prefix's blocks carry the ids the full insert's first blocks
            carry, exactly as if the full insert had stopped there (docs/sink.md). An
            insert of a single block has no middle: nothing is written;
- `drop`:   nothing is written and the call reports success: a ClickHouse that loses an
            acknowledged block. It breaks exactly-once on purpose, so that tests can show
            that verify (and the chaos report) notice a loss instead of hiding it, and that
            the sink's delivery check (`--check-sample-rate`) repairs it.

Which calls fail is deterministic: every Nth call, and/or each call with probability P
drawn from a generator seeded by `seed`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pyarrow as pa
import structlog

from app.core import metrics
from app.core.errors import RetryableError
from app.sink.writer import RollupWriter

log = structlog.get_logger("sink")

FAULT_MODES: Final = ("before", "after", "mid", "drop")


class InjectedInsertFault(RetryableError):
    """A ClickHouse insert error raised on purpose (--fail-insert-*)."""


@dataclass(frozen=True, slots=True)
class InsertFaultPlan:
    every: int = 0                 # fail every Nth insert call (0 = never)
    probability: float = 0.0       # fail each call with this probability
    seed: int = 0
    mode: str = "before"

    def __post_init__(self) -> None:
        if self.mode not in FAULT_MODES:
            raise ValueError(f"fault mode must be one of {FAULT_MODES}, not {self.mode!r}")
        if self.every < 0 or not 0.0 <= self.probability <= 1.0:
            raise ValueError("every must be >= 0 and probability within [0, 1]")

    @property
    def enabled(self) -> bool:
        return self.every > 0 or self.probability > 0.0


class FaultyWriter:
    def __init__(self, inner: RollupWriter, plan: InsertFaultPlan) -> None:
        self.inner = inner
        self.plan = plan
        self._rng = random.Random(plan.seed)
        self.calls = 0
        self.injected = 0

    def should_fail(self) -> bool:
        """Advance the schedule by one call. The draw happens on every call, so the
        sequence of failures depends only on the seed and the call count."""
        self.calls += 1
        drawn = self._rng.random() < self.plan.probability if self.plan.probability > 0 else False
        every = self.plan.every > 0 and self.calls % self.plan.every == 0
        return every or drawn

    def prepare(self) -> None:
        self.inner.prepare()

    def insert(self, table: str, rows: pa.Table, token: str, settings: Mapping[str, Any] | None = None) -> None:
        if not self.should_fail():
            self.inner.insert(table, rows, token, settings)
            return
        self.injected += 1
        mode = self.plan.mode
        metrics.SINK_INJECTED_FAULTS.labels(mode=mode).inc()
        blocks = rows.to_batches()
        written = 0
        if mode == "drop":
            log.warning("insert_fault_injected", table=table, token=token, mode=mode, call=self.calls,
                        blocks=len(blocks), blocks_written=0, rows_dropped=rows.num_rows)
            return  # reported as landed: the sink acknowledges rows ClickHouse never got
        if mode == "after":
            self.inner.insert(table, rows, token, settings)
            written = len(blocks)
        elif mode == "mid" and len(blocks) >= 2:
            written = (len(blocks) + 1) // 2
            self.inner.insert(table, pa.Table.from_batches(blocks[:written], schema=rows.schema), token, settings)
        log.warning("insert_fault_injected", table=table, token=token, mode=mode, call=self.calls,
                    blocks=len(blocks), blocks_written=written)
        raise InjectedInsertFault(f"injected insert fault ({mode}): {written} of {len(blocks)} blocks "
                                  f"of {table} written")

    def missing_rows(self, table: str, rows: pa.Table) -> np.ndarray:
        return self.inner.missing_rows(table, rows)  # the check sees what ClickHouse really holds

    def close(self) -> None:
        self.inner.close()
