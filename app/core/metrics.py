"""Every Prometheus metric of the pipeline, in one place, each tagged with the stages
(long-running commands) that export it.

Names: `pipeline_` prefix, `_total` for counters, `_seconds` for durations; labels carry
bounded values only (stage, table, reason, window kind, step, partition), never an account
id. A metric is created unregistered: `registry(stage)` builds a process's registry from
its own stage's metrics only (plus RSS, CPU and GC of the process), so a sink never
exports an empty processor series and vice versa. Per-partition series of the processor
are removed when the partition leaves (`forget_partition`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Final, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, GCCollector, Histogram, ProcessCollector
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

STAGES: Final = ("gen", "processor", "sink", "backfill", "verify")
_BY_STAGE: dict[str, list[Collector]] = {s: [] for s in STAGES}
M = TypeVar("M", bound=Collector)


def _in(metric: M, *stages: str) -> M:
    for s in stages:
        _BY_STAGE[s].append(metric)
    return metric


def registry(stage: str) -> CollectorRegistry:
    """A fresh registry holding `stage`'s metrics and the process's own (RSS, CPU, GC)."""
    if stage not in _BY_STAGE:
        raise ValueError(f"unknown metrics stage {stage!r}: one of {', '.join(STAGES)}")
    reg = CollectorRegistry(auto_describe=True)
    for m in _BY_STAGE[stage]:
        reg.register(m)
    ProcessCollector(namespace="pipeline", registry=reg)  # pipeline_process_resident_memory_bytes, ...
    GCCollector(registry=reg)
    return reg


def stage_metric_names(stage: str) -> list[str]:
    """The names a stage exports (tests and the dashboard check compare these with a scrape)."""
    return [str(m._name) for m in _BY_STAGE[stage]]  # where prometheus_client keeps it


_LATENCY_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300, 600)

class SpreadHistogram:
    """A histogram of n observations known only to lie evenly in [low, high]: each bucket
    gets the fraction of n at or below its bound (Prometheus bucket counts are floats).
    The sink knows a batch's record count and Kafka time range, not each record's time."""

    def __init__(self, name: str, documentation: str, label: str, buckets: tuple[float, ...]) -> None:
        self._name, self._doc, self._label, self._bounds = name, documentation, label, tuple(buckets)
        self._series: dict[str, list[float]] = {}   # label value -> bucket counts..., +Inf count, sum
        self._lock = threading.Lock()

    def observe_spread(self, label_value: str, low: float, high: float, n: float) -> None:
        if n <= 0:
            return
        width = high - low
        with self._lock:
            s = self._series.setdefault(label_value, [0.0] * (len(self._bounds) + 2))
            for i, bound in enumerate(self._bounds):
                if width <= 0:
                    s[i] += n if low <= bound else 0.0
                else:
                    s[i] += n * min(1.0, max(0.0, (bound - low) / width))
            s[-2] += n
            s[-1] += n * (low + high) / 2

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self._name, self._doc, labels=[self._label])]

    def collect(self) -> list[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._doc, labels=[self._label])
        with self._lock:
            series = {k: list(v) for k, v in self._series.items()}
        for value, s in sorted(series.items()):
            buckets = [(repr(float(b)), s[i]) for i, b in enumerate(self._bounds)] + [("+Inf", s[-2])]
            family.add_metric([value], buckets, s[-1])
        return [family]


# ---- generator ----------------------------------------------------------------
GEN_EVENTS = _in(Counter("pipeline_gen_events_total", "Events produced by the generator", ["class_"],
                         registry=None), "gen")
GEN_BEHIND = _in(Gauge("pipeline_gen_behind_seconds", "How far the open-model generator is behind its schedule",
                       registry=None), "gen")

# ---- processor ----------------------------------------------------------------
EVENTS_READ = _in(Counter("pipeline_events_read_total", "Input records read from Kafka, per input partition",
                          ["partition"], registry=None), "processor")
EVENTS_FOLDED = _in(Counter("pipeline_events_folded_total",
                            "Events folded into a window of this kind (read - invalid - too late for the kind), "
                            "counted when their checkpoint commits", ["window_kind"], registry=None), "processor")
DLQ_RECORDS = _in(Counter("pipeline_dlq_records_total", "Records classified late or invalid and sent to the DLQ",
                          ["reason", "window_kind"], registry=None), "processor")
WATERMARK_MS = _in(Gauge("pipeline_watermark_ms", "Committed watermark per input partition (epoch ms)",
                         ["partition"], registry=None), "processor")
WATERMARK_LAG = _in(Gauge("pipeline_watermark_lag_seconds", "Wall clock minus the partition's watermark",
                          ["partition"], registry=None), "processor")
CONSUMER_LAG = _in(Gauge("pipeline_consumer_lag_records", "End offset minus next offset, per owned partition",
                         ["partition"], registry=None), "processor")
OPEN_WINDOWS = _in(Gauge("pipeline_open_windows", "Windows held in processor state", ["window_kind"],
                         registry=None), "processor")
STATE_KEYS = _in(Gauge("pipeline_state_keys", "Window keys held in the state store of each owned partition",
                       ["partition"], registry=None), "processor")
CHECKPOINTS = _in(Counter("pipeline_checkpoints_total", "Ledger checkpoints committed", ["source"],
                          registry=None), "processor")
CHECKPOINT_SECONDS = _in(Histogram("pipeline_checkpoint_seconds", "Ledger checkpoint transaction time",
                                   buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                                   registry=None), "processor")
CHECKPOINT_STEP_SECONDS = _in(Histogram(
    "pipeline_checkpoint_step_seconds", "Time of each step of a checkpoint (app/processor/checkpoint.py)", ["step"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=None), "processor")
PAUSED_PARTITIONS = _in(Gauge("pipeline_paused_partitions", "Input partitions paused by backpressure",
                              registry=None), "processor")
BACKPRESSURE_PAUSES = _in(Counter("pipeline_backpressure_pauses_total", "Times the processor paused its partitions",
                                  registry=None), "processor")
OWNED_PARTITIONS = _in(Gauge("pipeline_owned_partitions", "Input partitions this processor instance owns",
                             registry=None), "processor")
STATE_RESTORES = _in(Counter("pipeline_state_restores_total",
                             "Partition states restored on assignment: reused (local LevelDB matched the ledger) "
                             "or rebuilt (from the ledger's snapshot and later batches)", ["mode"], registry=None),
                     "processor")
STATE_RESTORE_SECONDS = _in(Histogram("pipeline_state_restore_seconds", "Claim + reconcile + restore of one partition",
                                      ["mode"], buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
                                      registry=None), "processor")
SNAPSHOTS = _in(Counter("pipeline_snapshots_total", "Chunked window snapshots published to the ledger",
                        registry=None), "processor")
PARTITIONS_FENCED = _in(Counter("pipeline_partitions_fenced_total",
                                "Partitions dropped because a newer owner generation fenced our checkpoint",
                                registry=None), "processor")

# ---- the ledger's backlog (both the processor's backpressure and the sink read it) ----
PENDING_ROWS = _in(Gauge("pipeline_pending_rows", "Rows in ledger batches not yet acknowledged by ClickHouse",
                         registry=None), "processor", "sink")
PENDING_BYTES = _in(Gauge("pipeline_pending_bytes", "Payload bytes of ledger batches not yet acknowledged",
                          registry=None), "processor", "sink")
PENDING_BATCHES = _in(Gauge("pipeline_pending_batches", "Ledger batches not yet acknowledged by ClickHouse",
                            registry=None), "processor", "sink")

# ---- sink ---------------------------------------------------------------------
SINK_BATCHES = _in(Counter("pipeline_sink_batches_total", "Ledger batches acknowledged", ["table"], registry=None),
                   "sink")
SINK_ROWS = _in(Counter("pipeline_sink_rows_total", "Rows inserted into ClickHouse and acknowledged", ["table"],
                        registry=None), "sink")
SINK_INSERT_ROWS = _in(Histogram("pipeline_sink_insert_rows", "Rows per ClickHouse insert", ["table"],
                                 buckets=(1, 100, 1_000, 10_000, 50_000, 100_000, 500_000, 1_000_000),
                                 registry=None), "sink")
SINK_INSERT_SECONDS = _in(Histogram("pipeline_sink_insert_seconds", "ClickHouse insert latency", ["table"],
                                    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=None), "sink")
SINK_INSERT_ERRORS = _in(Counter("pipeline_sink_insert_errors_total", "Failed ClickHouse inserts", ["table"],
                                 registry=None), "sink")
SINK_REPLAYS = _in(Counter("pipeline_sink_replays_total", "Batches inserted again after an earlier attempt",
                           registry=None), "sink")
SINK_GROUPS = _in(Counter("pipeline_sink_groups_total", "Coalesced inserts acknowledged, by why the group closed",
                          ["table", "reason"], registry=None), "sink")
SINK_GROUP_BATCHES = _in(Histogram("pipeline_sink_group_batches", "Ledger batches per coalesced insert", ["table"],
                                   buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000), registry=None), "sink")
SINK_INJECTED_FAULTS = _in(Counter("pipeline_sink_injected_faults_total", "Insert faults injected by --fail-insert-*",
                                   ["mode"], registry=None), "sink")
SINK_LAG_SECONDS = _in(Gauge("pipeline_sink_lag_seconds", "Age of the oldest ledger batch not yet in ClickHouse",
                             registry=None), "sink")
INFLIGHT_BATCHES = _in(Gauge("pipeline_inflight_batches",
                             "Ledger batches of the insert in progress (recorded in a group, sent or being sent, "
                             "not yet acknowledged)", registry=None), "sink")
E2E_SECONDS = _in(SpreadHistogram("pipeline_e2e_seconds",
                                  "Per input record: its Kafka timestamp to the acknowledgement of its rows in "
                                  "ClickHouse (a batch's records spread evenly over its Kafka time range)", "table",
                                  _LATENCY_BUCKETS), "sink")
DEDUP_BLOCKS = _in(Counter("pipeline_sink_dedup_blocks_total",
                           "Blocks of an insert that ClickHouse suppressed as already inserted (blocks sent minus "
                           "parts created)", ["table"], registry=None), "sink")
CH_DUPLICATED_BLOCKS = _in(Counter("pipeline_clickhouse_duplicated_inserted_blocks_total",
                                   "ClickHouse's own DuplicatedInsertedBlocks profile event over our inserts, as "
                                   "it counts it", ["table"], registry=None), "sink")
RECONCILE_DIFF_EVENTS = _in(Gauge("pipeline_reconcile_diff_events",
                                  "ClickHouse FINAL minus ledger acknowledged events over settled windows (must be 0)",
                                  ["table"], registry=None), "sink")
RECONCILE_DIFF_AMOUNT = _in(Gauge("pipeline_reconcile_diff_amount",
                                  "ClickHouse FINAL minus ledger acknowledged sum(amount) over settled windows "
                                  "(must be 0)", ["table"], registry=None), "sink")
RECONCILE_DIFF_WINDOWS = _in(Gauge("pipeline_reconcile_diff_windows",
                                   "ClickHouse FINAL minus ledger window count over settled windows (must be 0)",
                                   ["table"], registry=None), "sink")
RECONCILE_CHECKED_EVENTS = _in(Gauge("pipeline_reconcile_checked_events",
                                     "Events in the settled windows the last reconciliation compared", ["table"],
                                     registry=None), "sink")
RECONCILE_SETTLED_UNTIL = _in(Gauge("pipeline_reconcile_settled_until_seconds",
                                    "End (epoch s) of the settled window range the last reconciliation compared",
                                    ["table"], registry=None), "sink")
RECONCILE_SAMPLES = _in(Counter("pipeline_reconcile_samples_total", "Reconciliation samples, by outcome",
                                ["table", "outcome"], registry=None), "sink")

# ---- backfill -----------------------------------------------------------------
BACKFILL_RECORDS = _in(Counter("pipeline_backfill_records_total", "Input records replayed by backfill",
                               registry=None), "backfill")
BACKFILL_ROWS = _in(Counter("pipeline_backfill_rows_total", "Window rows committed by backfill as sink batches",
                            ["table"], registry=None), "backfill")
BACKFILL_DELETED_KEYS = _in(Counter("pipeline_backfill_deleted_keys_total",
                                    "Keys deleted from ClickHouse by backfill (present there, absent from the truth)",
                                    registry=None), "backfill")
BACKFILL_RUNS = _in(Counter("pipeline_backfill_runs_total", "Backfill runs landed", registry=None), "backfill")

_PER_PARTITION: Final = (EVENTS_READ, WATERMARK_MS, WATERMARK_LAG, CONSUMER_LAG, STATE_KEYS)


def forget_partition(partition: int) -> None:
    """A partition left this instance: its series go (another instance exports them now)."""
    label = str(partition)
    for m in _PER_PARTITION:
        try:
            m.remove(label)
        except KeyError:
            pass  # never set here


def count_folded(records: int, dlq_counts: Mapping[tuple[int, str, str], int]) -> None:
    """Events folded per window kind by one committed checkpoint: every record of its input
    range was classified once: invalid, or per kind folded or too late."""
    invalid = sum(n for (_p, reason, _k), n in dlq_counts.items() if reason == "invalid")
    for kind in ("minute", "hour"):
        late = sum(n for (_p, reason, k), n in dlq_counts.items() if reason == "late" and k == kind)
        EVENTS_FOLDED.labels(window_kind=kind).inc(max(0, records - invalid - late))


class StepTimer:
    """Times consecutive steps: `lap(name)` observes the time since the previous lap."""

    __slots__ = ("_at", "_histogram")

    def __init__(self, histogram: Histogram = CHECKPOINT_STEP_SECONDS) -> None:
        self._histogram = histogram
        self._at = time.monotonic()

    def lap(self, step: str) -> None:
        now = time.monotonic()
        self._histogram.labels(step=step).observe(now - self._at)
        self._at = now
