"""ledger -> ClickHouse: coalesce pending batches into large inserts, exactly once.

The life of a group (docs/sink.md; mirrored in docs/exactly-once.md):

1. plan: consecutive pending batches of one table, until >= --batch-rows rows, or fewer
   once the oldest has waited --batch-max-wait (or the processor's run has ended);
2. record the group in the ledger (id from its members, token, member list, and its
   block layout: rows per block, where blocks are cut, the insert settings), one
   transaction, BEFORE anything is sent;
3. count the attempt (group and members);
4. insert the members' rows — sorted into one total order, cut into blocks by the
   group's recorded layout — with the group's token; then, if the token was sent more
   than once (or the group is in the check sample), check in ClickHouse that every row
   landed and repair what did not (app/sink/proof.py);
5. acknowledge the group and every member, one transaction.

A crash anywhere before 5 leaves the group open; on restart open groups are resumed
first, with the same members and the same recorded layout whatever the flags say now,
so the same rows in the same blocks with the same token reach ClickHouse, which drops
every block it already holds.

Stopping (SIGTERM / SIGINT): the loop ends after the current step. Every ledger or
ClickHouse call is made inside `_call` (retried) or `_observe` (the sink's own samples, not
retried), so the stop handlers know it. A call to a service that is down keeps failing:
its retry loop stops at once. A call that hangs (a black-holed
connection answers nothing) is abandoned `stop_grace_s` after the signal: the handler
raises StopRequested inside it, which is a crash at that instant as far as the ledger and
ClickHouse can tell — and every such crash is safe (the open group is resumed unchanged).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from app.clickhouse.client import block_layout_settings, legacy_insert_settings
from app.core import health, metrics
from app.core.config import ServiceSettings
from app.core.errors import InvariantViolation, RetryableError
from app.core.faults import crash_point
from app.core.retry import Backoff, retry_call
from app.ledger import sink_groups as groups_ledger
from app.ledger.backlog import pending_work
from app.ledger.ledger import Ledger
from app.ledger.retention import prune_payloads
from app.ledger.sink_groups import BlockLayout, GroupConflict, InsertGroup
from app.ledger.until_end import sink_run_state
from app.sink.groups import GroupPolicy, cut_blocks, group_rows, plan_group, resolve_layout
from app.sink.latency import LatencyObserver
from app.sink.proof import DEFAULT_CHECK_SAMPLE_RATE, DeliveryProof, check_reason
from app.sink.reconcile import Reconciler
from app.sink.writer import RollupWriter

log = structlog.get_logger("sink")
T = TypeVar("T")

DEFAULT_INSERT_BLOCK_ROWS = 200_000


class StopRequested(BaseException):
    """Raised by the stop handler inside a service call that did not return in time.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way out
    (a driver's, a retry loop's) takes it for a failure to retry."""


@dataclass(frozen=True, slots=True)
class SinkConfig:
    services: ServiceSettings
    until_idle: bool = False
    policy: GroupPolicy = field(default_factory=GroupPolicy)
    insert_block_rows: int = DEFAULT_INSERT_BLOCK_ROWS
    async_insert: bool = False
    check_sample_rate: float = DEFAULT_CHECK_SAMPLE_RATE  # first attempts checked in ClickHouse (retried: all)
    idle_poll_s: float = 0.2
    fetch_batches: int = 10_000     # batch headers read per planning round
    backlog_every_s: float = 1.0    # refresh the backlog gauges at most this often
    prune_every_groups: int = 20    # drop payloads no reader needs (app/ledger/retention.py)
    stop_grace_s: float = 3.0       # a service call still running this long after SIGTERM is abandoned

    def layout(self) -> BlockLayout:
        """The layout of groups recorded from now on (older groups keep theirs)."""
        return BlockLayout(self.insert_block_rows, "utc_day", block_layout_settings(async_insert=self.async_insert))

    def legacy_layout(self) -> BlockLayout:
        """What the sink before migration 0006 sent, with these flags (docs/sink.md)."""
        return BlockLayout(self.insert_block_rows, "rows", legacy_insert_settings(async_insert=self.async_insert))


class Sink:
    def __init__(self, cfg: SinkConfig, writer: RollupWriter, *,
                 reconcile: Callable[[Ledger], Reconciler] | None = None) -> None:
        self.cfg = cfg
        s = cfg.services
        self.ledger = Ledger(s.database_url, s.pipeline_id, s.events_topic)
        self.writer = writer
        self.proof = DeliveryProof(self.ledger, writer, self._call)
        self.latency = LatencyObserver(self.ledger)
        self.reconciler = None if reconcile is None else reconcile(self.ledger)
        self.stopping = False
        self.groups_acked = 0
        self._backlog_at = 0.0
        # what the main thread is doing, for the stop handlers
        self._call_what: str | None = None    # inside a service call (attempts and backoff sleeps)
        self._attempting = False              # ... inside an attempt, not a backoff sleep
        self._grace_over = False
        self._failed_call: str | None = None  # the call whose retries a stop ended

    def run(self) -> int:
        handlers = {s: signal.signal(s, self._on_stop_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        handlers[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_stop_grace_over)
        log.info("sink_started", batch_rows=self.cfg.policy.batch_rows, batch_max_wait_s=self.cfg.policy.max_wait_s,
                 insert_block_rows=self.cfg.insert_block_rows, async_insert=self.cfg.async_insert,
                 check_sample_rate=self.cfg.check_sample_rate, **self.cfg.services.masked())
        try:
            # ClickHouse first: a wrong password or database stops the sink now, not at the first group
            self._call(self.writer.prepare, what="clickhouse_connect", backoff=Backoff(0.2, 10.0))
            while not self.stopping:
                health.beat()
                if self.reconciler is not None:
                    self._observe(self.reconciler.maybe_sample, what="postgres_clickhouse_reconcile")
                self._observe_backlog()
                group = self._next_group()
                if group is None:
                    if self.cfg.until_idle and self._idle_and_done():
                        log.info("sink_idle_done", groups_acked=self.groups_acked)
                        break
                    time.sleep(self.cfg.idle_poll_s)
                    continue
                self.deliver(group)
        except StopRequested as e:
            # a hung call was abandoned; an open group stays open and is resumed, unchanged, next run
            log.warning("sink_stop_abandoned_call", what=str(e), grace_s=self.cfg.stop_grace_s)
        except RetryableError as e:
            if not self.stopping:
                raise
            # SIGTERM while a service was down: the open group stays in the ledger and is
            # resumed, unchanged, by the next run.
            log.warning("sink_stopped_with_open_group", what=self._failed_call, error=str(e))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._call_what = None
            self.writer.close()
            self.ledger.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        return 0

    # ---- stopping -------------------------------------------------------------

    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        if self.stopping:
            if self._call_what is not None:  # a second signal: give up on the call now
                raise StopRequested(self._call_what)
            return
        log.info("sink_stopping", signal=signal.Signals(signum).name, during=self._call_what)
        self.stopping = True
        if self._call_what is not None and not self._attempting:
            raise StopRequested(self._call_what)  # in a backoff sleep: nothing is in flight
        signal.setitimer(signal.ITIMER_REAL, self.cfg.stop_grace_s)

    def _on_stop_grace_over(self, _signum: int, _frame: Any) -> None:
        self._grace_over = True
        if self._call_what is not None:
            raise StopRequested(self._call_what)

    def _call(self, fn: Callable[[], T], *, what: str, backoff: Backoff | None = None) -> T:
        """A ledger or ClickHouse call, retried while its service is unavailable, given up
        when the sink is stopping (see the module docstring)."""
        def attempt() -> T:
            self._attempting = True
            try:
                return fn()
            finally:
                self._attempting = False

        with self._in_call(what, attempting=False):
            try:
                return retry_call(attempt, what=what, backoff=backoff, should_stop=lambda: self.stopping)
            except RetryableError:
                self._failed_call = self._failed_call or what  # the innermost: the service that is down
                raise

    def _observe(self, fn: Callable[[], None], *, what: str) -> None:
        """One of the sink's own observations (a latency sample, a reconciliation sample):
        not retried (the observation reports its own failures and never stops delivery),
        but a service call all the same, so a stop abandons it when it hangs."""
        with self._in_call(what, attempting=True):
            fn()

    @contextmanager
    def _in_call(self, what: str, *, attempting: bool) -> Iterator[None]:
        """Tell the stop handlers what the main thread is in (calls nest: the insert counts
        its attempt inside its own call); none starts once the stop's grace is over."""
        if self._grace_over:
            raise StopRequested(what)
        outer = (self._call_what, self._attempting)
        self._call_what, self._attempting = what, attempting
        try:
            yield
        finally:
            self._call_what, self._attempting = outer

    # ---- the loop -------------------------------------------------------------

    def _run_finished(self) -> bool:
        finished, _pending = self._call(lambda: sink_run_state(self.ledger), what="postgres_run_state")
        return finished

    def _idle_and_done(self) -> bool:
        finished, pending = self._call(lambda: sink_run_state(self.ledger), what="postgres_run_state")
        return finished and not pending

    def _observe_backlog(self) -> None:
        now = time.monotonic()
        if now - self._backlog_at < self.cfg.backlog_every_s:
            return
        self._backlog_at = now
        work = self._call(lambda: pending_work(self.ledger), what="postgres_pending_work")
        metrics.PENDING_ROWS.set(work.rows)
        metrics.PENDING_BYTES.set(work.payload_bytes)
        metrics.PENDING_BATCHES.set(work.batches)
        metrics.SINK_LAG_SECONDS.set(work.oldest_age_s)

    # ---- 1-2. plan and record -------------------------------------------------

    def _next_group(self) -> InsertGroup | None:
        """An open group (resumed as recorded), else a newly planned and recorded one."""
        opened = self._call(lambda: groups_ledger.open_groups(self.ledger, 1), what="postgres_open_groups")
        if opened:
            return opened[0]
        batches = self._call(lambda: groups_ledger.ungrouped_batches(self.ledger, self.cfg.fetch_batches),
                             what="postgres_pending_batches")
        if not batches:
            return None
        plan = plan_group(batches, self.cfg.policy, drain=False)
        if plan is None and self.cfg.until_idle and self._run_finished():
            plan = plan_group(batches, self.cfg.policy, drain=True)  # nothing more will come
        if plan is None:
            return None
        group = groups_ledger.new_group(self.cfg.services.pipeline_id, plan.table_name, plan.members, plan.reason,
                                        self.cfg.layout())

        def record() -> InsertGroup | None:
            try:
                return groups_ledger.record_group(self.ledger, group)
            except GroupConflict as e:  # another sink grouped a member first: plan again
                log.warning("group_conflict", group_id=group.group_id, error=str(e))
                return None
        recorded = self._call(record, what="postgres_record_group")
        if recorded is not None:
            log.info("group_recorded", group_id=group.group_id, table=group.table_name, rows=group.row_count,
                     batches=len(group.member_batch_ids), reason=group.reason, **_layout_fields(recorded.layout))
        return recorded

    def _with_layout(self, group: InsertGroup) -> InsertGroup:
        """A group recorded before migration 0006 has no layout: give it one, recorded
        before anything more is sent (docs/sink.md, "groups recorded before 0006")."""
        if group.layout is not None:
            return group
        layout, assumed = resolve_layout(group, current=self.cfg.layout(), legacy=self.cfg.legacy_layout())
        if assumed:
            log.warning("legacy_group_layout_assumed", group_id=group.group_id, table=group.table_name,
                        earlier_attempts=group.insert_attempts, status=group.status, **_layout_fields(layout),
                        hint="sent before migration 0006 with unrecorded flags: assumed the current "
                             "--insert-block-rows / --async-insert, as the sink that sent it used")
        return self._call(lambda: groups_ledger.adopt_layout(self.ledger, group, layout), what="postgres_adopt_layout")

    # ---- 3-5. attempt, insert, acknowledge ------------------------------------

    def deliver(self, group: InsertGroup) -> None:
        started = time.monotonic()
        group = self._with_layout(group)
        layout = group.layout
        assert layout is not None
        members = self._call(lambda: groups_ledger.load_members(self.ledger, group), what="postgres_load_group")
        data = cut_blocks(group_rows(members), layout.block_rows, layout.cut)
        if data.num_rows != group.row_count:
            raise InvariantViolation(f"group {group.group_id}: ledger says {group.row_count} rows, "
                                     f"members hold {data.num_rows}")
        if group.insert_attempts > 0 or group.status == "acked":
            log.info("group_replayed", group_id=group.group_id, table=group.table_name,
                     earlier_attempts=group.insert_attempts, status=group.status, **_layout_fields(layout))
        insert_s = 0.0
        attempts = group.insert_attempts
        metrics.INFLIGHT_BATCHES.set(len(members))

        def insert() -> None:
            nonlocal insert_s, attempts
            # 3. every attempt is counted before it is made, so the ledger shows each send
            self._call(lambda: groups_ledger.record_group_attempt(self.ledger, group),
                       what="postgres_record_attempt")
            if attempts > 0 or group.status == "acked":  # a retry here or a resumed group: sent again
                metrics.SINK_REPLAYS.inc(len(members))
            attempts += 1
            crash_point("sink.before_insert")
            t0 = time.monotonic()
            try:
                self.writer.insert(group.table_name, data, group.token, layout.settings)  # 4.
            except RetryableError:
                metrics.SINK_INSERT_ERRORS.labels(table=group.table_name).inc()
                raise
            insert_s = time.monotonic() - t0
            metrics.SINK_INSERT_SECONDS.labels(table=group.table_name).observe(insert_s)

        self._call(insert, what="clickhouse_insert", backoff=Backoff(0.2, 10.0))
        crash_point("sink.after_insert")  # in ClickHouse, not yet acknowledged
        checked = check_reason(group.group_id, attempts, self.cfg.check_sample_rate)
        if checked is not None:  # a resent token is where block dedup decides what lands: see for ourselves
            self.proof.prove(group, data, checked)
        self._call(lambda: groups_ledger.acknowledge_group(self.ledger, group, checked),
                   what="postgres_acknowledge")  # 5.
        metrics.INFLIGHT_BATCHES.set(0)
        acked_at = time.time()
        self._observe(lambda: self.latency.acknowledged(group.member_batch_ids, acked_at), what="postgres_batch_times")
        self.groups_acked += 1
        if self.groups_acked % self.cfg.prune_every_groups == 0:
            pruned = self._call(lambda: prune_payloads(self.ledger), what="postgres_prune_payloads")
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
                 attempts=attempts, checked=checked, insert_s=round(insert_s, 4),
                 seconds=round(time.monotonic() - started, 4))


def _layout_fields(layout: BlockLayout | None) -> dict[str, Any]:
    if layout is None:
        return {}
    return {"block_rows": layout.block_rows, "block_cut": layout.cut,
            "async_insert": bool(layout.settings.get("async_insert", 0))}
