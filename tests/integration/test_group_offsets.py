"""Lag in Kafka's own tools (issue 14, item 4): after each checkpoint the processor
publishes the ledger's committed next offsets to its consumer group, so
`kafka-consumer-groups.sh --describe` (and Burrow, kafka-exporter) shows the pipeline's
lag. Advisory only: a restart resumes from the ledger even when the group's offsets are
wrong, behind (would count records twice) or ahead (would skip records)."""

from __future__ import annotations

import os
import subprocess

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from tests.conftest import REPO, Pipeline
from tests.helpers import topic_end

GEN = ("--accounts", "300", "--partitions", "2", "--late-fraction", "0.05", "--invalid-fraction", "0.02",
       "--event-time-rate", "100")


def group_offsets(p: Pipeline) -> dict[int, int]:
    admin = AdminClient({"bootstrap.servers": p.bootstrap, "log_level": 0})
    result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(p.pipeline_id)])[p.pipeline_id]
    return {tp.partition: tp.offset for tp in result.result(timeout=30).topic_partitions if tp.topic == p.topic}


def ledger_offsets(p: Pipeline) -> dict[int, int]:
    with p.ledger() as conn:
        return {int(r[0]): int(r[1]) for r in conn.execute(
            "SELECT partition, next_offset FROM partition_state WHERE pipeline_id = %s", (p.pipeline_id,))}


def log_ends(p: Pipeline) -> dict[int, int]:
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": p.bootstrap, "group.id": "test-reader", "log_level": 0})
    try:
        return {tp: c.get_watermark_offsets(TopicPartition(p.topic, tp), timeout=10)[1] for tp in (0, 1)}
    finally:
        c.close()


def kafka_consumer_groups_describe(p: Pipeline) -> dict[int, tuple[int, int, int]]:
    """Kafka's own `kafka-consumer-groups.sh --describe`, as infra/kafka.sh runs it for an
    operator: partition -> (current offset, log end, lag)."""
    res = subprocess.run([str(REPO / "infra" / "kafka.sh"), "consumer-groups", "--describe", "--group", p.pipeline_id],
                         env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": p.bootstrap}, capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = {}
    for line in res.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 6 and cols[1] == p.topic:
            rows[int(cols[2])] = (int(cols[3]), int(cols[4]), int(cols[5]))
    return rows


def test_kafka_tools_show_the_pipelines_lag_after_a_run(pipeline: Pipeline) -> None:
    p = pipeline
    p.gen(*GEN, "--seed", "1", "--events", "800")
    p.processor("--batch-max-wait", "0.1s")
    assert group_offsets(p) == ledger_offsets(p) and sum(ledger_offsets(p).values()) == 800
    p.gen(*GEN, "--seed", "2", "--events", "300")  # not read yet: the lag Kafka's tools must show
    ends = log_ends(p)
    assert sum(ends.values()) == 1100
    committed = ledger_offsets(p)
    described = kafka_consumer_groups_describe(p)
    assert described == {q: (committed[q], ends[q], ends[q] - committed[q]) for q in ends}, described
    admin_lag = {q: ends[q] - o for q, o in group_offsets(p).items()}
    assert sum(admin_lag.values()) == 300, admin_lag


def test_a_restart_resumes_from_the_ledger_whatever_the_group_offsets_say(pipeline: Pipeline) -> None:
    p = pipeline
    p.gen(*GEN, "--seed", "3", "--events", "800")
    p.processor("--batch-max-wait", "0.1s")
    before = ledger_offsets(p)
    assert group_offsets(p) == before
    # wrong on purpose: partition 0 back to the start (trusting it would count records twice),
    # partition 1 past the log end (trusting it would skip the records produced next)
    wrong = {0: 0, 1: before[1] + 10_000}
    admin = AdminClient({"bootstrap.servers": p.bootstrap, "log_level": 0})
    future = admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(
        p.pipeline_id, [TopicPartition(p.topic, q, o) for q, o in wrong.items()])])[p.pipeline_id]
    future.result(timeout=30)
    assert group_offsets(p) == wrong
    p.gen(*GEN, "--seed", "4", "--events", "400")
    p.processor("--batch-max-wait", "0.1s")
    assert sum(ledger_offsets(p).values()) == topic_end(p.bootstrap, p.topic) == 1200
    assert group_offsets(p) == ledger_offsets(p)  # published again from the ledger
    p.sink()
    res = p.verify()
    assert res.returncode == 0 and "EXACT" in res.stdout, res.stdout[-3000:]
