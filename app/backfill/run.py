"""The backfill, start to end (docs/backfill.md). Every step is safe to repeat:

0. refuse rules, or an input topic, other than those pinned to the pipeline id (the
   ledger's `pipeline_rules`, recorded by the live processor's first checkpoint);
1. find the latest run of this request: an unfinished one is resumed with its pin and version;
2. read the highest version ClickHouse holds in the range, when it can be opened (a write
   from outside the ledger that the new version must outrank);
3. pin: the ledger positions, and (not in a dry run) the run's version allocated in the same
   transaction, so the pin covers exactly the versions below the run's;
4. refuse rules that disagree with the live run (watermark = max - max_out_of_orderness);
5. resolve the request against the pin: settled window slots, partitions to replay;
6. refuse when retention removed part of a partition's prefix;
7. replay each partition from offset 0 to its pinned position with the live rules;
8. prove the classification matched: watermark and DLQ counts equal the ledger's at the pin
   (a refused new run is forgotten: it has written nothing);
9. read ClickHouse in the range when it can be opened (diff, keys to delete); `--dry-run`
   stops here and prints what would change;
10. delete keys ClickHouse holds in the range that the truth does not, only rows the pin
    covers (version below the run's);
11. commit the windows as sink batches at that version, deterministic ids, chunk by chunk;
12. mark the run landed. The sink delivers the batches like any other.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from clickhouse_connect.driver.client import Client

from app.backfill.clickhouse import StoredRange, delete_keys, max_version, open_clickhouse, read_range
from app.backfill.compare import TableDiff, diff_table
from app.backfill.outcome import Outcome
from app.backfill.read_log import check_retention, open_consumer, read_prefixes, topic_partitions
from app.backfill.recompute import (
    PartitionReplay,
    check_classification,
    check_out_of_orderness,
    rows_by_table,
)
from app.backfill.request import BackfillRequest, Selection, select
from app.core import metrics
from app.core.config import ServiceSettings
from app.core.errors import FatalError, ServiceLocked
from app.core.faults import crash_point
from app.core.kafka import admin as kafka_admin
from app.core.kafka import topic_identity
from app.core.retry import retry_call
from app.ledger import backfill_runs as ledger_backfill
from app.ledger.backfill_runs import BackfillRun, Pin
from app.ledger.ledger import Ledger
from app.ledger.pipeline_rules import check_log, check_rules, recorded_by
from app.ledger.rows import WindowRow, rows_to_table
from app.processor.log_guard import rules_of
from app.processor.windows import KINDS

log = structlog.get_logger("backfill")


@dataclass(frozen=True, slots=True)
class BackfillConfig:
    services: ServiceSettings
    request: BackfillRequest
    dry_run: bool = False
    require_clickhouse: bool = False
    batch_rows: int = 200_000
    service_timeout_s: float = 30.0
    max_examples: int = 10


class Stopped(Exception):
    """SIGTERM/SIGINT between steps; a rerun of the same command resumes."""


@dataclass
class Backfill:
    cfg: BackfillConfig
    stopping: bool = False
    _started: float = field(default_factory=time.monotonic)

    def run(self) -> Outcome:
        self._handle_signals()
        s = self.cfg.services
        ledger = Ledger(s.database_url, s.pipeline_id, s.events_topic)
        try:
            return self._run(ledger)
        finally:
            ledger.close()

    def _handle_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, *_: Any) -> None:
        log.info("backfill_stopping")
        self.stopping = True

    def _check_stop(self) -> None:
        if self.stopping:
            raise Stopped("stopped by signal; rerun the same command to resume")

    def _retry(self, fn: Any, what: str) -> Any:
        return retry_call(fn, what=what, deadline_s=self.cfg.service_timeout_s, should_stop=lambda: self.stopping)

    def _check_pinned(self, ledger: Ledger) -> None:
        """Other rules, or a topic recreated or repartitioned since the live run read it, would
        recompute windows the live run never had: refuse, naming both values."""
        s, request = self.cfg.services, self.cfg.request
        pinned = self._retry(ledger.pinned, "postgres_pipeline_rules")
        if pinned is None:
            return  # no checkpoint yet: then the classification check (step 8) decides
        check_rules(s.pipeline_id, pinned, rules_of(request.policy, request.max_record_bytes))
        seen = self._retry(lambda: topic_identity(kafka_admin(s.kafka_bootstrap_servers), s.events_topic),
                           "kafka_topic_identity")
        check_log(s.pipeline_id, pinned.pin.log, seen, recorded=recorded_by(pinned))

    def _recompute(self, pin: Pin) -> tuple[Selection, dict[int, PartitionReplay], float]:
        """Steps 4-8 against `pin`: (selection, replays, replay seconds). FatalError when the
        rules or the input differ from the live run's."""
        cfg, request, s = self.cfg, self.cfg.request, self.cfg.services
        # 4. the watermark rule must be the live run's
        check_out_of_orderness(pin, request)
        # 5. + 6. resolve the request; the input must still hold every prefix
        consumer = open_consumer(s.kafka_bootstrap_servers, s.pipeline_id)
        try:
            partitions = topic_partitions(consumer, s.events_topic, deadline_s=cfg.service_timeout_s)
            selection = select(request, pin, partitions)
            check_retention(consumer, s.events_topic, selection.replay_to, deadline_s=cfg.service_timeout_s)
            # 7. replay
            t0 = time.monotonic()
            replays = {p: PartitionReplay(p, selection) for p in selection.replay_to}
            for p, records in read_prefixes(consumer, s.events_topic, selection.replay_to,
                                            stall_timeout_s=max(cfg.service_timeout_s, 10.0),
                                            should_stop=lambda: self.stopping):
                replays[p].feed(records)
            replay_s = time.monotonic() - t0
        except InterruptedError:
            raise Stopped("stopped by signal while reading the input; rerun the same command to resume") from None
        finally:
            consumer.close()
        records = sum(r.records for r in replays.values())
        metrics.BACKFILL_RECORDS.inc(records)
        log.info("backfill_replayed", partitions=len(replays), records=records, seconds=round(replay_s, 3))
        # 8. same classification as the live run
        check_classification(replays, pin, request)
        return selection, replays, replay_s

    def _pin(self, ledger: Ledger, unfinished: BackfillRun | None, above: int) -> tuple[Pin, BackfillRun | None]:
        """Step 3: the pin, and the run it belongs to (None in a dry run)."""
        cfg, request = self.cfg, self.cfg.request
        if unfinished is not None:
            return unfinished.pin, None if cfg.dry_run else unfinished
        if cfg.dry_run:
            pin = self._retry(lambda: ledger_backfill.read_pin(ledger, above_version=above), "postgres_read_pin")
            return pin, None
        run = self._retry(lambda: ledger_backfill.start_run(ledger, request.key, above_version=above),
                          "postgres_start_run")
        return run.pin, run

    def _abandon(self, ledger: Ledger, run: BackfillRun, why: str) -> None:
        if self._retry(lambda: ledger_backfill.abandon_run(ledger, run), "postgres_abandon_run"):
            log.info("backfill_run_forgotten", run_no=run.run_no, version=run.checkpoint_id, reason=why)

    def _run(self, ledger: Ledger) -> Outcome:
        cfg, request, s = self.cfg, self.cfg.request, self.cfg.services
        # 0. the pipeline's pinned rules and input log
        self._check_pinned(ledger)
        # 1. resume an unfinished run of this request
        latest = self._retry(lambda: ledger_backfill.latest_run(ledger, request.key), "postgres_backfill_run")
        unfinished = latest if latest is not None and not latest.landed else None
        resume = unfinished is not None and not cfg.dry_run
        # 2. versions written outside the ledger, before the pin: the new version goes above them
        above, note = self._stored_max_version()
        self._check_stop()
        # 3. the pin; for a new run, with its version
        pin, run = self._pin(ledger, unfinished, above)
        log.info("backfill_start", request=request.key, dry_run=cfg.dry_run, resume=resume,
                 run_no=None if run is None else run.run_no, version=None if run is None else run.checkpoint_id,
                 covers_below=pin.covers_below, **s.masked())
        if run is not None:
            crash_point("backfill.after_start")
        # 4.-8.
        try:
            selection, replays, replay_s = self._recompute(pin)
        except FatalError as e:
            if run is not None:
                self._abandon(ledger, run, str(e))
            raise
        records = sum(r.records for r in replays.values())
        truth = rows_by_table(replays)
        # 9. ClickHouse in the range, when it could be opened before the pin
        self._check_stop()
        client, note = self._open_clickhouse() if note is None else (None, note)
        try:
            stored = self._read_stored(client, selection, truth) if client is not None else {}
            extras = request.offsets is None
            diffs = tuple(diff_table(k.table, truth[k.table],
                                     None if client is None else stored.get(k.table, StoredRange(k.table, 0, 0, {}, 0)),
                                     extras=extras, version=pin.covers_below, max_examples=cfg.max_examples)
                          for k in KINDS)
            live_max = self._retry(lambda: ledger_backfill.max_live_checkpoint(ledger), "postgres_max_checkpoint")
            outcome = Outcome(request, cfg.dry_run, pin, selection, records, replay_s, diffs, note,
                              live_max_version=live_max)
            if run is None:
                return self._finish(outcome, pending_run=unfinished)
            nothing = not any(t.windows or t.extra for t in diffs)
            if nothing and unfinished is None:
                self._abandon(ledger, run, "nothing to land")
                log.info("backfill_nothing_to_land", request=request.key)
                return self._finish(outcome)
            self._check_stop()
            log.info("backfill_run", run_no=run.run_no, version=run.checkpoint_id, resumed=resume)
            self._warn_foreign(ledger, run, diffs)
            # 10. keys that ClickHouse holds and the truth does not, among the rows the pin covers
            deleted: int | None = None
            if client is not None and pin.covers_below is None:
                log.warning("backfill_extra_keys_kept", run_no=run.run_no,
                            reason="this run was pinned by an older release, before its version: which rows "
                                   "the pin covers is unknown, so no key is deleted; run the request again "
                                   "once it has landed")
            elif client is not None:
                deleted = 0
                for t, k in zip(diffs, KINDS, strict=True):
                    bounds = selection.time_bounds(k)
                    if t.extra and bounds is not None:
                        deleted += self._retry(
                            lambda t=t, b=bounds: delete_keys(client, t.table, b[0] // 1000, b[1] // 1000, t.extra,
                                                              run.checkpoint_id), "clickhouse_delete")
                metrics.BACKFILL_DELETED_KEYS.inc(deleted)
                crash_point("backfill.after_delete")
        finally:
            if client is not None:
                client.close()  # an embedded path is released before the sink needs it
        # 11. the windows, as sink batches at the run's version
        new, existing = self._land(ledger, run, selection, truth)
        # 12. done
        crash_point("backfill.before_finish")
        self._retry(lambda: ledger_backfill.finish_run(ledger, run, records=records, windows=outcome.windows,
                                                       batches=new + existing, deleted_keys=deleted),
                    "postgres_finish_run")
        metrics.BACKFILL_RUNS.inc()
        return self._finish(outcome, run=run, resumed=resume, batches_new=new, batches_existing=existing,
                            deleted_keys=deleted)

    def _warn_foreign(self, ledger: Ledger, run: BackfillRun, diffs: tuple[TableDiff, ...]) -> None:
        """A version above every id the ledger has handed out was written outside it after the
        run's version was chosen: it outranks the backfill's rows."""
        stored = max((t.max_version for t in diffs), default=0)
        if stored <= run.checkpoint_id:
            return
        last = self._retry(lambda: ledger_backfill.last_version(ledger), "postgres_last_version")
        if stored > last:
            log.warning("backfill_foreign_version_above_run", version=stored, run_version=run.checkpoint_id,
                        hint="rows written outside the ledger after this run started win over it; "
                             "run the request again once this run has landed")

    def _stored_max_version(self) -> tuple[int, str | None]:
        """Step 2: (highest version stored where the request can write, why ClickHouse cannot
        be read or None). The client is closed again: an embedded path stays free for the sink
        while the backfill replays."""
        client, note = self._open_clickhouse()
        if client is None:
            return 0, note
        r = self.cfg.request
        try:
            if r.from_ms is not None and r.to_ms is not None:
                lo, hi = r.from_ms // 1000, -(-r.to_ms // 1000)
            else:  # an offset request alone can touch any window
                lo = hi = None
            return max(self._retry(lambda k=k: max_version(client, k.table, lo, hi), "clickhouse_read")
                       for k in KINDS), None
        finally:
            client.close()

    def _finish(self, outcome: Outcome, **changes: Any) -> Outcome:
        return replace(outcome, elapsed_s=time.monotonic() - self._started, **changes)

    def _open_clickhouse(self) -> tuple[Client | None, str | None]:
        url = self.cfg.services.clickhouse_url
        try:
            client = self._retry(lambda: open_clickhouse(url, read_only=self.cfg.dry_run), "clickhouse_connect")
            self._handle_signals()  # the embedded engine installs its own handlers when it starts
            return client, None
        except ServiceLocked as e:
            if self.cfg.require_clickhouse:
                raise
            consequence = ("differences unknown; a real run now would land the windows without deleting keys "
                           "present only in ClickHouse or seeing versions written outside the ledger"
                           if self.cfg.dry_run else
                           "the recomputed windows are landed through the ledger (they replace missing and wrong "
                           "rows), but keys present only in ClickHouse are not deleted and versions written "
                           "outside the ledger are not seen")
            note = f"not read: {e}. So: {consequence} (docs/backfill.md)"
            log.warning("backfill_clickhouse_unreadable", reason=str(e))
            return None, note

    def _read_stored(self, client: Client, selection: Selection,
                     truth: dict[str, list[WindowRow]]) -> dict[str, StoredRange]:
        out = {}
        for k in KINDS:
            bounds = selection.time_bounds(k)
            if selection.request.from_ms is None:  # offset request: the span of what it touched
                starts = [r.window_start_s for r in truth[k.table]]
                bounds = (min(starts) * 1000, max(starts) * 1000 + 1000) if starts else None
            if bounds is None:
                continue
            out[k.table] = self._retry(lambda k=k, b=bounds: read_range(client, k.table, b[0] // 1000, b[1] // 1000),
                                       "clickhouse_read")
        return out

    def _land(self, ledger: Ledger, run: BackfillRun, selection: Selection,
              truth: dict[str, list[WindowRow]]) -> tuple[int, int]:
        ranges = {p: (0, end) for p, end in selection.replay_to.items()}
        new = existing = 0
        for table in sorted(truth):
            rows = truth[table]
            for chunk, i in enumerate(range(0, len(rows), self.cfg.batch_rows)):
                self._check_stop()
                part = rows_to_table(rows[i:i + self.cfg.batch_rows])
                bid, inserted = self._retry(
                    lambda c=chunk, t=part, n=table: ledger_backfill.commit_batch(ledger, run, n, c, t, ranges),
                    "postgres_backfill_batch")
                if inserted:
                    new += 1
                    metrics.BACKFILL_ROWS.labels(table=table).inc(part.num_rows)
                else:
                    existing += 1
                log.info("backfill_batch_committed", batch_id=bid, table=table, chunk=chunk, rows=part.num_rows,
                         version=run.checkpoint_id, already_committed=not inserted)
                crash_point("backfill.between_batches")
        return new, existing

