"""verify's work space (its own embedded ClickHouse in a temporary directory, and the child
process that reads the pipeline's ClickHouse) does not outlive it: SIGTERM mid-read unwinds
like Ctrl-C (exit 130), the directory is removed and the pipeline's embedded path is free."""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, Pipeline
from tests.helpers import wait_for


def _locked(path: Path) -> bool:
    """Whether a process holds the embedded ClickHouse whose `status` file this is (the engine
    flocks it while open and removes it when it closes)."""
    if not path.exists():
        return False
    with open(path, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def test_sigterm_mid_read_removes_the_work_dir_and_frees_the_path(pipeline: Pipeline) -> None:
    p = pipeline
    p.gen("--events", "300000", "--partitions", "2", "--seed", "5")
    work_dir = p.tmp / "verify-work"
    work_dir.mkdir()
    ch_status = Path(p.clickhouse_url.removeprefix("chdb://")) / "status"
    log = p.tmp / "verify.err"
    with open(log, "wb") as err:
        verify = subprocess.Popen([sys.executable, "-m", "app.verify", "--work-dir", str(work_dir),
                                   "--log-level", "info"], env=p.env(LOG_LEVEL="info"), cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=err)
    try:
        # The store is open and reading has begun: the reader holds the pipeline's path by then.
        wait_for(lambda: verify.poll() is None and b"verify_reading" in log.read_bytes(), 120,
                 "verify to open its store and start reading the topic")
        assert any(work_dir.iterdir()) and ch_status.exists() and _locked(ch_status)
        verify.terminate()
        assert verify.wait(timeout=120) == 130, log.read_text()[-3000:]
    finally:
        if verify.poll() is None:
            verify.kill()
            verify.wait()
    assert b"verify_phase" not in log.read_bytes(), "the read had finished before SIGTERM: nothing was tested"
    assert "verify: error: interrupted" in log.read_text()
    assert list(work_dir.iterdir()) == [], "the work directory outlived verify"
    wait_for(lambda: not _locked(ch_status), 30, "the ClickHouse reader to release the pipeline's path")
