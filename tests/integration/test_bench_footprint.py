"""Disk bytes per event of the sustained run (experiments/benchkit/footprint.py), read from
the real stores of a short pipeline run: the topic's segments in the broker's own log dirs,
this pipeline's ledger rows and the WAL, the embedded ClickHouse's parts."""

from __future__ import annotations

from app.clickhouse.client import connect
from experiments.benchkit import footprint as fp
from tests.conftest import Pipeline


def test_each_store_reports_this_pipelines_bytes_only(pipeline: Pipeline) -> None:
    p = pipeline
    wal_start = fp.wal_position(p.database_url)
    p.gen("--seed", "5", "--events", "4000", "--partitions", "2")
    kafka = fp.kafka_topic_bytes(p.bootstrap, p.topic)
    assert kafka is not None
    # lz4 batches of ~80-byte JSON events: more than 10 bytes and less than 200 per event
    assert 10 * 4000 < kafka["log"] < 200 * 4000 and kafka["allocated"] >= kafka["log"]
    assert fp.kafka_topic_bytes(p.bootstrap, p.topic + "-none") is None

    assert fp.ledger_bytes(p.database_url, p.pipeline_id) == {}
    p.run("app.processor", "--until-end")
    ledger = fp.ledger_bytes(p.database_url, p.pipeline_id)
    assert ledger["sink_batch"] > 0 and ledger["ledger_checkpoint"] > 0
    assert fp.wal_bytes_since(p.database_url, wal_start) >= sum(ledger.values()) // 2  # rows written once, at least

    p.run("app.sink", "--until-idle")
    parts = fp.clickhouse_parts(connect(p.clickhouse_url).query(fp.CLICKHOUSE_PARTS).result_rows)
    assert parts["rollup_minute"]["rows"] > 0 and parts["rollup_hour"]["bytes_on_disk"] > 0
