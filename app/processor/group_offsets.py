"""Step 6 of the checkpoint, advisory: the ledger's committed positions published to the
Kafka consumer group, so that Kafka's own tools (`kafka-consumer-groups.sh --describe`,
Burrow, kafka-exporter) show the pipeline's lag.

The ledger stays the only source of truth (contract §6): these offsets are written after
the Postgres commit and never read back. On assignment every partition starts at the
ledger's next offset, whatever the group says (app/processor/ownership.py); the consumer
never falls back to a committed offset (`auto.offset.reset=error`). A group offset may
lag the ledger (a commit lost in a crash, a failed async commit) or, after a restore from
an older ledger, lead it: neither changes what is read or counted. The publication is
asynchronous and best effort: a failure is logged at debug level and the next
checkpoint publishes again.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog
from confluent_kafka import Consumer, KafkaException, TopicPartition

from app.ledger.ledger import PartitionAdvance

log = structlog.get_logger("processor")


class GroupOffsets:
    def __init__(self, consumer: Consumer, topic: str) -> None:
        self.consumer = consumer
        self.topic = topic

    def publish(self, advances: Sequence[PartitionAdvance]) -> None:
        """After the ledger committed `advances`: their next offsets as the group's offsets."""
        if not advances:
            return
        offsets = [TopicPartition(self.topic, a.partition, a.next_offset) for a in advances]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=True)
        except (KafkaException, RuntimeError) as e:  # advisory: never a reason to stop
            log.debug("group_offsets_not_published", partitions=[a.partition for a in advances], error=str(e))
