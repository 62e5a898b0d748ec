"""ClickHouse over https:// (issue 14, item 5): the sink reaches a real ClickHouse server
through TLS, verifying the server's certificate against the CA named in the URL
(`?ca_cert=`), and authenticates. The server is Debian's (tests/clickhouse_server.py) behind a
TLS terminator of this test's own, with a certificate made here; it is too old for the
client, so the sink stops at its first query with the server's own error code (exit 1) —
an answer that only comes back through the TLS session — and a wrong password is exit 2."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clickhouse_server import SERVER_PASSWORD, SERVER_USER, ClickHouseServer
from tests.clickhouse_server import clickhouse_server as running_clickhouse_server
from tests.conftest import Pipeline


@pytest.fixture(scope="module")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    with running_clickhouse_server(tmp_path_factory.mktemp("clickhouse-server")) as server:
        yield server


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "server.pem", directory / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   capture_output=True, check=True, timeout=60)
    return cert, key


@contextlib.contextmanager
def tls_terminator(cert: Path, key: Path, target_port: int) -> Iterator[int]:
    """Accept TLS on a port of its own, forward the plain bytes to 127.0.0.1:target_port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                conn = context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                raw.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", target_port))
            threading.Thread(target=pump, args=(conn, upstream), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


def test_sink_speaks_https_to_a_real_server(pipeline: Pipeline, clickhouse_server: ClickHouseServer,
                                           tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    with tls_terminator(cert, key, clickhouse_server.port) as port:
        url = f"https://{SERVER_USER}:{SERVER_PASSWORD}@127.0.0.1:{port}/default?ca_cert={cert}"
        # --service-timeout: a transport failure (plain HTTP sent to a TLS port) ends the run, not the test's timeout
        res = pipeline.run("app.sink", "--until-idle", "--service-timeout", "20s", check=False,
                           extra_env={"CLICKHOUSE_URL": url})
        last = res.stderr.strip().splitlines()[-1]
        assert res.returncode == 1 and "code 47" in last and f"https://{SERVER_USER}:***@127.0.0.1:{port}" in last, \
            res.stderr[-3000:]
        wrong = url.replace(SERVER_PASSWORD, "not-the-password")
        res = pipeline.run("app.sink", "--until-idle", "--service-timeout", "20s", check=False,
                           extra_env={"CLICKHOUSE_URL": wrong})
        last = res.stderr.strip().splitlines()[-1]
        assert res.returncode == 2 and "authentication failed" in last, res.stderr[-3000:]
        assert SERVER_PASSWORD not in res.stderr and "not-the-password" not in res.stderr
