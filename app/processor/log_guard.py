"""Before the processor reads a record: is this the pipeline its ledger describes?

Checked at start (before subscribing) and again on every assignment:
- the rules this process runs with are the ones the pipeline id is pinned to;
- the topic is the log the ledger read: same topic id (not deleted and created again)
  and same partition count (added partitions split accounts, contract §2);
- each assigned partition's log still holds the ledger's next offset: it does not start
  after it (records deleted before they were read) nor end before it (truncated or
  recreated).
The consumer never resets an offset by itself (`auto.offset.reset=error`): a fetch that
falls out of the log while running is the same loss, reported by `fetch_out_of_range`.
Every mismatch is a PipelineMismatch (exit code 2); the commit transaction checks the pin
once more (app/ledger/pipeline_rules.py), so two instances started at once with different
rules cannot both commit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import structlog
from confluent_kafka import Consumer, KafkaError
from confluent_kafka.admin import AdminClient

from app.core.config import LatenessFlags
from app.core.errors import PipelineMismatch, RetryableError
from app.core.kafka import TopicIdentity, admin, topic_identity, watermark_offsets
from app.core.retry import retry_call
from app.ledger.ledger import Ledger
from app.ledger.pipeline_rules import (
    INPUT_LOG,
    PinnedPipeline,
    PipelinePin,
    check_log,
    check_rules,
    duration_text,
    recorded_by,
)
from app.processor.windows import LatenessPolicy

log = structlog.get_logger("processor.log_guard")


def rules_of(policy: LatenessPolicy, max_record_bytes: int) -> LatenessFlags:
    return LatenessFlags(policy.max_out_of_orderness_ms, policy.allowed_lateness_minute_ms,
                         policy.allowed_lateness_hour_ms, max_record_bytes)


def check_position(topic: str, partition: int, next_offset: int, low: int, high: int) -> None:
    """The partition's log [low, high) must hold the pipeline's next offset (high itself: caught up)."""
    if next_offset < low:
        raise PipelineMismatch(
            f"{topic}[{partition}] now starts at offset {low}, but the pipeline's next offset is "
            f"{next_offset}: records [{next_offset}, {low}) were deleted (retention or delete-records) "
            f"before the pipeline read them; refusing to skip them ({INPUT_LOG})")
    if next_offset > high:
        raise PipelineMismatch(
            f"{topic}[{partition}] ends at offset {high}, but the ledger has read up to {next_offset}: "
            f"the log was truncated or deleted and created again, it is not the log the ledger read "
            f"({INPUT_LOG})")


class LogGuard:
    def __init__(self, bootstrap: str, ledger: Ledger, topic: str, rules: LatenessFlags,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
        self.bootstrap = bootstrap
        self.ledger = ledger
        self.topic = topic
        self.rules = rules
        self.should_stop = should_stop
        self.pinned: PinnedPipeline | None = None   # the ledger's row; never changes once read
        self.first_seen: TopicIdentity | None = None
        self._admin: AdminClient | None = None

    def check_start(self) -> None:
        """Before subscribing: rules and topic against the ledger's pin, if there is one yet."""
        self._check(at="start")

    def check_assignment(self) -> None:
        """On every assignment, before any assigned partition is restored or read; then the
        next commit carries what was checked (Ledger.pin), to be recorded or compared again."""
        seen = self._check(at="assignment")
        if seen is None:
            raise PipelineMismatch(f"topic {self.topic!r} was deleted while its partitions were being "
                                   "assigned")
        self.ledger.pin = PipelinePin(self.rules, seen)

    def check_position(self, consumer: Consumer, partition: int, next_offset: int) -> None:
        low, high = watermark_offsets(consumer, self.topic, partition)  # RetryableError: caller retries
        check_position(self.topic, partition, next_offset, low, high)

    def fetch_out_of_range(self, consumer: Consumer, err: KafkaError,
                           next_offsets: Mapping[int, int]) -> PipelineMismatch:
        """The error to stop with when a fetch fell out of the log while running: names the
        partitions whose next offset the log no longer holds, when they can be found."""
        for p, offset in sorted(next_offsets.items()):
            try:
                self.check_position(consumer, p, offset)
            except PipelineMismatch as e:
                return e
            except Exception as e:  # noqa: BLE001 (the fetch error below is still the answer)
                log.warning("position_check_failed", partition=p, error=str(e))
        return PipelineMismatch(f"reading {self.topic} failed: {err.str()}: records the pipeline has not "
                                f"read are no longer in the log ({INPUT_LOG})")

    # ---- internals --------------------------------------------------------

    def _check(self, *, at: str) -> TopicIdentity | None:
        pid = self.ledger.pipeline_id
        if self.pinned is None:
            self.pinned = retry_call(self.ledger.pinned, what="postgres_pipeline_rules",
                                     should_stop=self.should_stop)
        if self.pinned is not None:
            check_rules(pid, self.pinned, self.rules)
        seen = retry_call(self._describe_topic, what="kafka_describe_topic", should_stop=self.should_stop)
        if self.pinned is not None:
            check_log(pid, self.pinned.pin.log, seen, recorded=recorded_by(self.pinned))
        elif self.first_seen is not None:
            # nothing recorded yet, but this process may have read from the log it saw first
            check_log(pid, self.first_seen, seen, recorded="as this process saw it first")
        if self.first_seen is None and seen is not None:
            self.first_seen = seen
        r = self.rules
        log.info("pipeline_rules_checked", at=at, pinned=self.pinned is not None,
                 pinned_by_checkpoint=None if self.pinned is None else self.pinned.checkpoint_id,
                 max_out_of_orderness=duration_text(r.max_out_of_orderness_ms),
                 allowed_lateness_minute=duration_text(r.allowed_lateness_minute_ms),
                 allowed_lateness_hour=duration_text(r.allowed_lateness_hour_ms),
                 max_record_bytes=r.max_record_bytes, topic=self.topic,
                 topic_id=None if seen is None else seen.topic_id,
                 partitions=None if seen is None else seen.partitions)
        return seen

    def _describe_topic(self) -> TopicIdentity | None:
        try:
            return topic_identity(self._client(), self.topic)
        except RetryableError:
            # describe goes to the broker the client's metadata names as controller; when that
            # broker died, the same client keeps asking it until its metadata is refreshed
            # (topic.metadata.refresh.interval.ms, 5 min), so the assignment stalled that long.
            # A new client bootstraps and learns the live brokers (an AdminClient has no close()).
            self._admin = None
            raise

    def _client(self) -> AdminClient:
        if self._admin is None:
            self._admin = admin(self.bootstrap)
        return self._admin
