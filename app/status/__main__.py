"""`python -m app.status`: where the pipeline stands, from the ledger and Kafka (never the
embedded ClickHouse, which the sink owns while it runs)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence

import structlog

from app.core.cli import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, fail
from app.core.config import (
    ArgumentParser,
    add_log_level_arg,
    add_service_args,
    add_service_timeout_arg,
    duration_arg,
    positive_int_arg,
    service_settings,
)
from app.core.errors import ConfigurationError, FatalError, RetryableError
from app.core.kafka import TopicNotFound
from app.core.retry import retry_call
from app.core.startup import start_command
from app.core.urls import mask_url
from app.ledger.ledger import Ledger
from app.ledger.schema_check import require_migrated
from app.status import kafka_view, ledger_view
from app.status.render import as_json, as_text
from app.status.report import StuckRules, build

PROG = "status"
log = structlog.get_logger("status")

EPILOG = """\
what it shows: per input partition the ledger's next offset, the log end, the lag in records
and in age (how long the first unread record has waited), the watermark, the owning instance
and its owner generation, and how long ago the partition's ledger row last moved; the sink's
pending batches and rows, the age of the oldest, open groups (the most retried first) and the
last acknowledgement; the DLQ counts; the last checkpoint.

stuck (exit 1):
  - an open sink group tried --max-group-attempts times or more;
  - a partition behind its log end whose ledger position has not moved for --stall-after;
  - batches pending longer than --stall-after with no acknowledgement within --stall-after.

exit status (docs/operations.md, the same table for every command):
  0  ok
  1  stuck (the reasons are listed)
  2  usage or configuration: bad flags, an unmigrated ledger, refused credentials
  3  Postgres unreachable past --service-timeout, or Kafka unreachable (the ledger's side
     is still shown)
"""


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m app.status",
                       description="Where the pipeline stands, from the Postgres ledger and Kafka.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_service_args(p, uses=frozenset({"kafka", "database", "events_topic", "pipeline_id"}))
    o = p.add_argument_group("output and thresholds")
    o.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    o.add_argument("--stall-after", type=duration_arg, default="5m", metavar="DURATION",
                   help="no progress for this long with work waiting is stuck (default 5m)")
    o.add_argument("--max-group-attempts", type=positive_int_arg, default=5, metavar="N",
                   help="an open sink group tried this many times is stuck (default %(default)s)")
    add_service_timeout_arg(o, default="10s")
    add_log_level_arg(o)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start_command(PROG, args)
    s = service_settings(args)
    started = time.monotonic()
    timeout_s = math.inf if args.service_timeout is None else args.service_timeout
    ledger = Ledger(s.database_url, s.pipeline_id, s.events_topic)
    try:
        retry_call(lambda: require_migrated(s.database_url), what="postgres_ledger_schema", deadline_s=timeout_s)
        view = retry_call(lambda: ledger_view.read(ledger), what="postgres_read_status", deadline_s=timeout_s)
    except ConfigurationError as e:
        return fail(PROG, str(e), EXIT_USAGE)
    except RetryableError as e:
        return fail(PROG, str(e), EXIT_UNAVAILABLE)
    finally:
        ledger.close()
    next_offsets = {r.partition: r.next_offset for r in view.partitions}
    kafka, kafka_error = None, None
    try:
        kafka = kafka_view.read(s.kafka_bootstrap_servers, s.events_topic, s.pipeline_id, next_offsets,
                                timeout_s=min(timeout_s, 5.0))
    except TopicNotFound as e:  # nothing produced yet: no lag to show
        kafka = kafka_view.KafkaView({}, {})
        log.info("status_topic_missing", topic=s.events_topic, error=str(e))
    except (RetryableError, FatalError) as e:  # show the ledger's side anyway
        kafka_error = f"{e} (at {s.kafka_bootstrap_servers})"
    status = build(s.pipeline_id, s.events_topic, view, kafka, kafka_error,
                   StuckRules(args.max_group_attempts, args.stall_after))
    # what the answer rests on, for an operator who asks with --log-level debug
    log.debug("status_read", partitions=len(view.partitions), kafka_read=kafka_error is None,
              seconds=round(time.monotonic() - started, 3))
    if args.json:
        print(as_json(status), flush=True)
    else:
        print(as_text(status, where=f"ledger {mask_url(s.database_url)}  kafka {s.kafka_bootstrap_servers}"),
              flush=True)
    if status.stuck:
        return EXIT_FAILED
    return EXIT_OK if kafka_error is None else EXIT_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
