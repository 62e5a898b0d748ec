"""File-based service discovery for Prometheus: each process serving metrics writes one
target file (`<job>-<port>.json`) into the targets directory and removes it when it
exits cleanly, so every instance on every port is found (infra/prometheus/prometheus.yml
reads `<dir>/*.json`). A SIGKILLed process leaves its file: Prometheus shows that target
down until the next process on the port writes it again.

The directory: $METRICS_TARGETS_DIR (empty: write none), else <repo>/.data/prometheus/targets
when it exists (`make up MONITORING=1` creates it), else none.
"""

from __future__ import annotations

import atexit
import json
import os
from pathlib import Path

import structlog

from app.core.config import DEFAULT_DATA_DIR

log = structlog.get_logger("metrics")


def targets_dir() -> Path | None:
    env = os.environ.get("METRICS_TARGETS_DIR")
    if env is not None:
        return Path(env) if env else None
    default = DEFAULT_DATA_DIR / "prometheus" / "targets"
    return default if default.is_dir() else None


def publish(job: str, host: str, port: int, labels: dict[str, str]) -> Path | None:
    """Write this process's target file (atomically); removed at a clean exit."""
    directory = targets_dir()
    if directory is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    scrape_host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    path = directory / f"{job}-{port}.json"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps([{"targets": [f"{scrape_host}:{port}"],
                                "labels": {"job": job, "pid": str(os.getpid()), **labels}}]))
    tmp.replace(path)
    pid = os.getpid()

    def remove() -> None:
        try:
            # only our own file: another process may have taken the port (and the file) since
            if json.loads(path.read_text())[0]["labels"].get("pid") == str(pid):
                path.unlink()
        except (OSError, ValueError, KeyError, IndexError):
            pass
    atexit.register(remove)
    log.info("metrics_target_published", file=str(path))
    return path
