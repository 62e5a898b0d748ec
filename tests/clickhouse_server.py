"""A real ClickHouse server on demand (Debian's clickhouse-server), for what chDB cannot
show: authentication, a server's error codes."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_for

SERVER_BIN = "/usr/sbin/clickhouse-server"
SERVER_USER, SERVER_PASSWORD = "pipeline", "s3cret-pw"


@dataclass(frozen=True)
class ClickHouseServer:
    port: int

    def url(self, *, password: str = SERVER_PASSWORD, database: str = "default") -> str:
        return f"http://{SERVER_USER}:{password}@127.0.0.1:{self.port}/{database}"


def _install_server() -> str | None:
    """Install Debian's clickhouse-server if missing; None when done, else why it cannot be."""
    if os.path.exists(SERVER_BIN):
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "clickhouse-server is not installed and this user cannot apt-get install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "clickhouse-server"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:  # the package lists may be missing or stale
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if res.returncode != 0 or not os.path.exists(SERVER_BIN):
        return f"apt-get install clickhouse-server failed: {(res.stderr or res.stdout).strip()[-300:]}"
    return None


_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/server.err.log</errorlog>
          <size>10M</size><count>1</count></logger>
  <http_port>{port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/data/tmp/</tmp_path>
  <user_files_path>{d}/data/user_files/</user_files_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>268435456</mark_cache_size>
</yandex>
"""
_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><{user}><password>{password}</password><networks><ip>127.0.0.1</ip></networks>
         <profile>default</profile><quota>default</quota></{user}></users>
  <quotas><default></default></quotas>
</yandex>
"""


@contextlib.contextmanager
def clickhouse_server(workdir: Path) -> Iterator[ClickHouseServer]:
    """A real ClickHouse server with its own data dir and ports and a password-protected
    user, installed from Debian on demand (~3 s: 16 MB of packages) and stopped on exit.
    Skips the calling test only where the package cannot be installed. chDB has no
    authentication: this is what wrong-password behaviour is tested against."""
    why = _install_server()
    if why is not None:
        pytest.skip(why)
    port = free_port()
    (workdir / "config.xml").write_text(_CONFIG.format(d=workdir, port=port, tcp_port=free_port()))
    (workdir / "users.xml").write_text(_USERS.format(user=SERVER_USER, password=SERVER_PASSWORD))
    with open(workdir / "stdout.log", "wb") as out:
        proc = subprocess.Popen([SERVER_BIN, f"--config-file={workdir / 'config.xml'}"], stdout=out,
                                stderr=subprocess.STDOUT, cwd=workdir)

    def ping() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"clickhouse-server exited {proc.returncode}: "
                                 f"{(workdir / 'stdout.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False
    try:
        wait_for(ping, 60, f"clickhouse-server to answer /ping on port {port}")
        yield ClickHouseServer(port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
