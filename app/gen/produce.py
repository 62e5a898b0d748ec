"""The Kafka side of the generator: an open-model send loop over app.gen.model's records.

Open model: record i is due at t0 + schedule.due_s(i) whatever the broker does, so a slow
pipeline shows up as lag downstream instead of as a slower generator. Only the bounded
local producer queue can hold the loop back (BufferError -> poll -> retry), and every
second behind schedule is reported (gen_behind log, GEN_BEHIND gauge).

Ordering: an idempotent producer keeps each partition's order across retries, so each
partition receives its records in generation order; that is what makes the per-partition
order (and so the watermark classification) a pure function of the seed.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from app.core import health
from app.core.errors import FatalError, RetryableError
from app.core.kafka import admin, ensure_topic, producer_config
from app.core.metrics import GEN_BEHIND, GEN_EVENTS
from app.core.retry import Backoff, retry_call
from app.gen.cli import SendPlan
from app.gen.model import GenSpec, chunk_columns, encode_columns
from app.gen.schedule import RateSchedule

log = structlog.get_logger("gen")

_SLICE = 4_096            # records sent between two clock checks when rate-limited
_TICK_S = 0.005           # records go out in batches at most this late (see RateSchedule.wait_s)
_BEHIND_LOG_EVERY_S = 5.0
_BEHIND_THRESHOLD_S = 1.0
_PROGRESS_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class GenResult:
    events: int           # records handed to the producer (all acknowledged unless failed > 0)
    on_time: int
    late: int
    invalid: int
    seconds: float
    failed: int           # records the broker did not acknowledge
    stopped: bool         # cut short by SIGTERM / SIGINT
    first_error: str | None

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass(slots=True)
class _DeliveryState:
    """Filled from librdkafka's callbacks (on the thread that calls poll/flush)."""

    failed: int = 0
    first_error: str | None = None
    fatal: str | None = None
    refused: str | None = None    # the client rejected a record outright (produce() raised)
    last_error_log: float = field(default=0.0)

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        # Only called for failures: the producer runs with delivery.report.only.error.
        if err is None:
            return
        self.failed += 1
        if self.first_error is None:
            self.first_error = f"{err.name()}: {err.str()}"
            log.error("gen_delivery_failed", error=self.first_error, partition=msg.partition())

    def on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = f"{err.name()}: {err.str()}"
            log.error("kafka_fatal_error", error=self.fatal)
            return
        now = time.monotonic()
        if now - self.last_error_log >= 5.0:   # librdkafka repeats these every retry
            self.last_error_log = now
            log.warning("kafka_error", error=f"{err.name()}: {err.str()}",
                        hint="librdkafka keeps retrying; records wait in the local queue")


class _Feed:
    """Records in generation order, one chunk at a time, with per-class counts."""

    def __init__(self, spec: GenSpec) -> None:
        self.spec = spec
        self.chunk = -1
        self.records: list[tuple[bytes, bytes]] = []
        self.pos = 0
        self._late = np.zeros(0, dtype=bool)
        self._invalid = np.zeros(0, dtype=bool)

    def take(self, n: int) -> tuple[int, list[tuple[bytes, bytes]]]:
        """(offset in the chunk, up to n next records); never crosses a chunk boundary."""
        if self.pos >= len(self.records):
            self.chunk += 1
            cols = chunk_columns(self.spec, self.chunk)
            self.records = encode_columns(cols)
            self._invalid = ~cols.valid
            self._late = cols.late & cols.valid
            self.pos = 0
        lo, hi = self.pos, min(self.pos + n, len(self.records))
        self.pos = hi
        return lo, self.records[lo:hi]

    def counts(self, lo: int, hi: int) -> tuple[int, int]:
        """(late, invalid) among the current chunk's records [lo, hi)."""
        return int(np.count_nonzero(self._late[lo:hi])), int(np.count_nonzero(self._invalid[lo:hi]))


def _send(producer: Producer, topic: str, records: list[tuple[bytes, bytes]], stop: threading.Event,
          state: _DeliveryState) -> int:
    """Hand records to the producer in order; returns how many were accepted (fewer only when
    stopped while the local queue was full, or when the client refused a record)."""
    produce = producer.produce
    for i, (key, value) in enumerate(records):
        while True:
            try:
                produce(topic, value, key)
                break
            except BufferError:
                # The local queue is full: the only back-pressure an open model accepts.
                if stop.is_set():
                    return i
                producer.poll(0.05)
            except KafkaException as e:
                state.refused = str(e)
                log.error("kafka_produce_refused", error=str(e))
                return i
    return len(records)


def _probe(bootstrap: str, timeout_s: float) -> None:
    """One metadata round trip. Quiet on purpose: librdkafka would print a line per reconnect
    (every ~50 ms) while the broker is down; retry_call logs one line per attempt instead."""
    client = admin(bootstrap)  # with the operator's librdkafka settings (KAFKA_CONFIG_*)
    try:
        client.list_topics(timeout=timeout_s)
    except KafkaException as e:
        raise RetryableError(f"Kafka unreachable at {bootstrap}: {e}") from e


