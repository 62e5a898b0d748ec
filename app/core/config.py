"""Configuration shared by every command: env var defaults, CLI flags, validation.

Contract §1: every setting has an environment variable and a flag, and the flag wins.
Configuration is parsed once at each entry point and passed down as frozen dataclasses.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Final, NoReturn

from app.core.cli import package_version
from app.core.urls import mask_url, psycopg_conninfo, sqlalchemy_url

__all__ = ["mask_url", "psycopg_conninfo", "sqlalchemy_url"]  # their home is app.core.urls

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT / ".data"


def default_clickhouse_url() -> str:
    return f"chdb://{DEFAULT_DATA_DIR / 'clickhouse'}"


ENV_DEFAULTS: dict[str, str] = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/pipeline",
    "EVENTS_TOPIC": "events",
    "DLQ_TOPIC": "rollups.dlq",
    "PIPELINE_ID": "rollups",
}


def env(name: str) -> str:
    if name == "CLICKHOUSE_URL":
        return os.environ.get(name) or default_clickhouse_url()
    return os.environ.get(name) or ENV_DEFAULTS[name]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2 (no usage dump), and --version."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                          help="print the version and exit")

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """Where the pipeline's services are and how its names are scoped."""

    kafka_bootstrap_servers: str
    database_url: str
    clickhouse_url: str
    events_topic: str
    dlq_topic: str
    pipeline_id: str
    uses: frozenset[str] = frozenset()  # the services this command has flags for; empty = all

    def masked(self) -> dict[str, str]:
        """Safe to log: passwords in URLs replaced by ***; only the settings the command uses."""
        every = {
            "kafka": ("kafka_bootstrap_servers", self.kafka_bootstrap_servers),
            "database": ("database_url", mask_url(self.database_url)),
            "clickhouse": ("clickhouse_url", mask_url(self.clickhouse_url)),
            "events_topic": ("events_topic", self.events_topic),
            "dlq_topic": ("dlq_topic", self.dlq_topic),
            "pipeline_id": ("pipeline_id", self.pipeline_id),
        }
        return dict(field for use, field in every.items() if not self.uses or use in self.uses)


_PIPELINE_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def pipeline_id_arg(value: str) -> str:
    if not _PIPELINE_ID_RE.match(value):
        raise argparse.ArgumentTypeError(f"invalid pipeline id {value!r}: use 1-64 of [A-Za-z0-9_.-]")
    return value


SERVICES: Final = frozenset({"kafka", "database", "clickhouse", "events_topic", "dlq_topic", "pipeline_id"})


def add_service_args(parser: argparse.ArgumentParser, *, uses: frozenset[str] = SERVICES) -> None:
    """The service flags of the settings a command `uses` (a command has no flag it would
    ignore); the others keep their environment default, unused."""
    unknown = uses - SERVICES
    assert not unknown, unknown
    parser.set_defaults(_uses=uses)
    g = parser.add_argument_group("services (env var default, the flag wins)")
    if "kafka" in uses:
        g.add_argument("--bootstrap-servers", default=env("KAFKA_BOOTSTRAP_SERVERS"),
                       help="Kafka brokers [KAFKA_BOOTSTRAP_SERVERS, default %(default)s]")
        add_kafka_config_arg(g)
    if "database" in uses:
        g.add_argument("--database-url", default=env("DATABASE_URL"),
                       help="Postgres ledger URL, e.g. postgresql://user:pass@host:5432/db?sslmode=verify-full "
                            "[DATABASE_URL]")
    if "clickhouse" in uses:
        g.add_argument("--clickhouse-url", default=env("CLICKHOUSE_URL"),
                       help="chdb:///abs/path (embedded) or http(s)://user:pass@host:port/db [CLICKHOUSE_URL]")
    if "events_topic" in uses:
        g.add_argument("--events-topic", default=env("EVENTS_TOPIC"),
                       help="input topic [EVENTS_TOPIC, default %(default)s]")
    if "dlq_topic" in uses:
        g.add_argument("--dlq-topic", default=env("DLQ_TOPIC"),
                       help="side output for late and invalid events [DLQ_TOPIC, default %(default)s]")
    if "pipeline_id" in uses:
        g.add_argument("--pipeline-id", type=pipeline_id_arg, default=env("PIPELINE_ID"),
                       help="consumer group and ledger scope [PIPELINE_ID, default %(default)s]")


def add_kafka_config_arg(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--kafka-config", type=Path, default=os.environ.get("KAFKA_CONFIG_FILE") or None,
                       metavar="FILE",
                       help="librdkafka settings for every Kafka client, a properties file (key=value per line, "
                            "e.g. security.protocol=SASL_SSL); they win over KAFKA_CONFIG_* variables "
                            "(KAFKA_CONFIG_SASL_MECHANISM=PLAIN sets sasl.mechanism) [KAFKA_CONFIG_FILE]")


def add_runtime_args(parser: argparse.ArgumentParser, *, metrics_port: int) -> None:
    g = parser.add_argument_group("runtime")
    g.add_argument("--metrics-port", type=port_arg, default=metrics_port,
                   help="Prometheus /metrics port, 0 = off (default %(default)s)")
    g.add_argument("--metrics-host", default="127.0.0.1",
                   help="address the metrics endpoint binds to (default %(default)s)")
    add_log_level_arg(g)


LOG_LEVELS: Final = ("debug", "info", "warning", "error")


def log_level_arg(text: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"unknown log level {text!r} (from --log-level or LOG_LEVEL): "
                                         f"use one of {', '.join(LOG_LEVELS)}")
    return level


