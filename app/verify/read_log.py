"""Read the input topic partition by partition, from the first offset to the end seen at start.

Manual assign() only: verify never joins the pipeline's consumer group and never commits,
so it cannot disturb the processor. Records are handed out in offset order per partition
in large batches, so the truth can be computed without holding the log in memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from app.core.errors import FatalError, RetryableError
from app.core.kafka import consumer_config, watermark_offsets
from app.core.retry import retry_call

log = structlog.get_logger("verify.read_log")

BATCH = 10_000


@dataclass(frozen=True, slots=True)
class PartitionRange:
    partition: int
    low: int  # first offset still in the log
    high: int  # end offset seen at start (next offset to be written)

    @property
    def records(self) -> int:
        return self.high - self.low


def open_consumer(bootstrap: str, pipeline_id: str) -> Consumer:
    # EOF events tell us a partition is drained even when its last offsets are transaction
    # control records, which are never delivered as messages.
    return Consumer(consumer_config(bootstrap, f"{pipeline_id}-verify", **{"enable.partition.eof": True}))


def topic_partitions(consumer: Consumer, topic: str, *, timeout_s: float = 10.0) -> list[int]:
    """Partitions of `topic`; RetryableError when Kafka is unreachable, FatalError when the topic is missing."""
    try:
        md = consumer.list_topics(timeout=timeout_s)
    except KafkaException as e:
        raise RetryableError(f"Kafka metadata unavailable: {e}") from e
    if not md.brokers:
        raise RetryableError("Kafka metadata has no brokers")
    t = md.topics.get(topic)
    if t is None:
        raise FatalError(f"topic {topic!r} does not exist: nothing to recompute the truth from")
    if t.error is not None:
        raise RetryableError(f"topic {topic!r} metadata error: {t.error}")
    return sorted(t.partitions)


def partition_ranges(consumer: Consumer, topic: str, *, deadline_s: float = 30.0) -> list[PartitionRange]:
    """Offsets to read per partition. FatalError when retention has removed input: the truth
    needs every record from offset 0, and a partial log would silently give a wrong verdict."""
    partitions = retry_call(lambda: topic_partitions(consumer, topic), what="kafka_metadata",
                            deadline_s=deadline_s)
    ranges = []
    for p in partitions:
        low, high = retry_call(lambda p=p: watermark_offsets(consumer, topic, p), what="kafka_watermarks",
                               deadline_s=deadline_s)
        if low > 0:
            raise FatalError(
                f"{topic}[{p}] starts at offset {low}, not 0: retention removed input, so the ground "
                "truth cannot be recomputed from the log")
        ranges.append(PartitionRange(p, low, high))
    return ranges


def read_partition(consumer: Consumer, topic: str, rng: PartitionRange, *, batch: int = BATCH,
                   stall_timeout_s: float = 60.0) -> Iterator[list[bytes | None]]:
    """Record values of one partition in offset order, in batches, from low to high (exclusive)."""
    if rng.high <= rng.low:
        return
    consumer.assign([TopicPartition(topic, rng.partition, rng.low)])
    try:
        last_progress = time.monotonic()
        next_offset = rng.low
        while next_offset < rng.high:
            msgs = consumer.consume(batch, timeout=1.0)
            if not msgs:
                if time.monotonic() - last_progress > stall_timeout_s:
                    raise RetryableError(f"no records from {topic}[{rng.partition}] for {stall_timeout_s:.0f}s "
                                         f"at offset {next_offset} (end {rng.high})")
                continue
            last_progress = time.monotonic()
            values: list[bytes | None] = []
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        # Reached the log end: whatever sits before `high` and was not
                        # delivered is control records (transaction markers).
                        if m.offset() >= rng.high:
                            next_offset = rng.high
                        continue
                    if err.fatal():
                        raise FatalError(f"consuming {topic}[{rng.partition}] failed: {err}")
                    # Transport hiccups: librdkafka retries by itself; the stall timeout
                    # above ends the wait if the broker never comes back.
                    log.warning("kafka_consume_error", partition=rng.partition, error=str(err))
                    continue
                off = m.offset()
                if off >= rng.high:  # written after we started: not part of this verification
                    next_offset = rng.high
                    break
                if off < next_offset:  # never expected; a re-delivery must not count twice
                    continue
                values.append(m.value())
                next_offset = off + 1
            if values:
                yield values
    finally:
        consumer.unassign()
