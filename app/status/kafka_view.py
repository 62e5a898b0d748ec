"""What Kafka says about the input: each partition's log end and, where the ledger is
behind, the timestamp of the first record it has not read (so lag has an age). Read with
a consumer that only assigns partitions: it joins no group and commits nothing."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, TopicPartition

from app.core.kafka import client_config, topic_partitions, watermark_offsets


@dataclass(frozen=True, slots=True)
class KafkaView:
    log_ends: dict[int, int]                 # partition -> high watermark (next offset to be written)
    next_record_ms: dict[int, int]           # partition -> timestamp of the record at the ledger's next offset


def read(bootstrap: str, topic: str, pipeline_id: str, next_offsets: Mapping[int, int], *,
         timeout_s: float = 5.0) -> KafkaView:
    """RetryableError when Kafka cannot answer; TopicNotFound when the topic does not exist."""
    consumer = Consumer(client_config(bootstrap, **{"group.id": f"{pipeline_id}.status",
                                                    "enable.auto.commit": False, "enable.partition.eof": False}))
    try:
        ends = {p: watermark_offsets(consumer, topic, p, timeout_s)[1]
                for p in topic_partitions(consumer, topic, timeout_s=timeout_s)}
        behind = {p: next_offsets.get(p, 0) for p, end in ends.items() if next_offsets.get(p, 0) < end}
        return KafkaView(ends, _first_unread_timestamps(consumer, topic, behind, timeout_s))
    finally:
        consumer.close()


def _first_unread_timestamps(consumer: Consumer, topic: str, offsets: Mapping[int, int],
                             timeout_s: float) -> dict[int, int]:
    if not offsets:
        return {}
    consumer.assign([TopicPartition(topic, p, o) for p, o in offsets.items()])
    found: dict[int, int] = {}
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < len(offsets) and time.monotonic() < deadline:
        for m in consumer.consume(len(offsets), timeout=0.5):
            p = m.partition()
            if m.error() is None and p is not None and p not in seen:
                seen.add(p)
                kind, ts = m.timestamp()
                if kind != TIMESTAMP_NOT_AVAILABLE:
                    found[p] = ts
                consumer.pause([TopicPartition(topic, p)])
    return found
