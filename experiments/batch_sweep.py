"""Insert-batch sweep (brief §10.3, issue 11 item 4): --batch-rows x --batch-max-wait.

Question: how do throughput, end-to-end p99 and the cost of a crash move with the batch
size, where is the knee, and does exactly-once hold at every point?

Each point sets --batch-rows and --batch-max-wait on both processor (checkpoint early at N
changed windows / at least every W) and sink (coalesce until an insert holds N rows / the
oldest batch waited W). Two runs per point, each on a fresh scope, verify EXACT after each:
  catch-up  processor --until-end + sink --until-idle over --events pre-produced records:
            events/s (first fetch -> last ClickHouse ack), inserts, rows per insert, parts;
  live      the generator at --rate for --duration; at 75 % of it the sink is SIGKILLed right
            after a ClickHouse insert, before acknowledging it (crash point sink.after_insert),
            and restarted: e2e p50/p99 over the records acknowledged before the kill, and the
            recovery cost = rows re-sent (the whole group, same token: ClickHouse drops them).
The knee: the point with the highest throughput per second of p99 (marked on the plot).

    python -m experiments.batch_sweep                     # reduced grid (6 points), ~8 min here
    python -m experiments.batch_sweep --full              # the issue's grid {1k,10k,100k,1M} x {200ms,1s,5s}, ~14 min
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from app.core.config import duration_arg
from experiments.benchkit import analyse as an
from experiments.benchkit.scope import EndOffsets, record_timestamps
from experiments.findings_out import label_figure, out_dir, pyplot, write_json
from experiments.livekit import BOOTSTRAP, REPO, LiveRun, durations, say

NAME = "batch_sweep"
RUNS = REPO / ".data" / "findings" / NAME
FULL_ROWS, FULL_WAITS = [1_000, 10_000, 100_000, 1_000_000], ["200ms", "1s", "5s"]


def ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.batch_sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-rows", type=ints, default=[1_000, 10_000, 100_000], help="default 1000,10000,100000")
    ap.add_argument("--batch-max-wait", type=durations, default=["200ms", "1s"], help="default 200ms,1s")
    ap.add_argument("--full", action="store_true", help="the issue's grid {1k,10k,100k,1M} x {200ms,1s,5s}")
    ap.add_argument("--events", type=int, default=600_000, help="records of each catch-up run (default 600000)")
    ap.add_argument("--rate", type=float, default=3000.0, help="events/s of each live run (default 3000)")
    ap.add_argument("--duration", type=duration_arg, default=40.0, help="length of each live run (default 40s)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="output directory (default docs/findings/batch_sweep)")
    return ap


def batch_flags(rows: int, wait: str) -> tuple[str, ...]:
    return ("--batch-rows", str(rows), "--batch-max-wait", wait)


def gen_args(args: argparse.Namespace, events: int, rate: float) -> tuple[str, ...]:
    return ("--seed", str(args.seed), "--events", str(events), "--rate", str(rate), "--event-time-rate", "1000",
            "--accounts", str(args.accounts), "--start-time", "2026-01-05T00:00:00Z")


def parts(live: LiveRun) -> dict[str, int]:
    rows = live.clickhouse_rows("SELECT table, count() FROM system.parts WHERE active AND database = 'default' "
                                "AND table IN ('rollup_minute', 'rollup_hour') GROUP BY table")
    return {str(t): int(n) for t, n in rows}


def catchup(args: argparse.Namespace, topic: str, rows: int, wait: str) -> dict[str, Any]:
    live = LiveRun.create(f"{NAME}-c-{rows}-{wait}", RUNS, events_topic=topic)
    try:
        live.start_sink("--until-idle", *batch_flags(rows, wait))
        live.start_processor("--until-end", *batch_flags(rows, wait))
        t0 = live.wait_assigned()
        live.wait_exit("processor", 1800)
        live.wait_exit("sink", 1800)
        acked = max(b.acked_at for b in live.scope.batches() if b.acked_at is not None)
        ins = an.rows_per_insert(live.scope.batches(), live.scope.checkpoints(), live.scope.insert_groups())
        v = live.verify().brief()
        return {"events_per_s": round(args.events / (acked - t0), 1), "seconds": round(acked - t0, 2),
                "inserts": ins["inserts"], "median_rows_per_insert": ins["median_rows_per_insert"],
                "checkpoints": len(live.scope.checkpoints()), "active_parts": parts(live), "verify": v}
    finally:
        live.drop(topics=False)


def live_run(args: argparse.Namespace, rows: int, wait: str) -> dict[str, Any]:
    live = LiveRun.create(f"{NAME}-l-{rows}-{wait}", RUNS, partitions=args.partitions)
    try:
        live.start_sink(*batch_flags(rows, wait))
        live.start_processor(*batch_flags(rows, wait))
        live.wait_assigned()
        t0 = time.time()
        live.start_gen(*gen_args(args, int(args.rate * args.duration), args.rate))
        while time.time() < t0 + 0.75 * args.duration:
            time.sleep(0.2)
        # The kill: the sink SIGKILLed right after a ClickHouse insert, before it acknowledged
        # the group in the ledger (crash point sink.after_insert). To land it at this moment
        # whatever the insert count, the running sink stops cleanly and an armed one takes over.
        live.children["sink"].terminate()
        live.wait_exit("sink", 120)
        t_kill = time.time()
        live.start_sink(*batch_flags(rows, wait), role="sink-armed", crash_at="sink.after_insert:1")
        live.wait_crashed("sink-armed", "sink.after_insert", 300)
        live.start_sink(*batch_flags(rows, wait), role="sink-restarted")
        killed = {"at_s": round(t_kill - t0, 1), "crash_point": "sink.after_insert:1"}
        live.wait_exit("gen", args.duration * 3 + 120)
        live.wait_drained(max(180.0, args.duration * 3))
        live.stop()
        scope = live.scope
        eo = EndOffsets(BOOTSTRAP, scope.events_topic)
        ends = eo.read()
        eo.close()
        cps = [c for c in an.checkpoint_times(scope.checkpoints(), scope.batches())
               if c.acked_at is not None and c.acked_at < t_kill]
        split = an.e2e_latency(cps, record_timestamps(BOOTSTRAP, scope.events_topic, ends))
        replayed = scope._query(
            "SELECT coalesce(sum(row_count), 0), count(*) FROM sink_group WHERE pipeline_id = %s AND insert_attempts > 1",
            (scope.pipeline_id,))[0]
        v = live.verify().brief()
        return {"e2e_p50_s": split.get("e2e_p50_s"), "e2e_p99_s": split.get("e2e_p99_s"),
                "records_measured_before_kill": split.get("records_measured"), "split": split,
                "kill": killed, "rows_replayed": int(replayed[0]), "groups_replayed": int(replayed[1]),
                "verify": v}
    finally:
        live.drop()


def knee(points: list[dict[str, Any]]) -> int | None:
    """Highest catch-up throughput per second of live p99."""
    scored = [(p["catchup"]["events_per_s"] / p["live"]["e2e_p99_s"], i) for i, p in enumerate(points)
              if p["live"].get("e2e_p99_s")]
    return max(scored)[1] if scored else None


def plot(doc: dict[str, Any], out: Path) -> Path:
    plt = pyplot()
    pts = doc["points"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    ax = axes[0]
    waits = sorted({p["batch_max_wait"] for p in pts}, key=duration_arg)
    for w in waits:
        sel = [p for p in pts if p["batch_max_wait"] == w]
        xs = [p["live"]["e2e_p99_s"] for p in sel]
        ys = [p["catchup"]["events_per_s"] for p in sel]
        ax.plot(xs, ys, "o-", label=f"--batch-max-wait {w}")
        for p, x, y in zip(sel, xs, ys, strict=True):
            ax.annotate(f"{p['batch_rows']:,}", (x, y), fontsize=7, xytext=(5, -3 if w == waits[0] else 4),
                        textcoords="offset points")
    k = doc.get("knee_index")
    if k is not None:
        kp = pts[k]
        ax.scatter([kp["live"]["e2e_p99_s"]], [kp["catchup"]["events_per_s"]], s=300, facecolors="none",
                   edgecolors="red", linewidths=2, label="knee (max throughput / p99)", zorder=4)
    ax.set_xlabel("live e2e p99 (s)"); ax.set_ylabel("catch-up throughput (events/s)")
    ax.set_title("throughput vs e2e p99 (labels: --batch-rows)"); ax.grid(alpha=0.3); ax.legend(fontsize=8)
    ax = axes[1]
    labels = [f"{p['batch_rows']:,}\n{p['batch_max_wait']}" for p in pts]
    xs = range(len(pts))
    ax.bar(xs, [p["live"]["rows_replayed"] for p in pts], color="tab:purple")
    bad = [f"{p['batch_rows']:,}/{p['batch_max_wait']}" for p in pts
           if not (p["catchup"]["verify"]["exact"] and p["live"]["verify"]["exact"])]
    for x, p in zip(xs, pts, strict=True):
        ax.text(x, p["live"]["rows_replayed"], f"{p['live']['rows_replayed']:,}", ha="center", va="bottom",
                fontsize=7, rotation=90 if len(pts) > 8 else 0)
    ax.set_ylim(0, max([p["live"]["rows_replayed"] for p in pts] + [1]) * 1.25)
    ax.set_xticks(list(xs)); ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("rows re-sent after SIGKILL of the sink mid-insert")
    ax.set_title("rows re-sent after the kill (dropped by their token)\n"
                 + (f"verify EXACT at all {2 * len(pts)} runs" if not bad else f"verify MISMATCH at {', '.join(bad)}"),
                 fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    label_figure(fig, f"Batch sweep: --batch-rows x --batch-max-wait (live at {doc['rate']:,.0f} events/s, "
                      f"catch-up over {doc['events']:,} records)")
    fig.tight_layout(rect=(0, 0.03, 1, 0.94))
    path = out / "batch_sweep.png"
    fig.savefig(path, dpi=90); plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rows_grid, wait_grid = (FULL_ROWS, FULL_WAITS) if args.full else (args.batch_rows, args.batch_max_wait)
    out = out_dir(NAME, args.out)
    src = LiveRun.create(f"{NAME}-input", RUNS, partitions=args.partitions)
    points = []
    try:
        src.start_gen(*gen_args(args, args.events, 0))
        src.wait_exit("gen", 900)
        for wait in wait_grid:
            for rows in rows_grid:
                c = catchup(args, src.scope.events_topic, rows, wait)
                lv = live_run(args, rows, wait)
                say(NAME, f"rows {rows:,} wait {wait}: catch-up {c['events_per_s']:,.0f}/s, live p99 {lv['e2e_p99_s']} s, "
                          f"replayed {lv['rows_replayed']:,} rows; verify {c['verify']['verdict']}/{lv['verify']['verdict']}")
                points.append({"batch_rows": rows, "batch_max_wait": wait, "catchup": c, "live": lv})
    finally:
        src.drop()
    doc = {"experiment": NAME, "command": "python -m experiments.batch_sweep " + " ".join(argv or sys.argv[1:]),
           "events": args.events, "rate": args.rate, "duration_s": args.duration, "points": points,
           "all_exact": all(p["catchup"]["verify"]["exact"] and p["live"]["verify"]["exact"] for p in points)}
    doc["knee_index"] = knee(points)
    if doc["knee_index"] is not None:
        kp = points[doc["knee_index"]]
        doc["knee"] = {"batch_rows": kp["batch_rows"], "batch_max_wait": kp["batch_max_wait"]}
    write_json(out / "result.json", doc)
    say(NAME, f"wrote {plot(doc, out)}; knee {doc.get('knee')}")
    return 0 if doc["all_exact"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
