"""End-to-end latency per input record: from its Kafka timestamp to the acknowledgement of
its rows in ClickHouse.

The ledger keeps, per live batch, the Kafka time range of the records its checkpoint
covers and their count (migration 0009). When a group is acknowledged, each member's
records are observed in `pipeline_e2e_seconds{table}` as spread evenly over
[ack - newest timestamp, ack - oldest timestamp]: every record's true latency lies in that
interval, so a quantile is off by at most the Kafka time span of one checkpoint (about the
processor's --batch-max-wait when it keeps up). Each record counts once per table.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from app.core import metrics
from app.core.errors import RetryableError
from app.ledger.batch_times import batch_times
from app.ledger.ledger import Ledger

log = structlog.get_logger("sink")


class LatencyObserver:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def acknowledged(self, batch_ids: Sequence[int], acked_at_s: float) -> None:
        """After a group's acknowledgement; a ledger hiccup costs this sample, never the group."""
        try:
            times = batch_times(self.ledger, batch_ids)
        except RetryableError as e:
            log.warning("e2e_latency_not_observed", batches=len(batch_ids), error=str(e))
            return
        for t in times:
            metrics.E2E_SECONDS.observe_spread(t.table_name, acked_at_s - t.kafka_ts_max_ms / 1000,
                                               acked_at_s - t.kafka_ts_min_ms / 1000, t.records)
