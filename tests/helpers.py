"""Test helpers that talk to the real services (no mocks): produce records, read tables."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import Consumer, Producer, TopicPartition

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
