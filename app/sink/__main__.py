"""`python -m app.sink`: ledger -> ClickHouse, coalesced inserts, every row exactly once (contract §7)."""

from __future__ import annotations

import argparse
import sys

import structlog

from app.clickhouse.client import raise_fatal_on_bad_url
from app.clickhouse.errors import ClickHouseRejected
from app.core.cli import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    StopSignals,
    fail,
    metrics_port,
    package_version,
)
from app.core.config import (
    ArgumentParser,
    add_runtime_args,
    add_service_args,
    add_service_timeout_arg,
    duration_arg,
    fraction_arg,
    non_negative_int_arg,
    positive_int_arg,
    service_settings,
)
from app.core.errors import ConfigurationError, FatalError, PipelineError, RetryableError, ServiceUnavailable
from app.core.faults import add_fault_injection_arg
from app.core.faults import arm as arm_faults
from app.core.probes import watch_services
from app.core.retry import retry_call
from app.core.serve import serve_metrics
from app.core.startup import start_command
from app.ledger.schema_check import require_migrated
from app.sink.faults import FAULT_MODES, FaultyWriter, InsertFaultPlan
from app.sink.groups import GroupPolicy
from app.sink.loop import DEFAULT_INSERT_BLOCK_ROWS, Sink, SinkConfig
from app.sink.proof import DEFAULT_CHECK_SAMPLE_RATE
from app.sink.reconcile import ReconcilePolicy, Reconciler
from app.sink.writer import ClickHouseWriter, RollupWriter

