"""Lateness sweep (brief §10.4, issue 11 item 4): --late-fraction x --allowed-lateness.

Question: does every event end up either folded into its window (on time, or late but
within the allowed lateness: the window is corrected by a row at a higher version) or
counted in the DLQ, at every point of the grid, with nothing silently lost?

Per late fraction one seeded input topic (--events records, 0.1% invalid); per allowed
lateness a fresh pipeline id (the rules are pinned to it) running processor --until-end and
sink --until-idle over that topic, then verify with the same rules. Per point:
  * input records (Kafka end offsets);
  * per window kind: events folded (ClickHouse FINAL sum(event_count)), of which folded
    late = the window's end was already behind the partition's watermark when the event
    came, but not by more than the allowed lateness (recomputed here from the input log
    with the contract's rule, and the distinct windows they corrected), DLQ late (ledger),
    invalid (ledger), and the check input = folded + late + invalid;
  * rows superseded by higher versions (plain count - FINAL count, before merges);
  * verify's verdict (EXACT at every point or the run fails).

    python -m experiments.lateness_sweep                                   # 2 x 3 points, ~4 min
    python -m experiments.lateness_sweep --late-fractions 0.01,0.05,0.2 --allowed-lateness 0s,30s,5m,1h
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from app.core.config import duration_arg
from app.processor.decode import InvalidEvent, decode_record
from experiments.findings_out import label_figure, out_dir, pyplot, write_json
from experiments.livekit import BOOTSTRAP, REPO, LiveRun, durations, say

NAME = "lateness_sweep"
RUNS = REPO / ".data" / "findings" / NAME
KINDS = {"minute": (60_000, "rollup_minute"), "hour": (3_600_000, "rollup_hour")}
MAX_OUT_OF_ORDERNESS_MS = 5_000  # the processor's default, used by both runs and the recount


def floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.lateness_sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--late-fractions", type=floats, default=[0.02, 0.2],
                    help="the generator's --late-fraction values (default 0.02,0.2)")
    ap.add_argument("--allowed-lateness", type=durations, default=["5s", "60s", "10m"],
                    help="the processor's --allowed-lateness values (default 5s,60s,10m)")
    ap.add_argument("--events", type=int, default=60_000, help="records per input topic (default 60000)")
    ap.add_argument("--event-time-rate", type=float, default=100.0,
                    help="events per second of event time (default 100: 60k events span 10 minutes)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", type=Path, default=None, help="output directory (default docs/findings/lateness_sweep)")
    return ap


def recount(topic: str, ends: dict[int, int], allowed_ms: int) -> dict[str, dict[str, int]]:
    """Per kind: events folded late (window end already behind the watermark, within the
    allowed lateness) and the distinct windows they corrected, by contract §3."""
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"{NAME}-recount", "enable.auto.commit": False,
                         "log_level": 0})
    late_folded: Counter[str] = Counter()
    corrected: dict[str, set[tuple[int, int, str]]] = {k: set() for k in KINDS}
    try:
        for p, end in ends.items():
            if end == 0:
                continue
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)])
            max_et, offset = None, -1
            while offset < end - 1:
                for m in consumer.consume(10_000, timeout=1.0):
                    if m.error() is not None:
                        continue
                    offset = m.offset()
                    try:
                        ev = decode_record(m.key(), m.value(), 1 << 20)
                    except InvalidEvent:
                        continue
                    wm = None if max_et is None else max_et - MAX_OUT_OF_ORDERNESS_MS
                    for kind, (size, _table) in KINDS.items():
                        start = ev.event_time - ev.event_time % size
                        if wm is not None and start + size <= wm < start + size + allowed_ms:
                            late_folded[kind] += 1
                            corrected[kind].add((start, ev.account_id, ev.country))
                    max_et = ev.event_time if max_et is None else max(max_et, ev.event_time)
            consumer.unassign()
    finally:
        consumer.close()
    return {k: {"events_folded_late": late_folded[k], "windows_corrected": len(corrected[k])} for k in KINDS}


def run_point(args: argparse.Namespace, topic: str, ends: dict[int, int], fraction: float,
              allowed: str) -> dict[str, Any]:
    live = LiveRun.create(f"{NAME}-{fraction}-{allowed}", RUNS, events_topic=topic)
    try:
        live.start_sink("--until-idle")
        live.start_processor("--until-end", "--allowed-lateness", allowed)
        live.wait_exit("processor", 1200)
        live.wait_exit("sink", 1200)
        v = live.verify("--allowed-lateness", allowed).brief()
        raw = {t: live.clickhouse_rows(f"SELECT count() FROM {t}")[0][0] for _k, (_s, t) in KINDS.items()}
        tables = {t["table"]: t for t in v["tables"]}
        dlq = {(d["reason"], d["window_kind"] or ""): int(d["ledger"]) for d in (v.get("dlq") or [])}
        invalid = dlq.get(("invalid", ""), 0)
        records = sum(ends.values())
        late_counts = recount(topic, ends, int(duration_arg(allowed) * 1000))
        kinds = {}
        for kind, (_size, table) in KINDS.items():
            t = tables[table]
            folded = int(t["clickhouse"]["events"])
            late = dlq.get(("late", kind), 0)
            kinds[kind] = {"folded": folded, **late_counts[kind], "dlq_late": late, "invalid": invalid,
                           "input_equals_folded_plus_dlq": records == folded + late + invalid,
                           "final_rows": int(t["clickhouse"]["rows"]),
                           "rows_superseded_by_higher_versions": int(raw[table]) - int(t["clickhouse"]["rows"])}
        say(NAME, f"late {fraction} allowed {allowed}: minute folded {kinds['minute']['folded']:,} "
                  f"(late-folded {kinds['minute']['events_folded_late']:,}), DLQ late {kinds['minute']['dlq_late']:,}; "
                  f"verify {v['verdict']}")
        return {"late_fraction": fraction, "allowed_lateness": allowed, "records": records, "kinds": kinds,
                "verify": v}
    finally:
        live.drop(topics=False)


def plot(doc: dict[str, Any], out: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    pts = doc["points"]
    labels = [f"late {p['late_fraction']}\nallowed {p['allowed_lateness']}" for p in pts]
    for ax, kind in zip(axes, KINDS, strict=True):
        on_time = [p["kinds"][kind]["folded"] - p["kinds"][kind]["events_folded_late"] for p in pts]
        late_f = [p["kinds"][kind]["events_folded_late"] for p in pts]
        dlq = [p["kinds"][kind]["dlq_late"] for p in pts]
        inv = [p["kinds"][kind]["invalid"] for p in pts]
        xs = range(len(pts))
        ax.bar(xs, on_time, label="folded on time", color="tab:blue")
        b1 = on_time
        ax.bar(xs, late_f, bottom=b1, label="folded late: watermark already past the window end (a correction)", color="tab:green")
        b2 = [a + b for a, b in zip(b1, late_f, strict=True)]
        ax.bar(xs, dlq, bottom=b2, label="DLQ: too late", color="tab:red")
        b3 = [a + b for a, b in zip(b2, dlq, strict=True)]
        ax.bar(xs, inv, bottom=b3, label="DLQ: invalid", color="0.5")
        ax.scatter(xs, [p["records"] for p in pts], marker="_", s=600, color="k", zorder=3, label="input records")
        for x, p in zip(xs, pts, strict=True):
            k = p["kinds"][kind]
            ax.text(x, p["records"] * 1.01, f"DLQ {k['dlq_late']:,}\nlate-fold {k['events_folded_late']:,}\n"
                    f"{'=' if k['input_equals_folded_plus_dlq'] else '!='} input", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(xs)); ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylim(0, max(p["records"] for p in pts) * 1.2)
        ax.set_title(f"{kind} windows"); ax.set_ylabel("events"); ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7, loc="lower left")
    label_figure(fig, "Lateness sweep: every input event is folded (on time or late) or in the DLQ; verify EXACT at each point")
    fig.tight_layout(rect=(0, 0.03, 1, 0.94))
    path = out / "lateness_sweep.png"
    fig.savefig(path, dpi=90); plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out_dir(NAME, args.out)
    points = []
    for fraction in args.late_fractions:
        src = LiveRun.create(f"{NAME}-input-{fraction}", RUNS, partitions=args.partitions)
        try:
            src.start_gen("--seed", str(args.seed), "--events", str(args.events), "--late-fraction", str(fraction),
                          "--event-time-rate", str(args.event_time_rate), "--start-time", "2026-01-05T00:00:00Z")
            src.wait_exit("gen", 900)
            from experiments.benchkit.scope import EndOffsets
            eo = EndOffsets(BOOTSTRAP, src.scope.events_topic)
            ends = eo.read()
            eo.close()
            for allowed in args.allowed_lateness:
                points.append(run_point(args, src.scope.events_topic, ends, fraction, allowed))
        finally:
            src.drop()
    doc = {"experiment": NAME, "command": "python -m experiments.lateness_sweep " + " ".join(argv or sys.argv[1:]),
           "events": args.events, "event_time_rate": args.event_time_rate, "points": points,
           "all_exact": all(p["verify"]["exact"] for p in points),
           "input_equals_folded_plus_dlq_everywhere": all(k["input_equals_folded_plus_dlq"]
                                                          for p in points for k in p["kinds"].values())}
    write_json(out / "result.json", doc)
    say(NAME, f"wrote {plot(doc, out)}")
    return 0 if doc["all_exact"] and doc["input_equals_folded_plus_dlq_everywhere"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
