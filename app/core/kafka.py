"""Kafka helpers shared by the stages: client configs, topic creation, a topic's partitions and
end offsets, topic identity."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from app.core.errors import FatalError, KafkaUnreachable, RetryableError
from app.core.retry import retry_call, service_timeout

log = structlog.get_logger("kafka")

_last_logged: dict[str, float] = {}

# librdkafka settings from KAFKA_CONFIG_* / --kafka-config (app/core/kafka_settings.py): SASL,
# TLS, ... for a secured cluster. Set once by the command's entry point (`use_client_settings`)
# and applied to every client this process creates, over the defaults below.
_client_settings: dict[str, str] = {}

# Outage bookkeeping for --service-timeout: librdkafka reconnects by itself and reports each
# failed attempt through error_cb (_TRANSPORT on every failed reconnect; _ALL_BROKERS_DOWN
# when every broker it knows is down, sometimes again while they stay down, sometimes not).
# An outage lasts while those reports keep coming less than _ALL_DOWN_GAP_S apart; and, as
# they need not repeat, a consumer also watches its own statistics (_stats_cb). One broker of
# several down never reports _ALL_BROKERS_DOWN and leaves others UP: no outage.
_ALL_DOWN_GAP_S = 30.0
_outage: dict[str, float] = {}  # since, last: the current outage
_RECONNECTING = frozenset({"DOWN", "TRY_CONNECT", "CONNECT"})


def every_broker_down_lately(within_s: float = _ALL_DOWN_GAP_S) -> bool:
    """librdkafka reported every broker down within the last `within_s` (a close() of a
    group consumer now may wait on the unreachable coordinator for minutes)."""
    return bool(_outage) and time.monotonic() - _outage["last"] <= within_s


def use_client_settings(settings: dict[str, str]) -> None:
    _client_settings.clear()
    _client_settings.update(settings)


def _error_cb(bootstrap: str) -> Callable[[KafkaError], None]:
    def on_error(err: KafkaError) -> None:
        """librdkafka retries connections itself; say so once per error kind per 10 s instead
        of one line per attempt, naming the brokers. Past --service-timeout of continuous
        connection errors, give up: raised here, the error leaves the client's poll/consume."""
        now = time.monotonic()
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            if not _outage or now - _outage["last"] > _ALL_DOWN_GAP_S:
                _outage["since"] = now
            _outage["last"] = now
            timeout = service_timeout()
            if timeout is not None and now - _outage["since"] > timeout:
                raise KafkaUnreachable(f"Kafka unreachable at {bootstrap}: every broker down for "
                                         f"{now - _outage['since']:.0f}s (--service-timeout {timeout:g}s)")
        key = str(err.code())
        if now - _last_logged.get(key, -1e9) >= 10.0:
            _last_logged[key] = now
            log.warning("kafka_unavailable_retrying", bootstrap=bootstrap, error=err.str(), code=err.name(),
                        fatal=err.fatal())
    return on_error


def _stats_cb(bootstrap: str) -> Callable[[str], None]:
    """One consumer's own outage detector, from its statistics: the consumer always holds
    connections (fetches, its group coordinator), so none UP and some being reconnected for
    longer than the timeout is an outage whether or not librdkafka repeated _ALL_BROKERS_DOWN;
    any broker UP ends it (one broker of several down never does this); idle handles (INIT)
    say nothing. Its own state: another client's view never clears this one's."""
    down_since: list[float] = []

    def on_stats(stats_json: str) -> None:
        states = {b.get("state") for b in json.loads(stats_json).get("brokers", {}).values()}
        now = time.monotonic()
        if "UP" in states:
            down_since.clear()
        elif states & _RECONNECTING:
            if not down_since:
                down_since.append(now)
            timeout = service_timeout()
            if timeout is not None and now - down_since[0] > timeout:
                raise KafkaUnreachable(f"Kafka unreachable at {bootstrap}: no broker up for "
                                         f"{now - down_since[0]:.0f}s (--service-timeout {timeout:g}s)")
    return on_stats


def _quiet(cfg: dict[str, object]) -> dict[str, object]:
    # librdkafka's own log lines are replaced by _error_cb's rate-limited ones
    cfg.update(_client_settings)
    cfg.setdefault("log_level", 0)
    cfg.setdefault("error_cb", _error_cb(str(cfg.get("bootstrap.servers", "?"))))
    return cfg


def client_config(bootstrap: str, **extra: object) -> dict[str, object]:
    """A plain client's settings (an AdminClient, a reader of its own): the bootstrap servers,
    this process's librdkafka settings and the rate-limited error log."""
    return _quiet({"bootstrap.servers": bootstrap, **extra})


def wait_until_reachable(bootstrap: str, *, should_stop: Callable[[], bool] = lambda: False,
                         probe_timeout_s: float = 1.5) -> None:
    """Before a command starts its work: a metadata request answered within probe_timeout_s,
    else one `service_retry` line naming the brokers (within ~2 s of start), then backoff
    (until --service-timeout, if any)."""
    client = admin(bootstrap)

    def probe() -> None:
        try:
            md = client.list_topics(timeout=probe_timeout_s)
        except KafkaException as e:
            raise RetryableError(f"Kafka unreachable at {bootstrap}: {e.args[0].str() if e.args else e}") from e
        if not md.brokers:
            raise RetryableError(f"Kafka at {bootstrap} answered without brokers")
    retry_call(probe, what="kafka_connect", should_stop=should_stop)


