"""structlog set-up: JSON lines when not on a terminal, pretty output on one.

Every line a command writes to stderr goes through the same renderer: our structlog
loggers, and the standard `logging` records of the libraries underneath (urllib3,
clickhouse-connect, alembic, confluent-kafka, ...), so a log shipper reading the JSON
stream never meets a line it cannot parse. librdkafka's own lines are replaced by the
rate-limited `kafka_unavailable_retrying` (app/core/kafka.py).
"""

from __future__ import annotations

import logging
import sys

import structlog

from app.core.config import LOG_LEVELS

# Libraries whose INFO lines are chatter for an operator: kept at WARNING unless --log-level debug.
NOISY = ("clickhouse_connect", "urllib3", "alembic", "confluent_kafka", "kafka", "chdb", "asyncio")


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    if level not in LOG_LEVELS:  # the flag's type checks it; a caller passing anything else is a bug
        raise ValueError(f"unknown log level {level!r}: use one of {', '.join(LOG_LEVELS)}")
    if json is None:
        json = not sys.stderr.isatty()
    numeric = getattr(logging, level.upper())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # the standard library's records: rendered like ours, with the logger's name
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer]))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(numeric)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(numeric if numeric == logging.DEBUG else max(numeric, logging.WARNING))
    logging.captureWarnings(True)  # warnings.warn(...) lines too
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]
