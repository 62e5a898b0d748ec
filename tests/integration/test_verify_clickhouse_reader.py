"""verify reads the pipeline's ClickHouse in a child process (app/verify/final_export.py):
its errors reach verify's exit code and message as before, and a password in the URL
reaches neither its arguments (the process list) nor the output.

Against a real server (Debian's clickhouse-server, started on demand): a wrong password
is a configuration error, exit 2 within seconds.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.verify.final_export import PipelineFinal
from tests.conftest import REPO, Pipeline
from tests.clickhouse_server import SERVER_PASSWORD, ClickHouseServer
from tests.clickhouse_server import clickhouse_server as running_clickhouse_server


@pytest.fixture(scope="module")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    with running_clickhouse_server(tmp_path_factory.mktemp("clickhouse-server")) as server:
        yield server


def test_wrong_password_exits_2_without_showing_it(pipeline: Pipeline, clickhouse_server: ClickHouseServer) -> None:
    p = pipeline
    p.gen("--events", "200", "--partitions", "2", "--seed", "3")
    wrong = "not-the-password-7"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "app.verify", "--service-timeout", "3s"],
                          env=p.env(CLICKHOUSE_URL=clickhouse_server.url(password=wrong)), cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    took = time.monotonic() - started
    assert done.returncode == 2, done.stdout + done.stderr
    assert took < 30, f"took {took:.1f}s"
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("verify: error: ") and "authentication" in last.lower(), done.stderr[-3000:]
    for text in (done.stdout, done.stderr):
        assert wrong not in text and SERVER_PASSWORD not in text


def test_the_reader_gets_the_url_in_its_environment_not_its_arguments(tmp_path: Path) -> None:
    """A password in CLICKHOUSE_URL would show in the process list if it were an argument."""
    url = f"chdb://{tmp_path / 'ch'}"
    with PipelineFinal(url, 10.0, "warning") as final:
        args = final._child.args  # noqa: SLF001 (what the process list shows)
        assert args[1:3] == ["-m", "app.verify.final_export"]  # it is running, and it is the reader
        assert not any(url in str(a) or str(tmp_path) in str(a) for a in args), args
        assert final.export({}) == {}