def add_log_level_arg(group: argparse._ActionsContainer) -> None:
    # a string default goes through `type` too, so a bad LOG_LEVEL is a usage error (exit 2)
    group.add_argument("--log-level", type=log_level_arg, default=os.environ.get("LOG_LEVEL") or "info",
                       metavar="{" + ",".join(LOG_LEVELS) + "}", help="log level [LOG_LEVEL, default info]")


def add_service_timeout_arg(parser: argparse._ActionsContainer, *, default: str, aliases: tuple[str, ...] = ()
                            ) -> None:
    """How long a command retries a service that does not answer before it gives up with
    exit code 3 (docs/operations.md); 0 or `forever`: never give up."""
    parser.add_argument("--service-timeout", *aliases, type=service_timeout_arg, default=default,
                        metavar="DURATION",
                        help="give up (exit 3) when Kafka, Postgres or ClickHouse stays unreachable this long, "
                             f"0 or 'forever' = retry forever, logging each failure (default {default})")


def service_timeout_arg(text: str) -> float | None:
    """A duration; None = retry forever."""
    if text.strip().lower() in ("forever", "inf", "none"):
        return None
    value = duration_arg(text)
    return value or None


DEFAULT_MAX_RECORD_BYTES = 1 << 20  # contract §2: a larger input value is invalid


@dataclass(frozen=True, slots=True)
class LatenessFlags:
    """Contract §3's watermark and lateness settings, as every command reads them."""

    max_out_of_orderness_ms: int
    allowed_lateness_minute_ms: int
    allowed_lateness_hour_ms: int
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES


def add_lateness_args(parser: argparse.ArgumentParser, title: str) -> None:
    """The contract §3 flags, one definition for the processor, backfill and verify."""
    g = parser.add_argument_group(title)
    g.add_argument("--max-out-of-orderness", type=duration_ms_arg, default=5_000, metavar="DURATION",
                   help="watermark = max event time read from the partition minus this (default 5s)")
    g.add_argument("--allowed-lateness", type=duration_ms_arg, default=60_000, metavar="DURATION",
                   help="an event is too late for a window once watermark >= window end + this (default 60s)")
    g.add_argument("--allowed-lateness-minute", type=duration_ms_arg, default=None, metavar="DURATION",
                   help="override --allowed-lateness for minute windows")
    g.add_argument("--allowed-lateness-hour", type=duration_ms_arg, default=None, metavar="DURATION",
                   help="override --allowed-lateness for hour windows")
    g.add_argument("--max-record-bytes", type=positive_int_arg, default=DEFAULT_MAX_RECORD_BYTES, metavar="N",
                   help="an input value larger than this is invalid (contract §2; default %(default)s = 1 MiB)")


def lateness_flags(args: argparse.Namespace) -> LatenessFlags:
    default = args.allowed_lateness
    return LatenessFlags(
        max_out_of_orderness_ms=args.max_out_of_orderness,
        allowed_lateness_minute_ms=default if args.allowed_lateness_minute is None else args.allowed_lateness_minute,
        allowed_lateness_hour_ms=default if args.allowed_lateness_hour is None else args.allowed_lateness_hour,
        max_record_bytes=args.max_record_bytes)


def service_settings(args: argparse.Namespace) -> ServiceSettings:
    """The settings of add_service_args' flags; a setting the command has no flag for keeps
    its environment default (never used by that command, never logged by it)."""
    return ServiceSettings(
        kafka_bootstrap_servers=getattr(args, "bootstrap_servers", None) or env("KAFKA_BOOTSTRAP_SERVERS"),
        database_url=getattr(args, "database_url", None) or env("DATABASE_URL"),
        clickhouse_url=getattr(args, "clickhouse_url", None) or env("CLICKHOUSE_URL"),
        events_topic=getattr(args, "events_topic", None) or env("EVENTS_TOPIC"),
        dlq_topic=getattr(args, "dlq_topic", None) or env("DLQ_TOPIC"),
        pipeline_id=getattr(args, "pipeline_id", None) or env("PIPELINE_ID"),
        uses=getattr(args, "_uses", SERVICES),
    )


# ---- argument types -------------------------------------------------------

_DURATION_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration_s(text: str) -> float:
    """'200ms', '1s', '5m', '1h' or a bare number of seconds -> seconds."""
    m = _DURATION_RE.match(text)
    if not m:
        raise ValueError(f"invalid duration {text!r} (use e.g. 200ms, 1s, 5m)")
    value = float(m.group(1)) * _UNIT_S[m.group(2)]
    if value < 0:
        raise ValueError(f"duration must not be negative: {text!r}")
    return value


def duration_arg(text: str) -> float:
    try:
        return parse_duration_s(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def duration_ms_arg(text: str) -> int:
    return int(round(duration_arg(text) * 1000))


def positive_int_arg(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def non_negative_int_arg(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def non_negative_float_arg(text: str) -> float:
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def fraction_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1]: {text!r}")
    return value


def port_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {text!r}")
    return value


def parse_time_ms(text: str) -> int:
    """ISO 8601 UTC ('2025-11-20T01:00:00Z') or epoch milliseconds -> epoch ms."""
    t = text.strip()
    if re.fullmatch(r"-?\d+", t):
        return int(t)
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"invalid time {text!r}: use ISO 8601 UTC or epoch milliseconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def time_ms_arg(text: str) -> int:
    try:
        return parse_time_ms(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
