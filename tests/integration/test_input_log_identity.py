"""Issue 9, items 7 and 8 (partition count): the processor reads the log its ledger read, or stops.

- records deleted (delete-records, as retention does) below the ledger's next offset while
  the processor was down: refused at assignment, nothing skipped;
- the same while it runs, paused by backpressure: the fetch out of range stops it
  (`auto.offset.reset=error`), instead of a silent jump to the log's new start;
- the topic deleted and created again, with fewer and with more records than the ledger's
  offset: refused by its Kafka topic id, recorded in the ledger with the rules;
- partitions added to the topic: refused by the partition count recorded in the ledger.

Each failed on main (6e6c674), where the processor exited 0 (or kept running) after skipping
or discarding records; passed since the commit that adds app/processor/log_guard.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import NewPartitions

from app.core.kafka import admin, topic_identity
from tests.conftest import Pipeline
from tests.helpers import produce, read_topic, wait_for

T0 = 1_763_596_800_000  # 2025-11-20T00:00:00Z


def events(first: int, n: int, accounts: int = 7) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(first, first + n):
        acc = i % accounts
        out.append((str(acc).encode(), json.dumps({
            "event_id": f"e-{i}", "account_id": acc, "country": "DE", "event_time": T0 + i * 1_000,
            "amount": i, "kind": "purchase"}).encode()))
    return out


def error_line(res: Any) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("processor: error:")]
    assert len(lines) == 1, f"expected one error line, exit {res.returncode}:\n{res.stderr[-4000:]}"
    return lines[0]


def offsets(p: Pipeline) -> dict[int, int]:
    with p.ledger() as conn:
        return dict(conn.execute("SELECT partition, next_offset FROM partition_state WHERE pipeline_id = %s",
                                 (p.pipeline_id,)).fetchall())


def checkpoints(p: Pipeline) -> int:
    with p.ledger() as conn:
        return int(conn.execute("SELECT count(*) FROM ledger_checkpoint WHERE pipeline_id = %s",
                                (p.pipeline_id,)).fetchone()[0])  # type: ignore[index]


def counts(p: Pipeline) -> dict[int, int]:
    out: dict[int, int] = {}
    for part, _o, _k, _v in read_topic(p.bootstrap, p.topic):
        out[part] = out.get(part, 0) + 1
    return out


def delete_records(p: Pipeline, partition: int, before: int) -> None:
    client = admin(p.bootstrap)  # keep a reference: a collected client never resolves its futures
    for f in client.delete_records([TopicPartition(p.topic, partition, before)]).values():
        f.result(timeout=30)


def log_start(p: Pipeline, partition: int) -> int:
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": p.bootstrap, "group.id": "log-start-probe"})
    try:
        low, _high = c.get_watermark_offsets(TopicPartition(p.topic, partition), timeout=10)
        return int(low)
    finally:
        c.close()


def test_records_deleted_below_the_ledger_offset_while_down_are_refused(pipeline: Pipeline) -> None:
    p = pipeline
    produce(p.bootstrap, p.topic, events(0, 14), partitions=2)
    p.processor()
    done = offsets(p)
    assert done == counts(p) and all(done.values()), done

    # retention of records the pipeline has read is no loss: it goes on
    delete_records(p, 0, done[0])
    produce(p.bootstrap, p.topic, events(14, 14), partitions=2)
    p.processor()
    done = offsets(p)
    total = counts(p)
    assert done[0] == log_start(p, 0) + total[0] and done[1] == total[1], (done, total)

    # records it has not read are deleted while it is down: refused, nothing skipped
    produce(p.bootstrap, p.topic, events(28, 14), partitions=2)
    grown = log_start(p, 0) + counts(p)[0]
    assert grown >= done[0] + 3, "partition 0 got too few new records for the test"
    delete_records(p, 0, done[0] + 2)
    before = checkpoints(p)
    res = p.processor(check=False)
    assert res.returncode == 2, res.stderr[-4000:]
    line = error_line(res)
    assert f"{p.topic}[0] now starts at offset {done[0] + 2}" in line, line
    assert f"records [{done[0]}, {done[0] + 2}) were deleted" in line, line
    assert offsets(p) == done and checkpoints(p) == before, "a refused start committed something"


@pytest.mark.parametrize("records_after", [4, 16], ids=["fewer-than-the-ledger-offset", "more"])
def test_a_topic_deleted_and_created_again_is_refused(pipeline: Pipeline, records_after: int) -> None:
    p = pipeline
    produce(p.bootstrap, p.topic, events(0, 10), partitions=1)
    p.processor()
    assert offsets(p) == {0: 10}
    client = admin(p.bootstrap)
    old = topic_identity(client, p.topic)
    for f in client.delete_topics([p.topic]).values():
        f.result(timeout=30)
    wait_for(lambda: topic_identity(client, p.topic) is None, 60, "the deleted topic to disappear",
             interval=0.3)
    produce(p.bootstrap, p.topic, events(100, records_after), partitions=1)
    new = topic_identity(client, p.topic)
    assert old is not None and new is not None and new.topic_id != old.topic_id and new.topic_id
    before = checkpoints(p)

    res = p.processor(check=False)
    assert res.returncode == 2, res.stderr[-4000:]
    line = error_line(res)
    assert f"its topic id is {new.topic_id}, not {old.topic_id}" in line, line
    assert offsets(p) == {0: 10} and checkpoints(p) == before


def test_added_partitions_are_refused(pipeline: Pipeline) -> None:
    p = pipeline
    produce(p.bootstrap, p.topic, events(0, 10), partitions=2)
    p.processor()
    done = offsets(p)
    client = admin(p.bootstrap)
    for f in client.create_partitions([NewPartitions(p.topic, 3)]).values():
        f.result(timeout=30)
    assert topic_identity(client, p.topic).partitions == 3  # type: ignore[union-attr]
    produce(p.bootstrap, p.topic, events(10, 10), partitions=3)

    res = p.processor(check=False)
    assert res.returncode == 2, res.stderr[-4000:]
    line = error_line(res)
    assert f"topic '{p.topic}' has 3 partitions, not 2" in line and "split" in line, line
    assert offsets(p) == done


def test_records_deleted_ahead_of_a_running_processor_stop_it(pipeline: Pipeline) -> None:
    """Paused by backpressure (no sink yet) at offset 10, the processor has not fetched the
    next records when they are deleted; once the sink drains the ledger it resumes, and the
    fetch falls before the log's new start: it must stop there, not jump ahead."""
    p = pipeline
    produce(p.bootstrap, p.topic, events(0, 10), partitions=1)
    proc = p.start("app.processor", "--max-pending-rows", "1", "--batch-max-wait", "0.2s")
    wait_for(lambda: p.logged(proc, "backpressure_paused"), 60,
             "the processor pausing for backpressure")
    assert offsets(p) == {0: 10}
    produce(p.bootstrap, p.topic, events(10, 10), partitions=1)
    delete_records(p, 0, 15)
    assert offsets(p) == {0: 10}, "the paused processor read on"

    sink = p.start("app.sink")
    try:
        wait_for(lambda: p.alive(sink) and proc.poll() is not None, 60,
                 "the processor to stop at the deleted records", interval=0.2,
                 detail=lambda: p.log(proc)[-3000:])
    finally:
        sink.terminate()
        sink.wait(timeout=60)
    assert proc.returncode == 2, p.log(proc)[-3000:]
    err = [s for s in p.log(proc).splitlines() if s.startswith("processor: error:")]
    assert len(err) == 1 and f"{p.topic}[0] now starts at offset 15" in err[0] \
        and "records [10, 15) were deleted" in err[0], p.log(proc)[-3000:]
    assert offsets(p) == {0: 10}, "records past the deleted ones were committed"
