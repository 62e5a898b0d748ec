"""The first steps of every command, in one place: logging, --service-timeout, the
operator's librdkafka settings. A configuration error here is one line and exit code 2."""

from __future__ import annotations

import argparse

import structlog

from app.core import kafka_settings
from app.core.cli import EXIT_USAGE, error_line
from app.core.errors import ConfigurationError
from app.core.kafka import use_client_settings
from app.core.logging import configure_logging
from app.core.retry import set_service_timeout


def start_command(prog: str, args: argparse.Namespace) -> None:
    configure_logging(args.log_level)
    set_service_timeout(getattr(args, "service_timeout", None))
    if hasattr(args, "kafka_config"):
        try:
            settings = kafka_settings.load(args.kafka_config)
            kafka_settings.check_with_librdkafka(settings)
        except ConfigurationError as e:
            error_line(prog, str(e))
            raise SystemExit(EXIT_USAGE) from None
        use_client_settings(settings)
        if settings:  # names only: values may be secrets
            structlog.get_logger("kafka").info("kafka_client_settings", names=sorted(settings))
