"""The 1-row baseline of the batch sweep (brief §10.3): what one part per row does to ClickHouse.

Question: the pipeline inserts large blocks; what happens to ClickHouse (parts, the
"too many parts" back-off, rows/s) when every row becomes its own part, as with 1-row
inserts?

The same --events pre-produced records land twice, each time from an empty scope
(processor --until-end, sink --until-idle):
  batched   the sink's defaults (groups of >= 100k rows or 5 s, blocks of 200k rows);
  one-row   sink --batch-rows 1 --batch-max-wait 0s --insert-block-rows 1: every row is its
            own block, so its own part: what ClickHouse sees from 1-row inserts (one
            statement per group here, so the network cost of 1-row inserts is not even
            counted).
Measured: seconds from the first fetch to the last acknowledgement, rows/s into
ClickHouse, ClickHouse parts still active right after the sink exits (merges not yet
caught up), the sink's TOO_MANY_PARTS retries (from its log), verify EXACT for both.

    python -m experiments.one_row_inserts               # 30,000 records, ~5 min
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from experiments.findings_out import label_figure, out_dir, pyplot, write_json
from experiments.livekit import REPO, LiveRun, say

NAME = "one_row_inserts"
RUNS = REPO / ".data" / "findings" / NAME
MODES = {"batched": (), "one-row": ("--batch-rows", "1", "--batch-max-wait", "0s", "--insert-block-rows", "1")}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.one_row_inserts", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=30_000, help="records (default 30000)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--timeout", type=float, default=900.0, help="give up on a mode after this many seconds")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default docs/findings/one_row_inserts)")
    return ap


def run_mode(args: argparse.Namespace, topic: str, mode: str) -> dict[str, Any]:
    live = LiveRun.create(f"{NAME}-{mode}", RUNS, events_topic=topic)
    try:
        live.start_sink("--until-idle", *MODES[mode])
        live.start_processor("--until-end")
        t0 = live.wait_assigned()
        live.wait_exit("processor", args.timeout)
        live.wait_exit("sink", args.timeout)
        batches = live.scope.batches()
        acked = max(b.acked_at for b in batches if b.acked_at is not None)
        rows = sum(b.row_count for b in batches)
        parts = {str(t): int(n) for t, n in live.clickhouse_rows(
            "SELECT table, count() FROM system.parts WHERE active AND database = 'default' "
            "AND table IN ('rollup_minute', 'rollup_hour') GROUP BY table")}
        log = live.children["sink"].log_path.read_text(errors="replace")
        groups = live.scope.insert_groups() or []
        v = live.verify().brief()
        out = {"seconds": round(acked - t0, 2), "rows": rows, "rows_per_s": round(rows / (acked - t0), 1),
               "inserts": len(groups), "active_parts_after": parts,
               "too_many_parts_retries": log.count("TOO_MANY_PARTS"),
               "sink_cpu_s": round(live.children["sink"].cpu_s or 0.0, 2), "verify": v}
        say(NAME, f"{mode}: {out['seconds']} s, {out['rows_per_s']:,.0f} rows/s, parts {parts}, "
                  f"TOO_MANY_PARTS x{out['too_many_parts_retries']}, verify {v['verdict']}")
        return out
    finally:
        live.drop(topics=False)


def plot(doc: dict[str, Any], out: Path) -> Path:
    plt = pyplot()
    modes = list(doc["modes"])
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    vals = [("seconds to land", "seconds"), ("rows/s into ClickHouse", "rows_per_s"),
            ("sink CPU seconds (chDB runs inside it)", "sink_cpu_s")]
    for ax, (title, key) in zip(axes, vals, strict=True):
        ys = [doc["modes"][m][key] for m in modes]
        ax.bar(modes, ys, color=["tab:blue", "tab:red"])
        for i, y in enumerate(ys):
            ax.text(i, y, f"{y:,.0f}" if y >= 10 else f"{y:.2f}", ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, max(ys) * 1.15)
        ax.set_title(title); ax.grid(alpha=0.3, axis="y")
    one = doc["modes"]["one-row"]
    label_figure(fig, f"One part per row vs batched inserts: {one['rows']:,} rows from {doc['events']:,} records; "
                      "verify " + " / ".join(f"{m} {v['verify']['verdict']}" for m, v in doc["modes"].items()))
    fig.tight_layout(rect=(0, 0.03, 1, 0.92))
    path = out / "one_row_inserts.png"
    fig.savefig(path, dpi=90); plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out_dir(NAME, args.out)
    src = LiveRun.create(f"{NAME}-input", RUNS, partitions=args.partitions)
    try:
        src.start_gen("--seed", str(args.seed), "--events", str(args.events), "--start-time", "2026-01-05T00:00:00Z")
        src.wait_exit("gen", 600)
        modes = {m: run_mode(args, src.scope.events_topic, m) for m in MODES}
    finally:
        src.drop()
    doc = {"experiment": NAME, "command": "python -m experiments.one_row_inserts " + " ".join(argv or sys.argv[1:]),
           "events": args.events, "modes": modes,
           "slowdown_x": round(modes["one-row"]["seconds"] / max(modes["batched"]["seconds"], 1e-9), 1)}
    write_json(out / "result.json", doc)
    say(NAME, f"wrote {plot(doc, out)}")
    return 0 if all(m["verify"]["exact"] for m in modes.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
