"""The live reconciliation gauge: the ledger's acknowledged totals against ClickHouse FINAL
over the same settled windows, sampled every `every_s` by the sink, so the dashboard
shows the difference (which must read 0) instead of a claim.

Settled (app/ledger/settled.py): final in every partition under the ledger's committed
watermarks and pinned lateness, and every batch that carried them acknowledged. For each
rollup table the latest `buckets` settled window starts are compared: events, sum of
amounts and window count, ledger side from its settled totals (one row per window start),
ClickHouse side `SELECT ... FINAL WHERE window_start` in that range (the sorting key's
prefix and the day partitions bound the read). A difference is logged as an error with
the range, so an operator can run verify on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog
from clickhouse_connect.driver.client import Client

from app.core import metrics
from app.core.errors import RetryableError
from app.ledger.ledger import Ledger
from app.ledger.settled import SettledRange, settled_range

log = structlog.get_logger("sink")

TABLES = ("rollup_minute", "rollup_hour")


@dataclass(frozen=True, slots=True)
class ReconcilePolicy:
    every_s: float = 15.0
    buckets: Mapping[str, int] = field(default_factory=lambda: {"rollup_minute": 30, "rollup_hour": 3})


@dataclass(frozen=True, slots=True)
class Comparison:
    settled: SettledRange
    windows: int      # ClickHouse FINAL minus ledger, each
    events: int
    amount: int

    @property
    def equal(self) -> bool:
        return self.windows == 0 and self.events == 0 and self.amount == 0


def compare(ledger: Ledger, client: Client, table: str, buckets: int) -> Comparison | None:
    settled = settled_range(ledger, table, buckets)
    if settled is None:
        return None
    row = client.query(
        f"SELECT count(), sum(event_count), sum(sum_amount) FROM {table} FINAL "
        "WHERE window_start >= toDateTime({start:UInt32}) AND window_start < toDateTime({end:UInt32})",
        parameters={"start": settled.start_ms // 1000, "end": settled.end_ms // 1000}).result_rows[0]
    return Comparison(settled, int(row[0]) - settled.windows, int(row[1] or 0) - settled.events,
                      int(row[2] or 0) - settled.amount)


class Reconciler:
    def __init__(self, ledger: Ledger, client: Callable[[], Client], policy: ReconcilePolicy | None = None) -> None:
        self.ledger = ledger
        self.client = client
        self.policy = policy or ReconcilePolicy()
        self._next_s = time.monotonic() + self.policy.every_s

    def maybe_sample(self) -> None:
        now = time.monotonic()
        if now < self._next_s:
            return
        self._next_s = now + self.policy.every_s
        for table in TABLES:
            self.sample(table)

    def sample(self, table: str) -> Comparison | None:
        try:
            c = compare(self.ledger, self.client(), table, self.policy.buckets[table])
        except (RetryableError, OSError) as e:
            metrics.RECONCILE_SAMPLES.labels(table=table, outcome="unavailable").inc()
            log.warning("reconcile_unavailable", table=table, error=str(e))
            return None
        except Exception as e:  # noqa: BLE001 - a failed check is reported, it never stops delivery
            metrics.RECONCILE_SAMPLES.labels(table=table, outcome="error").inc()
            log.warning("reconcile_failed", table=table, error=f"{type(e).__name__}: {e}")
            return None
        if c is None:
            metrics.RECONCILE_SAMPLES.labels(table=table, outcome="nothing_settled").inc()
            return None
        metrics.RECONCILE_DIFF_WINDOWS.labels(table=table).set(c.windows)
        metrics.RECONCILE_DIFF_EVENTS.labels(table=table).set(c.events)
        metrics.RECONCILE_DIFF_AMOUNT.labels(table=table).set(c.amount)
        metrics.RECONCILE_CHECKED_EVENTS.labels(table=table).set(c.settled.events)
        metrics.RECONCILE_SETTLED_UNTIL.labels(table=table).set(c.settled.end_ms / 1000)
        metrics.RECONCILE_SAMPLES.labels(table=table, outcome="equal" if c.equal else "differ").inc()
        if not c.equal:
            log.error("reconcile_differs", table=table, start_ms=c.settled.start_ms, end_ms=c.settled.end_ms,
                      diff_windows=c.windows, diff_events=c.events, diff_amount=c.amount,
                      ledger_events=c.settled.events, hint="run python -m app.verify")
        return c
