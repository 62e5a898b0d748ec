"""Where a findings experiment writes: docs/findings/<name>/ (JSON + PNG), every figure
labelled with the machine it ran on and the date, so a number is never read without its
conditions."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FINDINGS = REPO / "docs" / "findings"
# The machine these runs share: 2 cores, other agents' test suites running beside them.
MACHINE = os.environ.get("FINDINGS_MACHINE", f"{os.cpu_count()}-core shared machine, loaded")


def machine_label() -> str:
    return f"{MACHINE} ({platform.machine()}, Python {platform.python_version()}), {time.strftime('%Y-%m-%d', time.gmtime())}"


def out_dir(name: str, override: Path | None = None) -> Path:
    path = override or FINDINGS / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, doc: dict[str, Any]) -> Path:
    body = {"machine": machine_label(), "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **doc}
    path.write_text(json.dumps(body, indent=1, default=str) + "\n")
    return path


def label_figure(fig: Any, title: str) -> None:
    """Title on top, the machine in small print at the bottom of every figure."""
    fig.suptitle(title, fontsize=11)
    fig.text(0.99, 0.005, machine_label(), ha="right", va="bottom", fontsize=7, color="0.35")


def pyplot() -> Any:
    import matplotlib
    matplotlib.use("Agg")  # headless: experiments run without a display
    import matplotlib.pyplot as plt
    return plt
