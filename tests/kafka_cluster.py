"""A Kafka cluster of a test's own, beside the shared broker, for broker-fault tests.

infra/kafka.sh with its own KAFKA_PORT_BASE and KAFKA_DATA_DIR (node i listens on
127.0.0.1:base + 2*(i-1)); nodes can be killed (SIGKILL) and started again, or frozen
(SIGSTOP) and thawed. Kafka clients connect to the advertised listener of each broker, so
this is the way to make one broker (and the partitions it leads) unavailable: a TCP proxy
on the bootstrap port would not isolate anything.

Usage, in a test module (a pipeline on it: tests.conftest.isolated_pipeline):

    @pytest.fixture(scope="module")
    def cluster(tmp_path_factory):
        with kafka_cluster(tmp_path_factory, brokers=3) as c:
            yield c

    @pytest.fixture
    def pipeline_c(cluster, postgres, tmp_path):
        with isolated_pipeline(cluster.bootstrap, postgres, tmp_path) as p:
            yield p
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[1]
KAFKA_SH = REPO / "infra" / "kafka.sh"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@dataclass
class KafkaCluster:
    brokers: int
    env: dict[str, str]
    port_base: int
    data_dir: Path

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.client_port(i)}" for i in range(1, self.brokers + 1))

    def client_port(self, node: int) -> int:
        return self.port_base + 2 * (node - 1)

    def _sh(self, *args: str, timeout: float = 180) -> None:
        res = subprocess.run([str(KAFKA_SH), *args], env=self.env, capture_output=True, text=True,
                             timeout=timeout, check=False)
        assert res.returncode == 0, f"kafka.sh {' '.join(args)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"

    def node_kill(self, node: int) -> None:
        """SIGKILL the node (a crashed or unplugged broker)."""
        self._sh("node-kill", str(node))

    def node_start(self, node: int) -> None:
        """Start a killed node again; returns once it listens."""
        self._sh("node-start", str(node))

    def pid(self, node: int) -> int:
        return int((self.data_dir / f"node{node}" / "pid").read_text().strip())

    def freeze(self, node: int) -> None:
        """SIGSTOP: the broker keeps its sockets but answers nothing (a hung broker)."""
        os.kill(self.pid(node), signal.SIGSTOP)

    def thaw(self, node: int) -> None:
        os.kill(self.pid(node), signal.SIGCONT)

    def wait_leaders_without(self, topic: str, node: int, timeout_s: float = 60.0) -> None:
        """Until every partition of `topic` has a leader other than `node` (after a kill, the
        controller moves leadership once the broker's session expires)."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        leaders: list[int] = []

        def moved() -> bool:
            t = admin.list_topics(topic, timeout=10).topics.get(topic)
            leaders[:] = [] if t is None or t.error else [pm.leader for pm in t.partitions.values()]
            return bool(leaders) and all(leader not in (-1, node) for leader in leaders)

        wait_for(moved, timeout_s, f"{topic}'s partition leaders to leave node {node}",
                 interval=0.2, detail=lambda: f"leaders: {leaders}")


@contextmanager
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory, *, brokers: int = 3, heap: str = "256m",
                  first_base: int = 29092) -> Iterator[KafkaCluster]:
    """Start a cluster (skipped locally when it cannot start, failed in CI) and stop it after."""
    ports = 2 * brokers
    # parallel workers (pytest-xdist: gw0, gw1, ...) search disjoint ranges: two of them
    # probing the same free range at once would both pick it
    first_base += 1000 * int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    base = next((b for b in range(first_base, first_base + 900, 100) if all(_port_free(b + i) for i in range(ports))),
                None)
    if base is None:
        pytest.fail(f"no free port range for a {brokers}-broker test cluster")
    data = tmp_path_factory.mktemp(f"kafka{brokers}")
    # infra/kafka.sh checks readiness with confluent-kafka: this interpreter has it, a bare
    # `python3` on PATH (pytest run outside make) may not, and the cluster was then "not ready"
    env = {"PYTHON": sys.executable, **os.environ, "BROKERS": str(brokers), "KAFKA_PORT_BASE": str(base),
           "KAFKA_HEAP": heap, "KAFKA_DATA_DIR": str(data)}
    cluster = KafkaCluster(brokers, env, base, data)
    up = subprocess.run([str(KAFKA_SH), "up"], env=env, capture_output=True, text=True, timeout=240, check=False)
    try:
        if up.returncode != 0:
            if os.environ.get("CI"):
                pytest.fail(f"{brokers}-broker test cluster did not start: {up.stderr[-2000:]}")
            pytest.skip(f"{brokers}-broker test cluster did not start: {up.stderr[-500:]}")
        yield cluster
    finally:
        for node in range(1, brokers + 1):  # a frozen node would not stop on SIGTERM
            try:
                cluster.thaw(node)
            except (OSError, ValueError):
                pass
        subprocess.run([str(KAFKA_SH), "down"], env=env, capture_output=True, timeout=120, check=False)
