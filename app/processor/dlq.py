"""The side output (contract §5): late and invalid records, produced before the checkpoint
that counts them commits, so a committed count always has its records in Kafka.
After a crash a record may be produced twice; (source_partition, source_offset, reason,
window_kind) identifies it, and the exact counts live in the ledger.

A DLQ record stays small whatever the input (contract §5), so producing it can never fail
for its size: a source value over 64 KiB is recorded as its first 64 KiB (`raw`), its
length (`raw_bytes`) and hash (`raw_sha256`), without `event`; a source key over 64 KiB
likewise (`key_bytes`, `key_sha256`). Worst case, every raw byte a control character that
JSON escapes as `\\u00XX`, the encoded record stays under ~530 KB, well below the
producer's default `message.max.bytes` (1,000,000).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

import orjson
import structlog
from confluent_kafka import KafkaError, Message, Producer

from app.core.errors import RetryableError
from app.core.kafka import producer_config

log = structlog.get_logger("dlq")

RAW_CAP: Final = 64 * 1024    # contract §5: source values (and keys) beyond this are cut, with length and hash
ERROR_CAP: Final = 1024       # our own error texts are short; a cap keeps a surprise from growing the record


def _text_or_base64(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii")


def _head_as_text(head: bytes) -> str | None:
    """The first RAW_CAP bytes as text, cut back to the last whole UTF-8 character (a cut can
    split one of up to 4 bytes); None when they are not UTF-8 text."""
    for cut in range(4):
        try:
            return head[:len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def encode_dead_letter(*, reason: str, window_kind: str | None, source_topic: str, partition: int, offset: int,
                       key: bytes | None, value: bytes | None, error: str) -> tuple[bytes | None, bytes]:
    """(DLQ key, DLQ value) of one late or invalid source record (contract §5)."""
    doc: dict[str, object] = {
        "reason": reason, "window_kind": window_kind, "source_topic": source_topic,
        "source_partition": partition, "source_offset": offset, "error": error[:ERROR_CAP],
        "event": None, "raw": None,
    }
    if value is not None:
        if len(value) <= RAW_CAP:
            if reason == "late":
                doc["event"] = orjson.Fragment(value)  # a late event is valid JSON: the original object, verbatim
            doc["raw"] = _text_or_base64(value)
        else:
            head = value[:RAW_CAP]
            text = _head_as_text(head)
            doc["raw"] = text if text is not None else base64.b64encode(head).decode("ascii")
            doc["raw_bytes"] = len(value)
            doc["raw_sha256"] = hashlib.sha256(value).hexdigest()
    if key is not None and len(key) > RAW_CAP:
        doc["key_bytes"] = len(key)
        doc["key_sha256"] = hashlib.sha256(key).hexdigest()
        key = key[:RAW_CAP]
    return key, orjson.dumps(doc)


class DeadLetters:
    def __init__(self, bootstrap: str, topic: str, source_topic: str, *, delivery_timeout_s: float = 60.0) -> None:
        self.topic = topic
        self.source_topic = source_topic
        self._producer = Producer(producer_config(bootstrap, **{
            "linger.ms": 50, "message.timeout.ms": max(1, int(delivery_timeout_s * 1000))}))
        self._failed: list[str] = []

    def send(self, *, reason: str, window_kind: str | None, partition: int, offset: int,
             key: bytes | None, value: bytes | None, error: str) -> None:
        key, record = encode_dead_letter(reason=reason, window_kind=window_kind, source_topic=self.source_topic,
                                         partition=partition, offset=offset, key=key, value=value, error=error)
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
