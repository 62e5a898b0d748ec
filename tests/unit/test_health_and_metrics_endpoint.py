"""The metrics port's endpoints without services: status codes as Kubernetes reads them,
readiness from probes and conditions, a stage's registry holding its own metrics only,
the spread histogram's buckets, and partition series forgotten on revoke."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import generate_latest

from app.core import metrics
from app.core.health import Health
from app.core.serve import app_for


def call(app: Any, path: str) -> tuple[str, bytes]:
    got: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        got["status"] = status
    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET", "QUERY_STRING": ""}, start_response))
    return got["status"], body


def test_readiness_follows_probes_and_conditions_and_liveness_the_loop() -> None:
    health = Health(stall_s=60)
    state = {"pg": True, "owns": False}

    def probe() -> None:
        if not state["pg"]:
            raise ConnectionError("refused")
    health._probes["postgres"] = probe  # registered without starting the probe thread
    health.add_condition("owns_partitions", lambda: state["owns"])
    app = app_for("processor", health)
    health.probe_once()
    status, body = call(app, "/readyz")
    assert status.startswith("503") and json.loads(body)["checks"]["owns_partitions"] == "no"
    state["owns"] = True
    assert call(app, "/readyz")[0].startswith("200")
    state["pg"] = False
    health.probe_once()
    status, body = call(app, "/readyz")
    assert status.startswith("503") and json.loads(body)["checks"]["postgres"].startswith("failing: ConnectionError")
    assert call(app, "/healthz")[0].startswith("200")
    health._beat -= 61  # the loop has not turned for longer than stall_s
    assert call(app, "/healthz")[0].startswith("503")
    assert call(app, "/nothing")[0].startswith("404")


def test_a_stage_exports_its_own_metrics_only() -> None:
    text = generate_latest(metrics.registry("sink")).decode()
    assert "pipeline_sink_rows_total" in text and "pipeline_process_resident_memory_bytes" in text
    assert "pipeline_events_read_total" not in text and "pipeline_gen_events_total" not in text
    assert set(metrics.stage_metric_names("processor")).isdisjoint(metrics.stage_metric_names("gen"))


def test_spread_histogram_spreads_records_evenly_over_their_latency_range() -> None:
    h = metrics.SpreadHistogram("pipeline_test_seconds", "t", "table", (1.0, 2.0, 4.0))
    h.observe_spread("t", 0.0, 4.0, 100)   # 100 records with latencies evenly in [0, 4]
    h.observe_spread("t", 3.0, 3.0, 10)    # 10 records at exactly 3 s
    (family,) = h.collect()
    got = {s.labels.get("le", s.name): s.value for s in family.samples}
    assert got["1.0"] == 25 and got["2.0"] == 50 and got["4.0"] == 110 and got["+Inf"] == 110
    assert got["pipeline_test_seconds_sum"] == 100 * 2.0 + 10 * 3.0


def test_a_revoked_partition_takes_its_series_with_it() -> None:
    metrics.EVENTS_READ.labels(partition="7").inc(3)
    metrics.WATERMARK_LAG.labels(partition="7").set(1.0)
    metrics.forget_partition(7)
    text = generate_latest(metrics.registry("processor")).decode()
    assert 'partition="7"' not in text
    metrics.forget_partition(7)  # twice, or never set: no error
