"""Prometheus for an experiment: the pipeline's own metrics over time (issue 11, items 4-5).

    with Monitoring(run_dir) as mon:          # Debian's Prometheus + the dashboard, free ports
        env = {**os.environ, **mon.env}       # processes started with this env announce themselves
        ... start gen / processor / sink with --metrics-port <free port> ...
        series = mon.range_query("histogram_quantile(0.99, sum by (le) (rate(pipeline_e2e_seconds_bucket[1m])))",
                                 start, end, step=5)
        mon.screenshot(run_dir / "dashboard.png")   # the dashboard page, rendered by headless Chromium

Everything goes through infra/prometheus.sh (installs Prometheus on demand) and is stopped
on exit: nothing keeps running after the experiment.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

REPO: Final = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS: Final = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Series:
    labels: dict[str, str]
    points: list[tuple[float, float]]     # (epoch s, value)


class Monitoring:
    def __init__(self, state_dir: Path, *, scrape_interval: str = "1s") -> None:
        self.dir = state_dir
        # PYTHON: the dashboard runs on this interpreter (a bare python3 outside make lacks psycopg)
        self.env = {"PYTHON": sys.executable, "PROMETHEUS_DIR": str(state_dir), "PROMETHEUS_PORT": str(free_port()),
                    "DASHBOARD_PORT": str(free_port()), "SCRAPE_INTERVAL": scrape_interval,
                    "METRICS_TARGETS_DIR": str(state_dir / "targets")}

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.env['PROMETHEUS_PORT']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.env['DASHBOARD_PORT']}/"

    def __enter__(self) -> Monitoring:
        self._script("up")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._script("down")

    def _script(self, verb: str) -> None:
        subprocess.run([str(REPO / "infra" / "prometheus.sh"), verb], env={**os.environ, **self.env}, check=True,
                       timeout=900)

    def _api(self, path: str, params: dict[str, str]) -> list[dict[str, object]]:
        url = f"{self.prometheus_url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus {path} {params}: {body.get('error')}")
        return list(body["data"]["result"])

    def query(self, expr: str, at: float | None = None) -> list[Series]:
        params = {"query": expr} if at is None else {"query": expr, "time": str(at)}
        return [Series(dict(r["metric"]), [(float(r["value"][0]), float(r["value"][1]))])  # type: ignore[index]
                for r in self._api("/api/v1/query", params)]

    def range_query(self, expr: str, start: float, end: float, step: float = 5.0) -> list[Series]:
        return [Series(dict(r["metric"]), [(float(t), float(v)) for t, v in r["values"]])  # type: ignore[index,attr-defined]
                for r in self._api("/api/v1/query_range", {"query": expr, "start": str(start), "end": str(end),
                                                           "step": str(step)})]

    def screenshot(self, path: Path, *, range_s: int = 900, size: str = "1400,2600") -> Path:
        chromium = subprocess.run([str(REPO / "infra" / "chromium.sh")], capture_output=True, text=True,
                                  check=True, timeout=900).stdout.strip()
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000",
                            f"--window-size={size}", f"--screenshot={path}", f"{self.dashboard_url}?range={range_s}"],
                           capture_output=True, timeout=180, check=True)
        return path
