"""--service-timeout for Kafka (issue 14, item 2): librdkafka reconnects by itself and reports
each failed attempt through error_cb; every broker reported down (_ALL_BROKERS_DOWN, again
and again, less than 30 s apart) for longer than the timeout ends the command
(ServiceUnavailable, exit 3).
One broker of several being down (its reconnects fail, but not every broker is down), or
reports far apart, is not an outage."""

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
    monkeypatch.setattr(kafka, "_outage", {})
    monkeypatch.setattr(kafka, "_last_logged", {})
    set_service_timeout(30.0)
    yield c
    set_service_timeout(None)


def errors_every(clock: Clock, seconds: float, until: float, *, all_down_every: float | None) -> None:
    """_TRANSPORT errors every `seconds`, and _ALL_BROKERS_DOWN every `all_down_every` (None: never)."""
    on_error = kafka._error_cb("127.0.0.1:9092")
    end = clock.now + until
    next_all_down = clock.now
    while clock.now < end:
        if all_down_every is not None and clock.now >= next_all_down:
            on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))
            next_all_down = clock.now + all_down_every
        on_error(KafkaError(KafkaError._TRANSPORT))
        clock.now += seconds


def test_a_continuous_outage_past_the_timeout_raises(clock: Clock) -> None:
    with pytest.raises(ServiceUnavailable, match=r"Kafka unreachable at 127.0.0.1:9092: every broker down for 45s"):
        errors_every(clock, 1.0, 120, all_down_every=15.0)
    assert clock.now - 1000.0 == 45.0  # the first report past the timeout


def test_one_broker_of_several_down_is_no_outage(clock: Clock) -> None:
    """Only the dead broker's reconnects fail: never _ALL_BROKERS_DOWN."""
    errors_every(clock, 1.0, 600, all_down_every=None)


def test_every_broker_down_long_ago_then_one_stays_down_is_no_outage(clock: Clock) -> None:
    errors_every(clock, 1.0, 10, all_down_every=5.0)     # a short full outage
    errors_every(clock, 1.0, 600, all_down_every=None)   # then one broker stays down


def test_reports_far_apart_are_separate_blips(clock: Clock) -> None:
    errors_every(clock, 40.0, 600, all_down_every=40.0)


def test_without_a_timeout_it_retries_forever(clock: Clock) -> None:
    set_service_timeout(None)
    errors_every(clock, 1.0, 600, all_down_every=5.0)


def test_a_stop_skips_the_consumer_close_only_while_every_broker_was_reported_down_lately(clock: Clock) -> None:
    """Processor._close leaves the consumer open (close() may wait minutes on an unreachable
    coordinator, past the stop budget) only while every broker was reported down within the
    last 30 s; one broker of several down, or an outage long over, closes it as usual."""
    assert not kafka.every_broker_down_lately()
    errors_every(clock, 1.0, 10, all_down_every=None)  # one broker of several: no outage
    assert not kafka.every_broker_down_lately()
    errors_every(clock, 1.0, 5, all_down_every=15.0)
    assert kafka.every_broker_down_lately()
    clock.now += 31.0                                     # no report since: back up
    assert not kafka.every_broker_down_lately()
