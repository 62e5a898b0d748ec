"""`python -m app.sink`: ledger -> ClickHouse, every batch exactly once (contract §7)."""

from __future__ import annotations

import argparse
import sys

import structlog

from app.clickhouse.client import raise_fatal_on_bad_url
from app.core.config import ArgumentParser, add_runtime_args, add_service_args, service_settings
from app.core.errors import FatalError, PipelineError
from app.core.logging import configure_logging
from app.core.metrics import serve_metrics
from app.sink.loop import Sink, SinkConfig
from app.sink.writer import ClickHouseWriter


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m app.sink",
                       description="Insert every unacknowledged ledger batch into ClickHouse with its "
                                   "deterministic dedup token, then acknowledge it in the ledger.")
    add_service_args(p)
    p.add_argument("--until-idle", action="store_true",
                   help="exit once no batch is pending and the processor finished its --until-end run")
    p.add_argument("--async-insert", action="store_true",
                   help="use ClickHouse async inserts (deduplicated, waited for) instead of synchronous ones")
    add_runtime_args(p, metrics_port=9309)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    log = structlog.get_logger("sink")
    settings = service_settings(args)
    try:
        raise_fatal_on_bad_url(settings.clickhouse_url)
        serve_metrics(args.metrics_port, args.metrics_host)
        writer = ClickHouseWriter(settings.clickhouse_url, async_insert=args.async_insert)
        return Sink(SinkConfig(services=settings, until_idle=args.until_idle), writer).run()
    except FatalError as e:
        log.error("sink_fatal", error=str(e))
        return 1
    except PipelineError as e:
        log.error("sink_failed", error=f"{type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
