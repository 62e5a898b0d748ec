"""DeadLetters keeps every record until its delivery report says acknowledged, and sends the
failed ones again at the next flush (issue 9, item 3). The broker side is in
tests/integration/test_dlq_unavailable.py; here the delivery reports are handed in directly
to check the bookkeeping, with a producer that has no broker to reach."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from app.core.errors import RetryableError
from app.processor.dlq import DeadLetters

NOWHERE = "127.0.0.1:9"  # discard port: nothing answers Kafka there


def _dlq() -> tuple[DeadLetters, list[int]]:
    """A DeadLetters whose every produce (first send or re-send) is recorded by seq."""
    d = DeadLetters(NOWHERE, "dlq", "events", delivery_timeout_s=30.0)
    produced: list[int] = []
    real = d._produce

    def spy(seq: int, key: bytes | None, record: bytes) -> None:
        produced.append(seq)
        real(seq, key, record)
    d._produce = spy  # type: ignore[method-assign]
    return d, produced


def _send(d: DeadLetters, offset: int) -> None:
    d.send(reason="invalid", window_kind=None, partition=0, offset=offset, key=b"1", value=b"x", error="bad")


def test_a_failed_record_is_kept_and_sent_again() -> None:
    d, produced = _dlq()
    for offset in range(3):
        _send(d, offset)
    assert d.unacknowledged == 3 and produced == [1, 2, 3]
    d._on_delivery(1, None, None)  # type: ignore[arg-type]
    d._on_delivery(2, KafkaError(KafkaError._MSG_TIMED_OUT), None)  # type: ignore[arg-type]
    assert d.unacknowledged == 2  # the failed one is still owed
    with pytest.raises(RetryableError, match="2 DLQ records not acknowledged"):
        d.flush(timeout_s=0.2)
    assert produced == [1, 2, 3, 2]  # record 2 was produced again
    d._on_delivery(2, None, None)  # type: ignore[arg-type]
    d._on_delivery(3, None, None)  # type: ignore[arg-type]
    d.flush(timeout_s=0.2)  # everything acknowledged: a checkpoint may commit now


def test_a_fatal_producer_error_replaces_the_producer_and_resends_everything() -> None:
    d, produced = _dlq()
    for offset in range(2):
        _send(d, offset)
    old = d._producer
    d._on_delivery(1, KafkaError(KafkaError._FATAL, fatal=True), None)  # type: ignore[arg-type]
    with pytest.raises(RetryableError):
        d.flush(timeout_s=0.2)
    assert d._producer is not old and sorted(produced) == [1, 1, 2, 2] and d.unacknowledged == 2


def test_flush_gives_up_at_once_when_asked_to_stop() -> None:
    d = DeadLetters(NOWHERE, "dlq", "events", delivery_timeout_s=30.0, should_stop=lambda: True)
    _send(d, 0)
    with pytest.raises(RetryableError):
        d.flush(timeout_s=30.0)  # would wait 30 s for a broker that never answers
