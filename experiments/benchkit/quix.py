"""The Quix Streams anchor: its own virtualenv (created on demand) and one run of the job."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

QUIX_VERSION = "3.28.1"


def ensure_venv(repo: Path, timeout_s: float = 300.0) -> tuple[Path | None, str]:
    """(python of .cache/quix-venv, "") or (None, why not). Re-created when the pinned
    requirements change; never raises: the benchmark goes on without the anchor."""
    req = repo / "experiments/anchors/requirements-quix.txt"
    venv = repo / ".cache/quix-venv"
    python = venv / "bin/python"
    stamp = venv / ".requirements.sha256"
    digest = hashlib.sha256(req.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return python, ""
    started = time.monotonic()
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(req)],
    ]
    for argv in steps:
        left = timeout_s - (time.monotonic() - started)
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=max(left, 1.0), check=False)
        except subprocess.TimeoutExpired:
            return None, f"installing the Quix venv took over {timeout_s:.0f} s"
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
            return None, f"`{' '.join(argv[:4])} …` failed: {tail[0][:200]}"
    stamp.write_text(digest)
    return python, ""


def run_job(
    python: Path,
    repo: Path,
    bootstrap: str,
    topic: str,
    events: int,
    state_dir: Path,
    out: Path | None,
    variant: str,
    log_path: Path,
    timeout_s: float,
) -> dict[str, Any]:
    """One run of experiments/anchors/quix_job.py; {"events_per_s": None, "reason": …} on failure."""
    argv = [
        str(python),
        "-W",
        "ignore",
        str(repo / "experiments/anchors/quix_job.py"),
        "--bootstrap-servers",
        bootstrap,
        "--topic",
        topic,
        "--events",
        str(events),
        "--state-dir",
        str(state_dir),
        "--out",
        str(out) if out else "",
        "--variant",
        variant,
        "--timeout",
        str(timeout_s),
    ]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s + 60, check=False)
    except subprocess.TimeoutExpired:
        return {"events_per_s": None, "reason": f"no result within {timeout_s + 60:.0f} s"}
    log_path.write_text(res.stderr + res.stdout)
    for line in reversed(res.stdout.strip().splitlines()):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            if not result.get("complete"):
                result["reason"] = "stopped before every record was processed"
            return {**result, "version": QUIX_VERSION}
    tail = res.stderr.strip().splitlines()[-1:] or ["no output"]
    return {"events_per_s": None, "reason": f"quix job exited {res.returncode}: {tail[0][:200]}"}
