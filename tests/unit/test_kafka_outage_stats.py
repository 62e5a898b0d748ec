"""--service-timeout for Kafka when librdkafka reports _ALL_BROKERS_DOWN only once: it may
report it when the last broker goes down and not again while they stay down (seen in
test_operator_errors' mid-run broker kill, which then waited forever). The processor's
consumer watches its own statistics (every second while a timeout is set): no broker UP and
some being reconnected for longer than the timeout gives up; any broker UP ends it; idle
handles (INIT) say nothing."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from app.core import kafka
from app.core.errors import ServiceUnavailable
from app.core.retry import set_service_timeout
from tests.unit.test_kafka_outage import Clock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    c = Clock()
    monkeypatch.setattr(kafka.time, "monotonic", c)
    set_service_timeout(30.0)
    yield c
    set_service_timeout(None)


def stats(*states: str) -> str:
    return json.dumps({"brokers": {f"b{i}": {"state": s} for i, s in enumerate(states)}})


def every_second(clock: Clock, on_stats: Callable[[str], None], seconds: int, *states: str) -> None:
    for _ in range(seconds):
        clock.now += 1.0
        on_stats(stats(*states))


def test_no_broker_up_past_the_timeout_raises(clock: Clock) -> None:
    on_stats = kafka._stats_cb("127.0.0.1:9092")
    every_second(clock, on_stats, 5, "UP", "INIT")
    with pytest.raises(ServiceUnavailable, match=r"Kafka unreachable at 127.0.0.1:9092: no broker up for 31s"):
        every_second(clock, on_stats, 120, "TRY_CONNECT", "DOWN", "CONNECT")
    assert clock.now - 1000.0 == 5 + 32


def test_a_broker_up_again_ends_it(clock: Clock) -> None:
    on_stats = kafka._stats_cb("127.0.0.1:9092")
    for _ in range(20):  # 25 s down, then up: never past 30 s in a row
        every_second(clock, on_stats, 25, "TRY_CONNECT", "DOWN")
        every_second(clock, on_stats, 1, "UP", "DOWN")


def test_one_broker_of_several_down_is_no_outage(clock: Clock) -> None:
    every_second(clock, kafka._stats_cb("127.0.0.1:9092"), 600, "TRY_CONNECT", "UP", "UP")


def test_idle_broker_handles_say_nothing(clock: Clock) -> None:
    every_second(clock, kafka._stats_cb("127.0.0.1:9092"), 600, "INIT", "INIT")


def test_each_consumer_judges_by_its_own_statistics(clock: Clock) -> None:
    """Another client seeing a broker UP (it has not noticed yet) does not reset this one."""
    mine, other = kafka._stats_cb("127.0.0.1:9092"), kafka._stats_cb("127.0.0.1:9092")
    with pytest.raises(ServiceUnavailable):
        for _ in range(60):
            clock.now += 1.0
            other(stats("UP"))
            mine(stats("TRY_CONNECT"))


def test_without_a_timeout_it_never_gives_up(clock: Clock) -> None:
    set_service_timeout(None)
    every_second(clock, kafka._stats_cb("127.0.0.1:9092"), 600, "TRY_CONNECT")


def test_the_consumer_reports_statistics_only_with_a_timeout(clock: Clock) -> None:
    cfg = kafka.consumer_config("127.0.0.1:9092", "g")
    assert cfg["statistics.interval.ms"] == 1000 and callable(cfg["stats_cb"])
    set_service_timeout(None)
    cfg = kafka.consumer_config("127.0.0.1:9092", "g")
    assert "stats_cb" not in cfg and "statistics.interval.ms" not in cfg
