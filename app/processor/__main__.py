"""`python -m app.processor`: Kafka -> event-time windows -> Postgres ledger (contract §3, §7)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import structlog

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
    add_lateness_args,
    add_runtime_args,
    add_service_args,
    add_service_timeout_arg,
    duration_arg,
    duration_ms_arg,
    lateness_flags,
    non_negative_int_arg,
    positive_int_arg,
    service_settings,
)
from app.core.errors import (
    ConfigurationError,
    FatalError,
    KafkaUnreachable,
    PipelineError,
    RetryableError,
    ServiceUnavailable,
)
from app.core.faults import add_fault_injection_arg
from app.core.faults import arm as arm_faults
from app.core.health import HEALTH
from app.core.kafka import wait_until_reachable
from app.core.probes import watch_services
from app.core.retry import retry_call
from app.core.serve import serve_metrics
from app.core.startup import start_command
from app.ledger.schema_check import require_migrated
from app.processor.config import ProcessorConfig
from app.processor.engine import Processor
from app.processor.leveldb_store import LevelDBOptions
from app.processor.windows import LatenessPolicy

EPILOG = """\
rules pinned to the pipeline id (contract §2, §3; docs/watermarks.md):
  The first checkpoint of a --pipeline-id records --max-out-of-orderness, the allowed
  lateness per kind, --max-record-bytes and the events topic's id and partition count in
  the ledger. A processor started with other values refuses with one line naming both
  (exit 2) before it reads anything: windows already emitted and dropped as final follow
  the pinned rules. Other rules need a new --pipeline-id or a backfill (docs/watermarks.md,
  "Changing the rules"), never a flag flip. On every assignment each partition's log must
  still hold the ledger's next offset: records deleted before they were read, a topic
  deleted and created again, or added partitions stop the processor (exit 2).

exit status (docs/operations.md, the same table for every command):
  0  stopped: --until-end reached, or SIGTERM/SIGINT
  1  failed: an invariant broke, a fatal Kafka error or an unexpected error
  2  usage or configuration: bad flags or LOG_LEVEL, a metrics port in use, an unmigrated
     ledger, Postgres refusing the credentials, rules other than the pipeline's pinned
     ones, or an input log that is not the one the ledger read (records lost, topic
     recreated, partitions added)
  3  Kafka or Postgres unreachable past --service-timeout (default: retry forever)
