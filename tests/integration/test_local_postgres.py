"""infra/postgres.sh touches only a cluster the stack itself started (issue 14, item 6),
tried on throwaway Debian clusters on ports of their own (the shared server is never
involved: the script acts on the port DATABASE_URL names):

- a cluster already running before `up`: its pg_hba.conf is byte for byte what it was after
  `up` and `down`; the script prints the DATABASE_URL to set instead;
- a cluster that existed but was stopped (a stock Debian machine's 15/main): `up` starts it,
  so the stack may open it to the ledger's URL while it runs; `down` stops it and its
  pg_hba.conf is byte for byte what it was before `up`;
- a cluster the script creates: loopback trust for the ledger's database and role only
  (another database is refused), and `down` stops it and removes those lines."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import REPO

SCRIPT = REPO / "infra" / "postgres.sh"


def _require_debian_clusters() -> str:
    if os.geteuid() == 0 and shutil.which("pg_createcluster") and list(Path("/usr/lib/postgresql").glob("*/bin")):
        return sorted(p.name for p in Path("/usr/lib/postgresql").iterdir())[-1]
    if os.environ.get("CI"):
        pytest.fail("CI must run as root with Debian's postgresql (make up installs it)")
    pytest.skip("needs root and Debian's postgresql-common (pg_createcluster)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clusters() -> dict[int, tuple[str, str, str]]:
    out = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True).stdout
    return {int(c[2]): (c[0], c[1], c[3]) for c in (line.split() for line in out.splitlines())}


def hba(version: str, name: str) -> Path:
    return Path(f"/etc/postgresql/{version}/{name}/pg_hba.conf")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def script(action: str, port: int, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/pipeline",
           "POSTGRES_STATE_DIR": str(tmp), "PYTHON": sys.executable}
    return subprocess.run([str(SCRIPT), action], env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.fixture
def throwaway(tmp_path: Path) -> Iterator[tuple[str, str, int]]:
    """(version, name, port) for a cluster of this test's own; dropped afterwards."""
    version = _require_debian_clusters()
    port, name = free_port(), f"ops{uuid.uuid4().hex[:6]}"
    assert port not in clusters()
    try:
        yield version, name, port
    finally:
        for v, n in [(v, n) for p, (v, n, _) in clusters().items() if p == port or n == name]:
            subprocess.run(["pg_dropcluster", "--stop", v, n], capture_output=True, check=False)


OUR_LINES = ["host    pipeline,postgres    postgres    127.0.0.1/32    trust",
             "host    pipeline,postgres    postgres    ::1/128         trust"]


def trust_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if "trust" in line and not line.startswith("#")]


def assert_no_trust_beyond_the_ledger(port: int) -> None:
    """Another database on the same cluster still asks for a password."""
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/pipeline", autocommit=True) as conn:
        conn.execute("CREATE DATABASE other")
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/other", connect_timeout=5).close()


def test_a_running_cluster_it_did_not_start_is_never_edited(throwaway: tuple[str, str, int],
                                                            tmp_path: Path) -> None:
    version, name, port = throwaway
    subprocess.run(["pg_createcluster", version, name, "-p", str(port)], capture_output=True, check=True)
    subprocess.run(["pg_ctlcluster", version, name, "start"], capture_output=True, check=True)
    before = digest(hba(version, name))
    up = script("up", port, tmp_path)
    # Debian's own pg_hba asks loopback clients for a password: the URL without one is refused
    assert up.returncode == 1, up.stdout + up.stderr
    assert f"export DATABASE_URL='postgresql://pipeline:PASSWORD@127.0.0.1:{port}/pipeline'" in up.stderr, up.stderr
    assert "left as it is" in up.stderr
    assert digest(hba(version, name)) == before
    assert clusters()[port][2] == "online"
    down = script("down", port, tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr
    assert digest(hba(version, name)) == before
    assert clusters()[port][2] == "online", down.stdout  # not started by `up`: left running


def test_a_stopped_cluster_it_starts_is_scoped_while_it_runs(throwaway: tuple[str, str, int],
                                                             tmp_path: Path) -> None:
    version, name, port = throwaway
    subprocess.run(["pg_createcluster", version, name, "-p", str(port)], capture_output=True, check=True)
    before = digest(hba(version, name))
    assert clusters()[port][2] == "down"
    up = script("up", port, tmp_path)
    assert up.returncode == 0, up.stdout + up.stderr
    assert clusters()[port][2] == "online"
    assert trust_lines(hba(version, name)) == OUR_LINES
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/pipeline", autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM partition_state").fetchone() == (0,)
    assert_no_trust_beyond_the_ledger(port)
    down = script("down", port, tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr
    assert clusters()[port][2] == "down"
    assert digest(hba(version, name)) == before


def test_a_cluster_the_stack_creates_is_scoped_and_cleaned_up(throwaway: tuple[str, str, int],
                                                              tmp_path: Path) -> None:
    _version, _name, port = throwaway
    up = script("up", port, tmp_path)
    assert up.returncode == 0, up.stdout + up.stderr
    version, name, state = clusters()[port]
    assert state == "online" and name == f"rollups{port}"
    text = hba(version, name).read_text()
    assert trust_lines(hba(version, name)) == OUR_LINES, text
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/pipeline", autocommit=True) as conn:
        (rev,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()  # type: ignore[misc]
        assert rev and conn.execute("SELECT count(*) FROM partition_state").fetchone() == (0,)
    assert_no_trust_beyond_the_ledger(port)
    again = script("up", port, tmp_path)  # idempotent: the lines are not added twice
    assert again.returncode == 0 and hba(version, name).read_text() == text, again.stdout + again.stderr
    down = script("down", port, tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr
    assert clusters()[port][2] == "down"
    after = hba(version, name).read_text()
    assert "rollups-pipeline" not in after and not [ln for ln in after.splitlines()
                                                     if "trust" in ln and not ln.startswith("#")], after
