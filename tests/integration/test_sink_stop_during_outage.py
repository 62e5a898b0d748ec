"""SIGTERM while Postgres or ClickHouse is down or hung ends the sink cleanly within 10 s,
exit 0, and loses nothing: an open group stays open (also when the outage hit its
acknowledgement) and the next run resumes it unchanged; verify is exact afterwards.

Outages are real: tests/faultproxy.py in front of the real Postgres (refuse / blackhole),
a closed port, or a black hole for ClickHouse. Kubernetes and systemd SIGKILL a process
that ignores SIGTERM for longer than their grace period (30 s / 90 s by default).

On main at 6e6c674 the Postgres (refused, black-holed), ClickHouse-hang and
acknowledgement cases failed: the sink ignored SIGTERM for 60 s and more (retries that did
not look at the stop request, backoff sleeps, a hung call waiting for its own timeout:
10 s for a Postgres connection, 300 s for a ClickHouse answer). The closed-port ClickHouse
case already stopped in time there (the insert retry honoured stopping); it failed only
on the log line naming the call, which main did not write. All pass since 9b4b256."""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from app.core.config import ServiceSettings
from app.sink.groups import GroupPolicy
from app.sink.loop import Sink, SinkConfig
from app.sink.writer import ClickHouseWriter
from tests.conftest import Pipeline
from tests.faultproxy import FaultProxy
from tests.integration.test_sink_exactly_once import (
    assert_exactly_once,
    freeze_merges,
    groups,
)
from tests.sink_support import free_port, start_sink, wait_for

GEN = ("--seed", "6", "--events", "20000", "--accounts", "3000", "--partitions", "2", "--event-time-rate", "0.3")
SMALL_GROUPS = ("--batch-rows", "1500", "--insert-block-rows", "500")
STOP_WITHIN_S = 10.0


