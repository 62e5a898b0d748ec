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
import time
from collections.abc import Callable
from functools import partial
from typing import Final

import orjson
import structlog
from confluent_kafka import KafkaError, Message, Producer

from app.core import metrics
from app.core.errors import RetryableError
from app.core.kafka import producer_config
from app.processor.windows import WindowKind

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
    """The DLQ producer. Every record is kept until the broker acknowledged it: a record whose
    delivery failed (e.g. its partition was unavailable for longer than the delivery
    timeout) is sent again at the next flush, and flush() returns only once nothing is
    left unacknowledged. So a checkpoint, which flushes before it commits, never counts a
    DLQ record that is not in Kafka. A record sent twice is fine (contract §5: identities)."""

    def __init__(self, bootstrap: str, topic: str, source_topic: str, *, delivery_timeout_s: float = 60.0,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
        self.topic = topic
        self.source_topic = source_topic
        self._bootstrap = bootstrap
        self._delivery_timeout_ms = max(1, int(delivery_timeout_s * 1000))
        self._should_stop = should_stop
        self._producer = self._new_producer()
        self._unacked: dict[int, tuple[bytes | None, bytes]] = {}  # seq -> (key, value) until acknowledged
        self._failed: list[int] = []     # seqs whose delivery failed: sent again at the next flush
        self._last_error: str | None = None
        self._fatal = False              # the producer is unusable (idempotence fatal error): replace it
        self._seq = 0

    def _new_producer(self) -> Producer:
        return Producer(producer_config(self._bootstrap, **{"linger.ms": 50,
                                                            "message.timeout.ms": self._delivery_timeout_ms}))

    @property
    def unacknowledged(self) -> int:
        return len(self._unacked)

    def send(self, *, reason: str, window_kind: str | None, partition: int, offset: int,
             key: bytes | None, value: bytes | None, error: str) -> None:
        key, record = encode_dead_letter(reason=reason, window_kind=window_kind, source_topic=self.source_topic,
                                         partition=partition, offset=offset, key=key, value=value, error=error)
        self._seq += 1
        self._unacked[self._seq] = (key, record)
        self._produce(self._seq, key, record)

    def _produce(self, seq: int, key: bytes | None, record: bytes) -> None:
        while True:
            try:
                self._producer.produce(self.topic, record, key, on_delivery=partial(self._on_delivery, seq))
                return
            except BufferError:  # the local queue is full: serve delivery reports, then try again
                if self._should_stop():
                    raise RetryableError("stopping while the DLQ producer's queue is full") from None
                self._producer.poll(0.1)

    def _on_delivery(self, seq: int, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self._unacked.pop(seq, None)
            return
        self._failed.append(seq)
        self._last_error = f"{err.name()}: {err.str()}"
        if err.fatal():
            self._fatal = True

    def flush(self, timeout_s: float = 60.0) -> None:
        """Return once every DLQ record sent so far is acknowledged; a checkpoint commits only
        after this. Records that failed are sent again first. Raises RetryableError when
        some are still unacknowledged after `timeout_s` (or when asked to stop): call again."""
        self._resend()
        deadline = time.monotonic() + timeout_s
        while len(self._producer) and not self._should_stop():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._producer.flush(min(left, 0.5))  # slices: a stop request is seen within 0.5 s
        if self._unacked:
            queued = len(self._producer)
            failed = len(self._failed)
            log.warning("dlq_unacknowledged", records=len(self._unacked), queued=queued, failed=failed,
                        last_error=self._last_error, hint="failed records are sent again at the next attempt")
            raise RetryableError(f"{len(self._unacked)} DLQ records not acknowledged ({queued} in flight, "
                                 f"{failed} failed and to be sent again; last error: {self._last_error})")

    def _resend(self) -> None:
        if self._fatal:
            # an idempotent producer that hit a fatal error accepts nothing more: start afresh
            # and send everything still unacknowledged
            log.warning("dlq_producer_replaced", error=self._last_error, records=len(self._unacked))
            self._producer = self._new_producer()
            self._fatal = False
            self._failed = list(self._unacked)
        failed, self._failed = self._failed, []
        for seq in failed:
            record = self._unacked.get(seq)
            if record is not None:
                self._produce(seq, *record)
        if failed:
            log.warning("dlq_resent", records=len(failed), last_error=self._last_error)

    def poll(self) -> None:
        self._producer.poll(0)


class PartitionDeadLetters:
    """`fold_run`'s Rejects for one owned partition: each record to the DLQ, and counted in
    the partition's `dlq_counts` for the next checkpoint."""

    __slots__ = ("counts", "dlq", "partition")

    def __init__(self, dlq: DeadLetters, partition: int, counts: dict[tuple[str, str], int]) -> None:
        self.dlq = dlq
        self.partition = partition
        self.counts = counts

    def on_invalid(self, offset: int, key: bytes | None, value: bytes | None, error: str) -> None:
        self._send("invalid", None, offset, key, value, error)

    def on_late(self, offset: int, key: bytes | None, value: bytes | None, kind: WindowKind, error: str) -> None:
        self._send("late", kind.label, offset, key, value, error)

    def _send(self, reason: str, kind: str | None, offset: int, key: bytes | None, value: bytes | None,
              error: str) -> None:
        self.dlq.send(reason=reason, window_kind=kind, partition=self.partition, offset=offset, key=key,
                      value=value, error=error)
        k = (reason, kind or "")
        self.counts[k] = self.counts.get(k, 0) + 1
        metrics.DLQ_RECORDS.labels(reason=reason, window_kind=kind or "").inc()
