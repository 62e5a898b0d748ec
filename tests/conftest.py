"""Shared fixtures: real Kafka and Postgres (started by `make up`), an isolated pipeline per test.

Each test gets its own topics, PIPELINE_ID (ledger scope and consumer group) and embedded
ClickHouse path. Tests that need services skip when they are unreachable, except in CI,
where a missing service is a failure.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.ledger.scope import forget_pipeline
from tests.helpers import log_events, wait_for

REPO = Path(__file__).resolve().parents[1]
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/pipeline")


def _reachable(hostport: str) -> bool:
    host, _, port = hostport.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def _require(ok: bool, what: str) -> None:
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not reachable; .ci/run must start it (make up)")
    pytest.skip(f"{what} not reachable: run `make up`")


@pytest.fixture(scope="session")
def kafka() -> str:
    _require(_reachable(BOOTSTRAP), f"Kafka at {BOOTSTRAP}")
    return BOOTSTRAP


@pytest.fixture(scope="session")
def postgres() -> str:
    _require(_reachable("127.0.0.1:5432"), "Postgres at 127.0.0.1:5432")
    return DATABASE_URL


@dataclass
class Pipeline:
    """One isolated pipeline: names, env for the commands, helpers to run them."""

    pipeline_id: str
    topic: str
    dlq_topic: str
    clickhouse_url: str
    tmp: Path
    bootstrap: str
    database_url: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: dict[int, Path] = field(default_factory=dict)  # pid -> its log files, without suffix

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PIPELINE_CRASH_AT", None)
        env.update({
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "DATABASE_URL": self.database_url,
            "CLICKHOUSE_URL": self.clickhouse_url, "EVENTS_TOPIC": self.topic, "DLQ_TOPIC": self.dlq_topic,
            "PIPELINE_ID": self.pipeline_id, "PYTHONPATH": str(REPO), "LOG_LEVEL": "warning",
            "STATE_DIR": str(self.tmp / "state"),
        })
        env.update(extra)
        return env

    def _argv(self, module: str, args: tuple[str, ...], crash_at: str | None) -> list[str]:
        argv = [sys.executable, "-m", module, *args, *(["--fault-injection"] if crash_at else [])]
        if module in ("app.processor", "app.sink") and "--metrics-port" not in args:
            argv += ["--metrics-port", "0"]  # tests run side by side: no fixed port
        return argv

    def run(self, module: str, *args: str, crash_at: str | None = None, timeout: float = 300,
            check: bool = True, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        extra = {**(extra_env or {}), **({"PIPELINE_CRASH_AT": crash_at} if crash_at else {})}
        res = subprocess.run(self._argv(module, args, crash_at), env=self.env(**extra), cwd=REPO,
                             capture_output=True, text=True, timeout=timeout, check=False)
        if check and res.returncode != 0:
            raise AssertionError(f"{module} {' '.join(args)} exited {res.returncode}\n"
                                 f"stdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-5000:]}")
        return res

    def start(self, module: str, *args: str, crash_at: str | None = None,
              extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A background process: the suite's one way to run one. Its stdout and stderr go to
        files (read them with `output` and `log`, its log lines with tests.helpers.log_events):
        a pipe nobody reads fills up after 64 KiB of log lines and blocks the process."""
        extra = {**(extra_env or {}), **({"PIPELINE_CRASH_AT": crash_at} if crash_at else {})}
        logs = self.tmp / "logs"
        logs.mkdir(exist_ok=True)
        path = logs / f"{len(self.procs):02d}-{module}"
        with open(path.with_suffix(".out"), "wb") as out, open(path.with_suffix(".err"), "wb") as err:
            proc = subprocess.Popen(self._argv(module, args, crash_at), env=self.env(**extra), cwd=REPO,
                                    stdout=out, stderr=err)
        self.procs.append(proc)
        self.logs[proc.pid] = path
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        """Everything a process started with `start` has written to stderr so far."""
        return self.logs[proc.pid].with_suffix(".err").read_text(errors="replace")

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        """Everything a process started with `start` has written to stdout so far."""
        return self.logs[proc.pid].with_suffix(".out").read_text(errors="replace")

    def logged(self, proc: subprocess.Popen[bytes], *events: str) -> list[dict[str, Any]]:
        """The log lines of `events` that `proc` (started with `start`) wrote so far; for
        wait_for predicates: fails with its log once it has ended without writing one."""
        found = log_events(self.log(proc), *events)
        if found or proc.poll() is None:
            return found
        found = log_events(self.log(proc), *events)  # written just before it ended
        if not found:
            raise AssertionError(f"{' '.join(map(str, proc.args[2:4]))} exited {proc.returncode} without "
                                 f"logging {' or '.join(events)}:\n{self.log(proc)[-3000:]}")
        return found

    def alive(self, *procs: subprocess.Popen[bytes]) -> bool:
        """True while every one of `procs` (started with `start`) runs; else fail with the
        log of the one that ended. For wait_for predicates: `p.alive(proc) and condition`."""
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{' '.join(map(str, proc.args[2:4]))} exited {proc.returncode} while "
                                     f"the test still needed it:\n{self.log(proc)[-3000:]}")
        return True

    def ledger_value(self, sql: str) -> int:
        """One integer read from the ledger; `sql` takes the pipeline id as its only parameter."""
        with self.ledger() as conn:
            (value,) = conn.execute(sql, (self.pipeline_id,)).fetchone()  # type: ignore[misc]
        return int(value or 0)

    def committed_offsets(self) -> int:
        """Records of the events topic committed to the ledger, over all partitions."""
        return self.ledger_value("SELECT sum(next_offset) FROM partition_state WHERE pipeline_id = %s")

    def checkpoints(self) -> int:
        return self.ledger_value("SELECT count(*) FROM ledger_checkpoint WHERE pipeline_id = %s")

    def pending_batches(self) -> int:
        return self.ledger_value(
            "SELECT count(*) FROM sink_batch WHERE pipeline_id = %s AND status = 'pending'")

    def sink_until_acked(self, *args: str, timeout: float = 240) -> None:
        """Deliver every committed batch with a live sink, then stop it (SIGTERM): for a
        ledger no --until-end processor finished, where `sink` (--until-idle) would wait."""
        sink = self.start("app.sink", *args)
        wait_for(lambda: self.alive(sink) and self.pending_batches() == 0, timeout,
                 "the sink to acknowledge every committed batch")
        sink.terminate()
        assert sink.wait(timeout=60) == 0, self.log(sink)[-3000:]
        assert self.pending_batches() == 0

    def gen(self, *args: str) -> None:
        self.run("app.gen", *args)

    def processor(self, *args: str, crash_at: str | None = None, check: bool = True,
                  ) -> subprocess.CompletedProcess[str]:
        return self.run("app.processor", "--until-end", *args, crash_at=crash_at, check=check)

    def sink(self, *args: str, crash_at: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("app.sink", "--until-idle", *args, crash_at=crash_at, check=check)

    def verify(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("app.verify", *args, check=False)

    def ledger(self) -> psycopg.Connection:  # type: ignore[type-arg]
        return psycopg.connect(self.database_url, autocommit=True)


@contextmanager
def isolated_pipeline(bootstrap: str, database_url: str, tmp: Path) -> Iterator[Pipeline]:
    """A pipeline of its own (topics, pipeline id, chDB path) on the Kafka at `bootstrap`;
    afterwards its processes are killed and its ledger rows deleted (every table with a
    pipeline_id column, read from the catalog). Its topics are the caller's to delete."""
    pid = f"t-{uuid.uuid4().hex[:10]}"
    p = Pipeline(pipeline_id=pid, topic=f"{pid}.events", dlq_topic=f"{pid}.dlq",
                 clickhouse_url=f"chdb://{tmp / 'clickhouse'}", tmp=tmp, bootstrap=bootstrap,
                 database_url=database_url)
    try:
        yield p
    finally:
        for proc in p.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        with p.ledger() as conn:
            forget_pipeline(conn, pid)


@pytest.fixture
def pipeline(kafka: str, postgres: str, tmp_path: Path) -> Iterator[Pipeline]:
    with isolated_pipeline(kafka, postgres, tmp_path) as p:
        yield p
    from confluent_kafka.admin import AdminClient
    admin = AdminClient({"bootstrap.servers": kafka, "log_level": 0})
    existing = admin.list_topics(timeout=10).topics
    doomed = [t for t in (p.topic, p.dlq_topic) if t in existing]
    if doomed:
        for future in admin.delete_topics(doomed).values():  # keep the client until they complete
            future.result(timeout=30)
