"""The naive at-least-once baseline of the EOS-tax experiment (brief §10.7). NOT the product:
it exists to show what the ledger design buys, and what it costs.

What a first Kafka -> ClickHouse job usually looks like: windows in memory, per batch an
insert of the batch's partial aggregates (deltas) into a plain MergeTree table WITHOUT a
dedup token, then the consumer group's offsets committed to Kafka. Readers sum the deltas.
A crash between the insert and the commit replays the batch: its deltas land twice.

The product's own classify-and-fold loop (app.processor.windows.fold_run, default rules),
so the comparison measures delivery, not a different fold; the watermark lives in memory
only and restarts from nothing after a crash (eos_tax feeds input without late events, so
the only difference from the truth is what the crash does).

    python -m experiments.naive_consumer --clickhouse-url chdb:///tmp/naive --events-topic T --group G \
        [--until-end | --idle-exit 5s] [--kill-after-insert N] [--stats-out stats.json]
    python -m experiments.naive_consumer --clickhouse-url chdb:///tmp/naive --materialize
        # sums the deltas into the contract's rollup tables, so app.verify can diff them
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

import numpy as np
from confluent_kafka import Consumer, TopicPartition

from app.clickhouse.client import connect, migrate
from app.core.config import duration_arg
from app.core.kafka import consumer_config
from app.processor.windows import KINDS, FoldRules, LatenessPolicy, Position, WindowKind, fold_run

TABLES = {WindowKind.MINUTE: "naive_minute", WindowKind.HOUR: "naive_hour"}
CONTRACT = {"naive_minute": "rollup_minute", "naive_hour": "rollup_hour"}
RULES = FoldRules(LatenessPolicy(), 1 << 20)  # the processor's defaults


def ddl(table: str) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {table} (window_start DateTime, account_id UInt64,
        country LowCardinality(String), event_count UInt64, sum_amount Int128)
        ENGINE = MergeTree ORDER BY (window_start, account_id, country)"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.naive_consumer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    ap.add_argument("--clickhouse-url", help="chdb:///abs/path of the baseline's own tables (required)")
    ap.add_argument("--events-topic", help="input topic")
    ap.add_argument("--group", help="Kafka consumer group (its committed offsets are the only progress)")
    ap.add_argument("--batch-max-wait", type=duration_arg, default=1.0, help="insert + commit this often (default 1s)")
    ap.add_argument("--batch-records", type=int, default=200_000, help="... or after this many records")
    ap.add_argument("--until-end", action="store_true", help="exit once the end offsets seen at start are committed")
    ap.add_argument("--idle-exit", type=duration_arg, default=0.0,
                    help="exit after this long without a record, once everything is committed (0 = never)")
    ap.add_argument("--kill-after-insert", type=int, default=0,
                    help="SIGKILL itself right after the Nth insert, before committing its offsets: the "
                         "crash an at-least-once job is exposed to (0 = never)")
    ap.add_argument("--stats-out", help="write throughput and per-record e2e latency quantiles here on exit")
    ap.add_argument("--materialize", action="store_true",
                    help="sum the deltas into rollup_minute / rollup_hour (contract tables, one version) and exit")
    return ap


def materialize(url: str) -> int:
    client = connect(url)
    migrate(client)
    for naive, contract in CONTRACT.items():
        client.command(ddl(naive))
        client.command(f"TRUNCATE TABLE {contract}")
        client.command(f"""INSERT INTO {contract} SELECT window_start, account_id, country, sum(event_count),
                           sum(sum_amount), 0, 1 FROM {naive} GROUP BY window_start, account_id, country""")
    return 0


class Rejected:
    """Invalid and too-late records: counted, not sent anywhere (no DLQ in the baseline)."""

    def __init__(self) -> None:
        self.invalid = 0
        self.late = 0

    def on_invalid(self, offset: int, key: bytes | None, value: bytes | None, error: str) -> None:
        self.invalid += 1

    def on_late(self, offset: int, key: bytes | None, value: bytes | None, kind: WindowKind, error: str) -> None:
        self.late += 1


class Batch:
    """The deltas of one batch, folded by the product's own classify-and-fold loop
    (app.processor.windows.fold_run), so the two designs differ only in how results are
    delivered: what is measured is the delivery, not a slower fold."""

    def __init__(self) -> None:
        self.deltas: dict[tuple[int, int, int, str], list[int]] = {}
        self.timestamps_ms: list[int] = []
        self.started = time.monotonic()

    def rows(self, kind: WindowKind) -> list[list[object]]:
        return [[start // 1000, a, c, n, s] for (k, start, a, c), (n, s) in self.deltas.items() if k == kind]


def run(args: argparse.Namespace) -> int:
    client = connect(args.clickhouse_url)
    for table in TABLES.values():
        client.command(ddl(table))
    # the processor's fetch settings (app.core.kafka.consumer_config), so both read alike;
    # but offsets are stored as consumed and committed to Kafka: that is the baseline
    consumer = Consumer(consumer_config(args.bootstrap_servers, args.group, **{
        "enable.auto.offset.store": True, "session.timeout.ms": 6000}))
    consumer.subscribe([args.events_topic])
    ends: dict[int, int] = {}
    if args.until_end:
        md = consumer.list_topics(args.events_topic, timeout=10)
        for p in md.topics[args.events_topic].partitions:
            ends[p] = consumer.get_watermark_offsets(TopicPartition(args.events_topic, p), timeout=10)[1]
    stop = False

    def on_term(_sig: int, _frame: Any) -> None:
        nonlocal stop
        stop = True
    signal.signal(signal.SIGTERM, on_term)

    batch, inserts, records, first_record, last_record = Batch(), 0, 0, None, time.monotonic()
    position: dict[int, int] = {}
    folds: dict[int, Position] = {}   # per partition, in memory only: lost with the process
    rejected = Rejected()
    latencies: list[np.ndarray] = []
    t_start = time.time()
    t_last_commit = t_start
    while True:
        msgs = consumer.consume(10_000, timeout=0.2)
        runs: dict[int, list[tuple[int, bytes | None, bytes | None]]] = {}
        for m in msgs:
            if m.error() is not None:
                continue
            first_record = first_record or time.time()
            runs.setdefault(m.partition(), []).append((m.offset(), m.key(), m.value()))
            batch.timestamps_ms.append(m.timestamp()[1])
            position[m.partition()] = m.offset() + 1
            records += 1
        for p, run_ in runs.items():
            at = folds.get(p) or Position(run_[0][0], None, None)
            folds[p] = fold_run(run_, at, RULES, batch.deltas, rejected)
        if msgs:
            last_record = time.monotonic()
        due = (time.monotonic() - batch.started >= args.batch_max_wait
               or len(batch.timestamps_ms) >= args.batch_records)
        if due and position and batch.timestamps_ms:
            for kind in KINDS:
                table = TABLES[kind]
                rows = batch.rows(kind)
                if rows:
                    client.insert(table, rows, column_names=["window_start", "account_id", "country",
                                                             "event_count", "sum_amount"])
            inserts += 1
            if inserts == args.kill_after_insert:
                os.write(2, b'{"event": "naive_killed_after_insert", "insert": %d}\n' % inserts)
                os.kill(os.getpid(), signal.SIGKILL)
            consumer.commit(asynchronous=False)
            t_last_commit = time.time()
            latencies.append(t_last_commit - np.asarray(batch.timestamps_ms, dtype=np.float64) / 1000.0)
            batch = Batch()
        elif due:
            batch.started = time.monotonic()
        done_end = args.until_end and all(position.get(p, 0) >= e for p, e in ends.items()) \
            and not batch.timestamps_ms
        idle = args.idle_exit and first_record and time.monotonic() - last_record >= args.idle_exit \
            and not batch.timestamps_ms
        if stop or done_end or idle:
            break
    consumer.close()
    if args.stats_out:
        lat = np.concatenate(latencies) if latencies else np.zeros(0)
        q = (lambda x: round(float(np.quantile(lat, x)), 3)) if lat.size else (lambda _x: None)
        stats = {"records": records, "inserts": inserts, "invalid": rejected.invalid, "late": rejected.late, "first_record": first_record, "last_commit": t_last_commit,
                 "events_per_s": round(records / max(t_last_commit - (first_record or t_start), 1e-9), 1),
                 "e2e_p50_s": q(0.5), "e2e_p99_s": q(0.99), "e2e_p999_s": q(0.999), "e2e_max_s": q(1.0)}
        with open(args.stats_out, "w") as f:
            json.dump(stats, f)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not args.clickhouse_url:
        ap.error("--clickhouse-url is required")
    if args.materialize:
        return materialize(args.clickhouse_url)
    if not args.events_topic or not args.group:
        ap.error("--events-topic and --group are required unless --materialize")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
