"""`python -m app.verify`: recompute the ground truth from the input log and diff it against
ClickHouse FINAL, the ledger's DLQ counts and the DLQ topic's distinct record identities, and
report accounts seen in more than one partition (contract §7). Exit 0 only when equal.

Python classifies each record (truth.py); everything that grows with the log (classified
events, DLQ identities, FINAL's rows) goes to verify's own embedded ClickHouse in a work
directory (store.py) and is aggregated and diffed there in SQL (sql_diff.py), so memory
stays bounded whatever the run's size; the pipeline's ClickHouse is read by a child
process (final_export.py)."""

from __future__ import annotations

import argparse
import math
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import structlog

from app.clickhouse.client import raise_fatal_on_bad_url
from app.clickhouse.schema import TABLE_OF_KIND
from app.core.cli import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    fail,
    metrics_port,
)
from app.core.config import (
    ArgumentParser,
    add_lateness_args,
    add_runtime_args,
    add_service_args,
    add_service_timeout_arg,
    lateness_flags,
    mask_url,
    non_negative_int_arg,
    positive_int_arg,
    psycopg_conninfo,
    service_settings,
)
from app.core.errors import FatalError, RetryableError, ServiceLocked, ServiceUnavailable
from app.core.postgres import connect_error
from app.core.retry import retry_call
from app.core.serve import serve_metrics
from app.core.startup import start_command
from app.verify.compare import read_ledger_dlq, read_ledger_positions
from app.verify.dlq_topic import read_dlq_topic
from app.verify.final_export import PipelineFinal
from app.verify.read_log import open_consumer, partition_ranges, read_records
from app.verify.render import RunInfo, summary_json, summary_lines
from app.verify.sql_diff import diff_store
from app.verify.store import DEFAULT_SPILL_MIB, VerifyStore
from app.verify.truth import Classifier, Rules, gc_paused

log = structlog.get_logger("verify")

PROG = "verify"
EXIT_EXACT = EXIT_OK
EXIT_MISMATCH = EXIT_FAILED

T = TypeVar("T")

EPILOG = """\
exit status (docs/operations.md, the same table for every command):
  0  EXACT: every rollup key, every DLQ count and every DLQ record identity equals the ground
     truth, and no account has valid events in more than one partition
  1  MISMATCH: at least one difference (the summary lists them and ends with the verdict
     MISMATCH); or verify itself failed with an unexpected error (a `verify: error:` line,
     no verdict): either way the pipeline is not shown exact
  2  usage or configuration: bad flags, missing topic or ledger schema, input removed by
     retention, refused credentials
  3  could not finish: Kafka, Postgres or ClickHouse unreachable past --service-timeout, or
     the embedded ClickHouse path in use (stop the sink first)
  130 interrupted (SIGINT)
"""


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m app.verify",
        description="Recompute the ground truth from the whole input topic (contract §2-§3) and diff it per "
                    "key against ClickHouse FINAL, against the ledger's DLQ counts and against the distinct "
                    "(source_partition, source_offset, reason, window_kind) identities in the DLQ topic; an "
                    "account whose valid events are in more than one partition is reported as an error.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_service_args(parser)  # every service: verify reads them all
    add_lateness_args(parser, "rules (must match the processor's)")
    o = parser.add_argument_group("output")
    o.add_argument("--max-diffs", type=non_negative_int_arg, default=20, metavar="N",
                   help="how many differing keys to print (default %(default)s)")
    o.add_argument("--json", action="store_true",
                   help="also print the summary as one JSON line at the very end")
    w = parser.add_argument_group("work space")
    w.add_argument("--work-dir", type=Path, default=os.environ.get("VERIFY_WORK_DIR") or None, metavar="DIR",
                   help="where verify's own embedded ClickHouse aggregates the truth, in a temporary directory "
                        "removed at the end; needs disk of about 10 bytes per input record "
                        "[VERIFY_WORK_DIR, default the system's temporary directory]")
    w.add_argument("--spill-mib", type=positive_int_arg, default=DEFAULT_SPILL_MIB, metavar="MIB",
                   help="aggregation state past which verify's ClickHouse spills to disk instead of growing "
                        "(default %(default)s; measured peaks with 2M keys: 0.85 GiB at 128, 1.1 GiB at 512)")
    r = parser.add_argument_group("retries")
    add_service_timeout_arg(r, default="30s")
    add_runtime_args(parser, metrics_port=0)
    return parser


def rules_from_args(args: argparse.Namespace) -> Rules:
    flags = lateness_flags(args)
    return Rules(flags.max_out_of_orderness_ms, flags.allowed_lateness_minute_ms, flags.allowed_lateness_hour_ms,
                 flags.max_record_bytes)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start_command(PROG, args)
    if args.service_timeout is None:
        args.service_timeout = math.inf
    with metrics_port(PROG, args.metrics_port, args.metrics_host):
        serve_metrics(args.metrics_port, args.metrics_host, stage="verify")
    # SIGTERM unwinds like Ctrl-C, so the work directory and the reader process go with it.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with gc_paused():  # see gc_paused: classifying allocates many short-lived objects, no cycles
            return _run(args)
    except ServiceLocked as e:  # before FatalError: it is one
        return fail(PROG, str(e), EXIT_UNAVAILABLE)
    except FatalError as e:
        return fail(PROG, str(e), EXIT_USAGE)
    except ServiceUnavailable as e:
        return fail(PROG, str(e), EXIT_UNAVAILABLE)
    except RetryableError as e:
        return fail(PROG, f"gave up after {args.service_timeout:g}s of retries: {e}", EXIT_UNAVAILABLE)
    except KeyboardInterrupt:
        return fail(PROG, "interrupted", EXIT_INTERRUPTED)
    except Exception as e:  # no verdict is printed: the `verify: error:` line says it did not finish
        log.exception("verify_failed")
        return fail(PROG, f"unexpected {type(e).__name__}: {e}", EXIT_FAILED)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _retry(fn: Callable[[], T], what: str, timeout_s: float) -> T:
    return retry_call(fn, what=what, deadline_s=timeout_s)


