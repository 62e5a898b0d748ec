"""A benchmark scope: its own pipeline id, topics, ClickHouse path; reads of its ledger rows.

Every run (catch-up, each open-model trial) gets a fresh scope, so it starts from an empty
ledger and never touches other pipelines sharing the same Kafka and Postgres.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from app.core.config import psycopg_conninfo
from app.ledger.scope import forget_pipeline


@dataclass(frozen=True, slots=True)
class Scope:
    pipeline_id: str
    events_topic: str
    dlq_topic: str
    data_dir: Path  # .data/bench-<run>/<name>: ClickHouse path, state, anything local
    bootstrap: str
    database_url: str

    @classmethod
    def create(
        cls,
        run_id: str,
        name: str,
        data_root: Path,
        bootstrap: str,
        database_url: str,
        events_topic: str | None = None,
    ) -> Scope:
        pid = f"{run_id}-{name}"
        return cls(
            pid,
            events_topic or f"{pid}.events",
            f"{pid}.dlq",
            data_root / run_id / name,
            bootstrap,
            database_url,
        )

    @property
    def clickhouse_url(self) -> str:
        return f"chdb://{self.data_dir / 'clickhouse'}"

    def env(self) -> dict[str, str]:
        return {
            "PIPELINE_ID": self.pipeline_id,
            "EVENTS_TOPIC": self.events_topic,
            "DLQ_TOPIC": self.dlq_topic,
            "CLICKHOUSE_URL": self.clickhouse_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "DATABASE_URL": self.database_url,
        }

    # ---- teardown ----------------------------------------------------------

    def drop(self, *, topics: bool = True) -> None:
        """Delete this scope's ledger rows, local data and (optionally) its topics."""
        with psycopg.connect(psycopg_conninfo(self.database_url), autocommit=True) as conn:
            forget_pipeline(conn, self.pipeline_id)  # every pipeline_id table, from the catalog
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if topics:
            delete_topics(self.bootstrap, [self.events_topic, self.dlq_topic])

    # ---- ledger reads ------------------------------------------------------

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with psycopg.connect(psycopg_conninfo(self.database_url), autocommit=True) as conn:
            return list(conn.execute(sql, params))

    def checkpoints(self) -> list[Checkpoint]:
        return [
            Checkpoint(int(r[0]), r[1].timestamp(), int(r[2]))
            for r in self._query(
                """SELECT checkpoint_id, created_at, records FROM ledger_checkpoint
               WHERE pipeline_id = %s ORDER BY checkpoint_id""",
                (self.pipeline_id,),
            )
        ]

    def batches(self) -> list[Batch]:
        return [
            Batch(
                int(r[0]),
                int(r[1]),
                r[2],
                int(r[3]),
                r[4].timestamp(),
                None if r[5] is None else r[5].timestamp(),
                tuple((int(p), int(a), int(b)) for p, a, b in r[6]),
                int(r[7]),
            )
            for r in self._query(
                """SELECT batch_id, checkpoint_id, table_name, row_count, created_at, acked_at,
                              offset_ranges, insert_attempts
                       FROM sink_batch WHERE pipeline_id = %s ORDER BY checkpoint_id, table_name""",
                (self.pipeline_id,),
            )
        ]

    def insert_groups(self) -> list[tuple[str, int, float | None]] | None:
        """(table, rows, acked_at) per coalesced sink insert, or None when the ledger has no
        sink_group table (a sink that inserts one batch at a time)."""
        exists = self._query("SELECT to_regclass('sink_group') IS NOT NULL", ())[0][0]
        if not exists:
            return None
        return [
            (r[0], int(r[1]), None if r[2] is None else r[2].timestamp())
            for r in self._query(
                """SELECT table_name, row_count, acked_at FROM sink_group WHERE pipeline_id = %s
               ORDER BY seq""",
                (self.pipeline_id,),
            )
        ]

    def ledger_progress(self) -> tuple[int, int]:
        """(sum of next_offset over partitions, rows pending for the sink)."""
        rows = self._query(
            """SELECT (SELECT coalesce(sum(next_offset), 0) FROM partition_state WHERE pipeline_id = %s),
                      (SELECT coalesce(sum(row_count), 0) FROM sink_batch
                        WHERE pipeline_id = %s AND status = 'pending')""",
            (self.pipeline_id, self.pipeline_id),
        )
        return int(rows[0][0]), int(rows[0][1])


