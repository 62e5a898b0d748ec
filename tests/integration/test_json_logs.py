"""Every line a command writes to stderr is JSON when stderr is not a terminal (issue 14,
item 1): structlog's events and the records of the libraries underneath (urllib3,
clickhouse-connect, alembic, ...), at debug level, where those libraries talk most.
A whole small pipeline runs: gen, processor, sink (against a real ClickHouse server, so
clickhouse-connect and urllib3 speak over HTTP), verify, status, and alembic."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clickhouse_server import SERVER_PASSWORD, SERVER_USER, ClickHouseServer
from tests.clickhouse_server import clickhouse_server as running_clickhouse_server
from tests.conftest import REPO, Pipeline

GEN = ("--seed", "5", "--events", "400", "--accounts", "100", "--partitions", "2", "--late-fraction", "0.05",
       "--invalid-fraction", "0.02", "--event-time-rate", "100")


@pytest.fixture(scope="module")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    with running_clickhouse_server(tmp_path_factory.mktemp("clickhouse-server")) as server:
        yield server


def not_json(stderr: str) -> list[str]:
    bad = []
    for line in stderr.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if not isinstance(doc, dict) or not {"event", "level", "timestamp"} <= doc.keys():
            bad.append(line)
    return bad


def test_every_log_line_is_json(pipeline: Pipeline, clickhouse_server: ClickHouseServer) -> None:
    p = pipeline
    debug = {"LOG_LEVEL": "debug"}
    runs = {
        "gen": p.run("app.gen", *GEN, extra_env=debug),
        "processor": p.run("app.processor", "--until-end", "--batch-max-wait", "0.1s", extra_env=debug),
        "sink": p.run("app.sink", "--until-idle", extra_env=debug),
        "verify": p.run("app.verify", extra_env=debug),
        "status": p.run("app.status", extra_env=debug),
        "alembic": subprocess.run([sys.executable, "-m", "alembic", "current"], cwd=REPO, env=p.env(**debug),
                                  capture_output=True, text=True, timeout=120, check=True),
    }
    assert "EXACT" in runs["verify"].stdout, runs["verify"].stdout[-3000:]
    # a sink talking HTTP to a real (old, Debian) ClickHouse server: urllib3 and clickhouse-connect
    # log at debug level; the server is too old for the client, so the sink stops (exit 1)
    server = f"http://{SERVER_USER}:{SERVER_PASSWORD}@127.0.0.1:{clickhouse_server.port}/default"
    http_sink = p.run("app.sink", "--until-idle", check=False, extra_env={**debug, "CLICKHOUSE_URL": server})
    assert http_sink.returncode == 1 and http_sink.stderr.strip().splitlines()[-1].startswith("sink: error: ")
    runs["sink over http"] = subprocess.CompletedProcess(http_sink.args, 1, "",
                                                         "\n".join(http_sink.stderr.strip().splitlines()[:-1]))
    for name, res in runs.items():
        assert res.stderr.strip(), f"{name} logged nothing at debug level"
        bad = not_json(res.stderr)
        assert not bad, f"{name}: {len(bad)} line(s) not JSON, e.g.:\n" + "\n".join(bad[:10])
    loggers = {json.loads(line).get("logger") for res in runs.values() for line in res.stderr.splitlines()}
    assert {"urllib3.connectionpool", "alembic.runtime.migration"} <= loggers, \
        f"third-party records missing from the stream: {sorted(x for x in loggers if x)}"


def test_an_error_exit_ends_with_one_plain_line_after_json(pipeline: Pipeline, tmp_path: Path) -> None:
    """The documented exception: the last line of an error exit is `<command>: error: ...`."""
    res = pipeline.run("app.processor", "--database-url", "postgresql://postgres@127.0.0.1:1/x",
                       "--service-timeout", "1s", check=False, extra_env={"LOG_LEVEL": "info"})
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 3 and lines[-1].startswith("processor: error: "), res.stderr[-2000:]
    assert not not_json("\n".join(lines[:-1])), res.stderr[-2000:]
