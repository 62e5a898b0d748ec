"""Arithmetic over what a run left behind: ledger rows, JSON log lines, record timestamps.

Definitions (docs/performance.md repeats them):
  * catch-up rate = records / (last batch acknowledged - first partition assigned), where
    "first partition assigned" is the processor's first `partitions_assigned` log line (it
    starts fetching right after it) and "last batch acknowledged" is max(sink_batch.acked_at);
  * e2e latency of a record = acked_at of the checkpoint that covers its offset (the later of
    its rollup_minute and rollup_hour batches: the row versions containing it are then in
    ClickHouse) - its Kafka CreateTime (set by the producer when app.gen handed it over);
  * split: backlog = max(CreateTime, previous checkpoint of that partition) - CreateTime,
    batching = commit - max(CreateTime, previous checkpoint) (where --batch-max-wait shows),
    sink = acknowledged - commit; the three add up to the e2e latency.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from experiments.benchkit.scope import Batch, Checkpoint


def quantiles(values: Sequence[float] | np.ndarray, qs: Iterable[float] = (0.5, 0.99)) -> list[float | None]:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return [None for _ in qs]
    return [float(np.quantile(arr, q)) for q in qs]


def r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


# ---- logs ---------------------------------------------------------------------


def log_events(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a service (structlog renders JSON when stderr is not a tty)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(ev, dict) and "event" in ev:
            out.append(ev)
    return out


def log_time(ev: dict[str, Any]) -> float | None:
    ts = ev.get("timestamp")
    if not isinstance(ts, str):
        return None
    return datetime.fromisoformat(ts).timestamp()


def first_assignment(events: list[dict[str, Any]]) -> float | None:
    times = [log_time(e) for e in events if e["event"] == "partitions_assigned" and e.get("partitions")]
    times = [t for t in times if t is not None]
    return min(times) if times else None


def commit_seconds(events: list[dict[str, Any]]) -> list[float]:
    return [
        float(e["seconds"])
        for e in events
        if e["event"] == "checkpoint_committed"
        and isinstance(e.get("seconds"), (int, float))
        and not e.get("already_committed")
    ]


# ---- checkpoints and batches ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckpointTimes:
    """Per checkpoint with rows: commit time, time both tables' batches were acknowledged,
    and the offset ranges it covers."""

    checkpoint_id: int
    committed_at: float
    acked_at: float | None
    ranges: tuple[tuple[int, int, int], ...]


def checkpoint_times(checkpoints: list[Checkpoint], batches: list[Batch]) -> list[CheckpointTimes]:
    created = {c.checkpoint_id: c.created_at for c in checkpoints}
    by_cp: dict[int, list[Batch]] = {}
    for b in batches:
        by_cp.setdefault(b.checkpoint_id, []).append(b)
    out = []
    for cp_id in sorted(by_cp):
        bs = by_cp[cp_id]
        acks = [b.acked_at for b in bs]
        out.append(
            CheckpointTimes(
                cp_id,
                created.get(cp_id, min(b.created_at for b in bs)),
                None if any(a is None for a in acks) else max(a for a in acks if a is not None),
                bs[0].offset_ranges,
            )
        )
    return out


def rows_per_insert(
    batches: list[Batch],
    checkpoints: list[Checkpoint],
    groups: list[tuple[str, int, float | None]] | None = None,
) -> dict[str, Any]:
    """min / median rows per ClickHouse insert, over all inserts and in steady state.

    A sink that inserts one batch at a time: an insert = a batch; steady state = without
    the first and last checkpoints (start-up, and the final flush). A sink that coalesces
    batches (ledger table sink_group): an insert = a group; steady state = without the
    last group of each table (the drain at the end of a run)."""
    if groups:
        rows = [n for _, n, _ in groups]
        last = {t: i for i, (t, _, _) in enumerate(groups)}
        steady = [n for i, (t, n, _) in enumerate(groups) if last[t] != i]
        source = "sink_group"
    else:
        rows = [b.row_count for b in batches]
        if checkpoints:
            first, last_cp = checkpoints[0].checkpoint_id, checkpoints[-1].checkpoint_id
            steady = [b.row_count for b in batches if first < b.checkpoint_id < last_cp]
        else:
            steady = []
        source = "sink_batch"
    small = sum(1 for n in steady if n < 10_000)
    return {
        "inserts": len(rows),
        "inserts_from": source,
        "min_rows_per_insert_all": min(rows) if rows else None,
        "median_rows_per_insert": float(np.median(rows)) if rows else None,
        "min_rows_per_insert": min(steady) if steady else None,
        "steady_inserts": len(steady),
        "steady_inserts_under_10k_rows": small,
        "batches": len(batches),
        "median_rows_per_batch": float(np.median([b.row_count for b in batches])) if batches else None,
    }


def checkpoint_intervals(checkpoints: list[Checkpoint]) -> list[float]:
    t = [c.created_at for c in checkpoints]
    return [b - a for a, b in itertools.pairwise(t)]


# ---- e2e latency ----------------------------------------------------------------


def e2e_latency(
    cps: list[CheckpointTimes], timestamps: dict[int, tuple[list[int], list[int]]]
) -> dict[str, Any]:
    """Per-record latency (seconds) and its split; records not covered by an acknowledged
    checkpoint with rows (e.g. only late/invalid in it) are counted, not measured."""
    e2e_parts, backlog_parts, batching_parts, sink_parts = [], [], [], []
    uncovered = 0
    for p, (offs_l, ts_l) in timestamps.items():
        if not offs_l:
            continue
        offs = np.asarray(offs_l, dtype=np.int64)
        ts = np.asarray(ts_l, dtype=np.float64) / 1000.0
        ranges = sorted(
            (a, b, c.committed_at, c.acked_at)
            for c in cps
            for (pp, a, b) in c.ranges
            if pp == p and b > a and c.acked_at is not None
        )
        if not ranges:
            uncovered += offs.size
            continue
        starts = np.array([x[0] for x in ranges], dtype=np.int64)
        ends = np.array([x[1] for x in ranges], dtype=np.int64)
        commits = np.array([x[2] for x in ranges])
        acks = np.array([x[3] for x in ranges])
        prev_commit = np.concatenate([[-np.inf], commits[:-1]])
        idx = np.searchsorted(starts, offs, side="right") - 1
        ok = (idx >= 0) & (offs < ends[np.clip(idx, 0, None)])
        uncovered += int((~ok).sum())
        idx, t = idx[ok], ts[ok]
        e2e_parts.append(acks[idx] - t)
        start_wait = np.maximum(t, prev_commit[idx])
        backlog_parts.append(start_wait - t)
        batching_parts.append(commits[idx] - start_wait)
        sink_parts.append(acks[idx] - commits[idx])
    if not e2e_parts:
        return {"records_measured": 0, "records_uncovered": uncovered}
    e2e = np.concatenate(e2e_parts)
    p50, p99, p999, pmax = quantiles(e2e, (0.5, 0.99, 0.999, 1.0))
    out: dict[str, Any] = {
        "records_measured": int(e2e.size),
        "records_uncovered": uncovered,
        "e2e_p50_s": r(p50),
        "e2e_p99_s": r(p99),
        "e2e_p999_s": r(p999),
        "e2e_max_s": r(pmax),
    }
    for name, parts in (("backlog", backlog_parts), ("batching", batching_parts), ("sink", sink_parts)):
        q50, q99 = quantiles(np.concatenate(parts), (0.5, 0.99))
        out[f"{name}_p50_s"], out[f"{name}_p99_s"] = r(q50), r(q99)
    return out


# ---- lag over time ----------------------------------------------------------------


def acked_coverage_at(cps: list[CheckpointTimes], times: Sequence[float]) -> list[int]:
    """Records whose checkpoint was acknowledged by each time (sum over partitions)."""
    events = sorted((c.acked_at, p, b) for c in cps if c.acked_at is not None for (p, _a, b) in c.ranges)
    out, covered, i = [], {}, 0
    for t in times:
        while i < len(events) and events[i][0] <= t:
            _, p, b = events[i]
            covered[p] = max(covered.get(p, 0), b)
            i += 1
        out.append(sum(covered.values()))
    return out


def lag_verdict(
    times: list[float],
    lag_records: list[int],
    rate: float,
    window: tuple[float, float],
    drain_s: float | None,
    achieved_rate: float,
) -> dict[str, Any]:
    """Flat = over the measuring window the mean lag of the last third is at most 3% of the
    elapsed seconds' worth of input above the middle third's (so a ≥3% deficit shows), the
    backlog left when the generator stopped drained within 10 s, and the generator itself
    reached ≥95% of the asked rate."""
    t0, t1 = window
    pts = [(t, lag) for t, lag in zip(times, lag_records, strict=True) if t0 <= t <= t1]
    if len(pts) < 6 or rate <= 0:
        return {"flat": None, "reason": "too few lag samples"}
    n = len(pts)
    mid, last = pts[n // 3 : 2 * n // 3], pts[2 * n // 3 :]
    mean_mid = float(np.mean([x[1] for x in mid]))
    mean_last = float(np.mean([x[1] for x in last]))
    dt = float(np.mean([x[0] for x in last]) - np.mean([x[0] for x in mid]))
    growth = (mean_last - mean_mid) / max(dt, 1e-9) / rate  # seconds of lag gained per second
    lags_s = [x[1] / rate for x in pts]
    reasons = []
    if growth > 0.03:
        reasons.append(f"lag grew {growth:.1%} of the input rate")
    if drain_s is None or drain_s > 10.0:
        reasons.append(f"backlog took {drain_s if drain_s is None else round(drain_s, 1)} s to drain")
    if achieved_rate < 0.95 * rate:
        reasons.append(f"generator reached only {achieved_rate:,.0f}/s")
    return {
        "flat": not reasons,
        "reason": "; ".join(reasons) or "lag stayed flat",
        "lag_growth_per_s": round(growth, 4),
        "lag_mean_s": round(float(np.mean(lags_s)), 3),
        "lag_max_s": round(float(np.max(lags_s)), 3),
        "drain_s": r(drain_s, 2),
    }
