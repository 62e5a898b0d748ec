"""Readiness probes of the services a process depends on (app/core/health.py runs them in
its own thread). Each is bounded by a short timeout and uses its own connection: it tells
whether the service answers now, independently of what the process loop is doing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import psycopg
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from app.core.config import ServiceSettings, psycopg_conninfo
from app.core.health import HEALTH, Health
from app.core.kafka import client_config

TIMEOUT_S: Final = 2


def postgres_probe(url: str) -> Callable[[], None]:
    conninfo = psycopg_conninfo(url)

    def probe() -> None:
        # a new connection each time: a cut one (a restarted server) says nothing about now
        with psycopg.connect(conninfo, connect_timeout=TIMEOUT_S, autocommit=True,
                             options=f"-c statement_timeout={TIMEOUT_S * 1000}") as conn:
            conn.execute("SELECT 1")
    return probe


def kafka_probe(bootstrap: str, topic: str) -> Callable[[], None]:
    admin: list[AdminClient] = []   # created on the first probe, in the probe thread

    def probe() -> None:
        if not admin:
            # the operator's librdkafka settings too (SASL / TLS); quiet, and outside the
            # process's --service-timeout bookkeeping: a probe only reports
            admin.append(AdminClient(client_config(bootstrap, log_level=0, error_cb=lambda _e: None)))
        try:
            admin[0].list_topics(topic=topic, timeout=TIMEOUT_S)
        except KafkaException as e:
            raise ConnectionError(f"Kafka at {bootstrap} did not answer: {e}") from e
    return probe


def watch_services(settings: ServiceSettings, *, postgres: bool = True, kafka: bool = True,
                   health: Health = HEALTH) -> None:
    """Register the probes of a command's services (the embedded ClickHouse lives inside the
    sink's own process: it has no separate endpoint to probe)."""
    if postgres:
        health.add_probe("postgres", postgres_probe(settings.database_url))
    if kafka:
        health.add_probe("kafka", kafka_probe(settings.kafka_bootstrap_servers, settings.events_topic))
