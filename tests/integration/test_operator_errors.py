"""Failures say what and where, in one line, with the documented exit code (issue 14,
item 1; docs/operations.md): a taken metrics port, an unmigrated ledger, an unreachable
broker named within 2 s, a wrong ClickHouse URL noticed at the sink's start with nothing
pending, and --service-timeout ending processor and sink with exit 3 (at start, and when
the broker goes away mid-run)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.conftest import REPO, Pipeline, isolated_pipeline
from tests.helpers import log_events, wait_for
from tests.kafka_cluster import KafkaCluster, kafka_cluster

GEN = ("--seed", "3", "--accounts", "200", "--partitions", "2", "--event-time-rate", "100")


def run(p: Pipeline, module: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A command with the pipeline's environment, as an operator starts it (no added flags)."""
    return subprocess.run([sys.executable, "-m", module, *args], env=p.env(**env), cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def last_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = res.stderr.strip().splitlines()
    assert lines, f"exit {res.returncode} with an empty stderr"
    return lines[-1]


def assert_one_line_error(res: subprocess.CompletedProcess[str], command: str, code: int, *needles: str) -> str:
    line = last_line(res)
    assert res.returncode == code, f"exit {res.returncode}, expected {code}:\n{res.stderr[-3000:]}"
    assert line.startswith(f"{command}: error: "), res.stderr[-3000:]
    for needle in needles:
        assert needle in line, (needle, line)
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    return line


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("module", ["app.processor", "app.sink", "app.gen"])
def test_a_taken_metrics_port_is_one_line_naming_port_and_flag(pipeline: Pipeline, taken_port: int,
                                                                 module: str) -> None:
    res = run(pipeline, module, "--metrics-port", str(taken_port), "--events", "1") if module == "app.gen" \
        else run(pipeline, module, "--metrics-port", str(taken_port))
    assert_one_line_error(res, module.removeprefix("app."), 2, f"metrics port {taken_port}", "--metrics-port")
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


@pytest.fixture
def empty_database(postgres: str) -> Iterator[str]:
    """The ledger database seen through an empty schema of this test's own (search_path in
    the URL): never migrated, as far as the commands can tell. A schema rather than a new
    database: the local stack lets the project's role into its own databases only."""
    schema = f"ops_unmigrated_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield f"{postgres}{'&' if '?' in postgres else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.mark.parametrize("module", ["app.processor", "app.sink", "app.backfill", "app.status"])
def test_an_unmigrated_ledger_says_run_alembic_upgrade_head(pipeline: Pipeline, empty_database: str,
                                                            module: str) -> None:
    args = ["--from-time", "0", "--to-time", "3600000"] if module == "app.backfill" else []
    if module in ("app.processor", "app.sink"):
        args += ["--metrics-port", "0"]
    res = run(pipeline, module, *args, DATABASE_URL=empty_database)
    assert_one_line_error(res, module.removeprefix("app."), 2, "alembic upgrade head", "never migrated")


def test_a_ledger_behind_the_code_says_run_alembic_upgrade_head(pipeline: Pipeline, empty_database: str) -> None:
    up = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "0005_merge"], cwd=REPO, capture_output=True,
                        text=True, env={**pipeline.env(), "DATABASE_URL": empty_database}, timeout=120, check=False)
    assert up.returncode == 0, up.stderr
    res = run(pipeline, "app.processor", "--metrics-port", "0", DATABASE_URL=empty_database)
    assert_one_line_error(res, "processor", 2, "revision 0005_merge", "alembic upgrade head")


