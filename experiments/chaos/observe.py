"""The run's timeline, sampled from the outside: Kafka's log end offsets (what was produced)
and the ledger (what was committed, what awaits ClickHouse). Nothing here trusts a
process's own metrics, which die with it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, TopicPartition

from experiments.chaos.stack import Scope


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float                 # seconds since the run's start
    produced: int              # sum of log end offsets of the input
    committed: int             # sum of the ledger's next offsets
    pending_rows: int          # rows committed, not yet acknowledged by ClickHouse
    acked_rows: int

    @property
    def lag(self) -> int:
        return max(0, self.produced - self.committed)


@dataclass
class Observer:
    scope: Scope
    started_at: float
    every_s: float = 0.5
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _last_produced: int = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="chaos-observer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def _loop(self) -> None:
        consumer = Consumer({"bootstrap.servers": self.scope.bootstrap, "group.id": f"{self.scope.pipeline_id}-observer",
                             "enable.auto.commit": False, "log_level": 0})
        try:
            with self.scope.ledger() as conn:
                while not self._stop.is_set():
                    t0 = time.monotonic()
                    s = self._sample(consumer, conn)
                    if s is not None:
                        self.samples.append(s)
                    self._stop.wait(max(0.0, self.every_s - (time.monotonic() - t0)))
        finally:
            consumer.close()

    def _sample(self, consumer: Consumer, conn: object) -> Sample | None:
        produced = self._produced(consumer)
        (committed, pending, acked) = conn.execute(  # type: ignore[attr-defined]
            """SELECT (SELECT coalesce(sum(next_offset), 0) FROM partition_state WHERE pipeline_id = %(p)s),
                      (SELECT coalesce(sum(row_count), 0) FROM sink_batch WHERE pipeline_id = %(p)s
                         AND status = 'pending'),
                      (SELECT coalesce(sum(row_count), 0) FROM sink_batch WHERE pipeline_id = %(p)s
                         AND status = 'acked')""", {"p": self.scope.pipeline_id}).fetchone()
        return Sample(round(time.monotonic() - self.started_at, 3), produced, int(committed), int(pending),
                      int(acked))

    def _produced(self, consumer: Consumer) -> int:
        """Sum of end offsets; during a broker restart a partition may not answer: keep the
        last known total rather than a dip that is not real."""
        try:
            md = consumer.list_topics(self.scope.topic, timeout=2)
            parts = md.topics[self.scope.topic].partitions
            total = 0
            for p in parts:
                _low, high = consumer.get_watermark_offsets(TopicPartition(self.scope.topic, p), timeout=2,
                                                            cached=False)
                total += int(high)
            self._last_produced = max(self._last_produced, total)
        except (KafkaException, KeyError):
            pass
        return self._last_produced


@dataclass(frozen=True, slots=True)
class Recovery:
    rose: bool                 # the lag rose above its pre-kill level after the kill
    seconds: float | None      # kill -> lag back at that level; None: it did not rise, or not back in time


def recovery(samples: list[Sample], at_s: float, horizon_s: float = 300.0) -> Recovery:
    """From a kill at `at_s` until the lag is back at its pre-kill level: the lag of the
    last sample before the kill, plus a tolerance of 5 % or 2 s of intake. The lag first
    has to rise above that level (records pile up while an instance is down), else the
    kill cost nothing visible."""
    before = [s for s in samples if s.t_s <= at_s]
    after = [s for s in samples if at_s < s.t_s <= at_s + horizon_s]
    if not before or not after:
        return Recovery(False, None)
    pre = before[-1].lag
    rates = [(b.produced - a.produced) / max(b.t_s - a.t_s, 1e-6) for a, b in zip(before[-5:], before[-4:])]
    threshold = max(pre * 1.05, pre + 2 * max(rates, default=0.0))
    rose = False
    for s in after:
        if not rose:
            rose = s.lag > threshold
        elif s.lag <= threshold:
            return Recovery(True, round(s.t_s - at_s, 2))
    return Recovery(rose, None)
