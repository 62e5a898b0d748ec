"""Exactly-once across rebalances and broker loss, on a 3-broker KRaft cluster of its own.

The module starts a second cluster (infra/kafka.sh with KAFKA_PORT_BASE / KAFKA_DATA_DIR,
replication factor 3, min ISR 2) beside the shared single broker and stops it afterwards.
During one run: two processor instances and the sink; one processor is SIGKILLed inside
a checkpoint's transaction; a third instance joins; a broker is killed and restarted.
verify must be exact at the end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import LEDGER_TABLES, REPO, Pipeline

SMALL = ("--batch-max-wait", "0.1s", "--poll-records", "2000", "--snapshot-interval", "1s",
         "--session-timeout", "6s", "--log-level", "info")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    base = next((b for b in range(19092, 19992, 100) if all(_port_free(b + i) for i in range(6))), None)
    if base is None:
        pytest.fail("no free port range for a second Kafka cluster")
    env = {**os.environ, "BROKERS": "3", "KAFKA_PORT_BASE": str(base), "KAFKA_HEAP": "256m",
           "KAFKA_DATA_DIR": str(tmp_path_factory.mktemp("kafka3"))}
    up = subprocess.run([str(REPO / "infra/kafka.sh"), "up"], env=env, capture_output=True, text=True,
                        timeout=180, check=False)
    if up.returncode != 0:
        subprocess.run([str(REPO / "infra/kafka.sh"), "down"], env=env, capture_output=True, timeout=60, check=False)
        if os.environ.get("CI"):
            pytest.fail(f"3-broker cluster did not start: {up.stderr[-2000:]}")
        pytest.skip(f"3-broker cluster did not start: {up.stderr[-500:]}")
    env["bootstrap"] = ",".join(f"127.0.0.1:{base + 2 * i}" for i in range(3))
    yield env
    subprocess.run([str(REPO / "infra/kafka.sh"), "down"], env=env, capture_output=True, timeout=120,
                   check=False)


@pytest.fixture
def pipeline3(cluster3: dict[str, str], postgres: str, tmp_path: Path) -> Iterator[Pipeline]:
    pid = f"t-{uuid.uuid4().hex[:10]}"
    p = Pipeline(pipeline_id=pid, topic=f"{pid}.events", dlq_topic=f"{pid}.dlq",
                 clickhouse_url=f"chdb://{tmp_path / 'clickhouse'}", tmp=tmp_path, bootstrap=cluster3["bootstrap"],
                 database_url=postgres)
    yield p
    for proc in p.procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    with psycopg.connect(postgres, autocommit=True) as conn:
        for table in (*LEDGER_TABLES, "window_snapshot_chunk"):
            conn.execute(f"DELETE FROM {table} WHERE pipeline_id = %s", (pid,))


def _kafka(cluster: dict[str, str], *args: str) -> None:
    subprocess.run([str(REPO / "infra/kafka.sh"), *args], env=cluster, check=True, capture_output=True,
                   timeout=120)


def _wait_for(pred: object, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _stderr(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stderr is not None
    return proc.stderr.read().decode()


def _assert_replicated(p: Pipeline, bootstrap: str) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource
    admin = AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(p.topic, timeout=10)
    assert {len(part.replicas) for part in md.topics[p.topic].partitions.values()} == {3}
    resource = ConfigResource(ConfigResource.Type.TOPIC, p.topic)
    config = admin.describe_configs([resource])[resource].result(timeout=10)
    assert config["min.insync.replicas"].value == "2"


def test_instances_die_join_and_a_broker_restarts_during_one_run(cluster3: dict[str, str],
                                                                  pipeline3: Pipeline) -> None:
    p = pipeline3
    p.gen("--seed", "11", "--events", "700000", "--accounts", "20000", "--partitions", "6",
          "--late-fraction", "0.02", "--invalid-fraction", "0.01", "--event-time-rate", "1000")
    _assert_replicated(p, cluster3["bootstrap"])
    sink = p.start("app.sink", "--until-idle")
    # A dies inside the 12th checkpoint's transaction: rows written, COMMIT never sent
    a = p.start("app.processor", "--until-end", *SMALL, "--state-dir", str(p.tmp / "a"),
                crash_at="checkpoint.inside_commit:12")
    b = p.start("app.processor", "--until-end", *SMALL, "--state-dir", str(p.tmp / "b"))
    _wait_for(lambda: a.poll() is not None, "processor A's crash", 120)
    assert a.returncode == -signal.SIGKILL, _stderr(a)[-3000:]
    assert b.poll() is None, "B finished before the third instance could join: more events"
    c = p.start("app.processor", "--until-end", *SMALL, "--state-dir", str(p.tmp / "c"))
    time.sleep(2.0)
    _kafka(cluster3, "node-kill", "2")
    time.sleep(4.0)
    _kafka(cluster3, "node-start", "2")
    assert b.poll() is None or c.poll() is None, "the run ended before the broker came back: more events"

    assert b.wait(timeout=240) == 0, _stderr(b)[-4000:]
    assert c.wait(timeout=240) == 0, _stderr(c)[-4000:]
    assert sink.wait(timeout=240) == 0, _stderr(sink)[-4000:]
    c_log = _stderr(c)
    assert '"checkpoint_committed"' in c_log, "the third instance never processed anything:\n" + "\n".join(
        line for line in c_log.splitlines() if "partitions_" in line)

    with p.ledger() as conn:
        generations = dict(conn.execute(
            "SELECT partition, owner_generation FROM partition_state WHERE pipeline_id = %s",
            (p.pipeline_id,)).fetchall())
    assert len(generations) == 6 and max(generations.values()) >= 2  # partitions changed hands
    res = p.verify()
    assert res.returncode == 0, f"verify exit {res.returncode}\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}"
    assert "EXACT" in res.stdout
