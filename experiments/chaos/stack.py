"""The services a chaos run needs: a Kafka cluster of its own (infra/kafka.sh on free ports,
so brokers can be killed without touching anyone else's), the shared Postgres ledger under
a pipeline id of its own, and an embedded ClickHouse path of its own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from confluent_kafka.admin import AdminClient, NewTopic

from app.core.config import REPO_ROOT, psycopg_conninfo
from app.ledger.scope import forget_pipeline

KAFKA_SH = REPO_ROOT / "infra" / "kafka.sh"
TOPIC_MAX_MESSAGE_BYTES = 16 << 20  # the input may carry 10 MB records (oversized, hostile)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@dataclass
class KafkaCluster:
    brokers: int
    data_dir: Path
    port_base: int = 0

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "BROKERS": str(self.brokers), "KAFKA_PORT_BASE": str(self.port_base),
                "KAFKA_DATA_DIR": str(self.data_dir), "KAFKA_HEAP": "384m"}

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.port_base + 2 * i}" for i in range(self.brokers))

    def _sh(self, *args: str, timeout_s: float = 180) -> str:
        res = subprocess.run([str(KAFKA_SH), *args], env=self.env, capture_output=True, text=True,
                             timeout=timeout_s, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"infra/kafka.sh {' '.join(args)} failed: {res.stderr[-2000:]}")
        return res.stdout

    def up(self) -> None:
        """A fresh cluster: one left running by an earlier, killed run is stopped and its data
        removed first (the run owns this data dir)."""
        if (self.data_dir / "brokers").exists():
            subprocess.run([str(KAFKA_SH), "down"], env={**self.env, "KAFKA_PORT_BASE": "0"},
                           capture_output=True, timeout=120, check=False)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if not self.port_base:
            found = next((b for b in range(29092, 29992, 100)
                          if all(_port_free(b + i) for i in range(2 * self.brokers))), None)
            if found is None:
                raise RuntimeError("no free port range for the chaos Kafka cluster")
            self.port_base = found
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._sh("up")

    def down(self) -> None:
        self._sh("down", timeout_s=120)

    def kill_node(self, node: int) -> None:
        self._sh("node-kill", str(node))

    def start_node(self, node: int) -> None:
        self._sh("node-start", str(node))

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})

    def leader_of(self, topic: str, partition: int = 0) -> int | None:
        md = self.admin().list_topics(topic, timeout=10)
        t = md.topics.get(topic)
        if t is None or partition not in t.partitions:
            return None
        leader = t.partitions[partition].leader
        return leader if leader > 0 else None

    def create_topic(self, name: str, partitions: int) -> None:
        rf = 3 if self.brokers >= 3 else 1
        config = {"max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)}
        if rf == 3:
            config["min.insync.replicas"] = "2"
        admin = self.admin()  # kept alive until the future resolves
        futures = admin.create_topics([NewTopic(name, partitions, rf, config=config)])
        futures[name].result(timeout=60)


@dataclass(frozen=True)
class Scope:
    """Names and paths of one chaos run, and the environment every command gets."""

    pipeline_id: str
    run_dir: Path
    bootstrap: str
    database_url: str

    @property
    def topic(self) -> str:
        return f"{self.pipeline_id}.events"

    @property
    def dlq_topic(self) -> str:
        return f"{self.pipeline_id}.dlq"

    @property
    def clickhouse_path(self) -> Path:
        return self.run_dir / "clickhouse"

    @property
    def clickhouse_url(self) -> str:
        return f"chdb://{self.clickhouse_path}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PIPELINE_CRASH_AT"}
        env.update({"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "DATABASE_URL": self.database_url,
                    "CLICKHOUSE_URL": self.clickhouse_url, "EVENTS_TOPIC": self.topic,
                    "DLQ_TOPIC": self.dlq_topic, "PIPELINE_ID": self.pipeline_id,
                    "PYTHONPATH": str(REPO_ROOT), "LOG_LEVEL": "info"})
        env.update(extra)
        return env

    def argv(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *args]

    def ledger(self) -> psycopg.Connection:  # type: ignore[type-arg]
        return psycopg.connect(psycopg_conninfo(self.database_url), autocommit=True)

    def reset(self) -> None:
        """Forget every earlier run of this pipeline id: ledger rows, local data."""
        with self.ledger() as conn:
            forget_pipeline(conn, self.pipeline_id)
        shutil.rmtree(self.run_dir / "clickhouse", ignore_errors=True)
        shutil.rmtree(self.run_dir / "state", ignore_errors=True)
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)


def wait_for(pred: object, what: str, timeout_s: float, every_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)
