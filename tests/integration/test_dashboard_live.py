"""Issue 11, item 3: the dashboard on real parts. A real run (gen, processor, sink) announces
itself through file-based discovery; Debian's Prometheus (infra/prometheus.sh, on free
ports, stopped at the end) scrapes every process; the dashboard page, rendered by headless
Debian Chromium, shows data in every panel; and every metric either dashboard (the page's
panels.json, the Grafana JSON under infra/) names exists in a live scrape."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.dashboard.server import panels
from tests.conftest import REPO, Pipeline
from tests.helpers import wait_for
from tests.metrics_support import free_port, get, scrape
from tests.unit.test_dashboards_in_sync import GRAFANA, named_metrics

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture
def monitoring(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {**os.environ, "PROMETHEUS_DIR": str(tmp_path / "prometheus"), "PROMETHEUS_PORT": str(free_port()),
           "DASHBOARD_PORT": str(free_port()), "SCRAPE_INTERVAL": "1s"}
    subprocess.run([str(REPO / "infra" / "prometheus.sh"), "up"], env=env, check=True, timeout=600)
    pids = [int((Path(env["PROMETHEUS_DIR"]) / f"{n}.pid").read_text()) for n in ("prometheus", "dashboard")]
    try:
        yield env
    finally:
        subprocess.run([str(REPO / "infra" / "prometheus.sh"), "down"], env=env, check=True, timeout=60)
        for pid in pids:  # nothing left running after the test
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


def prom_query(env: dict[str, str], expr: str) -> list[dict[str, object]]:
    q = urllib.parse.urlencode({"query": expr})
    code, body = get(f"http://127.0.0.1:{env['PROMETHEUS_PORT']}/api/v1/query?{q}")
    return json.loads(body)["data"]["result"] if code == 200 else []


def test_the_dashboard_shows_every_panel_with_data_during_a_real_run(
        pipeline: Pipeline, monitoring: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p, env = pipeline, monitoring
    monkeypatch.setenv("METRICS_TARGETS_DIR", str(Path(env["PROMETHEUS_DIR"]) / "targets"))
    ports = {s: free_port() for s in ("gen", "processor", "sink")}
    procs = [
        p.start("app.processor", "--batch-max-wait", "0.5s", "--metrics-port", str(ports["processor"])),
        p.start("app.sink", "--batch-max-wait", "0.5s", "--reconcile-every", "1s",
                "--metrics-port", str(ports["sink"])),
        # a steady run for the whole test: 1 simulated minute per 3 s, so minute windows settle
        p.start("app.gen", "--events", "40000", "--rate", "200", "--event-time-rate", "10", "--partitions", "3",
                "--late-fraction", "0.05", "--invalid-fraction", "0.02", "--metrics-port", str(ports["gen"])),
    ]
    wait_for(lambda: p.alive(*procs) and sorted(str(r["metric"]["job"]) for r in  # type: ignore[index]
                                                 prom_query(env, "up == 1")) == ["gen", "processor", "sink"],
             60, "Prometheus to discover and scrape gen, processor and sink through their target files")
    exprs = [t["expr"] for panel in panels()["panels"] for t in panel["targets"]]
    wait_for(lambda: p.alive(*procs) and all(prom_query(env, e) for e in exprs), 120,
             "every panel query to return data from Prometheus")

    # every metric either dashboard names exists in a live scrape of the processes
    live: set[str] = set()
    for port in ports.values():
        live |= {re.sub(r"_(bucket|count|sum|total|created)$", "", n) for n in scrape(port)}
    for source, text in (("panels.json", json.dumps(panels())), ("grafana", GRAFANA.read_text())):
        assert named_metrics(text) <= live, f"{source} names metrics no process exports: " \
                                            f"{sorted(named_metrics(text) - live)}"

    chromium = subprocess.run([str(REPO / "infra" / "chromium.sh")], capture_output=True, text=True,
                              check=True, timeout=900).stdout.strip()
    url = f"http://127.0.0.1:{env['DASHBOARD_PORT']}/?range=300"
    shot = tmp_path / "dashboard.png"
    base = [chromium, *CHROMIUM_FLAGS, "--virtual-time-budget=20000", "--window-size=1400,2600"]
    dom = subprocess.run([*base, f"--user-data-dir={tmp_path / 'chromium-dom'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120, check=False).stdout
    subprocess.run([*base, f"--user-data-dir={tmp_path / 'chromium-shot'}", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=False)
    states = {html.unescape(t): s for t, s in re.findall(r'class="panel" data-title="([^"]+)" data-state="(\w+)"', dom)}
    titles = [panel["title"] for panel in panels()["panels"]]
    assert sorted(states) == sorted(titles), f"panels rendered: {sorted(states)}\n{dom[-2000:]}"
    assert {t: s for t, s in states.items() if s != "data"} == {}, f"panels without data (screenshot: {shot})"
    assert shot.stat().st_size > 10_000
    if os.environ.get("DASHBOARD_SCREENSHOT"):  # keep a copy for the docs
        Path(os.environ["DASHBOARD_SCREENSHOT"]).write_bytes(shot.read_bytes())
