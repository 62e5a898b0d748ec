"""Read partitions of the input topic from offset 0 up to pinned positions.

Manual assign() only, never a commit: the backfill does not join the processor's
consumer group and cannot disturb it. The replay needs each partition's whole prefix
(the watermark depends on it), so a partition whose log no longer starts at offset 0
(retention) is refused before anything is read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

import structlog
from confluent_kafka import Consumer, KafkaError, TopicPartition

from app.core.errors import FatalError, RetryableError
from app.core.kafka import TopicNotFound, consumer_config, watermark_offsets
from app.core.kafka import topic_partitions as kafka_partitions
from app.core.retry import retry_call

log = structlog.get_logger("backfill.read_log")

BATCH = 10_000
Records = list[tuple[int, bytes | None, bytes | None]]   # (offset, key, value), ascending


def open_consumer(bootstrap: str, pipeline_id: str) -> Consumer:
    return Consumer(consumer_config(
        bootstrap, f"{pipeline_id}-backfill",
        # EOF tells us a partition is drained even when its last offsets are transaction
        # markers, which are never delivered as messages.
        **{"enable.partition.eof": True, "queued.max.messages.kbytes": 32 * 1024}))


def topic_partitions(consumer: Consumer, topic: str, *, deadline_s: float) -> list[int]:
    try:
        return retry_call(lambda: kafka_partitions(consumer, topic), what="kafka_metadata", deadline_s=deadline_s)
    except TopicNotFound as e:
        raise FatalError(f"topic {topic!r} does not exist: nothing to recompute from") from e


def check_retention(consumer: Consumer, topic: str, replay_to: Mapping[int, int], *, deadline_s: float) -> None:
    """FatalError unless every partition still holds [0, replay_to[p])."""
    for p, end in sorted(replay_to.items()):
        low, high = retry_call(lambda p=p: watermark_offsets(consumer, topic, p), what="kafka_watermarks",
                               deadline_s=deadline_s)
        if low > 0:
            raise FatalError(
                f"{topic}[{p}] now starts at offset {low}: retention removed records the backfill needs "
                f"(it replays every partition from offset 0, because the watermark that classifies each "
                f"record depends on the whole prefix); this range can no longer be recomputed")
        if high < end:
            raise FatalError(f"{topic}[{p}] ends at offset {high}, but the ledger has processed up to {end}: "
                             "the topic was recreated or truncated; refusing to recompute from it")


def read_prefixes(consumer: Consumer, topic: str, replay_to: Mapping[int, int], *,
                  stall_timeout_s: float = 60.0, should_stop: Callable[[], bool] = lambda: False,
                  ) -> Iterator[tuple[int, Records]]:
    """(partition, records) groups; each partition's records ascend from offset 0 to
    replay_to[p] (exclusive). Partitions are read together; the replay state is per partition."""
    pending = {p: end for p, end in replay_to.items() if end > 0}
    if not pending:
        return
    assignment = [TopicPartition(topic, p, 0) for p in pending]
    consumer.assign(assignment)
    consumer.resume(assignment)  # librdkafka keeps pause flags across assignments
    last_progress = time.monotonic()
    try:
        while pending:
            if should_stop():
                raise InterruptedError("stopped")
            msgs = consumer.consume(BATCH, timeout=0.2)
            if not msgs:
                if time.monotonic() - last_progress > stall_timeout_s:
                    raise RetryableError(f"no records from {topic} for {stall_timeout_s:.0f}s "
                                         f"(waiting for partitions {sorted(pending)})")
                continue
            last_progress = time.monotonic()
            groups: dict[int, Records] = {}
            for m in msgs:
                p = m.partition()
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if p in pending and m.offset() >= pending[p]:
                            _done(consumer, topic, pending, p)
                        continue
                    if err.fatal():
                        raise FatalError(f"consuming {topic} failed: {err}")
                    log.warning("kafka_consume_error", partition=p, error=str(err))
                    continue
                end = pending.get(p)
                if end is None:
                    continue
                off = m.offset()
                if off >= end:
                    _done(consumer, topic, pending, p)
                    continue
                groups.setdefault(p, []).append((off, m.key(), m.value()))
                if off + 1 >= end:
                    _done(consumer, topic, pending, p)
            yield from groups.items()
    finally:
        consumer.unassign()


def _done(consumer: Consumer, topic: str, pending: dict[int, int], p: int) -> None:
    del pending[p]
    consumer.pause([TopicPartition(topic, p)])
