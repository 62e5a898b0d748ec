"""The side output (contract §5): late and invalid records, produced before the checkpoint
that counts them commits, so a committed count always has its records in Kafka.
After a crash a record may be produced twice; (source_partition, source_offset, reason,
window_kind) identifies it, and the exact counts live in the ledger."""

from __future__ import annotations

import base64

import orjson
import structlog
from confluent_kafka import KafkaError, Message, Producer

from app.core.errors import RetryableError
from app.core.kafka import producer_config

log = structlog.get_logger("dlq")


class DeadLetters:
    def __init__(self, bootstrap: str, topic: str, source_topic: str) -> None:
        self.topic = topic
        self.source_topic = source_topic
        self._producer = Producer(producer_config(bootstrap, **{"linger.ms": 50}))
        self._failed: list[str] = []

    def send(self, *, reason: str, window_kind: str | None, partition: int, offset: int,
             key: bytes | None, value: bytes | None, error: str) -> None:
        event = None
        if reason == "late" and value is not None:
            event = orjson.Fragment(value)  # the original object, verbatim
        raw: str | None
        if value is None:
            raw = None
        else:
            try:
                raw = value.decode("utf-8")
            except UnicodeDecodeError:
                raw = base64.b64encode(value).decode("ascii")
        record = orjson.dumps({
            "reason": reason, "window_kind": window_kind, "source_topic": self.source_topic,
            "source_partition": partition, "source_offset": offset, "error": error,
            "event": event, "raw": raw,
        })
        while True:
            try:
                self._producer.produce(self.topic, record, key, on_delivery=self._on_delivery)
                return
            except BufferError:
                self._producer.poll(0.1)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed.append(str(err))

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait until every record is in Kafka; a checkpoint commits only after this."""
        remaining = self._producer.flush(timeout_s)
        if remaining or self._failed:
            failed, self._failed = self._failed, []
            raise RetryableError(f"DLQ delivery incomplete: {remaining} queued, failures: {failed[:3]}")

    def poll(self) -> None:
        self._producer.poll(0)
