"""The readiness probe of Kafka (app/core/probes.py) connects like the command does: with the
operator's librdkafka settings (KAFKA_CONFIG_* / --kafka-config), so on a SASL / TLS
cluster /readyz does not stay 503 (issue 14 item 5 meets issue 11's probes)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from app.core import kafka, probes


@pytest.fixture
def client_settings() -> Iterator[dict[str, str]]:
    settings = {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "u",
                "sasl.password": "p"}
    kafka.use_client_settings(settings)
    try:
        yield settings
    finally:
        kafka.use_client_settings({})


def test_the_kafka_probe_uses_the_operators_client_settings(client_settings: dict[str, str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    class Recording:
        def __init__(self, cfg: dict[str, Any]) -> None:
            seen.append(cfg)

        def list_topics(self, **_kw: object) -> None:
            return None

    monkeypatch.setattr(probes, "AdminClient", Recording)
    probes.kafka_probe("broker:9093", "events")()
    assert len(seen) == 1
    cfg = seen[0]
    assert cfg["bootstrap.servers"] == "broker:9093"
    assert {k: cfg[k] for k in client_settings} == client_settings
    assert cfg["error_cb"] is not None and cfg["log_level"] == 0
