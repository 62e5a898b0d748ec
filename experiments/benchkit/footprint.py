"""Disk bytes a run left in each store, for bytes per event (issue 12: the 1B-event plan).

Kafka: the topic's segment files in the brokers' log dirs (each broker names them in its
`log.dirs` config), when those are on this machine; confluent-kafka's admin API has no
describe-log-dirs. Postgres: the bytes of this pipeline's ledger rows still held (retention
prunes acknowledged payloads as the run goes) and the WAL written meanwhile, which is what
every event cost Postgres to write. ClickHouse: the active parts of each table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka.admin import ConfigResource
from psycopg import sql

from app.core.config import psycopg_conninfo
from app.core.kafka import admin as kafka_admin
from app.ledger.scope import pipeline_tables


def kafka_log_dirs(bootstrap: str) -> list[Path]:
    """Every broker's `log.dirs` as the brokers report them, those on this machine only."""
    admin = kafka_admin(bootstrap)
    brokers = admin.list_topics(timeout=10).brokers
    dirs: list[Path] = []
    for b in brokers:
        for f in admin.describe_configs([ConfigResource(ConfigResource.Type.BROKER, str(b))]).values():
            entry = f.result(timeout=10).get("log.dirs")
            if entry is not None and entry.value:
                dirs += [Path(d) for d in entry.value.split(",") if Path(d).is_dir()]
    return dirs


def kafka_topic_bytes(bootstrap: str, topic: str) -> dict[str, int] | None:
    """The topic's partition directories over every local broker (replicas included):
    `log` = the record batches (.log segments), `allocated` = disk blocks of every file
    (the index files are preallocated sparse at 10 MB each, so their size says little).
    None when no log dir on this machine holds the topic (a remote cluster)."""
    dirs = [d for root in kafka_log_dirs(bootstrap) for d in root.iterdir()
            if d.is_dir() and d.name.rpartition("-")[0] == topic]
    if not dirs:
        return None
    files = [f for d in dirs for f in d.iterdir() if f.is_file()]
    return {"log": sum(f.stat().st_size for f in files if f.suffix == ".log"),
            "allocated": sum(f.stat().st_blocks * 512 for f in files)}


def wal_position(database_url: str) -> str:
    with psycopg.connect(psycopg_conninfo(database_url), autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def wal_bytes_since(database_url: str, start: str) -> int:
    """WAL Postgres wrote since `start` (every writer's: the run should be alone)."""
    with psycopg.connect(psycopg_conninfo(database_url), autocommit=True) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)::bigint", (start,)).fetchone()
    assert row is not None
    return int(row[0])


def ledger_bytes(database_url: str, pipeline_id: str) -> dict[str, int]:
    """Per ledger table, the bytes of this pipeline's rows (pg_column_size of the row: the
    stored, possibly compressed size, without indexes)."""
    out: dict[str, int] = {}
    with psycopg.connect(psycopg_conninfo(database_url), autocommit=True) as conn:
        for table in pipeline_tables(conn):
            row = conn.execute(sql.SQL("SELECT coalesce(sum(pg_column_size(t.*)), 0)::bigint FROM {} t "
                                       "WHERE pipeline_id = %s").format(sql.Identifier(table)),
                               (pipeline_id,)).fetchone()
            if row is not None and row[0]:
                out[table] = int(row[0])
    return out


CLICKHOUSE_PARTS = ("SELECT table, sum(rows), sum(bytes_on_disk), sum(data_compressed_bytes), "
                    "sum(data_uncompressed_bytes) FROM system.parts "
                    "WHERE active AND database = currentDatabase() GROUP BY table ORDER BY table")


def clickhouse_parts(rows: list[list[Any]]) -> dict[str, dict[str, int]]:
    """The result of CLICKHOUSE_PARTS, per table."""
    return {str(r[0]): {"rows": int(r[1]), "bytes_on_disk": int(r[2]), "compressed": int(r[3]),
                        "uncompressed": int(r[4])} for r in rows}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def per_event(total: int | None, events: int) -> float | None:
    return None if total is None or events <= 0 else round(total / events, 2)
