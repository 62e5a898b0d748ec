"""A checkpoint commits only once every DLQ record it counts is acknowledged (issue 9, item 3).

On a 3-broker cluster of the test's own, the events topic is replicated (3 replicas, min
ISR 2) and the DLQ topic has one replica, on node 3, which is killed before the processor
starts: the processor reads on, but no DLQ record can be delivered. The outage lasts
several times the producer's delivery timeout (`--dlq-delivery-timeout 2s`), so records
fail and must be sent again. Before the fix the first failure was reported once, the
failed list cleared, and the retried flush passed on an empty queue: the checkpoint
committed counts for records that never reached Kafka.

Every checkpoint here counts DLQ records (each partition starts with an invalid record),
so no checkpoint may commit while node 3 is down; once it is back, the run ends, and the
DLQ topic's distinct identities equal the ledger's counts (and verify, which now reads
the DLQ topic, is exact)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from app.core.kafka import ensure_topic, producer_config
from tests.conftest import Pipeline, isolated_pipeline
from tests.helpers import log_events, read_topic, wait_for
from tests.kafka_cluster import KafkaCluster, kafka_cluster

T0 = 1_763_596_800_000
DLQ_NODE = 3
PARTITIONS = 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    with kafka_cluster(tmp_path_factory, brokers=3) as c:
        yield c


@pytest.fixture
def pipeline_c(cluster: KafkaCluster, postgres: str, tmp_path: Path) -> Iterator[Pipeline]:
    with isolated_pipeline(cluster.bootstrap, postgres, tmp_path) as p:
        yield p


def ev(i: int, account: int, t: int) -> bytes:
    return json.dumps({"event_id": f"e-{i}", "account_id": account, "country": "DE", "event_time": t,
                       "amount": i, "kind": "purchase"}).encode()


def _input() -> tuple[list[tuple[int, bytes, bytes]], Counter[str]]:
    """Per partition: an invalid record first, then 300 events of 10 accounts one second
    apart, of which 4 are 3 minutes behind (late for their minute, folded into the hour)."""
    records: list[tuple[int, bytes, bytes]] = []
    expected: Counter[str] = Counter()
    for p in range(PARTITIONS):
        records.append((p, b"%d" % (p * 100), b"not json"))
        expected["invalid/"] += 1
        for i in range(300):
            acc = p * 100 + i % 10
            t = T0 + 1_000 * i
            if i and i % 30 == 0 and t - 180_000 >= T0:
                t -= 180_000
                expected["late/minute"] += 1
            records.append((p, b"%d" % acc, ev(i, acc, t)))
    return records, expected


def _ledger(p: Pipeline) -> tuple[int, dict[str, int]]:
    with p.ledger() as conn:
        (checkpoints,) = conn.execute("SELECT count(*) FROM ledger_checkpoint WHERE pipeline_id = %s",
                                      (p.pipeline_id,)).fetchone()  # type: ignore[misc]
        counts = dict(conn.execute(
            "SELECT reason || '/' || window_kind, sum(count)::bigint FROM dlq_count WHERE pipeline_id = %s "
            "GROUP BY 1", (p.pipeline_id,)).fetchall())
    return int(checkpoints), counts


def test_no_checkpoint_while_its_dlq_records_are_unacknowledged(cluster: KafkaCluster,
                                                                 pipeline_c: Pipeline) -> None:
    p = pipeline_c
    admin = AdminClient({"bootstrap.servers": p.bootstrap, "log_level": 0})
    # the DLQ topic's only replica lives on the node we take down
    admin.create_topics([NewTopic(p.dlq_topic, num_partitions=1, replica_assignment=[[DLQ_NODE]])])[p.dlq_topic].result(timeout=30)
    ensure_topic(p.bootstrap, p.topic, PARTITIONS)
    records, expected = _input()
    cluster.node_kill(DLQ_NODE)
    cluster.wait_leaders_without(p.topic, DLQ_NODE)
    producer = Producer(producer_config(p.bootstrap))
    for partition, key, value in records:
        producer.produce(p.topic, value, key, partition=partition)
    assert producer.flush(60) == 0

    proc = p.start("app.processor", "--until-end", "--batch-max-wait", "0.1s", "--dlq-delivery-timeout", "2s",
                   "--log-level", "info")

    def three_failed_flushes_and_no_checkpoint() -> bool:
        # Three failed flushes take at least three delivery timeouts; all along, the ledger
        # must not commit a checkpoint (each one would count DLQ records not in Kafka).
        p.alive(proc)
        checkpoints, _ = _ledger(p)
        relevant = [line for line in p.log(proc).splitlines() if "dlq" in line or "checkpoint" in line]
        assert checkpoints == 0, ("a checkpoint committed while its DLQ records were unacknowledged:\n"
                                  + "\n".join(relevant)[-4000:])
        failed = [r for r in log_events(p.log(proc), "service_retry") if r.get("what") == "kafka_dlq_flush"]
        return len(failed) >= 3

    try:
        wait_for(three_failed_flushes_and_no_checkpoint, 120,
                 "3 failed DLQ flushes with no checkpoint committed", interval=0.1,
                 detail=lambda: p.log(proc)[-4000:])
    finally:
        cluster.node_start(DLQ_NODE)
    assert proc.wait(timeout=180) == 0, p.log(proc)[-4000:]
    assert log_events(p.log(proc), "dlq_resent"), "the failed DLQ records were never sent again"
    checkpoints, counts = _ledger(p)
    assert checkpoints >= 1 and counts == dict(expected)

    docs = [orjson.loads(v) for _, _, _, v in read_topic(p.bootstrap, p.dlq_topic)]
    distinct = {(d["source_partition"], d["source_offset"], d["reason"], d["window_kind"]) for d in docs}
    assert Counter(f"{r}/{k or ''}" for _, _, r, k in distinct) == expected
    p.sink()
    res = p.verify()
    assert res.returncode == 0 and "EXACT" in res.stdout, res.stdout[-4000:]
