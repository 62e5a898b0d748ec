"""ClickHouse slowdown (brief §10.5, issue 11 item 4): the sink stopped under load.

Question: when ClickHouse stops taking inserts, does the processor slow its Kafka reads
(backpressure) instead of buffering without bound, does its memory stay flat, is nothing
lost, and does the lag recover once ClickHouse is back?

The generator sends at --rate for --duration; the processor runs with a small
--max-pending-rows so backpressure engages within the stall. From --stall-at for
--stall-for the sink is frozen (SIGSTOP: its insert in flight and every later one wait, as
for a ClickHouse that does not answer), then resumed (SIGCONT). One plot from the
pipeline's own metrics (Prometheus range queries): produced vs read rate, Kafka lag,
rows pending for ClickHouse, paused partitions, processor RSS. Verify at the end.

    python -m experiments.slowdown                  # 4k/s, 150 s, sink stalled 40 s from t=40 s, ~4 min
    python -m experiments.slowdown --rate 20000 --duration 10m --stall-at 2m --stall-for 3m
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from app.core.config import duration_arg
from experiments.findings_out import label_figure, out_dir, pyplot, write_json
from experiments.livekit import REPO, LiveRun, say
from experiments.monitoring import Monitoring

NAME = "slowdown"
STEP_S = 2.0
QUERIES = {
    "produced_per_s": "sum(rate(pipeline_gen_events_total[10s]))",
    "read_per_s": "sum(rate(pipeline_events_read_total[10s]))",
    "kafka_lag_records": "sum(pipeline_consumer_lag_records)",
    "pending_rows": 'max(pipeline_pending_rows{job="processor"})',
    "paused_partitions": "sum(pipeline_paused_partitions)",
    "processor_rss_mb": 'sum(pipeline_process_resident_memory_bytes{job="processor"}) / 1e6',
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.slowdown", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=4000.0, help="events/s (default 4000)")
    ap.add_argument("--duration", type=duration_arg, default=150.0, help="how long the generator sends (default 150s)")
    ap.add_argument("--stall-at", type=duration_arg, default=40.0, help="when the sink is frozen (default 40s)")
    ap.add_argument("--stall-for", type=duration_arg, default=40.0, help="how long it stays frozen (default 40s)")
    ap.add_argument("--max-pending-rows", type=int, default=30_000,
                    help="the processor's backpressure bound (default 30000, small so it engages)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="output directory (default docs/findings/slowdown)")
    return ap


def points(mon: Monitoring, expr: str, t0: float, t1: float) -> list[list[float]]:
    res = mon.range_query(expr, t0, t1, STEP_S)
    return [[round(t - t0, 1), round(v, 3)] for t, v in res[0].points if not math.isnan(v)] if res else []


def plot(doc: dict[str, Any], out: Path) -> Path:
    plt = pyplot()
    tl = doc["timeline"]
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    for key, ls in (("produced_per_s", ":"), ("read_per_s", "-")):
        axes[0].plot([p[0] for p in tl[key]], [p[1] for p in tl[key]], ls, label=key.split("_")[0])
    axes[0].set_ylabel("events/s"); axes[0].set_title("Kafka: produced vs read by the processor")
    axes[1].plot([p[0] for p in tl["kafka_lag_records"]], [p[1] for p in tl["kafka_lag_records"]], label="Kafka lag")
    axes[1].set_ylabel("records"); axes[1].set_title("Kafka lag (sum over partitions)")
    axes[2].plot([p[0] for p in tl["pending_rows"]], [p[1] for p in tl["pending_rows"]], label="rows pending for ClickHouse")
    axes[2].axhline(doc["max_pending_rows"], color="r", ls="--", lw=0.8, label="--max-pending-rows")
    ax2 = axes[2].twinx()
    ax2.step([p[0] for p in tl["paused_partitions"]], [p[1] for p in tl["paused_partitions"]], "g-", where="post",
             label="paused partitions")
    ax2.set_ylabel("paused partitions", color="g")
    axes[2].set_ylabel("rows"); axes[2].set_title("backpressure: pending rows and paused partitions")
    axes[3].plot([p[0] for p in tl["processor_rss_mb"]], [p[1] for p in tl["processor_rss_mb"]], label="processor RSS")
    axes[3].set_ylabel("MB"); axes[3].set_title("processor RSS"); axes[3].set_xlabel("seconds since the generator started")
    for ax in axes:
        ax.axvspan(doc["stall_at_s"], doc["stall_at_s"] + doc["stall_for_s"], color="0.85", zorder=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    label_figure(fig, f"ClickHouse slowdown: sink frozen {doc['stall_for_s']:.0f} s (grey) at {doc['rate']:,.0f} events/s; "
                      f"verify {doc['verify']['verdict']}")
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    path = out / "slowdown.png"
    fig.savefig(path, dpi=90); plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.stall_at + args.stall_for >= args.duration:
        build_parser().error("--stall-at + --stall-for must end before --duration")
    out = out_dir(NAME, args.out)
    state = REPO / ".data" / "findings" / NAME / "prometheus"
    shutil.rmtree(state, ignore_errors=True)
    with Monitoring(state) as mon:
        live = LiveRun.create(NAME, REPO / ".data" / "findings" / NAME, mon_env=mon.env, partitions=args.partitions)
        try:
            sink = live.start_sink("--batch-max-wait", "1s")
            live.start_processor("--max-pending-rows", str(args.max_pending_rows))
            live.wait_assigned()
            t0 = time.time()
            live.start_gen("--seed", str(args.seed), "--events", str(int(args.rate * args.duration)), "--rate",
                           str(args.rate), "--event-time-rate", str(args.rate), "--accounts", str(args.accounts),
                           "--start-time", "now")
            while time.time() < t0 + args.stall_at:
                time.sleep(0.1)
            os.kill(sink.pid, signal.SIGSTOP)
            say(NAME, f"sink frozen at t={time.time() - t0:.1f} s")
            try:
                while time.time() < t0 + args.stall_at + args.stall_for:
                    time.sleep(0.1)
            finally:
                os.kill(sink.pid, signal.SIGCONT)
            say(NAME, f"sink resumed at t={time.time() - t0:.1f} s")
            live.wait_exit("gen", args.duration * 3 + 120)
            t_gen = time.time()
            drained = live.wait_drained(max(240.0, args.duration * 2))
            time.sleep(3)
            t1 = time.time()
            live.stop()
            timeline = {k: points(mon, q, t0, t1) for k, q in QUERIES.items()}
            verdict = live.verify().brief()
        finally:
            live.drop()
    lag = timeline["kafka_lag_records"]
    stall_end = args.stall_at + args.stall_for
    before = [p[1] for p in lag if p[0] < args.stall_at]
    baseline = max(before) if before else 0.0
    recovered = next((p[0] for p in lag if p[0] > stall_end and p[1] <= max(baseline, args.rate)), None)
    rss = [p[1] for p in timeline["processor_rss_mb"]]
    rss_before = [p[1] for p in timeline["processor_rss_mb"] if p[0] < args.stall_at]
    doc = {"experiment": NAME, "command": "python -m experiments.slowdown " + " ".join(argv or sys.argv[1:]),
           "rate": args.rate, "duration_s": args.duration, "stall_at_s": args.stall_at, "stall_for_s": args.stall_for,
           "max_pending_rows": args.max_pending_rows, "pipeline_id": live.scope.pipeline_id,
           "summary": {"lag_peak_records": max((p[1] for p in lag), default=None),
                       "lag_before_stall_max": baseline,
                       "lag_back_within_1s_of_input_at_s": recovered,
                       "recovery_s_after_resume": None if recovered is None else round(recovered - stall_end, 1),
                       "pending_rows_peak": max((p[1] for p in timeline["pending_rows"]), default=None),
                       "paused_partitions_peak": max((p[1] for p in timeline["paused_partitions"]), default=None),
                       "processor_rss_mb_before_stall_max": max(rss_before, default=None),
                       "processor_rss_mb_peak": max(rss, default=None),
                       "drain_after_gen_s": round(drained - t_gen, 1)},
           "verify": verdict, "timeline": timeline}
    write_json(out / "result.json", doc)
    say(NAME, f"wrote {plot(doc, out)}; {doc['summary']}; verify {verdict['verdict']}")
    return 0 if verdict["exact"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
