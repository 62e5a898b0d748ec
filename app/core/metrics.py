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
