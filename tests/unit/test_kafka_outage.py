"""--service-timeout for Kafka (issue 14, item 2): librdkafka reconnects by itself and reports
each failed attempt through error_cb; a run of connection errors longer than the timeout,
with no broker answering a metadata request, ends the command (ServiceUnavailable, exit 3).
A broker of several being down, or errors far apart, is not an outage."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError

from app.core import kafka
from app.core.errors import ServiceUnavailable
from app.core.retry import set_service_timeout


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    c = Clock()
    monkeypatch.setattr(kafka.time, "monotonic", c)
    monkeypatch.setattr(kafka, "_outage", [])
    monkeypatch.setattr(kafka, "_last_logged", {})
    set_service_timeout(30.0)
    yield c
    set_service_timeout(None)


def errors_every(clock: Clock, seconds: float, until: float, answers: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka, "_cluster_answers", lambda bootstrap, timeout_s=2.0: answers)
    on_error = kafka._error_cb("127.0.0.1:9092")
    end = clock.now + until
    while clock.now < end:
        on_error(KafkaError(KafkaError._TRANSPORT))
        clock.now += seconds


def test_a_continuous_outage_past_the_timeout_raises(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ServiceUnavailable, match=r"Kafka unreachable at 127.0.0.1:9092 for 3\ds"):
        errors_every(clock, 1.0, 60, answers=False, monkeypatch=monkeypatch)
    assert clock.now - 1000.0 == pytest.approx(31.0)


def test_errors_while_another_broker_answers_are_no_outage(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    errors_every(clock, 1.0, 120, answers=True, monkeypatch=monkeypatch)


def test_errors_far_apart_are_separate_blips(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    errors_every(clock, 20.0, 600, answers=False, monkeypatch=monkeypatch)


def test_without_a_timeout_it_retries_forever(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    set_service_timeout(None)
    errors_every(clock, 1.0, 600, answers=False, monkeypatch=monkeypatch)
