"""Read the whole input topic, from offset 0 to the end offsets seen at start.

Manual assign() only: verify never joins the pipeline's consumer group and never commits,
so it cannot disturb the processor. Records are handed out in large per-partition groups,
each partition in offset order, so the truth is computed without holding the log in memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import structlog
from confluent_kafka import Consumer, KafkaError, TopicPartition

from app.core.errors import FatalError, RetryableError
from app.core.kafka import TopicNotFound, consumer_config, topic_partitions, watermark_offsets
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
    return Consumer(consumer_config(
        bootstrap, f"{pipeline_id}-verify",
        # EOF events tell us a partition is drained even when its last offsets are
        # transaction control records, which are never delivered as messages.
        **{"enable.partition.eof": True,
           # Prefetch is most of what verify holds in memory (the truth is in its store):
           # these keep it near 100 MB (measured: the shared defaults peak at 2.5x that)
           # and reading no slower.
           "queued.max.messages.kbytes": 32 * 1024,
           "fetch.max.bytes": 16 * 1024 * 1024,
           "max.partition.fetch.bytes": 4 * 1024 * 1024},
    ))


def partition_ranges(consumer: Consumer, topic: str, *, deadline_s: float = 30.0) -> list[PartitionRange]:
    """Offsets to read per partition. FatalError when retention has removed input: the truth
    needs every record from offset 0, and a partial log would silently give a wrong verdict."""
    try:
        partitions = retry_call(lambda: topic_partitions(consumer, topic), what="kafka_metadata",
                                deadline_s=deadline_s)
    except TopicNotFound as e:
        raise FatalError(f"topic {topic!r} does not exist: nothing to recompute the truth from") from e
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


@dataclass(slots=True)
class RecordGroup:
    """Consecutive records of one partition, in offset order, as three parallel lists."""

    offsets: list[int]
    keys: list[bytes | None]
    values: list[bytes | None]


def read_ranges(consumer: Consumer, topic: str, ranges: list[PartitionRange], *, batch: int = BATCH,
                poll_timeout_s: float = 0.2, stall_timeout_s: float = 60.0,
                ) -> Iterator[tuple[int, list[bytes | None]]]:
    """(partition, record values) groups: read_records without keys and offsets."""
    for partition, group in read_records(consumer, topic, ranges, batch=batch, poll_timeout_s=poll_timeout_s,
                                         stall_timeout_s=stall_timeout_s):
        yield partition, group.values


def read_records(consumer: Consumer, topic: str, ranges: list[PartitionRange], *, batch: int = BATCH,
                 poll_timeout_s: float = 0.2, stall_timeout_s: float = 60.0,
                 ) -> Iterator[tuple[int, RecordGroup]]:
    """(partition, records) groups, each partition's records in offset order from low to
    high (exclusive). All partitions are read at once, so no partition waits for another's tail;
    the truth's state is per partition, so interleaved groups are fine."""
    pending = {r.partition: r for r in ranges if r.high > r.low}
    if not pending:
        return
    next_offset = {p: r.low for p, r in pending.items()}

    def done(p: int) -> None:
        del pending[p]
        consumer.pause([TopicPartition(topic, p)])  # anything after `high` is not ours to read
        log.info("verify_partition_read", partition=p, records=next_offset[p] - ranges_by_p[p].low)

    ranges_by_p = dict(pending)
    assignment = [TopicPartition(topic, p, r.low) for p, r in pending.items()]
    consumer.assign(assignment)
    # librdkafka keeps a partition's pause flag across assignments: clear any left by an
    # earlier call on this consumer.
    consumer.resume(assignment)
    try:
        last_progress = time.monotonic()
        while pending:
            msgs = consumer.consume(batch, timeout=poll_timeout_s)
            if not msgs:
                if time.monotonic() - last_progress > stall_timeout_s:
                    where = ", ".join(f"{topic}[{p}] at {next_offset[p]} of {r.high}" for p, r in pending.items())
                    raise RetryableError(f"no records for {stall_timeout_s:.0f}s: {where}")
                continue
            last_progress = time.monotonic()
            groups: dict[int, RecordGroup] = {}
            for m in msgs:
                p = m.partition()
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        # At the log end: whatever sits before `high` and was never delivered
                        # is control records (transaction markers).
                        if p in pending and m.offset() >= pending[p].high:
                            done(p)
                        continue
                    if err.fatal():
                        raise FatalError(f"consuming {topic} failed: {err}")
                    # Transport hiccups: librdkafka retries by itself; the stall timeout
                    # above ends the wait if the broker never comes back.
                    log.warning("kafka_consume_error", partition=p, error=str(err))
                    continue
                r = pending.get(p)
                if r is None:  # already complete (fetched before the pause took effect)
                    continue
                off = m.offset()
                if off >= r.high:  # written after we started: not part of this verification
                    done(p)
                    continue
                if off < next_offset[p]:  # never expected; a re-delivery must not count twice
                    continue
                next_offset[p] = off + 1
                group = groups.get(p)
                if group is None:
                    group = groups[p] = RecordGroup([], [], [])
                group.offsets.append(off)
                group.keys.append(m.key())
                group.values.append(m.value())
                if off + 1 >= r.high:
                    done(p)
            yield from groups.items()
    finally:
        consumer.resume(assignment)
        consumer.unassign()
