"""A/B of the sink's flags in one session, runs alternating, measured as `make bench` does.

Two questions (docs/sink.md):
- issue 12: the sink's share of e2e latency (commit -> acknowledged) in the open model,
  e.g. `--variant before=--batch-min-rows=100000 --variant after=` (the rule before
  --batch-min-rows is a min equal to --batch-rows);
- issue 16: what the delivery check costs in catch-up, e.g. `--variant off=--check-sample-rate=0
  --variant default= --variant all=--check-sample-rate=1`.

Every run gets a fresh scope (topics, pipeline id, ClickHouse path), reuses the bench's
run functions (experiments/benchkit/runs.py) with the variant's flags added to the sink,
and the variants alternate round by round (A B A B ...) so that machine noise hits them
alike. The last line of stdout is one JSON object: every run, and per variant the median
of each figure.

    python -m experiments.sink_ab --mode open --rate 60000 --seconds 20 --rounds 3 \\
        --variant before=--batch-min-rows=100000 --variant after=
    python -m experiments.sink_ab --mode catchup --events 1000000 --rounds 4 \\
        --variant off=--check-sample-rate=0 --variant default=
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.core.config import ArgumentParser, env, positive_int_arg
from app.core.logging import configure_logging
from experiments.benchkit.runs import Context, generate, log, run_catchup, run_open_trial
from experiments.benchkit.scope import EndOffsets, delete_topics

REPO = Path(__file__).resolve().parents[1]
OPEN_FIGURES = ("sink_p50_s", "sink_p99_s", "e2e_p50_s", "e2e_p99_s", "batching_p99_s", "backlog_p99_s",
                "min_rows_per_insert", "median_rows_per_insert", "steady_inserts_under_10k_rows", "sink_cpu_s",
                "sink_us_per_event", "other_cpu_s")
CATCHUP_FIGURES = ("events_per_s", "sink_us_per_event", "sink_cpu_s", "processor_us_per_event",
                   "pipeline_events_per_cpu_s", "median_rows_per_insert", "sink_tail_s", "other_cpu_s")


@dataclass(frozen=True, slots=True)
class SinkFlags(Context):
    """The bench's context, with extra flags for every sink it starts."""

    sink_args: tuple[str, ...] = ()

    def module(self, name: str, *args: str) -> list[str]:
        extra = self.sink_args if name == "app.sink" else ()
        return [sys.executable, "-m", name, *args, *extra]


def variant(text: str) -> tuple[str, tuple[str, ...]]:
    name, sep, flags = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=FLAGS (flags comma separated, may be empty): {text!r}")
    return name, tuple(f for f in flags.split(",") if f)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m experiments.sink_ab", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("open", "catchup"), required=True)
    p.add_argument("--variant", type=variant, action="append", required=True, metavar="NAME=FLAGS",
                   help="sink flags of one variant, comma separated (e.g. off=--check-sample-rate=0); repeatable")
    p.add_argument("--rounds", type=positive_int_arg, default=3, help="runs per variant, alternating (default 3)")
    p.add_argument("--rate", type=float, default=60_000.0, help="open mode: events/s (default 60,000)")
    p.add_argument("--seconds", type=float, default=20.0, help="open mode: generator run time (default 20)")
    p.add_argument("--events", type=positive_int_arg, default=1_000_000,
                   help="catchup mode: events pre-produced once, replayed by every run (default 1,000,000)")
    p.add_argument("--partitions", type=positive_int_arg, default=8)
    p.add_argument("--keep", action="store_true", help="keep topics, ledger rows and ClickHouse data")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("warning")
    run_id = f"sinkab-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    results = REPO / "experiments/results" / run_id
    results.mkdir(parents=True, exist_ok=True)
    base = {"repo": REPO, "run_id": run_id, "results": results, "data_root": REPO / ".data",
            "bootstrap": env("KAFKA_BOOTSTRAP_SERVERS"), "database_url": env("DATABASE_URL"),
            "base_env": dict(os.environ), "partitions": args.partitions, "processor_args": (),
            "processor_has_state_dir": True, "keep": args.keep}
    contexts = {name: SinkFlags(**base, sink_args=flags) for name, flags in args.variant}
    runs: list[dict[str, Any]] = []
    topic = None
    if args.mode == "catchup":
        first = next(iter(contexts.values()))
        src = first.scope("source")
        topic = src.events_topic
        log(f"{run_id}: generating {args.events:,} events into {topic}")
        if generate(first, src, args.events, 0, "gen", []).wait(600) != 0:
            raise SystemExit(f"the generator failed: see {results / 'gen.log'}")
        ends = EndOffsets(first.bootstrap, topic)
        events = sum(ends.read().values())
        ends.close()
    for r in range(args.rounds):
        for name, ctx in contexts.items():
            label = f"{name}{r}"
            if args.mode == "open":
                log(f"round {r + 1}/{args.rounds} {name}: open model at {args.rate:,.0f}/s for {args.seconds:g} s")
                res = run_open_trial(ctx, args.rate, args.seconds, label, [])
                figures = OPEN_FIGURES
            else:
                log(f"round {r + 1}/{args.rounds} {name}: catch-up of {events:,} events")
                scope = ctx.scope(label, events_topic=topic)
                res = run_catchup(ctx, scope, events, 1, False, timeout_s=900)
                if not args.keep:
                    scope.drop(topics=False)
                    delete_topics(ctx.bootstrap, [scope.dlq_topic])
                figures = CATCHUP_FIGURES
            row = {"variant": name, "round": r, **{k: res.get(k) for k in figures}}
            log("  " + ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("variant", "round")))
            runs.append(row)
    if topic is not None and not args.keep:
        delete_topics(next(iter(contexts.values())).bootstrap, [topic])
    medians = {name: {k: _median([r[k] for r in runs if r["variant"] == name]) for k in figures}
               for name in contexts}
    out = {"run_id": run_id, "mode": args.mode, "argv": sys.argv[1:], "variants": dict(args.variant),
           "medians": medians, "runs": runs}
    (results / "sink_ab.json").write_text(json.dumps(out, indent=2, default=list))
    print(json.dumps(out, default=list))
    return 0


def _median(values: list[Any]) -> float | None:
    nums = [float(v) for v in values if v is not None]
    return round(statistics.median(nums), 4) if nums else None


if __name__ == "__main__":
    sys.exit(main())
