"""SIGTERM while a service is down ends the processor cleanly within 10 s (issue 9).

Kubernetes and systemd send SIGKILL some seconds after SIGTERM; a processor that keeps
retrying past that is killed mid-step. The processor must see the stop request in every
retry loop and blocking call, commit nothing it cannot commit safely (nothing at all
after an error), and exit 0: a stop during an outage is a clean stop, not a failure.

- Postgres behind tests/faultproxy.py: refused (connections cut, port closed) and black
  holed (connections stay up, no byte moves: a query waits forever unless interrupted).
- Kafka: a single-broker cluster of the test's own, killed.

After each stop the service comes back and a fresh run ends exact (verify)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import Pipeline
from tests.faultproxy import FaultProxy
from tests.kafka_cluster import KafkaCluster, cluster_pipeline, kafka_cluster
from tests.process_log import StderrTail

STOP_BUDGET_S = 10.0
GEN = ("--seed", "8", "--accounts", "500", "--partitions", "2", "--late-fraction", "0.02",
       "--invalid-fraction", "0.01", "--event-time-rate", "100")
RUN = ("--batch-max-wait", "0.1s", "--poll-records", "500", "--log-level", "info")


def _checkpoints(p: Pipeline) -> int:
    with psycopg.connect(p.database_url, autocommit=True) as conn:  # the real Postgres, not the proxy
        (n,) = conn.execute("SELECT count(*) FROM ledger_checkpoint WHERE pipeline_id = %s",
                            (p.pipeline_id,)).fetchone()  # type: ignore[misc]
    return int(n)


def _stop(tail: StderrTail) -> float:
    started = time.monotonic()
    tail.proc.send_signal(signal.SIGTERM)
    try:
        rc = tail.wait_exit(STOP_BUDGET_S + 20)
    except Exception:
        tail.proc.kill()
        raise
    elapsed = time.monotonic() - started
    assert elapsed < STOP_BUDGET_S, f"SIGTERM took {elapsed:.1f}s:\n{tail.text()[-4000:]}"
    assert rc == 0, f"exit {rc} after SIGTERM:\n{tail.text()[-4000:]}"
    return elapsed


def _finish_and_verify(p: Pipeline) -> None:
    p.processor("--batch-max-wait", "0.1s")
    p.sink()
    res = p.verify()
    assert res.returncode == 0 and "EXACT" in res.stdout, res.stdout[-3000:]


@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
def test_sigterm_while_postgres_is_down(pipeline: Pipeline, fault: str) -> None:
    p = pipeline
    p.gen(*GEN, "--events", "3000")
    with FaultProxy("127.0.0.1", 5432) as proxy:
        proxied = p.database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        proc = p.start("app.processor", *RUN, "--database-url", proxied)
        tail = StderrTail(proc)
        tail.wait_for("checkpoint_committed", 60)
        before = _checkpoints(p)
        getattr(proxy, fault)()
        p.gen(*GEN, "--events", "3000")  # more input: the processor has something to commit
        if fault == "refuse":  # the processor noticed: it retries a Postgres call
            tail.wait_for("service_retry", 30, where=lambda e: str(e.get("what", "")).startswith("postgres"))
        # whatever the processor is doing now, it cannot commit
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert _checkpoints(p) == before, "a checkpoint committed through a dead proxy"
            time.sleep(0.1)
        elapsed = _stop(tail)
        assert _checkpoints(p) == before
        assert tail.events("processor_stopped"), tail.text()[-3000:]
    print(f"postgres {fault}: stopped in {elapsed:.1f}s")
    _finish_and_verify(p)


@pytest.fixture(scope="module")
def cluster1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    with kafka_cluster(tmp_path_factory, brokers=1, first_base=29992) as c:
        yield c


@pytest.fixture
def pipeline1(cluster1: KafkaCluster, postgres: str, tmp_path: Path) -> Iterator[Pipeline]:
    with cluster_pipeline(cluster1, postgres, tmp_path) as p:
        yield p


def test_sigterm_while_kafka_is_down(cluster1: KafkaCluster, pipeline1: Pipeline) -> None:
    p = pipeline1
    p.gen(*GEN, "--events", "3000")
    proc = p.start("app.processor", *RUN)
    tail = StderrTail(proc)
    tail.wait_for("checkpoint_committed", 60)
    cluster1.node_kill(1)
    try:
        tail.wait_for("kafka_unavailable_retrying", 30)
        elapsed = _stop(tail)
        assert tail.events("processor_stopped"), tail.text()[-3000:]
    finally:
        cluster1.node_start(1)
    print(f"kafka down: stopped in {elapsed:.1f}s")
    _finish_and_verify(p)
