"""Scraping a live process's metrics port in tests: free ports, one scrape as
{sample name: {labels: value}}, and HTTP status of the health endpoints."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import free_port  # noqa: F401  (re-exported for the metrics tests)

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    """(status, body); a refused connection is status 0."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


def scrape(port: int) -> Samples:
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    if status != 200:
        return {}
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def families(port: int) -> dict[str, str]:
    """Metric family name -> type, as the endpoint declares them (with or without samples)."""
    _status, text = get(f"http://127.0.0.1:{port}/metrics")
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of a sample's series whose labels include `labels`."""
    return sum(v for ls, v in samples.get(name, {}).items()
               if all(dict(ls).get(k) == want for k, want in labels.items()))


def label_values(samples: Samples, name: str, label: str) -> set[str]:
    return {dict(ls)[label] for ls in samples.get(name, {}) if label in dict(ls)}


def sample_name(family: str, kind: str) -> str:
    """The sample that moves for a family: counters' _total, histograms' _count."""
    return {"counter": f"{family}_total", "histogram": f"{family}_count"}.get(kind, family)


def present(samples: Samples, names: Mapping[str, str]) -> list[str]:
    return [f for f, kind in names.items() if not samples.get(sample_name(f, kind))]