def _ts(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def test_an_unreachable_broker_is_named_within_two_seconds(pipeline: Pipeline) -> None:
    p = pipeline
    proc = p.start("app.processor", "--bootstrap-servers", "127.0.0.1:1", "--log-level", "info")
    retry = wait_for(lambda: p.alive(proc) and log_events(p.log(proc), "service_retry"), 30,
                     "the processor's first service_retry line")[0]
    started = log_events(p.log(proc), "processor_starting")[0]
    assert retry["what"] == "kafka_connect" and "127.0.0.1:1" in str(retry["error"]), retry
    assert _ts(retry) - _ts(started) <= 2.0, (started, retry)
    proc.terminate()  # waiting for a service is stoppable: exit 0
    assert proc.wait(timeout=30) == 0, p.log(proc)[-3000:]


@pytest.mark.parametrize(("flag", "value", "what"), [
    ("--bootstrap-servers", "127.0.0.1:1", "Kafka unreachable at 127.0.0.1:1"),
    ("--database-url", "postgresql://postgres@127.0.0.1:1/pipeline", "Postgres unreachable at"),
])
def test_processor_gives_up_past_service_timeout_with_exit_3(pipeline: Pipeline, flag: str, value: str,
                                                            what: str) -> None:
    res = run(pipeline, "app.processor", "--metrics-port", "0", "--service-timeout", "2s", flag, value)
    assert_one_line_error(res, "processor", 3, what, "--service-timeout 2s")


def test_sink_checks_clickhouse_at_start_with_nothing_pending(pipeline: Pipeline) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://default:pw@127.0.0.1:{port}/default"
    res = run(pipeline, "app.sink", "--metrics-port", "0", "--service-timeout", "3s", CLICKHOUSE_URL=url,
              LOG_LEVEL="info")
    retries = log_events(res.stderr, "service_retry")
    assert retries and retries[0]["what"] == "clickhouse_connect", res.stderr[-3000:]
    assert f"127.0.0.1:{port}" in str(retries[0]["error"]) and "pw" not in res.stderr
    assert_one_line_error(res, "sink", 3, "clickhouse_connect", f"127.0.0.1:{port}")
    bad = run(pipeline, "app.sink", "--metrics-port", "0", CLICKHOUSE_URL="mysql://x")
    assert_one_line_error(bad, "sink", 2, "unsupported CLICKHOUSE_URL")


def test_sink_gives_up_on_postgres_past_service_timeout_with_exit_3(pipeline: Pipeline) -> None:
    res = run(pipeline, "app.sink", "--metrics-port", "0", "--service-timeout", "2s",
              "--database-url", "postgresql://postgres@127.0.0.1:1/pipeline")
    assert_one_line_error(res, "sink", 3, "Postgres unreachable at postgresql://postgres@127.0.0.1:1/pipeline")


@pytest.fixture(scope="module")
def cluster1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    with kafka_cluster(tmp_path_factory, brokers=1, first_base=29792) as c:
        yield c


@pytest.fixture
def pipeline1(cluster1: KafkaCluster, postgres: str, tmp_path: Path) -> Iterator[Pipeline]:
    with isolated_pipeline(cluster1.bootstrap, postgres, tmp_path) as p:
        yield p


def test_processor_exits_3_when_the_broker_stays_away_past_service_timeout(cluster1: KafkaCluster,
                                                                         pipeline1: Pipeline) -> None:
    p = pipeline1
    p.gen(*GEN, "--events", "500")
    proc = p.start("app.processor", "--batch-max-wait", "0.1s", "--service-timeout", "5s", "--log-level", "info")
    wait_for(lambda: p.alive(proc) and log_events(p.log(proc), "checkpoint_committed"), 60,
             "the processor's first checkpoint")
    cluster1.node_kill(1)
    try:
        wait_for(lambda: proc.poll() is not None, 90, "the processor to give up on the broker",
                 detail=lambda: "\n".join(p.log(proc).strip().splitlines()[-30:]))
        rc = proc.returncode
        lines = p.log(proc).strip().splitlines()
        assert rc == 3, "\n".join(lines[-30:])
        assert lines[-1].startswith("processor: error: ") and "Kafka unreachable at 127.0.0.1:" in lines[-1], lines[-1]
        assert "--service-timeout 5s" in lines[-1], lines[-1]
        assert json.loads(lines[0])["event"] in ("processor_starting", "kafka_client_settings")
    finally:
        cluster1.node_start(1)
    p.processor("--batch-max-wait", "0.1s")  # nothing lost: a fresh run ends exact
    p.sink()
    res = p.verify()
    assert res.returncode == 0 and "EXACT" in res.stdout, res.stdout[-3000:]
