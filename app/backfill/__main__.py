"""`python -m app.backfill`: recompute a window range or an offset range from Kafka and land
it with a newer version through the ledger and the sink (contract §7, docs/backfill.md)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import structlog

from app.backfill.render import summary_json, summary_lines
from app.backfill.request import BackfillRequest, OffsetRange
from app.backfill.run import Backfill, BackfillConfig, Stopped
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
    non_negative_int_arg,
    positive_int_arg,
    service_settings,
    time_ms_arg,
)
from app.core.errors import FatalError, PipelineError, RetryableError, ServiceLocked, ServiceUnavailable
from app.core.faults import add_fault_injection_arg
from app.core.faults import arm as arm_faults
from app.core.retry import retry_call
from app.core.serve import serve_metrics
from app.core.startup import start_command
from app.ledger.schema_check import require_migrated
from app.processor.windows import LatenessPolicy

log = structlog.get_logger("backfill")

PROG = "backfill"

EPILOG = """\
windows: a window is in --from-time/--to-time when its start is in [from, to). With
--partition/--from-offset the windows are those the records of that offset range were
folded into (each recomputed in full). Only windows final in every partition (watermark
>= end + allowed lateness) are recomputed; windows still open live are skipped and listed.

exit status (docs/operations.md, the same table for every command):
  0  landed (or dry run / nothing to land)
  1  failed: an invariant broke or an unexpected error
  2  usage or configuration: bad flags, rules that differ from the live processor's, input
     removed by retention, an unmigrated ledger, refused credentials
  3  Kafka, Postgres or ClickHouse unreachable past --service-timeout, or --require-clickhouse
     and the embedded ClickHouse path is in use (by the sink)
  130 stopped by SIGTERM/SIGINT: run the same command again to resume
"""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m app.backfill",
        description="Recompute historical windows from the input topic with the live processor's watermark and "
                    "lateness rules, and land them through the ledger and the sink with a version newer than "
                    "any live one. A SIGKILLed run resumes when run again with the same flags.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_service_args(p, uses=frozenset({"kafka", "database", "clickhouse", "events_topic", "pipeline_id"}))
    r = p.add_argument_group("range")
    r.add_argument("--from-time", type=time_ms_arg, metavar="TIME",
                   help="first window start to recompute: ISO 8601 UTC (2025-11-20T01:00:00Z) or epoch ms")
    r.add_argument("--to-time", type=time_ms_arg, metavar="TIME",
                   help="window starts before this (exclusive), same formats")
    r.add_argument("--partition", type=non_negative_int_arg,
                   help="input partition of --from-offset/--to-offset")
    r.add_argument("--from-offset", type=non_negative_int_arg, metavar="OFFSET",
                   help="first record of the offset range (needs --partition)")
    r.add_argument("--to-offset", type=positive_int_arg, metavar="OFFSET",
                   help="end of the offset range, exclusive (default: where the live processor stands)")
    add_lateness_args(p, "rules (must be the processor's; checked against the ledger)")
    o = p.add_argument_group("behaviour")
    o.add_argument("--dry-run", action="store_true",
                   help="recompute and print what would change (windows, rows, differences from ClickHouse); "
                        "write nothing")
    o.add_argument("--require-clickhouse", action="store_true",
                   help="fail (exit 3) instead of landing without reading ClickHouse when the embedded path is "
                        "held by the sink")
    o.add_argument("--batch-rows", type=positive_int_arg, default=200_000,
                   help="window rows per sink batch (default %(default)s)")
    o.add_argument("--max-diffs", type=non_negative_int_arg, default=10, metavar="N",
                   help="differing keys to print per table (default %(default)s)")
    o.add_argument("--json", action="store_true", help="also print the summary as one JSON line at the end")
    add_service_timeout_arg(o, default="30s")
    add_runtime_args(p, metrics_port=0)
    add_fault_injection_arg(p)
    return p


def request_from_args(p: ArgumentParser, args: argparse.Namespace) -> BackfillRequest:
    flags = lateness_flags(args)
    policy = LatenessPolicy(flags.max_out_of_orderness_ms, flags.allowed_lateness_minute_ms,
                            flags.allowed_lateness_hour_ms)
    offsets = None
    if args.from_offset is not None or args.to_offset is not None or args.partition is not None:
        if args.partition is None or args.from_offset is None:
            p.error("an offset range needs --partition and --from-offset (--to-offset is optional)")
        offsets = OffsetRange(args.partition, args.from_offset, args.to_offset)
    try:
        return BackfillRequest(policy, args.from_time, args.to_time, offsets, max_record_bytes=flags.max_record_bytes)
    except ValueError as e:
        p.error(str(e))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    request = request_from_args(parser, args)
    start_command(PROG, args)
    arm_faults(args.fault_injection, command="backfill")
    timeout_s = math.inf if args.service_timeout is None else args.service_timeout
    cfg = BackfillConfig(services=service_settings(args), request=request, dry_run=args.dry_run,
                         require_clickhouse=args.require_clickhouse, batch_rows=args.batch_rows,
                         service_timeout_s=timeout_s, max_examples=args.max_diffs)
    try:
        with metrics_port(PROG, args.metrics_port, args.metrics_host):
            serve_metrics(args.metrics_port, args.metrics_host, stage="backfill")
        retry_call(lambda: require_migrated(cfg.services.database_url), what="postgres_ledger_schema",
                   deadline_s=timeout_s)
        outcome = Backfill(cfg).run()
    except ServiceLocked as e:  # before FatalError: it is one
        return fail(PROG, str(e), EXIT_UNAVAILABLE)
    except FatalError as e:
        return fail(PROG, str(e), EXIT_USAGE)
    except ServiceUnavailable as e:
        return fail(PROG, str(e), EXIT_UNAVAILABLE)
    except RetryableError as e:
        return fail(PROG, f"gave up after {timeout_s:g}s of retries: {e}", EXIT_UNAVAILABLE)
    except Stopped as e:
        return fail(PROG, str(e), EXIT_INTERRUPTED)
    except PipelineError as e:
        return fail(PROG, f"{type(e).__name__}: {e}", EXIT_FAILED)
    except Exception as e:  # logged with its traceback; the run resumes when started again
        log.exception("backfill_failed")
        return fail(PROG, f"unexpected {type(e).__name__}: {e}", EXIT_FAILED)
    print("\n".join(summary_lines(outcome)), flush=True)
    if args.json:
        print(summary_json(outcome), flush=True)
    log.info("backfill_done", dry_run=outcome.dry_run, windows=outcome.windows,
             version=None if outcome.run is None else outcome.run.checkpoint_id, seconds=round(outcome.elapsed_s, 2))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