"""
PROG = "processor"
def positive_duration_arg(text: str) -> float:
    value = duration_arg(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m app.processor",
                       description="Consume the events topic, keep per-minute and per-hour windows keyed\n"
                                   "by (account_id, country), and commit changed windows, offsets and DLQ\n"
                                   "counts to the Postgres ledger in one transaction per checkpoint. A record\n"
                                   "is invalid (DLQ reason 'invalid') when its value breaks contract §2, is\n"
                                   "larger than --max-record-bytes, or its key is not exactly the account_id\n"
                                   "in ASCII decimal (a null key included). A DLQ record keeps at most 64 KiB\n"
                                   "of the source value (raw_bytes and raw_sha256 name the whole). After an\n"
                                   "error the processor commits nothing more and exits 1; SIGTERM stops it\n"
                                   "within seconds, also while a service is down (exit 0).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_service_args(p, uses=frozenset({"kafka", "database", "events_topic", "dlq_topic", "pipeline_id"}))
    add_service_timeout_arg(p, default="forever")
    add_lateness_args(p, "windows and watermark")
    b = p.add_argument_group("checkpoints and batches")
    b.add_argument("--batch-max-wait", type=duration_arg, default=1.0, metavar="DURATION",
                   help="emit changed windows and commit a checkpoint at least this often (default 1s)")
    b.add_argument("--batch-rows", type=positive_int_arg, default=200_000,
                   help="commit early once this many windows changed (default %(default)s)")
    b.add_argument("--poll-records", type=positive_int_arg, default=10_000,
                   help="records per consume() call (default %(default)s)")
    b.add_argument("--snapshot-interval", type=duration_arg, default=60.0, metavar="DURATION",
                   help="start a snapshot of each partition's open windows in the ledger this long after the "
                        "previous one finished; a new owner restores from it plus later batches (default 60s)")
    b.add_argument("--max-pending-rows", type=positive_int_arg, default=2_000_000,
                   help="pause Kafka reads while more rows than this await ClickHouse (default %(default)s)")
    b.add_argument("--max-pending-bytes", type=non_negative_int_arg, default=1 << 30,
                   help="... or while their ledger payloads exceed this many bytes, 0 = no byte bound "
                        "(default %(default)s); reads resume at half of both bounds")
    st = p.add_argument_group("window state (docs/state-and-rebalancing.md)")
    st.add_argument("--state-store", choices=["leveldb", "memory"], default="leveldb",
                    help="where open windows live: leveldb = on local disk, memory bounded by the options "
                         "below; memory = Python dicts, grows with the number of open windows "
                         "(default %(default)s)")
    st.add_argument("--state-dir", type=Path, default=os.environ.get("STATE_DIR") or None, metavar="DIR",
                    help="LevelDB state directory; each live process takes its own slot-N inside it and a "
                         "restarted one finds its state again [STATE_DIR, default "
                         "<repo>/.data/state/<pipeline-id>]")
    st.add_argument("--state-cache-mb", type=positive_int_arg, default=32, metavar="MB",
                    help="LevelDB block cache per owned partition (default %(default)s)")
    st.add_argument("--state-write-buffer-mb", type=positive_int_arg, default=8, metavar="MB",
                    help="LevelDB write buffer per owned partition; up to two are in memory "
                         "(default %(default)s)")
    st.add_argument("--state-cache-windows", type=positive_int_arg, default=1_000_000, metavar="N",
                    help="open windows per owned partition kept in RAM as columns in front of LevelDB "
                         "(47 bytes each; a checkpoint reads LevelDB only for windows not cached) "
                         "(default %(default)s)")
    st.add_argument("--snapshot-chunk-rows", type=positive_int_arg, default=100_000,
                    help="windows per snapshot chunk written to the ledger, one chunk per loop turn "
                         "(default %(default)s)")
    p.add_argument("--dlq-partitions", type=positive_int_arg, default=1,
                   help="partitions of the DLQ topic when the processor creates it (default 1)")
    p.add_argument("--dlq-delivery-timeout", type=positive_duration_arg, default=60.0, metavar="DURATION",
                   help="the DLQ producer's delivery timeout: a DLQ record the broker has not acknowledged "
                        "within this long is sent again; a checkpoint commits only once every DLQ record it "
                        "counts is acknowledged (default 60s)")
    p.add_argument("--session-timeout", type=duration_ms_arg, default=10_000, metavar="DURATION",
                   help="consumer-group session timeout: how soon a dead instance's partitions move "
                        "(default 10s; the broker allows 6s..30m)")
    p.add_argument("--until-end", action="store_true",
                   help="stop once every partition reaches the end offsets seen at start, after emitting "
                        "every window")
    add_runtime_args(p, metrics_port=9308)
    add_fault_injection_arg(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start_command(PROG, args)
    arm_faults(args.fault_injection, command="processor")
    log = structlog.get_logger("processor")
    flags = lateness_flags(args)
    policy = LatenessPolicy(flags.max_out_of_orderness_ms, flags.allowed_lateness_minute_ms,
                            flags.allowed_lateness_hour_ms)
    cfg = ProcessorConfig(services=service_settings(args), policy=policy, max_record_bytes=flags.max_record_bytes,
                          batch_max_wait_s=args.batch_max_wait,
                          batch_rows=args.batch_rows, poll_records=args.poll_records,
                          snapshot_interval_s=args.snapshot_interval, max_pending_rows=args.max_pending_rows,
                          max_pending_bytes=args.max_pending_bytes,
                          until_end=args.until_end, dlq_partitions=args.dlq_partitions,
                          dlq_delivery_timeout_s=args.dlq_delivery_timeout,
                          session_timeout_ms=args.session_timeout, state_store=args.state_store,
                          state_dir=args.state_dir,
                          leveldb=LevelDBOptions(cache_bytes=args.state_cache_mb << 20,
                                                 write_buffer_bytes=args.state_write_buffer_mb << 20,
                                                 cache_windows=args.state_cache_windows),
                          snapshot_chunk_rows=args.snapshot_chunk_rows)
    with metrics_port(PROG, args.metrics_port, args.metrics_host):
        serve_metrics(args.metrics_port, args.metrics_host, stage="processor",
                      pipeline_id=cfg.services.pipeline_id)
    processor = None
    s = cfg.services
    log.info("processor_starting", version=package_version(), service_timeout_s=args.service_timeout,
             **s.masked())
    if args.metrics_port:  # before the services are waited for: not ready while they are down
        watch_services(cfg.services)
        HEALTH.add_condition("owns_partitions", lambda: bool(processor is not None and processor.owned))
    try:
        # the services first: an unmigrated ledger or a wrong broker address is one line within
        # seconds, before anything is consumed
        with StopSignals() as stop:
            try:
                retry_call(lambda: require_migrated(s.database_url), what="postgres_ledger_schema",
                           should_stop=stop)
                wait_until_reachable(s.kafka_bootstrap_servers, should_stop=stop)
            except RetryableError as e:
                if not stop():
                    raise
                log.info("processor_stopped", final_checkpoint=False, reason=f"{stop.requested} while waiting: {e}")
                return EXIT_OK
        processor = Processor(cfg)
        code = processor.run()
        if processor.consumer_left_open:
            # the consumer's destructor at exit would wait on the unreachable coordinator just
            # like close() (Processor._close)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    except ConfigurationError as e:  # pinned rules, input log, unmigrated ledger: an operator decision
        log.error("processor_config_error", error=str(e))
        return fail(PROG, str(e), EXIT_USAGE)
    except FatalError as e:
        log.error("processor_fatal", error=str(e))
        return EXIT_FAILED
    except RetryableError as e:
        if processor is not None and processor.stopping:
            # stopped while starting against a service that is down: nothing was processed
            log.info("processor_stopped", final_checkpoint=False, reason=f"{type(e).__name__}: {e}")
            return EXIT_OK
        if isinstance(e, ServiceUnavailable):
            log.error("processor_gave_up", error=str(e))
            code = fail(PROG, str(e), EXIT_UNAVAILABLE)
            if isinstance(e, KafkaUnreachable):
                # the consumer was left open (Processor._close): its destructor at exit would
                # wait on the unreachable group coordinator just like close()
                sys.stdout.flush()
                os._exit(code)
            return code
        log.error("processor_failed", error=f"{type(e).__name__}: {e}")
        return EXIT_FAILED
    except PipelineError as e:
        log.error("processor_failed", error=f"{type(e).__name__}: {e}")
        return EXIT_FAILED
    except Exception as e:  # an unexpected error: one clear line (and the trace), exit 1
        log.exception("processor_failed", error=f"{type(e).__name__}: {e}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
