"""Sustained run (brief §10.1, issue 11 item 4): a fixed --rate for --duration through
gen -> processor -> sink, every process serving metrics to the experiment's own Prometheus.

Question: at a fixed input rate, does the lag stay flat, what are the e2e p50/p99/p999 over
time, how much of p99 is batching (--batch-max-wait of processor and sink) rather than
processing, and what is the bottleneck?

Each phase (--phases, processor:sink --batch-max-wait) is one run on a fresh scope, the same
seeded input at the same rate. Measured:
  * over time, from Prometheus range queries of the pipeline's own metrics: ingest rate
    (records read/s and produced/s), Kafka lag (sum over partitions), e2e p50/p99/p999
    (`pipeline_e2e_seconds`, Kafka timestamp -> ClickHouse ack), processor RSS;
  * per phase: e2e quantiles over the whole phase (the histogram's increase), and the split
    of each record's latency from the ledger's timestamps (experiments/benchkit/analyse.py:
    backlog, batching = waiting for the processor's checkpoint, sink = checkpoint commit ->
    ClickHouse ack, which holds the sink's coalescing wait and the insert), ClickHouse
    insert p99 (`pipeline_sink_insert_seconds`), CPU seconds per process, and a py-spy
    profile of processor and sink (--profile) naming where their CPU goes;
  * the dashboard screenshot of the first phase (docs/findings/sustained/dashboard.png);
  * verify at the end of every phase: EXACT or the run fails.

    python -m experiments.sustained                          # 2 phases x 90 s at 4k/s, ~6 min
    python -m experiments.sustained --rate 100000 --duration 30m --phases 1s:5s --no-profile \
        --out docs/findings/sustained/30min                  # ~75 min, docs/findings.md

Also measured once the run drained: disk bytes per event in Kafka, Postgres and ClickHouse
(experiments/benchkit/footprint.py), and verify's time and peak RSS. py-spy (--profile, the
default) costs the pipeline ~0.3 core at 100k events/s, mostly sampling the sink's ClickHouse
threads: use --no-profile for a rate at the machine's limit.
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from app.core.config import duration_arg
from experiments.benchkit import analyse as an
from experiments.benchkit import footprint as fp
from experiments.benchkit.proc import py_spy
from experiments.benchkit.scope import EndOffsets, record_timestamps, sample_stride
from experiments.findings_out import label_figure, out_dir, pyplot, write_json
from experiments.livekit import REPO, LiveRun, say
from experiments.monitoring import Monitoring, Series

NAME = "sustained"
STEP_S = 2.0
SPLIT_SAMPLE = 5_000_000  # records whose latency split is computed (a uniform sample of a long run)
QUERIES = {
    "produced_per_s": "sum(rate(pipeline_gen_events_total[10s]))",
    "read_per_s": "sum(rate(pipeline_events_read_total[10s]))",
    "kafka_lag_records": "sum(pipeline_consumer_lag_records)",
    "e2e_p50_s": "histogram_quantile(0.5, sum by (le) (rate(pipeline_e2e_seconds_bucket[30s])))",
    "e2e_p99_s": "histogram_quantile(0.99, sum by (le) (rate(pipeline_e2e_seconds_bucket[30s])))",
    "e2e_p999_s": "histogram_quantile(0.999, sum by (le) (rate(pipeline_e2e_seconds_bucket[30s])))",
    "processor_rss_mb": 'sum(pipeline_process_resident_memory_bytes{job="processor"}) / 1e6',
}


def parse_phases(text: str) -> list[tuple[str, str]]:
    phases = []
    for part in text.split(","):
        proc, sep, sink = part.strip().partition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"phase {part!r}: expected PROCESSOR_WAIT:SINK_WAIT, e.g. 1s:5s")
        for d in (proc, sink):
            duration_arg(d)  # a bad duration is a usage error (exit 2)
        phases.append((proc, sink))
    return phases


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.sustained", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=4000.0, help="events/s the generator sends (default 4000)")
    ap.add_argument("--duration", type=duration_arg, default=90.0,
                    help="how long each phase sends (default 90s)")
    ap.add_argument("--phases", type=parse_phases, default=parse_phases("1s:5s,200ms:200ms"),
                    help="comma-separated PROCESSOR_WAIT:SINK_WAIT --batch-max-wait pairs, one run each "
                         "(default 1s:5s = the product's defaults, then 200ms:200ms)")
    ap.add_argument("--partitions", type=int, default=4, help="partitions of the input topic (default 4)")
    ap.add_argument("--accounts", type=int, default=100_000, help="distinct accounts (default 100000)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--start-time", default="now",
                    help="the generator's event time of record 0 (default now, so the watermark lag panel "
                         "reads seconds; verify recomputes the truth from the log either way)")
    ap.add_argument("--processor-arg", action="append", default=[], metavar="FLAG",
                    help="extra processor flag, repeatable (e.g. --processor-arg=--state-cache-windows=4000000)")
    ap.add_argument("--no-profile", dest="profile", action="store_false", help="skip py-spy")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default docs/findings/sustained)")
    ap.add_argument("--keep", action="store_true", help="keep each phase's topics, ledger rows and ClickHouse")
    return ap


def series_points(series: list[Series], t0: float) -> list[list[float]]:
    if not series:
        return []
    return [[round(t - t0, 1), round(v, 4)] for t, v in series[0].points if not math.isnan(v)]


def query_at(mon: Monitoring, expr: str, at: float) -> float | None:
    res = mon.query(expr, at=at)
    value = res[0].points[0][1] if res else None
    return None if value is None or math.isnan(value) else value  # NaN: no observations


def whole_phase_quantiles(mon: Monitoring, at: float, seconds: float) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    window = f"{max(int(seconds), 1)}s"
    for q, key in ((0.5, "p50"), (0.99, "p99"), (0.999, "p999")):
        res = query_at(mon, f"histogram_quantile({q}, sum by (le) (increase(pipeline_e2e_seconds_bucket[{window}])))",
                           at)
        out[f"e2e_{key}_s"] = round(res, 3) if res is not None else None
    ins = query_at(mon, f"histogram_quantile(0.99, sum by (le) (increase(pipeline_sink_insert_seconds_bucket[{window}])))",
                       at)
    out["insert_p99_s"] = round(ins, 3) if ins is not None else None
    return out


def profile(pid: int, path: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    spy = py_spy()
    if spy is None:
        say(NAME, "py-spy not found: no profile")
        return None
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "50",
                             "--duration", str(int(seconds)), "--output", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_phase(args: argparse.Namespace, mon: Monitoring, out: Path, proc_wait: str, sink_wait: str,
              screenshot: Path | None) -> dict[str, Any]:
    label = f"{proc_wait}:{sink_wait}"
    live = LiveRun.create(f"{NAME}-{proc_wait}-{sink_wait}", REPO / ".data" / "findings" / NAME,
                          mon_env=mon.env, partitions=args.partitions)
    events = int(args.rate * args.duration)
    try:
        sink = live.start_sink("--batch-max-wait", sink_wait)
        proc = live.start_processor("--batch-max-wait", proc_wait, *args.processor_arg)
        live.wait_assigned()
        say(NAME, f"phase {label}: {events:,} events at {args.rate:,.0f}/s ({live.scope.pipeline_id})")
        t0 = time.time()
        wal_start = fp.wal_position(live.scope.database_url)
        live.start_gen("--seed", str(args.seed), "--events", str(events), "--rate", str(args.rate),
                       "--event-time-rate", str(args.rate), "--accounts", str(args.accounts),
                       "--start-time", args.start_time)
        spies = []
        if args.profile:
            for c in (proc, sink):
                path = live.logs / f"profile-{c.name}.txt"   # raw stacks stay out of docs/
                p = profile(c.pid, path, args.duration)
                if p is not None:
                    spies.append((c.name, path, p))
        live.wait_exit("gen", args.duration * 3 + 120)
        t_gen = time.time()
        drained_at = live.wait_drained(max(120.0, args.duration * 2))
        time.sleep(3 * float(mon.env["SCRAPE_INTERVAL"].rstrip("s")))  # the last scrapes land
        t1 = time.time()
        if screenshot is not None:
            mon.screenshot(screenshot, range_s=int(t1 - t0) + 60)
            say(NAME, f"dashboard screenshot: {screenshot}")
        for _name, _path, p in spies:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        live.stop()
        timeline = {k: series_points(mon.range_query(q, t0, t1, STEP_S), t0) for k, q in QUERIES.items()}
        totals = whole_phase_quantiles(mon, t1, t1 - t0)
        # per-record split from the ledger (what the histogram cannot separate)
        scope = live.scope
        ends = EndOffsets(scope.bootstrap, scope.events_topic)
        end_offsets = ends.read()
        ends.close()
        split = an.e2e_latency(an.checkpoint_times(scope.checkpoints(), scope.batches()),
                               record_timestamps(scope.bootstrap, scope.events_topic, end_offsets,
                                                 at_most=SPLIT_SAMPLE))
        split["records_sampled_every"] = sample_stride(sum(end_offsets.values()), SPLIT_SAMPLE)
        rows = an.rows_per_insert(scope.batches(), scope.checkpoints(), scope.insert_groups())
        wall = t_gen - t0
        cpu = {c.name: round(c.cpu_s or 0.0, 2) for c in live.children.values()}
        profiles = {}
        if spies:
            from experiments.profile_processor import summarise
            profiles = {name: summarise(path, name) for name, path, _ in spies if path.exists()}
        disk = footprint(live, sum(end_offsets.values()), wal_start)
        t_verify = time.monotonic()
        verdict = live.verify(timeout_s=max(1800.0, events / 50_000))  # verify reads ~110k records/s here
        verify_s = time.monotonic() - t_verify
        say(NAME, f"phase {label}: verify {'EXACT' if verdict.exact else 'MISMATCH'} (exit {verdict.exit_code})")
        lag_flat = an.lag_verdict([p[0] for p in timeline["kafka_lag_records"]],
                                  [int(p[1]) for p in timeline["kafka_lag_records"]], args.rate,
                                  (min(10.0, 0.2 * wall), wall), drained_at - t_gen, args.rate)
        return {
            "phase": label, "processor_batch_max_wait": proc_wait, "sink_batch_max_wait": sink_wait,
            "pipeline_id": scope.pipeline_id, "events": sum(end_offsets.values()), "rate": args.rate,
            "send_seconds": round(wall, 1), "drain_after_gen_s": round(drained_at - t_gen, 1),
            "achieved_ingest_per_s": round(sum(end_offsets.values()) / max(drained_at - t0, 1e-9), 1),
            "prometheus_whole_phase": totals, "ledger_split": split, "lag": lag_flat,
            "inserts": rows, "cpu_s": cpu,
            "cpu_share_of_one_core": {k: round(v / max(drained_at - t0, 1e-9), 3) for k, v in cpu.items()},
            "profile_shares": profiles,
            "disk": disk,
            "verify": {**verdict.brief(), "seconds": round(verify_s, 1),
                       "records_per_s": round(sum(end_offsets.values()) / max(verify_s, 1e-9))},
            "timeline": timeline,
        }
    finally:
        if args.keep:
            live.stop()
        else:
            live.drop()


def footprint(live: LiveRun, events: int, wal_start: str) -> dict[str, Any]:
    """Disk bytes per event in Kafka, Postgres and ClickHouse once the run drained (the
    processes stopped: the embedded ClickHouse path is free)."""
    scope = live.scope
    kafka = fp.kafka_topic_bytes(scope.bootstrap, scope.events_topic)
    ledger = fp.ledger_bytes(scope.database_url, scope.pipeline_id)
    wal = fp.wal_bytes_since(scope.database_url, wal_start)
    clickhouse = fp.clickhouse_parts(live.clickhouse_rows(fp.CLICKHOUSE_PARTS))
    ch_bytes = sum(t["bytes_on_disk"] for t in clickhouse.values())
    state = fp.dir_bytes(scope.data_dir / "state")
    return {
        "events": events,
        "kafka_topic_bytes": kafka, "kafka_bytes_per_event": fp.per_event(kafka and kafka["log"], events),
        "postgres_wal_bytes": wal, "postgres_wal_bytes_per_event": fp.per_event(wal, events),
        "postgres_ledger_rows_bytes": ledger,
        "postgres_ledger_bytes_per_event": fp.per_event(sum(ledger.values()), events),
        "clickhouse_tables": clickhouse, "clickhouse_bytes_per_event": fp.per_event(ch_bytes, events),
        "leveldb_state_bytes": state,
    }


def plot(doc: dict[str, Any], out: Path) -> list[Path]:
    plt = pyplot()
    phases = doc["phases"]
    fig, axes = plt.subplots(4, 1, figsize=(10, 12), sharex=True)
    for ph in phases:
        tl, lab = ph["timeline"], f"wait {ph['phase']}"
        for key, ls in (("produced_per_s", ":"), ("read_per_s", "-")):
            pts = tl[key]
            axes[0].plot([p[0] for p in pts], [p[1] for p in pts], ls, label=f"{key.split('_')[0]} ({lab})")
        pts = tl["kafka_lag_records"]
        axes[1].plot([p[0] for p in pts], [p[1] for p in pts], label=lab)
        for key, ls in (("e2e_p50_s", ":"), ("e2e_p99_s", "-"), ("e2e_p999_s", "--")):
            pts = tl[key]
            axes[2].plot([p[0] for p in pts], [p[1] for p in pts], ls, label=f"{key[4:-2]} ({lab})")
        pts = tl["processor_rss_mb"]
        axes[3].plot([p[0] for p in pts], [p[1] for p in pts], label=lab)
    axes[0].set_ylabel("events/s"); axes[0].set_title("ingest: produced vs read from Kafka")
    axes[1].set_ylabel("records"); axes[1].set_title("Kafka lag (sum over partitions)")
    axes[2].set_ylabel("seconds"); axes[2].set_title("e2e latency, Kafka timestamp -> ClickHouse ack (30 s windows)")
    axes[3].set_ylabel("MB"); axes[3].set_title("processor RSS"); axes[3].set_xlabel("seconds since the generator started")
    for ax in axes:
        ax.grid(alpha=0.3); ax.legend(fontsize=7)
    label_figure(fig, f"Sustained run at {doc['rate']:,.0f} events/s, {doc['duration_s']:.0f} s per phase "
                      "(--batch-max-wait processor:sink)")
    fig.tight_layout(rect=(0, 0.02, 1, 0.97))
    p1 = out / "timeline.png"
    fig.savefig(p1, dpi=90); plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = ["e2e", "backlog", "batching", "sink"]
    width = 0.8 / max(len(phases), 1)
    for i, ph in enumerate(phases):
        s = ph["ledger_split"]
        p99 = [s.get(f"{n}_p99_s") or 0 for n in names]
        p50 = [s.get(f"{n}_p50_s") or 0 for n in names]
        xs = [j + i * width for j in range(len(names))]
        ax.bar(xs, p99, width, label=f"p99, wait {ph['phase']}", alpha=0.85)
        ax.scatter(xs, p50, color="k", marker="_", s=200, zorder=3, label="p50" if i == 0 else None)
    ax.set_xticks([j + width * (len(phases) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels(["e2e (total)", "backlog (queued)", "batching (to checkpoint)",
                        "sink (commit -> CH ack)"])
    ax.set_ylabel("seconds"); ax.grid(alpha=0.3, axis="y"); ax.legend(fontsize=8)
    label_figure(fig, "Where p99 goes: per-record split from the ledger's timestamps")
    fig.tight_layout(rect=(0, 0.03, 1, 0.94))
    p2 = out / "latency_split.png"
    fig.savefig(p2, dpi=90); plt.close(fig)
    return [p1, p2]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out_dir(NAME, args.out)
    state = REPO / ".data" / "findings" / NAME / "prometheus"
    shutil.rmtree(state, ignore_errors=True)
    phases = []
    with Monitoring(state) as mon:
        for i, (pw, sw) in enumerate(args.phases):
            phases.append(run_phase(args, mon, out, pw, sw, out / "dashboard.png" if i == 0 else None))
    doc = {"experiment": NAME, "command": "python -m experiments.sustained " + " ".join(argv or sys.argv[1:]),
           "rate": args.rate, "duration_s": args.duration, "partitions": args.partitions, "phases": phases}
    if len(phases) >= 2:
        a, b = phases[0]["ledger_split"], phases[-1]["ledger_split"]
        doc["batching_share_of_p99_s"] = {
            "e2e_p99_first_minus_last_phase": an.r((a.get("e2e_p99_s") or 0) - (b.get("e2e_p99_s") or 0)),
            "note": "p99 the larger --batch-max-wait adds over the smaller, same input and rate"}
    write_json(out / "result.json", doc)
    for p in plot(doc, out):
        say(NAME, f"wrote {p}")
    ok = all(ph["verify"]["exact"] for ph in phases)
    for ph in phases:
        s = ph["ledger_split"]
        say(NAME, f"{ph['phase']}: e2e p50 {s.get('e2e_p50_s')} p99 {s.get('e2e_p99_s')} p999 {s.get('e2e_p999_s')} s; "
                  f"batching p99 {s.get('batching_p99_s')} sink p99 {s.get('sink_p99_s')}; lag {ph['lag'].get('reason')}; "
                  f"verify {'EXACT' if ph['verify']['exact'] else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