def prepare_topic(bootstrap: str, plan: SendPlan, stop: threading.Event) -> int:
    """Create the events topic if missing (contract §5); retry while Kafka is unreachable."""
    deadline = plan.connect_timeout_s or None
    probe_s = min(5.0, plan.connect_timeout_s or 5.0)
    retry_call(
        lambda: _probe(bootstrap, probe_s),
        what=f"connect to kafka {bootstrap}",
        retry_on=(RetryableError,), deadline_s=deadline, backoff=Backoff(initial_s=0.5, max_s=10.0),
        should_stop=stop.is_set,
    )
    partitions = retry_call(
        lambda: ensure_topic(bootstrap, plan.topic, plan.partitions, timeout_s=10.0),
        what=f"kafka {bootstrap}: create or find topic {plan.topic}",
        retry_on=(RetryableError,), deadline_s=deadline, backoff=Backoff(initial_s=0.5, max_s=10.0),
        should_stop=stop.is_set,
    )
    if partitions != plan.partitions:
        log.warning("topic_partitions_differ", topic=plan.topic, existing=partitions,
                    requested=plan.partitions, hint="records partition by key over the existing count")
    return partitions


def run(spec: GenSpec, plan: SendPlan, bootstrap: str, stop: threading.Event) -> GenResult:
    """Send spec's records to plan.topic; returns when done, stopped, or failed (records flushed)."""
    state = _DeliveryState()
    producer = Producer(producer_config(bootstrap, **{
        "delivery.report.only.error": True,    # one Python callback per failure, not per record
        "on_delivery": state.on_delivery,
        "error_cb": state.on_error,
    }))
    schedule = RateSchedule.create(plan.rate, plan.bursts) if plan.rate > 0 else None
    progress = sys.stderr.isatty()
    feed = _Feed(spec)
    topic = plan.topic
    total = spec.events
    sent = late = invalid = 0
    last_behind_log = -_BEHIND_LOG_EVERY_S
    behind_logged = False
    last_progress = 0.0
    t0 = time.monotonic()

    while sent < total and not stop.is_set() and not (state.failed or state.fatal or state.refused):
        budget = total - sent
        if schedule is not None:
            elapsed = time.monotonic() - t0
            wait = schedule.wait_s(sent, elapsed, _TICK_S)
            if wait > 0:
                # On schedule: serve callbacks, then sleep until a tick's worth of records is
                # due. Sending whatever was due each turn sent 1-3 records per turn at 100k/s
                # (a record every 10 us), and the turn's overhead doubled the CPU per record.
                producer.poll(0)
                time.sleep(min(wait, 0.05))
                continue
            due = min(total, schedule.due_count(elapsed))
            behind = elapsed - schedule.due_s(sent)
            GEN_BEHIND.set(max(behind, 0.0))
            if behind > _BEHIND_THRESHOLD_S and elapsed - last_behind_log >= _BEHIND_LOG_EVERY_S:
                log.warning("gen_behind", behind_s=round(behind, 2), sent=sent,
                            rate=schedule.rate_at(elapsed))
                last_behind_log, behind_logged = elapsed, True
            elif behind_logged and behind <= _BEHIND_THRESHOLD_S:
                log.info("gen_caught_up", sent=sent)
                behind_logged = False
            budget = min(due - sent, _SLICE)
        health.beat()
        lo, records = feed.take(budget)
        accepted = _send(producer, topic, records, stop, state)
        n_late, n_invalid = feed.counts(lo, lo + accepted)
        sent += accepted
        late += n_late
        invalid += n_invalid
        GEN_EVENTS.labels(class_="on_time").inc(accepted - n_late - n_invalid)
        GEN_EVENTS.labels(class_="late").inc(n_late)
        GEN_EVENTS.labels(class_="invalid").inc(n_invalid)
        producer.poll(0)
        if progress and time.monotonic() - last_progress >= _PROGRESS_EVERY_S:
            last_progress = time.monotonic()
            _progress_line(sent, total, last_progress - t0)

    stopped = stop.is_set() and sent < total
    if stopped:
        log.info("gen_stopping", sent=sent, reason="signal", hint="flushing queued records")
    while len(producer) > 0 and state.fatal is None:
        producer.flush(1.0)
    seconds = time.monotonic() - t0
    if progress:
        _progress_line(sent, total, seconds)
        sys.stderr.write("\n")
    GEN_BEHIND.set(0.0)
    if state.fatal is not None:
        raise FatalError(f"Kafka producer fatal error: {state.fatal}")
    if state.refused is not None:
        raise FatalError(f"Kafka producer refused record {sent}: {state.refused}")
    return GenResult(events=sent, on_time=sent - late - invalid, late=late, invalid=invalid, seconds=seconds,
                     failed=state.failed, stopped=stopped, first_error=state.first_error)


def _progress_line(sent: int, total: int, elapsed: float) -> None:
    rate = sent / elapsed if elapsed > 0 else 0.0
    pct = 100.0 * sent / total if total else 100.0
    sys.stderr.write(f"\rgen: {sent:,}/{total:,} sent ({pct:5.1f}%), {rate:,.0f} events/s   ")
    sys.stderr.flush()
