"""`python -m app.gen` against a real Kafka: determinism of what lands in each partition.

Needs a broker on KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092); skipped otherwise.
Every test writes to fresh uuid-named topics and deletes them afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from app.core.config import REPO_ROOT
from app.gen.invalid import INVALID_CLASS_NAMES
from app.gen.model import GenSpec, chunk_columns, generate
from app.gen.partition import partition_for_key
from tests.helpers import topic_end, wait_for

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
Records = dict[int, list[tuple[bytes, bytes]]]


def _reachable(bootstrap: str) -> bool:
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=2):
                return True
        except (OSError, ValueError):
            continue
    return False


needs_kafka = pytest.mark.skipif(not _reachable(BOOTSTRAP),
                                 reason=f"no Kafka broker listening on {BOOTSTRAP} (KAFKA_BOOTSTRAP_SERVERS)")


@pytest.fixture
def topics() -> Iterator[list[str]]:
    created: list[str] = []
    yield created
    if created and _reachable(BOOTSTRAP):
        admin = AdminClient({"bootstrap.servers": BOOTSTRAP})  # keep a reference until the futures resolve
        for future in admin.delete_topics(created, operation_timeout=10).values():
            try:
                future.result(timeout=15)
            except Exception:  # noqa: BLE001 - a topic the test never created; cleanup is best effort
                pass


def _new_topic(topics: list[str]) -> str:
    name = f"test-gen-{uuid.uuid4().hex}"
    topics.append(name)
    return name


def _gen_cmd(topic: str, *extra: str, bootstrap: str = BOOTSTRAP) -> list[str]:
    return [sys.executable, "-m", "app.gen", "--bootstrap-servers", bootstrap, "--events-topic", topic,
            *extra]


def _run_gen(topic: str, *extra: str, timeout: float = 120) -> dict[str, Any]:
    proc = subprocess.run(_gen_cmd(topic, *extra), cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return _log_event(proc.stderr, "gen_done")


def _log_event(stderr: str, event: str) -> dict[str, Any]:
    for line in stderr.splitlines():
        if line.startswith("{"):
            obj = json.loads(line)
            if obj.get("event") == event:
                return obj  # type: ignore[no-any-return]
    raise AssertionError(f"no {event} log line in:\n{stderr}")


def _read_topic(topic: str, expected: int, timeout_s: float = 60) -> Records:
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"test-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "log_level": 3})
    try:
        md = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in md.partitions])
        out: Records = {p: [] for p in md.partitions}
        got = 0
        deadline = time.monotonic() + timeout_s
        while got < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=10_000, timeout=1.0):
                assert msg.error() is None, msg.error()
                key, value, partition = msg.key(), msg.value(), msg.partition()
                assert key is not None and value is not None and partition is not None
                out[partition].append((key, value))
                got += 1
        # Nothing beyond what the generator reported.
        got += len(consumer.consume(num_messages=100, timeout=1.0))
        assert got == expected, f"read {got} records from {topic}, expected {expected}"
        return out
    finally:
        consumer.close()


def _by_partition(records: list[tuple[bytes, bytes]], partitions: int) -> Records:
    out: Records = {p: [] for p in range(partitions)}
    for key, value in records:
        out[partition_for_key(key, partitions)].append((key, value))
    return out


DATA_FLAGS = ("--seed", "9", "--events", "20000", "--accounts", "5000", "--invalid-fraction", "0.01",
              "--event-time-rate", "1000", "--partitions", "4")
SPEC = GenSpec(seed=9, events=20_000, accounts=5_000, invalid_fraction=0.01, event_time_rate=1000.0)


@needs_kafka
def test_same_seed_same_records_in_same_partition_order(topics: list[str]) -> None:
    a, b = _new_topic(topics), _new_topic(topics)
    done_a = _run_gen(a, *DATA_FLAGS)                        # as fast as possible
    done_b = _run_gen(b, *DATA_FLAGS, "--rate", "40000")     # paced: must not change the data
    assert done_a["events"] == done_b["events"] == 20_000
    read_a, read_b = _read_topic(a, 20_000), _read_topic(b, 20_000)
    assert read_a == read_b
    # ... and both are exactly the model's records, partitioned by Kafka's murmur2.
    assert read_a == _by_partition(generate(SPEC), 4)

    all_records = [r for part in read_a.values() for r in part]
    assert all(key and key.isascii() and key.isdigit() for key, _ in all_records)
    classes = np.concatenate([chunk_columns(SPEC, c).invalid_class for c in range(SPEC.chunks)])
    present = {INVALID_CLASS_NAMES[c] for c in classes[classes >= 0].tolist()}
    assert present == set(INVALID_CLASS_NAMES)
    assert done_a["invalid"] == int((classes >= 0).sum())


@needs_kafka
def test_existing_topic_is_accepted_with_its_partition_count(topics: list[str]) -> None:
    topic = _new_topic(topics)
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(timeout=30)
    spec = GenSpec(seed=3, events=3_000, accounts=500)
    done = _run_gen(topic, "--seed", "3", "--events", "3000", "--accounts", "500", "--partitions", "8")
    assert done["partitions"] == 2
    assert _read_topic(topic, 3_000) == _by_partition(generate(spec), 2)


def _timestamps(topic: str, expected: int, timeout_s: float = 60) -> list[int]:
    """CreateTime (ms) of every record: set by the client when the generator produced it."""
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"test-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "log_level": 3})
    try:
        md = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in md.partitions])
        out: list[int] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            out += [m.timestamp()[1] for m in consumer.consume(num_messages=10_000, timeout=1.0) if m.error() is None]
        return sorted(out)
    finally:
        consumer.close()


@needs_kafka
def test_a_paced_run_sends_steadily_at_its_rate(topics: list[str]) -> None:
    """The open model: records leave at the rate asked, spread over the run (in ticks of a
    few ms when ahead of the schedule, not in bursts that leave gaps)."""
    topic = _new_topic(topics)
    n, rate = 16_000, 8_000
    done = _run_gen(topic, "--seed", "4", "--accounts", "1000", "--events", str(n), "--rate", str(rate),
                    "--partitions", "2")
    assert done["events"] == n
    stamps = _timestamps(topic, n)
    assert len(stamps) == n
    span_s = (stamps[-1] - stamps[0]) / 1000
    assert n / rate * 0.9 <= span_s <= n / rate * 1.5, span_s
    per_half_second = np.bincount((np.array(stamps) - stamps[0]) // 500)
    assert per_half_second.min() > 0, per_half_second  # spread over the run, not sent in a few bursts


@needs_kafka
def test_sigterm_stops_flushes_and_exits_0(topics: list[str]) -> None:
    topic = _new_topic(topics)
    proc = subprocess.Popen(_gen_cmd(topic, "--seed", "5", "--accounts", "1000", "--events", "1000000",
                                     "--rate", "3000", "--event-time-rate", "1000"),
                            cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    # stopped while producing: once records are in Kafka, and long before the last one
    wait_for(lambda: topic_end(BOOTSTRAP, topic, not_ready_ok=True) >= 3000, 60,
             "the generator's first records in Kafka")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    done = _log_event(stderr, "gen_done")
    assert done["stopped"] is True and 0 < done["events"] < 1_000_000
    n = done["events"]
    spec = GenSpec(seed=5, accounts=1000, events=n, event_time_rate=1000.0)
    # What was acknowledged is exactly the first n records, each partition a prefix in order.
    assert _read_topic(topic, n) == _by_partition(generate(spec), 8)


@needs_kafka
def test_rejected_records_fail_loudly_with_exit_1(topics: list[str]) -> None:
    topic = _new_topic(topics)
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    # A broker-side size limit below one record: every delivery fails.
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1,
                                  config={"max.message.bytes": "200"})])[topic].result(timeout=30)
    proc = subprocess.run(_gen_cmd(topic, "--events", "500", "--accounts", "100"), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    failed = _log_event(proc.stderr, "gen_failed")
    assert failed["failed"] > 0 and "MSG_SIZE_TOO_LARGE" in failed["first_error"]


def test_unreachable_kafka_fails_with_a_clear_line() -> None:
    started = time.monotonic()
    proc = subprocess.run(_gen_cmd("unused", "--events", "10", "--connect-timeout", "1s",
                                   bootstrap="127.0.0.1:1"),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr  # docs/operations.md: unreachable past --service-timeout
    failed = _log_event(proc.stderr, "gen_failed")
    assert "127.0.0.1:1" in failed["error"] or failed["bootstrap"] == "127.0.0.1:1"
    assert time.monotonic() - started < 60
