"""The Grafana dashboard under infra/ is generated from the page's panel list, so both name
the same queries (which metrics they name exist in a live scrape:
tests/integration/test_dashboard_live.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from app.core.metrics import STAGES, stage_metric_names
from app.dashboard.grafana import render
from app.dashboard.server import panels

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "infra" / "grafana" / "dashboards" / "pipeline.json"


def named_metrics(text: str) -> set[str]:
    """Metric families a dashboard names (histogram series map to their family)."""
    return {re.sub(r"_(bucket|count|sum|total)$", "", m) for m in re.findall(r"\bpipeline_[a-z0-9_]+", text)}


def test_the_grafana_json_is_generated_from_the_page_panels() -> None:
    assert GRAFANA.read_text() == render(), "run: python -m app.dashboard.grafana > infra/grafana/dashboards/pipeline.json"
    page = {t["expr"] for p in panels()["panels"] for t in p["targets"]}
    grafana = {t["expr"] for p in json.loads(GRAFANA.read_text())["panels"] for t in p["targets"]}
    assert page == grafana


def test_every_metric_a_dashboard_names_is_declared_by_a_stage() -> None:
    declared = {n for s in STAGES for n in stage_metric_names(s)} | {"pipeline_process_resident_memory_bytes"}
    for text in (json.dumps(panels()), GRAFANA.read_text()):
        assert named_metrics(text) <= declared, sorted(named_metrics(text) - declared)