def log_events(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                pass  # a line still being written
    return out


def retries_of(path: Path, prefix: str) -> list[dict[str, Any]]:
    return [e for e in log_events(path) if e.get("event") == "service_retry" and str(e.get("what")).startswith(prefix)]


def sigterm_and_time(proc: subprocess.Popen[bytes]) -> float:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        raise AssertionError("the sink ignored SIGTERM for 60 s") from None
    return time.monotonic() - t0


def proxied(url: str, port: int) -> str:
    return url.replace("127.0.0.1:5432", f"127.0.0.1:{port}")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never answers: behind a black-holed proxy
    it is a ClickHouse server that hangs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield int(s.getsockname()[1])


def finish_and_verify(p: Pipeline) -> None:
    """A clean restart against the healthy services delivers everything exactly once."""
    p.sink(*SMALL_GROUPS)
    assert all(g[5] == "acked" for g in groups(p))
    assert_exactly_once(p)


@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
def test_sigterm_while_postgres_is_down(pipeline: Pipeline, tmp_path: Path, fault: str) -> None:
    p = pipeline
    p.gen(*GEN)
    p.processor()
    freeze_merges(p.clickhouse_url)  # before any insert: the raw audit counts every row sent
    log = tmp_path / "sink.log"
    with FaultProxy("127.0.0.1", 5432) as proxy:
        sink = start_sink(p, log, *SMALL_GROUPS, DATABASE_URL=proxied(p.database_url, proxy.port))
        wait_for("the sink to acknowledge a group", lambda: any(g[5] == "acked" for g in groups(p)))
        getattr(proxy, fault)()
        if fault == "refuse":
            wait_for("the sink to retry a Postgres call", lambda: retries_of(log, "postgres"), timeout_s=30)
        else:  # a black hole answers nothing: the sink's next ledger call hangs
            time.sleep(1.5)
        assert sink.poll() is None, log.read_text()[-3000:]
        took = sigterm_and_time(sink)
    events = log_events(log)
    assert sink.returncode == 0, log.read_text()[-3000:]
    assert took < STOP_WITHIN_S, f"stopped {took:.1f}s after SIGTERM"
    stopped = [e for e in events if e.get("event") in ("sink_stopped_with_open_group", "sink_stop_abandoned_call")]
    assert stopped and str(stopped[-1].get("what")).startswith("postgres"), events[-5:]
    finish_and_verify(p)


@pytest.mark.parametrize("fault", ["closed-port", "hang"])
def test_sigterm_while_clickhouse_is_down(pipeline: Pipeline, tmp_path: Path, fault: str,
                                          silent_port: int) -> None:
    p = pipeline
    p.gen(*GEN)
    p.processor()
    freeze_merges(p.clickhouse_url)  # before any insert: the raw audit counts every row sent
    log = tmp_path / "sink.log"
    with FaultProxy("127.0.0.1", silent_port) as proxy:
        if fault == "hang":
            proxy.blackhole()
            url = f"http://default:@127.0.0.1:{proxy.port}/default"
        else:
            url = f"http://default:@127.0.0.1:{free_port()}/default"
        sink = start_sink(p, log, *SMALL_GROUPS, CLICKHOUSE_URL=url)
        if fault == "closed-port":
            wait_for("the sink to retry a ClickHouse call", lambda: retries_of(log, "clickhouse"), timeout_s=30)
        else:  # the connection is accepted and never answered
            time.sleep(2.0)
        assert sink.poll() is None, log.read_text()[-3000:]
        took = sigterm_and_time(sink)
    events = log_events(log)
    assert sink.returncode == 0, log.read_text()[-3000:]
    assert took < STOP_WITHIN_S, f"stopped {took:.1f}s after SIGTERM"
    stopped = [e for e in events if e.get("event") in ("sink_stopped_with_open_group", "sink_stop_abandoned_call")]
    assert stopped and str(stopped[-1].get("what")).startswith("clickhouse"), events[-5:]
    finish_and_verify(p)


class OutageAfterInsert:
    """The real ClickHouse writer; right after the first insert has landed, Postgres goes
    away (the proxy refuses), so the group's acknowledgement is what fails."""

    def __init__(self, inner: ClickHouseWriter, proxy: FaultProxy) -> None:
        self.inner = inner
        self.proxy = proxy
        self.inserted: list[str] = []

    def prepare(self) -> None:
        prepare = getattr(self.inner, "prepare", None)
        if prepare is not None:
            prepare()

    def insert(self, table: str, rows: pa.Table, token: str, *args: Any, **kwargs: Any) -> None:
        self.inner.insert(table, rows, token, *args, **kwargs)
        self.inserted.append(token)
        if len(self.inserted) == 1:
            self.proxy.refuse()

    def close(self) -> None:
        self.inner.close()


def test_sigterm_while_acknowledging_leaves_the_group_open_and_unchanged(pipeline: Pipeline) -> None:
    p = pipeline
    p.gen(*GEN)
    p.processor()
    freeze_merges(p.clickhouse_url)
    with FaultProxy("127.0.0.1", 5432) as proxy:
        services = ServiceSettings(kafka_bootstrap_servers=p.bootstrap,
                                   database_url=proxied(p.database_url, proxy.port),
                                   clickhouse_url=p.clickhouse_url, events_topic=p.topic, dlq_topic=p.dlq_topic,
                                   pipeline_id=p.pipeline_id)
        writer = OutageAfterInsert(ClickHouseWriter(p.clickhouse_url), proxy)
        sink = Sink(SinkConfig(services=services, until_idle=True, policy=GroupPolicy(batch_rows=1500),
                               insert_block_rows=500), writer)  # type: ignore[arg-type]
        handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
        outcome: dict[str, Any] = {}
        stopped = threading.Event()

        main = threading.main_thread().ident
        assert main is not None

        def terminate_once_refused() -> None:
            deadline = time.monotonic() + 60
            while proxy.mode != "refuse" and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)  # the acknowledgement is failing and being retried by now
            outcome["sent_at"] = time.monotonic()
            signal.pthread_kill(main, signal.SIGTERM)
            # a sink that ignores the signal must fail this test, not hang it
            if not stopped.wait(30):
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(main), ctypes.py_object(AssertionError))

        killer = threading.Thread(target=terminate_once_refused, daemon=True)
        killer.start()
        try:
            rc = sink.run()
            took = time.monotonic() - outcome.get("sent_at", 0.0)
        finally:
            stopped.set()
            for s, h in handlers.items():
                signal.signal(s, h)
        killer.join(timeout=5)
    assert proxy.mode == "refuse" and "sent_at" in outcome, "the outage or the SIGTERM never happened"
    assert rc == 0 and took < STOP_WITHIN_S, (rc, took)
    assert len(writer.inserted) == 1
    open_groups = [g for g in groups(p) if g[5] == "pending"]
    assert len(open_groups) == 1 and open_groups[0][6] == 1  # inserted once, never acknowledged
    before = open_groups[0]

    p.sink(*SMALL_GROUPS)  # the clean restart resumes the same group first
    resumed = [g for g in groups(p) if g[0] == before[0]][0]
    assert resumed[:5] == before[:5] and resumed[5:] == ("acked", 2)
    assert_exactly_once(p)
