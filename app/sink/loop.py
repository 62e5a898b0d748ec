"""ledger -> ClickHouse: insert every unacknowledged batch, then acknowledge it.

Order per batch: count the attempt in the ledger, insert with the batch's dedup token,
then mark it acknowledged. A crash between insert and acknowledgement re-sends the same
rows with the same token after restart, which ClickHouse drops (docs/exactly-once.md).
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from typing import Any

import structlog

from app.core import metrics
from app.core.config import ServiceSettings
from app.core.errors import RetryableError
from app.core.faults import crash_point
from app.core.retry import Backoff, retry_call
from app.ledger.identity import dedup_token
from app.ledger.ledger import Ledger, PendingBatch
from app.sink.writer import RollupWriter, insert_table

log = structlog.get_logger("sink")


@dataclass(frozen=True, slots=True)
class SinkConfig:
    services: ServiceSettings
    until_idle: bool = False
    idle_poll_s: float = 0.2
    fetch_batches: int = 64


class Sink:
    def __init__(self, cfg: SinkConfig, writer: RollupWriter) -> None:
        self.cfg = cfg
        s = cfg.services
        self.ledger = Ledger(s.database_url, s.pipeline_id, s.events_topic)
        self.writer = writer
        self.stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self._on_sigterm)
        log.info("sink_started", **self.cfg.services.masked())
        acked = 0
        try:
            while not self.stopping:
                batches = retry_call(lambda: self.ledger.pending_batches(self.cfg.fetch_batches),
                                     what="postgres_pending_batches", should_stop=lambda: self.stopping)
                if not batches:
                    if self.cfg.until_idle and self._idle_and_done():
                        log.info("sink_idle_done", batches_acked=acked)
                        break
                    time.sleep(self.cfg.idle_poll_s)
                    continue
                for batch in batches:
                    if self.stopping:
                        break
                    self.deliver(batch)
                    acked += 1
        finally:
            self.writer.close()
            self.ledger.close()
        return 0

    def _on_sigterm(self, *_: Any) -> None:
        log.info("sink_stopping")
        self.stopping = True

    def _idle_and_done(self) -> bool:
        finished, pending = retry_call(self.ledger.sink_run_state, what="postgres_run_state")
        return finished and not pending

    def deliver(self, batch: PendingBatch) -> None:
        started = time.monotonic()
        rows = retry_call(lambda: self.ledger.load_payload(batch.batch_id), what="postgres_load_batch")
        data = insert_table(rows, batch.batch_id, batch.checkpoint_id)
        token = dedup_token(self.cfg.services.pipeline_id, batch.batch_id)
        if batch.insert_attempts > 0:
            metrics.SINK_REPLAYS.inc()
            log.info("batch_replayed", batch_id=batch.batch_id, earlier_attempts=batch.insert_attempts)
        retry_call(lambda: self.ledger.record_attempt(batch.batch_id), what="postgres_record_attempt")

        def insert() -> None:
            t0 = time.monotonic()
            try:
                self.writer.insert(batch.table_name, data, token)
            except RetryableError:
                metrics.SINK_INSERT_ERRORS.labels(table=batch.table_name).inc()
                raise
            metrics.SINK_INSERT_SECONDS.labels(table=batch.table_name).observe(time.monotonic() - t0)

        crash_point("sink.before_insert")
        retry_call(insert, what="clickhouse_insert", backoff=Backoff(0.2, 10.0))
        crash_point("sink.after_insert")  # in ClickHouse, not yet acknowledged
        retry_call(lambda: self.ledger.acknowledge(batch.batch_id), what="postgres_acknowledge")
        metrics.SINK_BATCHES.labels(table=batch.table_name).inc()
        metrics.SINK_ROWS.labels(table=batch.table_name).inc(data.num_rows)
        metrics.SINK_INSERT_ROWS.labels(table=batch.table_name).observe(data.num_rows)
        log.info("batch_acknowledged", batch_id=batch.batch_id, table=batch.table_name, rows=data.num_rows,
                 version=batch.checkpoint_id, seconds=round(time.monotonic() - started, 4))
