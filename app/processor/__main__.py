"""`python -m app.processor`: Kafka -> event-time windows -> Postgres ledger (contract §3, §7)."""

from __future__ import annotations

import argparse
import sys

import structlog

from app.core.config import (ArgumentParser, add_runtime_args, add_service_args, duration_arg,
                             duration_ms_arg, positive_int_arg, service_settings)
from app.core.errors import FatalError, PipelineError
from app.core.logging import configure_logging
from app.core.metrics import serve_metrics
from app.processor.engine import Processor, ProcessorConfig
from app.processor.windows import LatenessPolicy


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m app.processor",
                       description="Consume the events topic, keep per-minute and per-hour windows keyed by "
                                   "(account_id, country), and commit changed windows, offsets and DLQ counts "
                                   "to the Postgres ledger in one transaction per checkpoint.")
    add_service_args(p)
    w = p.add_argument_group("windows and watermark")
    w.add_argument("--max-out-of-orderness", type=duration_ms_arg, default=5_000, metavar="DURATION",
                   help="watermark = max event time seen in the partition minus this (default 5s)")
    w.add_argument("--allowed-lateness", type=duration_ms_arg, default=60_000, metavar="DURATION",
                   help="events for a window ending at or before watermark - this go to the DLQ (default 60s)")
    w.add_argument("--allowed-lateness-minute", type=duration_ms_arg, default=None, metavar="DURATION",
                   help="override --allowed-lateness for minute windows")
    w.add_argument("--allowed-lateness-hour", type=duration_ms_arg, default=None, metavar="DURATION",
                   help="override --allowed-lateness for hour windows")
    b = p.add_argument_group("checkpoints and batches")
    b.add_argument("--batch-max-wait", type=duration_arg, default=1.0, metavar="DURATION",
                   help="emit changed windows and commit a checkpoint at least this often (default 1s)")
    b.add_argument("--batch-rows", type=positive_int_arg, default=200_000,
                   help="commit early once this many windows changed (default %(default)s)")
    b.add_argument("--poll-records", type=positive_int_arg, default=10_000,
                   help="records per consume() call (default %(default)s)")
    b.add_argument("--snapshot-interval", type=duration_arg, default=60.0, metavar="DURATION",
                   help="store a full snapshot of each partition's open windows this often (default 60s)")
    b.add_argument("--max-pending-rows", type=positive_int_arg, default=2_000_000,
                   help="pause Kafka reads while more rows than this await ClickHouse (default %(default)s)")
    p.add_argument("--dlq-partitions", type=positive_int_arg, default=1,
                   help="partitions of the DLQ topic when the processor creates it (default 1)")
    p.add_argument("--session-timeout", type=duration_ms_arg, default=10_000, metavar="DURATION",
                   help="consumer-group session timeout: how soon a dead instance's partitions move "
                        "(default 10s; the broker allows 6s..30m)")
    p.add_argument("--until-end", action="store_true",
                   help="stop once every partition reaches the end offsets seen at start, after emitting "
                        "every window")
    add_runtime_args(p, metrics_port=9308)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    log = structlog.get_logger("processor")
    policy = LatenessPolicy(
        max_out_of_orderness_ms=args.max_out_of_orderness,
        allowed_lateness_minute_ms=(args.allowed_lateness if args.allowed_lateness_minute is None
                                    else args.allowed_lateness_minute),
        allowed_lateness_hour_ms=(args.allowed_lateness if args.allowed_lateness_hour is None
                                  else args.allowed_lateness_hour))
    cfg = ProcessorConfig(services=service_settings(args), policy=policy, batch_max_wait_s=args.batch_max_wait,
                          batch_rows=args.batch_rows, poll_records=args.poll_records,
                          snapshot_interval_s=args.snapshot_interval, max_pending_rows=args.max_pending_rows,
                          until_end=args.until_end, dlq_partitions=args.dlq_partitions,
                          session_timeout_ms=args.session_timeout)
    serve_metrics(args.metrics_port, args.metrics_host)
    try:
        return Processor(cfg).run()
    except FatalError as e:
        log.error("processor_fatal", error=str(e))
        return 1
    except PipelineError as e:
        log.error("processor_failed", error=f"{type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
