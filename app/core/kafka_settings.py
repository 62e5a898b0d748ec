"""librdkafka settings from the operator, for secured clusters (SASL, TLS) and tuning.

Two sources, the file winning over the environment (contract §1: the flag wins):

- `KAFKA_CONFIG_<NAME>` environment variables, named the way Confluent's images name them:
  `_` is a dot, `__` an underscore, `___` a dash; e.g. KAFKA_CONFIG_SECURITY_PROTOCOL=SASL_SSL
  sets `security.protocol`, KAFKA_CONFIG_SASL_PASSWORD sets `sasl.password`;
- `--kafka-config FILE` (or KAFKA_CONFIG_FILE): a Java-style properties file, `key=value`
  per line, `#` or `!` comments, the same file a Kafka CLI tool takes with --command-config.

Settings that carry the pipeline's guarantees are refused (exit 2): offsets live in the
ledger (no auto commit, never reset by the client), the producer is idempotent with
acks=all and Java's partitioner. Values are never logged, only the names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from app.core.errors import ConfigurationError

ENV_PREFIX: Final = "KAFKA_CONFIG_"
FILE_ENV: Final = "KAFKA_CONFIG_FILE"

# What exactly-once rests on (docs/exactly-once.md), or what the flags already say.
RESERVED: Final = frozenset({
    "bootstrap.servers", "group.id", "enable.auto.commit", "enable.auto.offset.store", "auto.offset.reset",
    "isolation.level", "enable.partition.eof", "partition.assignment.strategy", "enable.idempotence", "acks",
    "partitioner", "transactional.id",
})


def name_from_env(var: str) -> str:
    """KAFKA_CONFIG_SSL_CA_LOCATION -> ssl.ca.location (`__` -> `_`, `___` -> `-`)."""
    raw = var[len(ENV_PREFIX):].lower()
    return raw.replace("___", "\0").replace("__", "\1").replace("_", ".").replace("\0", "-").replace("\1", "_")


def from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    return {name_from_env(k): v for k, v in sorted(environ.items())
            if k.startswith(ENV_PREFIX) and k != FILE_ENV and len(k) > len(ENV_PREFIX)}


def parse_properties(text: str, source: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#!":
            continue
        key, sep, value = (stripped.partition("=") if "=" in stripped else stripped.partition(":"))
        if not sep or not key.strip():
            raise ConfigurationError(f"{source}:{n}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def load(file: Path | None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The operator's librdkafka settings: KAFKA_CONFIG_* then the file over them."""
    settings = from_environment(os.environ if environ is None else environ)
    if file is not None:
        try:
            text = file.read_text()
        except OSError as e:
            raise ConfigurationError(f"cannot read --kafka-config {file}: {e.strerror or e}") from e
        settings.update(parse_properties(text, str(file)))
    reserved = sorted(k for k in settings if k in RESERVED)
    if reserved:
        raise ConfigurationError(f"librdkafka setting(s) {', '.join(reserved)} cannot be overridden "
                                 "(KAFKA_CONFIG_* / --kafka-config): the pipeline sets them for exactly-once, "
                                 "or a flag does (--bootstrap-servers, --pipeline-id)")
    return settings


def check_with_librdkafka(settings: Mapping[str, str]) -> None:
    """An unknown name or a bad value is a configuration error now, in one line, rather than
    a failure of the first client deep inside a command."""
    if not settings:
        return
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient
    try:
        AdminClient({"bootstrap.servers": "127.0.0.1:9", "log_level": 0, **settings})
    except (KafkaException, ValueError, TypeError) as e:
        raise ConfigurationError(f"librdkafka refused KAFKA_CONFIG_* / --kafka-config: {e}") from e
