"""Test helpers that talk to the real services (no mocks): produce records, read tables;
and the suite's one way to wait (`wait_for`) and to check a crash (`assert_crashed_at`).

The rule (enforced by tests/unit/test_no_fixed_sleeps.py): a test never sleeps a fixed time
and then asserts. It waits for the state it needs, read from the ledger, Kafka, a log or
a file, with a deadline and a message naming what it awaited; the only `time.sleep` in
tests/ is the polling interval below.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from app.clickhouse.client import connect
from app.core.kafka import ensure_topic, producer_config


def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes | None]], *,
            partitions: int = 1, partition: int | None = None) -> int:
    ensure_topic(bootstrap, topic, partitions)
    p = Producer(producer_config(bootstrap))
    n = 0
    for key, value in records:
        kwargs = {} if partition is None else {"partition": partition}
        p.produce(topic, value, key, **kwargs)
        n += 1
    assert p.flush(30) == 0
    return n


def read_topic(bootstrap: str, topic: str) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """Every record of the topic: (partition, offset, key, value)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False})
    md = c.list_topics(topic, timeout=10)
    out = []
    for p in md.topics[topic].partitions:
        low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        if high <= low:
            continue
        c.assign([TopicPartition(topic, p, low)])
        while True:
            msgs = c.consume(1000, timeout=5)
            assert msgs, f"timed out reading {topic}[{p}]"
            for m in msgs:
                out.append((m.partition(), m.offset(), m.key(), m.value()))
            if msgs[-1].offset() >= high - 1:
                break
        c.unassign()
    c.close()
    return out


def clickhouse_rows(url: str, table: str, *, final: bool) -> list[tuple]:  # type: ignore[type-arg]
    client = connect(url)
    try:
        q = (f"SELECT toUInt32(window_start), account_id, country, event_count, toString(sum_amount), version "
             f"FROM {table} {'FINAL' if final else ''} ORDER BY 1, 2, 3, 6")
        return [tuple(r) for r in client.query(q).result_rows]
    finally:
        client.close()


T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, *, interval: float = 0.05,
             detail: Callable[[], str] | None = None) -> T:
    """Poll `predicate` until it returns something truthy and return that; after `timeout`
    seconds fail with `what` (say what was awaited: it is the whole failure message), and
    `detail()` if given (e.g. the tail of a process's log).
    A predicate may raise AssertionError itself, e.g. when a process it needs has died."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}"
                                 + ("" if detail is None else f":\n{detail()}"))
        time.sleep(interval)


def observe_for(seconds: float, interval: float) -> Iterator[float]:
    """Yield the elapsed time every `interval` for `seconds`: for a test whose subject IS a
    duration (e.g. the sink is stopped for 60 s) and that samples the system meanwhile.
    Never use it to wait for a state: that is `wait_for`."""
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        yield elapsed
        time.sleep(interval)


def log_events(stderr: str, *events: str) -> list[dict[str, Any]]:
    """The JSON log lines of the given events, in order. A last line without its newline is
    still being written (a running process's log file) and is left for the next read."""
    out = []
    for line in stderr.split("\n")[:-1]:  # the piece after the last newline is not a whole line yet
        if line.startswith("{") and any(f'"{event}"' in line for event in events):
            obj = json.loads(line)
            if obj.get("event") in events:
                out.append(obj)
    return out


def sigterm_and_time(proc: subprocess.Popen[bytes], timeout: float = 60) -> float:
    """SIGTERM `proc` and wait for it to exit: the seconds that took, measured, for tests
    that assert a stop budget. One that outlives `timeout` is killed and the test fails."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        name = " ".join(map(str, proc.args[2:4]))
        raise AssertionError(f"{name} ignored SIGTERM for {timeout:g} s") from None
    return time.monotonic() - started


def free_port() -> int:
    """A TCP port nothing listens on right now (for a server the test starts, or a closed port).

    Picked at random below the kernel's ephemeral range (32768+ here), not by binding port 0:
    a port from that range can be taken by any outgoing connection (Kafka, Postgres clients
    of the other test worker) before the test's server binds it, which failed a run once."""
    for _ in range(200):
        port = random.randrange(20_000, 32_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port in 20000-32000")


def assert_crashed_at(returncode: int | None, stderr: str, point: str, nth: int | None = None) -> None:
    """The process was SIGKILLed by crash point `point` (its `nth` hit, if given): the
    `crash_point_reached` line app/core/faults.py writes just before the kill names it."""
    reached = log_events(stderr, "crash_point_reached")
    assert returncode == -signal.SIGKILL and reached, \
        f"expected a crash at {point}, got exit {returncode}; stderr:\n{stderr[-3000:]}"
    assert reached[-1]["crash_point"] == point, reached
    if nth is not None:
        assert reached[-1]["nth"] == nth, reached


def topic_end(bootstrap: str, topic: str, *, not_ready_ok: bool = False) -> int:
    """Records in the topic (sum of its partitions' high watermarks). With `not_ready_ok`,
    0 while the topic does not exist or a partition has no reachable leader (a new topic, a
    broker just killed): for use inside `wait_for`, which polls until the answer is real."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False,
                  "log_level": 0 if not_ready_ok else 3})
    try:
        md = c.list_topics(topic, timeout=10)
        if topic not in md.topics or md.topics[topic].error is not None:
            if not_ready_ok:
                return 0
            raise AssertionError(f"topic {topic} not found: {md.topics.get(topic)}")
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in md.topics[topic].partitions)
    except KafkaException:
        if not_ready_ok:
            return 0
        raise
    finally:
        c.close()
