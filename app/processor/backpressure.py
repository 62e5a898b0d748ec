"""Pause reading while ClickHouse is behind, instead of buffering, and publish the lag.

When the ledger's unacknowledged work (rows, or payload bytes) exceeds its bound, every
owned partition is paused (the records wait in Kafka); at half the bound they resume. The
backlog is read at most every `backpressure_check_s`; the consumer lag (end offset - next
offset) of each owned partition is published every `lag_check_s`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from confluent_kafka import Consumer, KafkaException, TopicPartition

from app.core import metrics
from app.core.retry import retry_call
from app.ledger import backlog
from app.ledger.ledger import Ledger
from app.processor.config import ProcessorConfig
from app.processor.ownership import Ownership

log = structlog.get_logger("processor")


class Backpressure:
    def __init__(self, cfg: ProcessorConfig, ledger: Ledger, consumer: Consumer, ownership: Ownership,
                 should_stop: Callable[[], bool]) -> None:
        self.cfg = cfg
        self.ledger = ledger
        self.consumer = consumer
        self.ownership = ownership
        self.should_stop = should_stop
        self._next_check_s = 0.0         # monotonic time of the next backlog read
        self._next_lag_s = 0.0           # ... and of the next lag publication

    def check(self) -> None:
        """Once per loop turn, before consuming; reads the ledger only when a check is due."""
        owned = self.ownership.owned
        if not owned:
            return
        now = time.monotonic()
        if now < self._next_check_s:
            return
        self._next_check_s = now + self.cfg.backpressure_check_s
        cfg = self.cfg
        work = retry_call(lambda: backlog.pending_work(self.ledger), what="postgres_pending_work",
                          should_stop=self.should_stop)
        metrics.PENDING_ROWS.set(work.rows)
        metrics.PENDING_BYTES.set(work.payload_bytes)
        metrics.PENDING_BATCHES.set(work.batches)
        over = work.rows > cfg.max_pending_rows or (cfg.max_pending_bytes > 0
                                                    and work.payload_bytes > cfg.max_pending_bytes)
        drained = work.rows <= cfg.max_pending_rows // 2 and (cfg.max_pending_bytes == 0
                                                              or work.payload_bytes <= cfg.max_pending_bytes // 2)
        topic = cfg.services.events_topic
        tps = [TopicPartition(topic, p) for p in owned]
        if not self.ownership.paused and over:
            self.consumer.pause(tps)
            self.ownership.paused = True
            metrics.BACKPRESSURE_PAUSES.inc()
            log.warning("backpressure_paused", pending_rows=work.rows, pending_bytes=work.payload_bytes,
                        max_pending_rows=cfg.max_pending_rows, max_pending_bytes=cfg.max_pending_bytes,
                        oldest_pending_s=round(work.oldest_age_s, 1), partitions=sorted(owned))
        elif self.ownership.paused and drained:
            self.consumer.resume(tps)
            self.ownership.paused = False
            log.info("backpressure_resumed", pending_rows=work.rows, pending_bytes=work.payload_bytes,
                     partitions=sorted(owned))
        metrics.PAUSED_PARTITIONS.set(len(tps) if self.ownership.paused else 0)
        if now >= self._next_lag_s:
            self._next_lag_s = now + cfg.lag_check_s
            self._publish_lag(topic)

    def _publish_lag(self, topic: str) -> None:
        for p, owned in self.ownership.owned.items():
            try:
                # fetch responses keep the cached end offset fresh, except while paused
                _low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=1.0,
                                                                 cached=not self.ownership.paused)
            except KafkaException as e:
                log.debug("consumer_lag_unavailable", partition=p, error=str(e))
                continue
            if high is not None and high >= 0:
                metrics.CONSUMER_LAG.labels(partition=str(p)).set(max(0, high - owned.next_offset))
            if owned.watermark_ms is not None:
                metrics.WATERMARK_LAG.labels(partition=str(p)).set(time.time() - owned.watermark_ms / 1000)
