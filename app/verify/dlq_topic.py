"""Read the DLQ topic (contract §5) down to the identities it holds.

A DLQ record is identified by (source_partition, source_offset, reason, window_kind); the
topic may hold one more than once after a crash, so only distinct identities count (the
diff counts them distinct; here they are streamed out as read, in bounded memory). The
records are decoded here with the stdlib, independently of the processor that wrote them.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import structlog
from confluent_kafka import Consumer

from app.core.kafka import TopicNotFound, topic_partitions, watermark_offsets
from app.core.retry import retry_call
from app.verify.read_log import PartitionRange, read_records
from app.verify.truth import DlqSlot

log = structlog.get_logger("verify.dlq_topic")

_KINDS_OF: dict[str, tuple[str | None, ...]] = {"invalid": (None,), "late": ("minute", "hour")}


@dataclass(frozen=True, slots=True)
class DlqTopicTally:
    """What a read of the DLQ topic counted besides its identities."""

    topic: str
    exists: bool
    records: int = 0                 # records read, duplicates included
    unreadable: int = 0              # not a DLQ record: not JSON, a field missing or of the wrong type
    foreign: int = 0                 # DLQ records of another source topic (not this pipeline's input)
    trimmed: dict[int, int] = field(default_factory=dict)  # DLQ partition -> first offset, when not 0


@dataclass(frozen=True, slots=True)
class DlqTopicSnapshot:
    """The DLQ topic held in memory (hand-made in tests; the in-memory diff of compare.py)."""

    topic: str
    exists: bool
    records: int = 0                 # records read, duplicates included
    # (source_partition, reason, window_kind or "") -> distinct source offsets, ascending
    offsets: dict[DlqSlot, np.ndarray] = field(default_factory=dict)
    unreadable: int = 0              # not a DLQ record: not JSON, a field missing or of the wrong type
    foreign: int = 0                 # DLQ records of another source topic (not this pipeline's input)
    trimmed: dict[int, int] = field(default_factory=dict)  # DLQ partition -> first offset, when not 0

    @property
    def distinct(self) -> int:
        return sum(len(a) for a in self.offsets.values())


UNREADABLE = "unreadable"
FOREIGN = "foreign"
PARTITION_LIMIT = 2**31  # Kafka partitions are int32, offsets int64, neither negative
OFFSET_LIMIT = 2**63

# Receives the identities of one slot, a batch at a time: (partition, (reason, kind or ""), offsets).
IdentitySink = Callable[[int, tuple[str, str], "array[int]"], None]


def identity(value: bytes | None, source_topic: str) -> tuple[DlqSlot, int] | str:
    """((source_partition, reason, kind), source_offset) of a DLQ record, or why it does not
    count: UNREADABLE (not a DLQ record) or FOREIGN (another source topic)."""
    try:
        doc = json.loads(value) if value is not None else None
    except ValueError:
        return UNREADABLE
    if type(doc) is not dict:
        return UNREADABLE
    topic, partition, offset = doc.get("source_topic"), doc.get("source_partition"), doc.get("source_offset")
    reason, kind = doc.get("reason"), doc.get("window_kind")
    if (type(topic) is not str or type(partition) is not int or type(offset) is not int
            or type(reason) is not str or reason not in _KINDS_OF or kind not in _KINDS_OF[reason]):
        return UNREADABLE
    if not (0 <= partition < PARTITION_LIMIT and 0 <= offset < OFFSET_LIMIT):
        return UNREADABLE  # no Kafka record has such a position
    if topic != source_topic:
        return FOREIGN
    return (partition, reason, kind or ""), offset


def read_dlq_topic(consumer: Consumer, topic: str, source_topic: str, sink: IdentitySink, *,
                   deadline_s: float = 30.0, stall_timeout_s: float = 60.0) -> DlqTopicTally:
    """Every record of `topic` from its first offset to the end offsets seen now: identities
    go to `sink` as they are read, duplicates included; the rest is counted."""
    try:
        partitions = retry_call(lambda: topic_partitions(consumer, topic), what="kafka_dlq_metadata",
                                deadline_s=deadline_s)
    except TopicNotFound:
        return DlqTopicTally(topic, exists=False)
    ranges = []
    for p in partitions:
        low, high = retry_call(lambda p=p: watermark_offsets(consumer, topic, p), what="kafka_dlq_watermarks",
                               deadline_s=deadline_s)
        ranges.append(PartitionRange(p, low, high))
    records = unreadable = foreign = identities = 0
    for _partition, group in read_records(consumer, topic, ranges, stall_timeout_s=stall_timeout_s):
        collected: dict[DlqSlot, array[int]] = {}
        for value in group.values:
            records += 1
            found = identity(value, source_topic)
            if found == UNREADABLE:
                unreadable += 1
            elif found == FOREIGN:
                foreign += 1
            else:
                slot, offset = found  # type: ignore[misc]
                offsets = collected.get(slot)
                if offsets is None:
                    offsets = collected[slot] = array("q")
                offsets.append(offset)
        for (source_partition, reason, kind), offsets in collected.items():
            identities += len(offsets)
            sink(source_partition, (reason, kind), offsets)
    tally = DlqTopicTally(topic, True, records, unreadable, foreign, {r.partition: r.low for r in ranges if r.low > 0})
    log.info("verify_dlq_topic_read", topic=topic, records=records, identities=identities, unreadable=unreadable,
             foreign=foreign)
    return tally