def consumer_config(bootstrap: str, group_id: str, **extra: object) -> dict[str, object]:
    """Offsets live in the ledger, so the consumer never commits to Kafka."""
    cfg: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "isolation.level": "read_uncommitted",
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        "queued.max.messages.kbytes": 256 * 1024,
        "reconnect.backoff.max.ms": 5000,
    }
    cfg.update(extra)
    if service_timeout() is not None:  # the consumer is polled all the time: see _stats_cb
        cfg.setdefault("statistics.interval.ms", 1000)
        cfg.setdefault("stats_cb", _stats_cb(bootstrap))
    return _quiet(cfg)


def producer_config(bootstrap: str, **extra: object) -> dict[str, object]:
    cfg: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        # Java's partitioner, so every client puts one account in the same partition.
        "partitioner": "murmur2_random",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "reconnect.backoff.max.ms": 5000,
    }
    cfg.update(extra)
    return _quiet(cfg)


def admin(bootstrap: str) -> AdminClient:
    return AdminClient(client_config(bootstrap))


def broker_count(client: AdminClient, timeout_s: float = 10.0) -> int:
    try:
        md = client.list_topics(timeout=timeout_s)
    except KafkaException as e:
        raise RetryableError(f"Kafka metadata unavailable: {e}") from e
    return len(md.brokers)


def ensure_topic(bootstrap: str, name: str, partitions: int, *, replication: int | None = None,
                 timeout_s: float = 30.0) -> int:
    """Create `name` if missing (replication 3 and min ISR 2 on a 3+ broker cluster).

    Returns the topic's partition count; an existing topic is accepted as it is.
    """
    client = admin(bootstrap)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            md = client.list_topics(timeout=10)
            if name in md.topics and not md.topics[name].error:
                return len(md.topics[name].partitions)
            brokers = len(md.brokers)
            rf = replication or (3 if brokers >= 3 else 1)
            config = {"min.insync.replicas": "2"} if rf >= 3 else {}
            futures = client.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=rf,
                                                     config=config)])
            try:
                futures[name].result(timeout=30)
                log.info("topic_created", topic=name, partitions=partitions, replication=rf)
            except KafkaException as e:
                if "TOPIC_ALREADY_EXISTS" not in str(e.args[0].name() if e.args else e):
                    raise
        except KafkaException as e:
            if time.monotonic() > deadline:
                raise RetryableError(f"cannot create topic {name}: {e}") from e
            log.warning("topic_create_retry", topic=name, error=str(e))
            time.sleep(1)


class TopicNotFound(FatalError):
    """The topic does not exist: nothing a retry can fix (a caller that waits for it to be
    created says so by catching this)."""


def topic_partitions(client: Consumer | AdminClient, topic: str, *, timeout_s: float = 10.0) -> list[int]:
    """The topic's partitions, ascending. RetryableError when Kafka cannot answer (unreachable,
    metadata without brokers, a transient topic error such as a leader election);
    TopicNotFound when the topic does not exist."""
    try:
        md = client.list_topics(topic, timeout=timeout_s)
    except KafkaException as e:
        raise RetryableError(f"Kafka metadata unavailable: {e}") from e
    if not md.brokers:
        raise RetryableError("Kafka metadata has no brokers")
    t = md.topics.get(topic)
    if t is None or (t.error is not None and t.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
        raise TopicNotFound(f"topic {topic!r} does not exist")
    if t.error is not None:
        raise RetryableError(f"topic {topic!r} metadata error: {t.error}")
    return sorted(t.partitions)


def watermark_offsets(consumer: Consumer, topic: str, partition: int,
                      timeout_s: float = 10.0) -> tuple[int, int]:
    """(low, high) offsets of one partition; high is the next offset to be written."""
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
    except KafkaException as e:
        raise RetryableError(f"watermark offsets of {topic}[{partition}] unavailable: {e}") from e
    return int(low), int(high)


def end_offsets(consumer: Consumer, topic: str) -> dict[int, int]:
    """Each partition's end offset. A topic that does not exist (yet) is RetryableError here:
    a processor may start before the generator creates its topic, and waits for it."""
    try:
        partitions = topic_partitions(consumer, topic)
    except TopicNotFound as e:
        raise RetryableError(f"{e} (yet)") from e
    return {p: watermark_offsets(consumer, topic, p)[1] for p in partitions}


# Kafka's "no topic id" (all-zero UUID): brokers without topic ids report it.
_NO_TOPIC_ID = "AAAAAAAAAAAAAAAAAAAAAA"


@dataclass(frozen=True, slots=True)
class TopicIdentity:
    """Which log a topic name stands for: a topic deleted and created again under the same
    name gets a new topic id and offsets that restart at 0; more partitions move keys."""

    topic: str
    topic_id: str | None   # base64 UUID; None when the broker reports none
    partitions: int


def topic_identity(client: AdminClient, topic: str, timeout_s: float = 10.0) -> TopicIdentity | None:
    """The topic's id and partition count, or None when it does not exist.
    RetryableError when Kafka cannot answer."""
    future = client.describe_topics(TopicCollection([topic]), request_timeout=timeout_s)[topic]
    try:
        d = future.result(timeout=timeout_s + 5)
    except KafkaException as e:
        err = e.args[0] if e.args else None
        if isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return None
        raise RetryableError(f"cannot describe topic {topic}: {e}") from e
    except Exception as e:  # a timed-out future raises concurrent.futures.TimeoutError
        raise RetryableError(f"cannot describe topic {topic}: {type(e).__name__}: {e}") from e
    topic_id = str(d.topic_id) if d.topic_id is not None else None
    return TopicIdentity(topic, None if topic_id in (None, _NO_TOPIC_ID) else topic_id, len(d.partitions))
