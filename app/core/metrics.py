"""Every Prometheus metric of the pipeline, in one place.

Names: `pipeline_` prefix, `_total` for counters, `_seconds` for durations; labels carry
bounded values only (stage, table, reason, partition), never an account id.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# generator
GEN_EVENTS = Counter("pipeline_gen_events_total", "Events produced by the generator", ["class_"])
GEN_BEHIND = Gauge("pipeline_gen_behind_seconds", "How far the open-model generator is behind its schedule")

# processor
EVENTS_READ = Counter("pipeline_events_read_total", "Input records read from Kafka", ["partition"])
EVENTS_FOLDED = Counter("pipeline_events_folded_total", "Events folded into a window", ["window_kind"])
DLQ_RECORDS = Counter("pipeline_dlq_records_total", "Records sent to the DLQ", ["reason", "window_kind"])
WATERMARK_MS = Gauge("pipeline_watermark_ms", "Watermark per input partition (epoch ms)", ["partition"])
WATERMARK_LAG = Gauge("pipeline_watermark_lag_seconds", "Wall clock minus watermark", ["partition"])
CONSUMER_LAG = Gauge("pipeline_consumer_lag_records", "End offset minus next offset", ["partition"])
OPEN_WINDOWS = Gauge("pipeline_open_windows", "Windows held in processor state", ["window_kind"])
CHECKPOINTS = Counter("pipeline_checkpoints_total", "Ledger checkpoints committed", ["source"])
CHECKPOINT_SECONDS = Histogram("pipeline_checkpoint_seconds", "Ledger checkpoint transaction time",
                               buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
PAUSED_PARTITIONS = Gauge("pipeline_paused_partitions", "Input partitions paused by backpressure")
PENDING_ROWS = Gauge("pipeline_pending_rows", "Rows in ledger batches not yet acknowledged by ClickHouse")

# sink
SINK_BATCHES = Counter("pipeline_sink_batches_total", "Ledger batches acknowledged", ["table"])
SINK_ROWS = Counter("pipeline_sink_rows_total", "Rows inserted into ClickHouse", ["table"])
SINK_INSERT_ROWS = Histogram("pipeline_sink_insert_rows", "Rows per ClickHouse insert", ["table"],
                             buckets=(1, 100, 1_000, 10_000, 50_000, 100_000, 500_000, 1_000_000))
SINK_INSERT_SECONDS = Histogram("pipeline_sink_insert_seconds", "ClickHouse insert latency", ["table"],
                                buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
SINK_INSERT_ERRORS = Counter("pipeline_sink_insert_errors_total", "Failed ClickHouse inserts", ["table"])
SINK_REPLAYS = Counter("pipeline_sink_replays_total", "Batches inserted again after an earlier attempt")
E2E_SECONDS = Histogram("pipeline_e2e_seconds", "Checkpoint commit to ClickHouse acknowledgement",
                        buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose /metrics; port 0 disables it. Binds to loopback unless told otherwise."""
    if port:
        start_http_server(port, addr=host)


# backfill
BACKFILL_RECORDS = Counter("pipeline_backfill_records_total", "Input records replayed by backfill")
BACKFILL_ROWS = Counter("pipeline_backfill_rows_total", "Window rows committed by backfill as sink batches",
                        ["table"])
BACKFILL_DELETED_KEYS = Counter("pipeline_backfill_deleted_keys_total",
                                "Keys deleted from ClickHouse by backfill (present there, absent from the truth)")
BACKFILL_RUNS = Counter("pipeline_backfill_runs_total", "Backfill runs landed")


# coalesced sink inserts, insert faults and backpressure (issue 4)
SINK_GROUPS = Counter("pipeline_sink_groups_total", "Coalesced inserts acknowledged, by why the group closed",
                      ["table", "reason"])
SINK_GROUP_BATCHES = Histogram("pipeline_sink_group_batches", "Ledger batches per coalesced insert", ["table"],
                               buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000))
SINK_INJECTED_FAULTS = Counter("pipeline_sink_injected_faults_total", "Insert faults injected by --fail-insert-*",
                               ["mode"])
SINK_LAG_SECONDS = Gauge("pipeline_sink_lag_seconds", "Age of the oldest ledger batch not yet in ClickHouse")
PENDING_BYTES = Gauge("pipeline_pending_bytes", "Payload bytes of ledger batches not yet acknowledged by ClickHouse")
BACKPRESSURE_PAUSES = Counter("pipeline_backpressure_pauses_total", "Times the processor paused its partitions")


# processor state and ownership (issue 3)
OWNED_PARTITIONS = Gauge("pipeline_owned_partitions", "Input partitions this processor instance owns")
STATE_RESTORES = Counter("pipeline_state_restores_total",
                         "Partition states restored on assignment: reused (local LevelDB matched the ledger) "
                         "or rebuilt (from the ledger's snapshot and later batches)", ["mode"])
STATE_RESTORE_SECONDS = Histogram("pipeline_state_restore_seconds", "Claim + reconcile + restore of one partition",
                                  ["mode"], buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
SNAPSHOTS = Counter("pipeline_snapshots_total", "Chunked window snapshots published to the ledger")
PARTITIONS_FENCED = Counter("pipeline_partitions_fenced_total",
                            "Partitions dropped because a newer owner generation fenced our checkpoint")


# proven delivery: the sink's check in ClickHouse before acknowledging, and its repairs (issue 16)
SINK_CHECKS = Counter("pipeline_sink_checks_total", "Groups checked in ClickHouse before their acknowledgement",
                      ["table", "reason"])
SINK_REPAIRS = Counter("pipeline_sink_repairs_total", "Repair inserts of rows a check found missing", ["table"])
SINK_REPAIRED_ROWS = Counter("pipeline_sink_repaired_rows_total", "Rows re-sent by repair inserts", ["table"])
