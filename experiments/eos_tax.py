"""EOS tax (brief §10.7, issue 11 item 4): the price of exactly-once, and what it buys.

The same seeded input (no late, no invalid events) through two consumers:
  naive   experiments/naive_consumer.py: windows in memory, per batch an insert of partial
          aggregates without a dedup token, then the Kafka offsets committed (at least once);
  ledger  the pipeline: processor -> one Postgres transaction per checkpoint -> sink with
          deterministic insert tokens into ReplacingMergeTree.
Three measurements, each on a fresh scope:
  1. throughput: catch-up over --events pre-produced records (naive --until-end vs processor
     --until-end + sink --until-idle, all at --batch-max-wait), events/s from first fetch to
     last ClickHouse write, and CPU seconds per event;
  2. latency at the same --rate for --duration: per-record e2e (Kafka timestamp -> rows in
     ClickHouse) p50/p99/p999; both batch every --batch-max-wait (naive: insert + commit;
     ledger: processor checkpoint and sink insert both at that wait, not the sink's 5 s default);
  3. a SIGKILL right after an insert, before the progress is recorded (--kill-after N):
     naive killed after its Nth insert, before the offset commit; ledger: the processor
     killed inside its Nth ledger commit and the sink killed after its Nth ClickHouse
     insert, before the acknowledgement. Each restarted, run to the end, then verify:
     naive -> MISMATCH (the replayed batch counted twice), ledger -> EXACT.

    python -m experiments.eos_tax                  # ~6 min
    python -m experiments.eos_tax --events 1000000 --rate 20000 --duration 5m
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from app.core.config import duration_arg
from experiments.benchkit import analyse as an
from experiments.benchkit.scope import EndOffsets, record_timestamps
from experiments.findings_out import label_figure, out_dir, pyplot, write_json
from experiments.livekit import REPO, LiveRun, say

NAME = "eos_tax"
RUNS = REPO / ".data" / "findings" / NAME


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.eos_tax", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000,
                    help="records of the catch-up and kill runs (default 1000000)")
    ap.add_argument("--rate", type=float, default=3000.0, help="events/s of the latency runs (default 3000)")
    ap.add_argument("--duration", type=duration_arg, default=60.0, help="length of each latency run (default 60s)")
    ap.add_argument("--batch-max-wait", default="1s", type=str,
                    help="batch period of both designs (naive: insert + commit; ledger: processor and sink) "
                         "(default 1s)")
    ap.add_argument("--kill-after", type=int, default=5,
                    help="kill after the Nth insert / ledger commit (default 5)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help="output directory (default docs/findings/eos_tax)")
    return ap


def gen_args(args: argparse.Namespace, events: int, rate: float) -> tuple[str, ...]:
    return ("--seed", str(args.seed), "--events", str(events), "--rate", str(rate), "--event-time-rate", "1000",
            "--accounts", str(args.accounts), "--late-fraction", "0", "--invalid-fraction", "0",
            "--start-time", "2026-01-05T00:00:00Z")


def naive(live: LiveRun, role: str, *args: str) -> Any:
    return live.start_module(role, "experiments.naive_consumer", "--clickhouse-url", live.scope.clickhouse_url,
                             "--events-topic", live.scope.events_topic, "--group", live.scope.pipeline_id, *args)


def naive_verify(live: LiveRun) -> dict[str, Any]:
    c = live.start_module("naive-materialize", "experiments.naive_consumer", "--clickhouse-url",
                          live.scope.clickhouse_url, "--materialize")
    if c.wait(600) != 0:
        raise RuntimeError(f"materialize failed: see {c.log_path}")
    return live.verify().brief()


def totals(verify: dict[str, Any]) -> dict[str, Any]:
    return {t["table"]: {"truth_events": t["truth"]["events"], "clickhouse_events": t["clickhouse"]["events"],
                         "extra_events": t["clickhouse"]["events"] - t["truth"]["events"],
                         "different_keys": t["different"], "missing_keys": t["missing"], "extra_keys": t["extra"]}
            for t in verify["tables"] if t.get("truth") and t.get("clickhouse")}


# ---- 1. throughput --------------------------------------------------------------------


def produce(args: argparse.Namespace) -> LiveRun:
    src = LiveRun.create(f"{NAME}-input", RUNS, partitions=args.partitions)
    src.start_gen(*gen_args(args, args.events, 0))
    src.wait_exit("gen", 900)
    return src


def ledger_catchup(args: argparse.Namespace, topic: str) -> dict[str, Any]:
    live = LiveRun.create(f"{NAME}-ledger-catchup", RUNS, events_topic=topic)
    try:
        live.start_sink("--until-idle", "--batch-max-wait", args.batch_max_wait)
        live.start_processor("--until-end", "--batch-max-wait", args.batch_max_wait)
        t0 = live.wait_assigned()
        live.wait_exit("processor", 1800)
        live.wait_exit("sink", 1800)
        acked = max(b.acked_at for b in live.scope.batches() if b.acked_at is not None)
        v = live.verify().brief()
        cpu = {c.name: round(c.cpu_s or 0.0, 2) for c in live.children.values()}
        return {"events_per_s": round(args.events / (acked - t0), 1), "seconds": round(acked - t0, 2),
                "cpu_s": cpu, "verify": v}
    finally:
        live.drop(topics=False)


def naive_catchup(args: argparse.Namespace, topic: str) -> dict[str, Any]:
    live = LiveRun.create(f"{NAME}-naive-catchup", RUNS, events_topic=topic)
    stats = live.logs / "naive-stats.json"
    try:
        c = naive(live, "naive", "--until-end", "--batch-max-wait", args.batch_max_wait, "--stats-out", str(stats))
        if c.wait(1800) != 0:
            raise RuntimeError(f"naive exited {c.returncode}: see {c.log_path}")
        s = json.loads(stats.read_text())
        return {"events_per_s": s["events_per_s"], "seconds": round(s["last_commit"] - s["first_record"], 2),
                "cpu_s": {"naive": round(c.cpu_s or 0.0, 2)}, "inserts": s["inserts"], "verify": naive_verify(live)}
    finally:
        live.drop(topics=False)


# ---- 2. latency at the same rate ---------------------------------------------------------


def ledger_open(args: argparse.Namespace) -> dict[str, Any]:
    live = LiveRun.create(f"{NAME}-ledger-open", RUNS, partitions=args.partitions)
    try:
        live.start_sink("--batch-max-wait", args.batch_max_wait, "--batch-rows", "1000000")
        live.start_processor("--batch-max-wait", args.batch_max_wait)
        live.wait_assigned()
        t0 = time.time()
        live.start_gen(*gen_args(args, int(args.rate * args.duration), args.rate))
        live.wait_exit("gen", args.duration * 3 + 120)
        drained = live.wait_drained(max(120.0, args.duration * 2))
        live.stop()
        scope = live.scope
        ends = EndOffsets(scope.bootstrap, scope.events_topic)
        end_offsets = ends.read()
        ends.close()
        split = an.e2e_latency(an.checkpoint_times(scope.checkpoints(), scope.batches()),
                               record_timestamps(scope.bootstrap, scope.events_topic, end_offsets))
        cpu = {c.name: round(c.cpu_s or 0.0, 2) for c in live.children.values()}
        return {**{k: split.get(k) for k in ("e2e_p50_s", "e2e_p99_s", "e2e_p999_s", "e2e_max_s")},
                "split": split, "seconds_to_drain": round(drained - t0, 1), "cpu_s": cpu,
                "verify": live.verify().brief()}
    finally:
        live.drop()


def naive_open(args: argparse.Namespace) -> dict[str, Any]:
    live = LiveRun.create(f"{NAME}-naive-open", RUNS, partitions=args.partitions)
    stats = live.logs / "naive-stats.json"
    try:
        c = naive(live, "naive", "--idle-exit", "5s", "--batch-max-wait", args.batch_max_wait,
                  "--stats-out", str(stats))
        time.sleep(3)  # joins the group; it reads from the earliest offset anyway
        live.start_gen(*gen_args(args, int(args.rate * args.duration), args.rate))
        live.wait_exit("gen", args.duration * 3 + 120)
        if c.wait(max(120.0, args.duration * 2)) != 0:
            raise RuntimeError(f"naive exited {c.returncode}: see {c.log_path}")
        s = json.loads(stats.read_text())
        return {**{k: s[k] for k in ("e2e_p50_s", "e2e_p99_s", "e2e_p999_s", "e2e_max_s", "inserts")},
                "cpu_s": {"naive": round(c.cpu_s or 0.0, 2)}, "verify": naive_verify(live)}
    finally:
        live.drop()


# ---- 3. the kill -------------------------------------------------------------------------


def naive_kill(args: argparse.Namespace, topic: str) -> dict[str, Any]:
    live = LiveRun.create(f"{NAME}-naive-kill", RUNS, events_topic=topic)
    try:
        c = naive(live, "naive", "--until-end", "--batch-records", str(max(args.events // 20, 1000)),
                  "--kill-after-insert", str(args.kill_after))
        rc = c.wait(1800)
        killed = rc == -9 and "naive_killed_after_insert" in c.log_path.read_text()
        if not killed:
            raise RuntimeError(f"the naive consumer was meant to die by SIGKILL after insert {args.kill_after}, "
                               f"exit {rc}: see {c.log_path}")
        c2 = naive(live, "naive-restarted", "--until-end", "--batch-records", str(max(args.events // 20, 1000)))
        if c2.wait(1800) != 0:
            raise RuntimeError(f"restarted naive exited {c2.returncode}: see {c2.log_path}")
        v = naive_verify(live)
        return {"killed_after_insert": args.kill_after, "exit_code_of_killed": rc, "verify": v,
                "totals": totals(v)}
    finally:
        live.drop(topics=False)


def ledger_kill(args: argparse.Namespace, topic: str) -> dict[str, Any]:
    live = LiveRun.create(f"{NAME}-ledger-kill", RUNS, events_topic=topic)
    points = {"processor": "checkpoint.inside_commit", "sink": "sink.after_insert"}
    try:
        live.start_sink("--until-idle", "--batch-rows", "20000", "--batch-max-wait", "1s", role="sink",
                        crash_at=f"{points['sink']}:{args.kill_after}")
        live.start_processor("--until-end", "--batch-rows", "20000", role="processor",
                             crash_at=f"{points['processor']}:{args.kill_after}")
        # each restarted as soon as it died: the sink reaches its Nth insert only once the
        # processor commits enough, so neither waits for the other's crash
        live.wait_crashed("processor", points["processor"], 900)
        live.start_processor("--until-end", role="processor-restarted")
        live.wait_crashed("sink", points["sink"], 900)
        live.start_sink("--until-idle", role="sink-restarted")
        say(NAME, f"ledger: processor killed inside commit {args.kill_after}, sink after insert {args.kill_after}")
        live.wait_exit("processor-restarted", 1800)
        live.wait_exit("sink-restarted", 1800)
        replays = sum(max(b.insert_attempts - 1, 0) for b in live.scope.batches())
        v = live.verify().brief()
        return {"killed": {role: f"{p}:{args.kill_after}" for role, p in points.items()},
                "insert_replays": replays, "verify": v, "totals": totals(v)}
    finally:
        live.drop(topics=False)


# ---- the report ------------------------------------------------------------------------


def plot(doc: dict[str, Any], out: Path) -> list[Path]:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    tp = doc["throughput"]
    axes[0].bar(["naive", "ledger"], [tp["naive"]["events_per_s"], tp["ledger"]["events_per_s"]],
                color=["tab:orange", "tab:blue"])
    for i, k in enumerate(("naive", "ledger")):
        us = sum(tp[k]["cpu_s"].values()) / doc["events"] * 1e6
        axes[0].text(i, tp[k]["events_per_s"], f"{tp[k]['events_per_s']:,.0f}/s\n{us:.1f} µs CPU/event",
                     ha="center", va="bottom", fontsize=8)
    axes[0].set_ylim(0, max(tp[k]["events_per_s"] for k in tp) * 1.3)
    axes[0].set_title("catch-up throughput (events/s)")
    lat = doc["latency"]
    qs = ["e2e_p50_s", "e2e_p99_s", "e2e_p999_s"]
    xs = range(len(qs))
    axes[1].bar([x - 0.2 for x in xs], [lat["naive"][q] or 0 for q in qs], 0.4, label="naive", color="tab:orange")
    axes[1].bar([x + 0.2 for x in xs], [lat["ledger"][q] or 0 for q in qs], 0.4, label="ledger", color="tab:blue")
    axes[1].set_xticks(list(xs)); axes[1].set_xticklabels(["p50", "p99", "p999"])
    axes[1].set_title(f"e2e latency at {doc['rate']:,.0f} events/s (s)"); axes[1].legend()
    kill = doc["kill"]
    extra = [sum(v["extra_events"] for v in kill["naive"]["totals"].values()),
             sum(v["extra_events"] for v in kill["ledger"]["totals"].values())]
    axes[2].bar(["naive", "ledger"], extra, color=["tab:orange", "tab:blue"])
    for i, (e, v) in enumerate(zip(extra, (kill["naive"]["verify"], kill["ledger"]["verify"]), strict=True)):
        axes[2].text(i, e, f"{e:,}\nverify {v['verdict']}", ha="center", va="bottom", fontsize=8)
    axes[2].set_ylim(0, max(max(extra), 1) * 1.3)
    axes[2].set_title("events counted twice after one SIGKILL\n(minute + hour tables: ClickHouse - truth)")
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    label_figure(fig, "EOS tax: naive at-least-once vs the ledger pipeline, same input")
    fig.tight_layout(rect=(0, 0.03, 1, 0.93))
    path = out / "eos_tax.png"
    fig.savefig(path, dpi=90); plt.close(fig)
    return [path]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out_dir(NAME, args.out)
    src = produce(args)
    topic = src.scope.events_topic
    try:
        say(NAME, f"input: {args.events:,} records in {topic}")
        throughput = {"naive": naive_catchup(args, topic), "ledger": ledger_catchup(args, topic)}
        say(NAME, f"throughput naive {throughput['naive']['events_per_s']:,.0f}/s, "
                  f"ledger {throughput['ledger']['events_per_s']:,.0f}/s")
        kill = {"naive": naive_kill(args, topic), "ledger": ledger_kill(args, topic)}
        say(NAME, f"kill: naive verify {kill['naive']['verify']['verdict']}, ledger {kill['ledger']['verify']['verdict']}")
    finally:
        src.drop()
    latency = {"naive": naive_open(args), "ledger": ledger_open(args)}
    say(NAME, f"latency p99 naive {latency['naive']['e2e_p99_s']} s, ledger {latency['ledger']['e2e_p99_s']} s")
    tn, tl = throughput["naive"]["events_per_s"], throughput["ledger"]["events_per_s"]
    doc = {"experiment": NAME, "command": "python -m experiments.eos_tax " + " ".join(argv or sys.argv[1:]),
           "events": args.events, "rate": args.rate, "duration_s": args.duration,
           "batch_max_wait": args.batch_max_wait, "kill_after": args.kill_after,
           "delta": {"throughput_ledger_over_naive": round(tl / tn, 3),
                     "throughput_delta_pct": round((tl - tn) / tn * 100, 1),
                     "p99_delta_s": an.r((latency["ledger"]["e2e_p99_s"] or 0) - (latency["naive"]["e2e_p99_s"] or 0)),
                     "naive_extra_events_after_kill": {t: v["extra_events"]
                                                       for t, v in kill["naive"]["totals"].items()},
                     "ledger_extra_events_after_kill": {t: v["extra_events"]
                                                        for t, v in kill["ledger"]["totals"].items()}},
           "throughput": throughput, "latency": latency, "kill": kill}
    write_json(out / "result.json", doc)
    for p in plot(doc, out):
        say(NAME, f"wrote {p}")
    ok = (kill["ledger"]["verify"]["exact"] and not kill["naive"]["verify"]["exact"]
          and throughput["ledger"]["verify"]["exact"] and latency["ledger"]["verify"]["exact"])
    say(NAME, f"delta: {doc['delta']}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
