"""Where the pipeline stands, from the ledger and Kafka, and whether it is stuck.

Stuck (exit code 1; docs/operations.md, "python -m app.status"):
- a sink group retried past --max-group-attempts: an insert ClickHouse keeps refusing;
- a partition behind its log end whose ledger row has not moved for --stall-after: no
  processor is making progress on it (none running, or one that cannot commit);
- batches pending for longer than --stall-after with no acknowledgement within
  --stall-after: no sink is delivering.
Lag alone is not stuck (a burst is being worked off); no progress is.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from app.status.kafka_view import KafkaView
from app.status.ledger_view import LedgerView, OpenGroup


@dataclass(frozen=True, slots=True)
class StuckRules:
    max_group_attempts: int = 5
    stall_after_s: float = 300.0


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    partition: int
    next_offset: int | None          # None: the ledger has no row yet (never assigned)
    log_end: int | None              # None: Kafka unreachable
    lag_records: int | None
    lag_seconds: float | None        # age of the first record the ledger has not read; 0 when caught up
    watermark_ms: int | None
    watermark: str | None            # ISO 8601 UTC
    owner: str | None
    generation: int | None
    last_progress_s: float | None    # since the ledger row last moved (checkpoint or claim)


@dataclass(frozen=True, slots=True)
class SinkStatus:
    pending_batches: int
    pending_rows: int
    oldest_pending_age_s: float | None
    ungrouped_batches: int
    open_groups: int
    worst_groups: tuple[OpenGroup, ...]
    last_ack_age_s: float | None


@dataclass(frozen=True, slots=True)
class Status:
    pipeline_id: str
    topic: str
    partitions: tuple[PartitionStatus, ...]
    total_lag_records: int | None
    sink: SinkStatus
    dlq: dict[str, int]
    last_checkpoint_id: int | None
    last_checkpoint_age_s: float | None
    run_finished: bool | None
    kafka_error: str | None
    stuck: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = not self.stuck and self.kafka_error is None
        return out


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build(pipeline_id: str, topic: str, ledger: LedgerView, kafka: KafkaView | None, kafka_error: str | None,
          rules: StuckRules, now_ms: int | None = None) -> Status:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    rows = {r.partition: r for r in ledger.partitions}
    numbers = sorted(set(rows) | (set(kafka.log_ends) if kafka else set()))
    parts = []
    for p in numbers:
        row = rows.get(p)
        nxt = row.next_offset if row else None
        end = kafka.log_ends.get(p) if kafka else None
        lag = None if end is None else max(0, end - (nxt or 0))
        ts = kafka.next_record_ms.get(p) if kafka else None
        lag_s = 0.0 if lag == 0 else (None if ts is None else max(0.0, (now_ms - ts) / 1000))
        parts.append(PartitionStatus(p, nxt, end, lag, lag_s, row.watermark_ms if row else None,
                                     iso(row.watermark_ms) if row else None, row.owner if row else None,
                                     row.generation if row else None, row.updated_age_s if row else None))
    s = ledger.sink
    sink = SinkStatus(s.pending_batches, s.pending_rows, s.oldest_pending_age_s, s.ungrouped_batches,
                      s.open_group_count, s.open_groups, s.last_ack_age_s)
    lags = [x.lag_records for x in parts]
    total = None if kafka is None else sum(x or 0 for x in lags)
    return Status(pipeline_id, topic, tuple(parts), total, sink, ledger.dlq, ledger.last_checkpoint_id,
                  ledger.last_checkpoint_age_s, ledger.run_finished, kafka_error, stuck_reasons(parts, sink, rules))


def stuck_reasons(parts: list[PartitionStatus], sink: SinkStatus, rules: StuckRules) -> tuple[str, ...]:
    out = []
    for g in sink.worst_groups:
        if g.insert_attempts >= rules.max_group_attempts:
            out.append(f"sink group {g.group_id} ({g.table_name}, {g.rows} rows) tried {g.insert_attempts} times "
                       f"(--max-group-attempts {rules.max_group_attempts}); open for {age(g.age_s)}")
    for x in parts:
        if x.lag_records and (x.last_progress_s is None or x.last_progress_s >= rules.stall_after_s):
            since = "never read" if x.last_progress_s is None else f"no progress for {age(x.last_progress_s)}"
            out.append(f"partition {x.partition}: {x.lag_records} records behind, {since} "
                       f"(--stall-after {age(rules.stall_after_s)})")
    if (sink.pending_batches and sink.oldest_pending_age_s is not None
            and sink.oldest_pending_age_s >= rules.stall_after_s
            and (sink.last_ack_age_s is None or sink.last_ack_age_s >= rules.stall_after_s)):
        last = "never" if sink.last_ack_age_s is None else f"{age(sink.last_ack_age_s)} ago"
        out.append(f"sink: {sink.pending_batches} batches pending, oldest {age(sink.oldest_pending_age_s)}, "
                   f"last acknowledgement {last} (--stall-after {age(rules.stall_after_s)})")
    return tuple(out)


def age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"

