"""infra/docker-compose.yml's safe defaults (issue 14, item 6): no password has a default
(compose refuses to start without it), and every Kafka broker keeps its log in a named
volume, as ClickHouse and Postgres keep theirs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "infra" / "docker-compose.yml"
REQUIRED = re.compile(r"^\$\{(\w+):\?[^}]+\}$")  # ${NAME:?message}: no default, an error without it


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def test_no_password_has_a_default() -> None:
    found = {}
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key:
                found[f"{name}.{key}"] = value
                assert REQUIRED.match(str(value)), f"{name}: {key}={value!r} must be ${{VAR:?message}}"
    assert {"postgres.POSTGRES_PASSWORD", "clickhouse.CLICKHOUSE_PASSWORD",
            "grafana.GF_SECURITY_ADMIN_PASSWORD"} <= found.keys(), found
    assert ":-" not in re.sub(r"(?m)^\s*#.*$", "", COMPOSE.read_text()), "a ${VAR:-default} is left"


def test_every_broker_keeps_its_log_in_a_named_volume() -> None:
    doc = compose()
    brokers = {n: s for n, s in doc["services"].items() if str(s.get("image", "")).startswith("apache/kafka")}
    assert len(brokers) == 3
    for name, service in brokers.items():
        log_dirs = service["environment"]["KAFKA_LOG_DIRS"]
        mounts = dict(v.split(":", 1) for v in service["volumes"])
        volume = next(v for v, target in mounts.items() if target == log_dirs)
        assert volume in doc["volumes"], (name, volume)
    assert len({tuple(s["volumes"]) for s in brokers.values()}) == 3, "brokers share a volume"
