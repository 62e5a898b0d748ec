"""The Grafana dashboard (infra/grafana/dashboards/pipeline.json, for the Docker stack) made
from the same panel list as the page (panels.json), so the two show the same queries:
`python -m app.dashboard.grafana > infra/grafana/dashboards/pipeline.json`; a unit test
checks the committed file is this output."""

from __future__ import annotations

import json
import sys
from typing import Any

from app.dashboard.server import panels


def grafana_dashboard(config: dict[str, Any]) -> dict[str, Any]:
    out = []
    for i, panel in enumerate(config["panels"]):
        out.append({
            "id": i + 1, "type": "timeseries", "title": panel["title"],
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "targets": [{"expr": t["expr"], "legendFormat": t.get("legend", ""), "refId": chr(ord("A") + j)}
                        for j, t in enumerate(panel["targets"])],
        })
    return {"title": config["title"], "uid": "rollups", "schemaVersion": 39, "refresh": "5s",
            "time": {"from": "now-30m", "to": "now"}, "panels": out}


def render() -> str:
    return json.dumps(grafana_dashboard(panels()), indent=1) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