PROG = "sink"
EPILOG = """\
exit status (docs/operations.md, the same table for every command):
  0  stopped: --until-idle done, or SIGTERM/SIGINT
  1  failed: ClickHouse rejected an insert for good (e.g. an incompatible table), an
     invariant broke, or an unexpected error; the open group is resumed unchanged next run
  2  usage or configuration: bad flags or LOG_LEVEL, a metrics port in use, an unmigrated
     ledger, Postgres or ClickHouse refusing the credentials or the database
  3  Postgres or ClickHouse unreachable past --service-timeout (default: retry forever)
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m app.sink",
                       description="Coalesce unacknowledged ledger batches into large ClickHouse inserts, each\n"
                                   "recorded in the ledger with its deterministic dedup token before it is sent,\n"
                                   "then acknowledge them (docs/sink.md). ClickHouse is connected and its tables\n"
                                   "created or migrated at start, whether or not anything is pending.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_service_args(p, uses=frozenset({"database", "clickhouse", "events_topic", "pipeline_id"}))
    add_service_timeout_arg(p, default="forever")
    p.add_argument("--until-idle", action="store_true",
                   help="exit once no batch is pending and the processor finished its --until-end run")
    b = p.add_argument_group("insert size")
    b.add_argument("--batch-rows", type=positive_int_arg, default=100_000,
                   help="coalesce pending batches of a table into inserts of up to about this many rows "
                        "(default %(default)s)")
    b.add_argument("--batch-max-wait", type=duration_arg, default=5.0, metavar="DURATION",
                   help="insert whatever a table has pending once its oldest batch has waited this long "
                        "(default 5s)")
    b.add_argument("--insert-block-rows", type=positive_int_arg, default=DEFAULT_INSERT_BLOCK_ROWS,
                   help="at most this many rows per ClickHouse block of an insert (a block also ends where the "
                        "UTC day changes); recorded with each new group, a group already recorded keeps its "
                        "own on every retry (default %(default)s)")
    b.add_argument("--async-insert", action="store_true",
                   help="use ClickHouse async inserts (deduplicated, waited for) instead of synchronous ones "
                        "for new groups; recorded like the block size")
    p.add_argument("--reconcile-every", type=duration_arg, default=15.0, metavar="DURATION",
                   help="compare the ledger's settled, acknowledged totals with ClickHouse FINAL this often "
                        "(pipeline_reconcile_* metrics; 0 = never) (default 15s)")
    t = p.add_argument_group("insert latency")
    t.add_argument("--batch-min-rows", type=positive_int_arg, default=10_000, metavar="N",
                   help="insert a table's pending rows as soon as they reach N (up to --batch-rows per insert) "
                        "instead of waiting for --batch-rows; fewer wait for --batch-max-wait (default %(default)s)")
    v = p.add_argument_group("proven delivery")
    v.add_argument("--check-sample-rate", type=fraction_arg, default=DEFAULT_CHECK_SAMPLE_RATE, metavar="P",
                   help="check this fraction of first attempts in ClickHouse (every row present at its version "
                        "or newer) before acknowledging, repairing what is missing; groups sent more than once "
                        "are always checked (default %(default)s)")
    f = p.add_argument_group("insert fault injection (testing; needs --fault-injection)")
    f.add_argument("--fail-insert-every", type=non_negative_int_arg, default=0, metavar="N",
                   help="make every Nth insert call fail (then retried), 0 = never (default 0)")
    f.add_argument("--fail-insert-probability", type=fraction_arg, default=0.0, metavar="P",
                   help="make each insert call fail with probability P (default 0)")
    f.add_argument("--fail-insert-seed", type=int, default=0,
                   help="seed of the --fail-insert-probability draws (default 0)")
    f.add_argument("--fail-insert-mode", choices=FAULT_MODES, default="before",
                   help="before: nothing written; after: all written, then the error; mid: the first half "
                        "of the insert's blocks written, then the error; drop: nothing written and no error "
                        "(loses rows on purpose: shows that verify notices) (default before)")
    add_runtime_args(p, metrics_port=9309)
    add_fault_injection_arg(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    faults = InsertFaultPlan(every=args.fail_insert_every, probability=args.fail_insert_probability,
                             seed=args.fail_insert_seed, mode=args.fail_insert_mode)
    if faults.enabled and not args.fault_injection:
        parser.error("--fail-insert-every / --fail-insert-probability need --fault-injection")
    start_command(PROG, args)
    arm_faults(args.fault_injection, command="sink")
    log = structlog.get_logger("sink")
    settings = service_settings(args)
    cfg = SinkConfig(services=settings, until_idle=args.until_idle,
                     policy=GroupPolicy(batch_rows=args.batch_rows, max_wait_s=args.batch_max_wait,
                                        min_rows=args.batch_min_rows),
                     insert_block_rows=args.insert_block_rows, async_insert=args.async_insert,
                     check_sample_rate=args.check_sample_rate)
    log.info("sink_starting", version=package_version(), service_timeout_s=args.service_timeout,
             **settings.masked())
    try:
        raise_fatal_on_bad_url(settings.clickhouse_url)
        with metrics_port(PROG, args.metrics_port, args.metrics_host):
            serve_metrics(args.metrics_port, args.metrics_host, stage="sink", pipeline_id=settings.pipeline_id)
        if args.metrics_port:
            watch_services(settings, kafka=False)  # the sink reads only the ledger and writes ClickHouse
        with StopSignals() as stop:
            try:  # ClickHouse is connected and migrated first thing in Sink.run
                retry_call(lambda: require_migrated(settings.database_url), what="postgres_ledger_schema",
                           should_stop=stop)
            except RetryableError as e:
                if not stop():
                    raise
                log.info("sink_stopped", reason=f"{stop.requested} while waiting: {e}")
                return EXIT_OK
        clickhouse = ClickHouseWriter(settings.clickhouse_url)
        writer: RollupWriter = clickhouse
        if faults.enabled:
            log.warning("insert_faults_enabled", every=faults.every, probability=faults.probability,
                        seed=faults.seed, mode=faults.mode)
            writer = FaultyWriter(writer, faults)
        policy = ReconcilePolicy(every_s=args.reconcile_every)
        reconcile = (lambda ledger: Reconciler(ledger, clickhouse.client, policy)) if args.reconcile_every else None
        return Sink(cfg, writer, reconcile=reconcile).run()
    except ClickHouseRejected as e:  # a wrong password (2), an incompatible table (1): retrying cannot help
        log.error("sink_fatal", error=str(e), code=e.code, exit_code=e.exit_code)
        return fail(PROG, str(e), e.exit_code)
    except ConfigurationError as e:
        log.error("sink_config_error", error=str(e))
        return fail(PROG, str(e), EXIT_USAGE)
    except FatalError as e:
        log.error("sink_fatal", error=str(e))
        return fail(PROG, str(e), EXIT_FAILED)
    except ServiceUnavailable as e:
        log.error("sink_gave_up", error=str(e))
        return fail(PROG, str(e), EXIT_UNAVAILABLE)
    except PipelineError as e:
        log.error("sink_failed", error=f"{type(e).__name__}: {e}")
        return fail(PROG, f"{type(e).__name__}: {e}", EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