def _run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    settings = service_settings(args)
    rules = rules_from_args(args)
    log.info("verify_start", **settings.masked(), max_out_of_orderness_ms=rules.max_out_of_orderness_ms,
             allowed_lateness_minute_ms=rules.allowed_lateness_minute_ms,
             allowed_lateness_hour_ms=rules.allowed_lateness_hour_ms, max_record_bytes=rules.max_record_bytes)
    if args.work_dir is not None and not args.work_dir.is_dir():
        raise FatalError(f"--work-dir {args.work_dir} is not a directory")

    # Open every service first, so a locked path or a dead database fails in seconds rather
    # than after reading the whole topic.
    raise_fatal_on_bad_url(settings.clickhouse_url)
    with PipelineFinal(settings.clickhouse_url, args.service_timeout, args.log_level) as final, \
            VerifyStore(args.work_dir, args.spill_mib) as store:
        # A probe only: the ledger is read after the (long) topic read, on a fresh connection.
        _retry(lambda: _pg_connect(settings.database_url), "postgres_connect", args.service_timeout).close()
        consumer = open_consumer(settings.kafka_bootstrap_servers, settings.pipeline_id)
        try:
            ranges = partition_ranges(consumer, settings.events_topic, deadline_s=args.service_timeout)
            end_offsets = {r.partition: r.high for r in ranges}
            log.info("verify_reading", topic=settings.events_topic, partitions=len(ranges),
                     records=sum(r.records for r in ranges))

            read_started = time.monotonic()
            classifier = Classifier(rules)
            for r in ranges:
                classifier.touch(r.partition)
            stall_s = max(args.service_timeout, 10.0)
            for partition, group in read_records(consumer, settings.events_topic, ranges, stall_timeout_s=stall_s):
                store.add_run(classifier.feed(partition, group.values, group.keys, group.offsets))
            store.flush()
            counts = classifier.counts()
            read_s = time.monotonic() - read_started
            _phase("read", read_s)
        finally:
            consumer.close()
        # Read after the input: every DLQ record of the input read above was produced before the
        # checkpoint that counted it, and verify runs once the pipeline is drained.
        dlq_consumer = open_consumer(settings.kafka_bootstrap_servers, settings.pipeline_id)
        try:
            dlq_topic = read_dlq_topic(dlq_consumer, settings.dlq_topic, settings.events_topic,
                                       store.add_dlq_topic_identities, deadline_s=args.service_timeout,
                                       stall_timeout_s=stall_s)
        finally:
            dlq_consumer.close()
        _phase("dlq_topic")

        files = {kind: store.work_dir / f"final_{kind}.native" for kind in TABLE_OF_KIND}
        exists = final.export(files)
        final.close()  # the pipeline's ClickHouse is free again from here
        for kind, table_exists in exists.items():
            if table_exists:
                store.import_final(kind, files[kind])
                files[kind].unlink()
        _phase("final_imported")
        with _retry(lambda: _pg_connect(settings.database_url), "postgres_connect", args.service_timeout) as pg:
            ledger_dlq = _ledger(lambda: read_ledger_dlq(pg, settings.pipeline_id, settings.events_topic))
            positions = _ledger(lambda: read_ledger_positions(pg, settings.pipeline_id, settings.events_topic))

        diff_started = time.monotonic()
        report = diff_store(store, counts, exists, ledger_dlq, args.max_diffs, dlq_topic=dlq_topic)
        diff_s = time.monotonic() - diff_started
        _phase("diff", diff_s)
    info = RunInfo(topic=settings.events_topic, pipeline_id=settings.pipeline_id,
                   clickhouse=mask_url(settings.clickhouse_url), ledger_positions=positions,
                   end_offsets=end_offsets, elapsed_s=time.monotonic() - started, read_s=read_s)
    print("\n".join(summary_lines(counts, report, info, args.max_diffs)), flush=True)
    if args.json:
        print(summary_json(counts, report, info), flush=True)
    log.info("verify_done", exact=report.exact, mismatches=report.mismatches()[:10],
             records=counts.records, read_s=round(read_s, 2), diff_s=round(diff_s, 2),
             seconds=round(info.elapsed_s, 2))
    return EXIT_EXACT if report.exact else EXIT_MISMATCH


def _phase(name: str, seconds: float | None = None) -> None:
    """Where the run stands, with this process's memory: the figure verify promises to bound."""
    log.info("verify_phase", phase=name, seconds=None if seconds is None else round(seconds, 2),
             rss_mib=_status_mib("VmRSS"), peak_rss_mib=_status_mib("VmHWM"))


def _status_mib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) // 1024
    except OSError:  # not Linux
        pass
    return None


def _pg_connect(url: str) -> psycopg.Connection[Any]:
    try:
        # autocommit: verify only reads, and must not hold a transaction open while it works.
        return psycopg.connect(psycopg_conninfo(url), connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as e:  # refused credentials or database: exit 2; else retried
        raise connect_error(e, url) from e


def _ledger(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except psycopg.errors.UndefinedTable as e:
        raise FatalError(f"the ledger schema is missing ({e.diag.message_primary}): "
                         "run `alembic upgrade head`") from e
    except psycopg.OperationalError as e:
        raise RetryableError(f"Postgres query failed: {e}") from e
