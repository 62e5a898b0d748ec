"""ledger -> ClickHouse: coalesce pending batches into large inserts, exactly once.

The life of a group (docs/sink.md; mirrored in docs/exactly-once.md):

1. plan: consecutive pending batches of one table, until >= --batch-rows rows, or fewer
   once the oldest has waited --batch-max-wait (or the processor's run has ended);
2. record the group in the ledger (id from its members, token, member list), one
   transaction, BEFORE anything is sent;
3. count the attempt (group and members);
4. insert the members' rows — sorted into one total order, split into fixed-size
   blocks — with the group's token;
5. acknowledge the group and every member, one transaction.

A crash anywhere before 5 leaves the group open; on restart open groups are resumed
first, with the same members, so the same rows in the same blocks with the same token
reach ClickHouse, which drops every block it already holds.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from app.core import metrics
from app.core.config import ServiceSettings
from app.core.errors import InvariantViolation, RetryableError
from app.core.faults import crash_point
from app.core.retry import Backoff, retry_call
from app.ledger import insert_groups as groups_ledger
from app.ledger.insert_groups import GroupConflict, InsertGroup
from app.ledger.ledger import Ledger
from app.ledger.retention import prune_payloads
from app.sink.groups import GroupPolicy, group_rows, plan_group, split_blocks
from app.sink.writer import RollupWriter

log = structlog.get_logger("sink")

DEFAULT_INSERT_BLOCK_ROWS = 200_000


@dataclass(frozen=True, slots=True)
class SinkConfig:
    services: ServiceSettings
    until_idle: bool = False
    policy: GroupPolicy = field(default_factory=GroupPolicy)
    insert_block_rows: int = DEFAULT_INSERT_BLOCK_ROWS
    idle_poll_s: float = 0.2
    fetch_batches: int = 10_000     # batch headers read per planning round
    backlog_every_s: float = 1.0    # refresh the backlog gauges at most this often
    prune_every_groups: int = 20    # drop payloads no reader needs (app/ledger/retention.py)


class Sink:
    def __init__(self, cfg: SinkConfig, writer: RollupWriter) -> None:
        self.cfg = cfg
        s = cfg.services
        self.ledger = Ledger(s.database_url, s.pipeline_id, s.events_topic)
        self.writer = writer
        self.stopping = False
        self.groups_acked = 0
        self._backlog_at = 0.0

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self._on_sigterm)
        log.info("sink_started", batch_rows=self.cfg.policy.batch_rows, batch_max_wait_s=self.cfg.policy.max_wait_s,
                 insert_block_rows=self.cfg.insert_block_rows, **self.cfg.services.masked())
        try:
            while not self.stopping:
                self._observe_backlog()
                group = self._next_group()
                if group is None:
                    if self.cfg.until_idle and self._idle_and_done():
                        log.info("sink_idle_done", groups_acked=self.groups_acked)
                        break
                    time.sleep(self.cfg.idle_poll_s)
                    continue
                self.deliver(group)
        except RetryableError as e:
            if not self.stopping:
                raise
            # SIGTERM while a service was down: the open group stays in the ledger and is
            # resumed, unchanged, by the next run.
            log.warning("sink_stopped_with_open_group", error=str(e))
        finally:
            self.writer.close()
            self.ledger.close()
        return 0

    def _on_sigterm(self, *_: Any) -> None:
        log.info("sink_stopping")
        self.stopping = True

    def _run_finished(self) -> bool:
        finished, _pending = retry_call(self.ledger.sink_run_state, what="postgres_run_state")
        return finished

    def _idle_and_done(self) -> bool:
        finished, pending = retry_call(self.ledger.sink_run_state, what="postgres_run_state")
        return finished and not pending

    def _observe_backlog(self) -> None:
        now = time.monotonic()
        if now - self._backlog_at < self.cfg.backlog_every_s:
            return
        self._backlog_at = now
        work = retry_call(lambda: groups_ledger.pending_work(self.ledger), what="postgres_pending_work")
        metrics.PENDING_ROWS.set(work.rows)
        metrics.PENDING_BYTES.set(work.payload_bytes)
        metrics.SINK_LAG_SECONDS.set(work.oldest_age_s)

    # ---- 1-2. plan and record -------------------------------------------------

    def _next_group(self) -> InsertGroup | None:
        """An open group (resumed as recorded), else a newly planned and recorded one."""
        stop = lambda: self.stopping
        opened = retry_call(lambda: groups_ledger.open_groups(self.ledger, 1), what="postgres_open_groups",
                            should_stop=stop)
        if opened:
            return opened[0]
        batches = retry_call(lambda: groups_ledger.ungrouped_batches(self.ledger, self.cfg.fetch_batches),
                             what="postgres_pending_batches", should_stop=stop)
        if not batches:
            return None
        plan = plan_group(batches, self.cfg.policy, drain=False)
        if plan is None and self.cfg.until_idle and self._run_finished():
            plan = plan_group(batches, self.cfg.policy, drain=True)  # nothing more will come
        if plan is None:
            return None
        group = groups_ledger.new_group(self.cfg.services.pipeline_id, plan.table_name, plan.members, plan.reason)

        def record() -> InsertGroup | None:
            try:
                return groups_ledger.record_group(self.ledger, group)
            except GroupConflict as e:  # another sink grouped a member first: plan again
                log.warning("group_conflict", group_id=group.group_id, error=str(e))
                return None
        recorded = retry_call(record, what="postgres_record_group", should_stop=stop)
        if recorded is not None:
            log.info("group_recorded", group_id=group.group_id, table=group.table_name, rows=group.row_count,
                     batches=len(group.member_batch_ids), reason=group.reason)
        return recorded

    # ---- 3-5. attempt, insert, acknowledge ------------------------------------

    def deliver(self, group: InsertGroup) -> None:
        started = time.monotonic()
        stop = lambda: self.stopping
        members = retry_call(lambda: groups_ledger.load_members(self.ledger, group), what="postgres_load_group",
                             should_stop=stop)
        data = split_blocks(group_rows(members), self.cfg.insert_block_rows)
        if data.num_rows != group.row_count:
            raise InvariantViolation(f"group {group.group_id}: ledger says {group.row_count} rows, "
                                     f"members hold {data.num_rows}")
        if group.insert_attempts > 0 or group.status == "acked":
            metrics.SINK_REPLAYS.inc(len(members))
            log.info("group_replayed", group_id=group.group_id, table=group.table_name,
                     earlier_attempts=group.insert_attempts, status=group.status)
        insert_s = 0.0
        attempts = group.insert_attempts

        def insert() -> None:
            nonlocal insert_s, attempts
            # 3. every attempt is counted before it is made, so the ledger shows each send
            retry_call(lambda: groups_ledger.record_group_attempt(self.ledger, group),
                       what="postgres_record_attempt", should_stop=stop)
            attempts += 1
            crash_point("sink.before_insert")
            t0 = time.monotonic()
            try:
                self.writer.insert(group.table_name, data, group.token)  # 4.
            except RetryableError:
                metrics.SINK_INSERT_ERRORS.labels(table=group.table_name).inc()
                raise
            insert_s = time.monotonic() - t0
            metrics.SINK_INSERT_SECONDS.labels(table=group.table_name).observe(insert_s)

        retry_call(insert, what="clickhouse_insert", backoff=Backoff(0.2, 10.0), should_stop=stop)
        crash_point("sink.after_insert")  # in ClickHouse, not yet acknowledged
        retry_call(lambda: groups_ledger.acknowledge_group(self.ledger, group), what="postgres_acknowledge")  # 5.
        self.groups_acked += 1
        if self.groups_acked % self.cfg.prune_every_groups == 0:
            pruned = retry_call(lambda: prune_payloads(self.ledger), what="postgres_prune_payloads")
            if pruned:
                log.info("payloads_pruned", batches=pruned)
        table = group.table_name
        metrics.SINK_BATCHES.labels(table=table).inc(len(members))
        metrics.SINK_ROWS.labels(table=table).inc(data.num_rows)
        metrics.SINK_INSERT_ROWS.labels(table=table).observe(data.num_rows)
        metrics.SINK_GROUPS.labels(table=table, reason=group.reason).inc()
        metrics.SINK_GROUP_BATCHES.labels(table=table).observe(len(members))
        log.info("group_acknowledged", group_id=group.group_id, table=table, rows=data.num_rows,
                 batches=len(members), blocks=data.column(0).num_chunks, reason=group.reason,
                 attempts=attempts, insert_s=round(insert_s, 4),
                 seconds=round(time.monotonic() - started, 4))