@dataclass(frozen=True, slots=True)
class Checkpoint:
    checkpoint_id: int
    created_at: float  # epoch s; Postgres now() = start of the commit transaction
    records: int


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: int
    checkpoint_id: int
    table_name: str
    row_count: int
    created_at: float
    acked_at: float | None
    offset_ranges: tuple[tuple[int, int, int], ...]  # (partition, from_offset, next_offset)
    insert_attempts: int


# ---- Kafka helpers ----------------------------------------------------------


def delete_topics(bootstrap: str, names: list[str], timeout_s: float = 30.0) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    existing = admin.list_topics(timeout=10).topics
    doomed = sorted({t for t in names if t in existing})  # a duplicate name crashes librdkafka
    if not doomed:
        return
    for fut in admin.delete_topics(doomed).values():
        try:
            fut.result()
        except Exception:  # already gone, or being deleted: the wait below settles it
            pass
    deadline = time.monotonic() + timeout_s
    while any(t in admin.list_topics(timeout=10).topics for t in doomed) and time.monotonic() < deadline:
        time.sleep(0.3)


def list_topics(bootstrap: str, prefix: str) -> list[str]:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    return sorted(t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix))


class EndOffsets:
    """Kafka high watermarks of a topic, read repeatedly with one client."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "bench-offsets",
                "enable.auto.commit": False,
                "log_level": 0,
            }
        )
        md = self.consumer.list_topics(topic, timeout=10)
        self.partitions = sorted(md.topics[topic].partitions)

    def read(self) -> dict[int, int]:
        return {
            p: int(
                self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5, cached=False)[1]
            )
            for p in self.partitions
        }

    def close(self) -> None:
        self.consumer.close()


def sample_stride(total: int, at_most: int | None) -> int:
    """Keep every k-th offset so that about `at_most` of `total` records are kept (1: all);
    at most one more per partition, as each partition's offsets start at 0."""
    if at_most is None or total <= at_most:
        return 1
    return -(-total // max(at_most, 1))


def record_timestamps(
    bootstrap: str, topic: str, ends: dict[int, int], *, at_most: int | None = 5_000_000
) -> dict[int, tuple[list[int], list[int]]]:
    """(offset, CreateTime ms) per partition of the records before `ends`, read back after a
    run: every record, or every k-th offset (sample_stride) once there are more than
    `at_most`, so a 30-minute run's latency split needs bounded memory (a Python int pair
    per record is ~70 bytes: 250M records would need 17 GB). Every offset of a partition is
    equally likely to be kept, so the quantiles are those of a uniform sample."""
    from confluent_kafka import OFFSET_BEGINNING

    stride = sample_stride(sum(ends.values()), at_most)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-ts-{time.time_ns()}",
            "enable.auto.commit": False,
            "log_level": 0,
            "fetch.max.bytes": 64 << 20,
            "max.partition.fetch.bytes": 8 << 20,
        }
    )
    out: dict[int, tuple[list[int], list[int]]] = {p: ([], []) for p in ends}
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p, e in ends.items() if e > 0])
        remaining = sum(ends.values())
        deadline = time.monotonic() + max(600.0, remaining / 100_000)  # reading back runs at ~1M/s
        while remaining > 0 and time.monotonic() < deadline:
            for m in consumer.consume(10_000, timeout=0.5):
                if m.error() is not None:
                    continue
                p, off = m.partition(), m.offset()
                if off >= ends.get(p, 0):
                    continue
                remaining -= 1
                if off % stride:
                    continue
                offs, tss = out[p]
                offs.append(off)
                tss.append(m.timestamp()[1])
    finally:
        consumer.close()
    return out
