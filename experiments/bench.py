"""`make bench`: throughput and latency of the pipeline, with its anchors measured in the same run.

Phases (each on fresh topics, pipeline ids, ledger rows and ClickHouse paths under
.data/<run>/, removed at the end unless --keep):
  1. generate N events (`python -m app.gen`, as fast as possible) into a fresh topic;
  2. anchor (a): raw confluent-kafka consume of that topic, no processing (median of 3), by
     as many consumer processes at once as there are processor processes (--processors);
  3. catch-up: processor --until-end and sink --until-idle from an empty ledger, concurrently
     (--repeat times, each from an empty ledger; the median run is the headline); verify
     (`python -m app.verify`) checks the first run's result, its exit code is in the JSON;
  4. anchor (b): Quix Streams 3.28.1 running the same job on the same topic, in its own
     virtualenv (.cache/quix-venv, created on demand; null with a reason if that fails);
     both job shapes on a prefix of --quix-events records, the faster one reported;
  5. open model: the generator at a fixed rate while processor and sink run; lag over time
     and per-record e2e latency; short trials search the highest flat-lag rate
     (`max_flat_rate` is always a searched figure; --rate R --no-search runs one trial).

Definitions:
  events_per_s   N / (max sink_batch.acked_at - the processor's first `partitions_assigned`)
  e2e latency    per record: acked_at of the checkpoint covering its offset (both tables'
                 batches) - its Kafka CreateTime; split into backlog / batching (where
                 --batch-max-wait shows) / sink (commit -> acknowledged)
  flat lag       Kafka end offsets - records acknowledged in ClickHouse, sampled every 0.5 s:
                 mean of the last third of the run at most 3%/s of the rate above the middle
                 third, drained within 10 s after the generator stopped, generator at >= 95%
Output: a table, then ONE JSON line (last line of stdout); the JSON and the logs are kept in
experiments/results/<run>/ (bench.json; also experiments/results/bench-latest.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

from app.core.config import ArgumentParser, env, non_negative_float_arg, positive_int_arg
from app.core.logging import configure_logging
from experiments.benchkit import quix
from experiments.benchkit.report import render_table, write_plots
from experiments.benchkit.runs import (
    Context,
    gen_result,
    generate,
    log,
    run_catchup,
    run_open_trial,
    run_verify,
)
from experiments.benchkit.scope import EndOffsets, delete_topics, list_topics


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m experiments.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--events",
        type=positive_int_arg,
        default=5_000_000,
        help="events pre-produced for the catch-up run and the anchors (default 5,000,000)",
    )
    p.add_argument(
        "--rate",
        type=non_negative_float_arg,
        default=0.0,
        help="the first open-model rate tried in events/s (default 0 = 70%% of the catch-up rate); "
        "with --no-search the only one",
    )
    p.add_argument(
        "--no-search",
        action="store_true",
        help="one open-model trial at --rate instead of searching the max flat-lag rate",
    )
    p.add_argument("--find-max-rate", action="store_true", help=argparse.SUPPRESS)  # the default now
    p.add_argument(
        "--search-steps", type=positive_int_arg, default=4, help="open-model trials of the search (default 4)"
    )
    p.add_argument(
        "--open-seconds",
        type=non_negative_float_arg,
        default=0.0,
        help="generator run time per open-model trial (default: 10 s below 1M events, else 30 s)",
    )
    p.add_argument("--skip-quix", action="store_true", help="do not run the Quix Streams anchor")
    p.add_argument(
        "--quix-variant",
        choices=["group-by", "per-account", "both"],
        default="both",
        help="Quix job shape (experiments/anchors/quix_job.py); 'both' reports the faster (default both)",
    )
    p.add_argument(
        "--quix-events",
        type=positive_int_arg,
        default=None,
        help="stop each Quix job after this many records (default: min(N, 100,000); Quix runs "
        "~7k/s here, and its rate per record does not depend on the prefix)",
    )
    p.add_argument("--skip-open-model", action="store_true", help="do not run the open-model part")
    p.add_argument(
        "--repeat",
        type=positive_int_arg,
        default=1,
        help="catch-up runs over the same topic, each from an empty ledger; median reported (default 1)",
    )
    p.add_argument(
        "--processors",
        type=positive_int_arg,
        default=1,
        help="processor processes in the catch-up run (one consumer group; default 1)",
    )
    p.add_argument(
        "--partitions", type=positive_int_arg, default=8, help="partitions of the bench topics (default 8)"
    )
    p.add_argument(
        "--batch-max-wait",
        default=None,
        metavar="DURATION",
        help="passed to every processor (default: the processor's own, 1s)",
    )
    p.add_argument(
        "--processor-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra processor flag, repeatable (e.g. --processor-arg=--poll-records=20000)",
    )
    p.add_argument(
        "--gen-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra generator data flag, repeatable (e.g. --gen-arg=--late-fraction=0)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="attach py-spy (if installed) to the processor(s) and sink of the first catch-up run "
        "and summarise by stage (rates of that run include the profiler's overhead)",
    )
    p.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)  # the default now
    p.add_argument(
        "--skip-verify",
        action="store_true",
        help="do not verify the first catch-up run's result (by default `python -m app.verify` "
        "checks it; its exit code is in the JSON line, and a non-zero one fails the bench)",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep topics, ledger rows and ClickHouse data of the run"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("warning")  # app helpers used in-process log to stderr, quietly
    run_id = f"bench-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    results = REPO / "experiments/results" / run_id
    results.mkdir(parents=True, exist_ok=True)
    help_text = subprocess.run(
        [sys.executable, "-m", "app.processor", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    ).stdout
    proc_args = tuple(args.processor_arg) + (
        ("--batch-max-wait", args.batch_max_wait) if args.batch_max_wait else ()
    )
    ctx = Context(
        repo=REPO,
        run_id=run_id,
        results=results,
        data_root=REPO / ".data",
        bootstrap=env("KAFKA_BOOTSTRAP_SERVERS"),
        database_url=env("DATABASE_URL"),
        base_env=dict(os.environ),
        partitions=args.partitions,
        processor_args=proc_args,
        processor_has_state_dir="--state-dir" in help_text,
        keep=args.keep,
    )
    report: dict[str, Any] = {
        "run_id": run_id,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "git": git_state(),
        "argv": sys.argv[1:],
    }
    topic_scope = ctx.scope("catchup")
    topic = topic_scope.events_topic
    t_bench = time.monotonic()
    status = 0
    try:
        # 1. pre-produce
        log(f"run {run_id}: generating {args.events:,} events into {topic}")
        gen = generate(ctx, topic_scope, args.events, 0, "gen", list(args.gen_arg))
        if gen.wait(max(600.0, args.events / 5_000)) != 0:
            raise RuntimeError(f"generator failed: see {gen.log_path}")
        report["generator"] = {**gen_result(gen), "cpu_s": round(gen.cpu_s or 0.0, 2)}
        offsets = EndOffsets(ctx.bootstrap, topic)
        events = sum(offsets.read().values())
        offsets.close()
        report["events"] = events

        # 2. raw consume anchor
        log(f"anchor (a): raw confluent-kafka consume by {args.processors} process(es), 3 runs")
        cpu0 = children_cpu_s()
        raw = subprocess.run(
            [
                sys.executable,
                str(REPO / "experiments/anchors/raw_consume.py"),
                "--bootstrap-servers",
                ctx.bootstrap,
                "--topic",
                topic,
                "--repeat",
                "3",
                "--processes",
                str(args.processors),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        report["raw_consume"] = last_json(raw.stdout) or {"events_per_s": None, "reason": raw.stderr[-300:]}
        report["raw_consume"]["events_per_cpu_s"] = round(3 * events / max(children_cpu_s() - cpu0, 1e-9), 1)

        # 3. catch-up
        runs = []
        for i in range(args.repeat):
            scope = ctx.scope(f"catchup{i}", events_topic=topic)
            log(
                f"catch-up {i + 1}/{args.repeat}: {args.processors} processor(s) --until-end"
                " + sink --until-idle"
            )
            res = run_catchup(
                ctx,
                scope,
                events,
                args.processors,
                args.profile and i == 0,
                timeout_s=max(600.0, events / 5_000),
            )
            log(f"  {res['events_per_s']:,.0f} events/s end to end ({res['seconds']:.1f} s)")
            if not args.skip_verify and i == 0:
                res["verify_exit_code"] = run_verify(ctx, scope)
                log(f"  verify exit code {res['verify_exit_code']}")
                if res["verify_exit_code"] != 0:
                    status = 1
            runs.append(res)
            if not args.keep:
                scope.drop(topics=False)
                delete_topics(ctx.bootstrap, [scope.dlq_topic])
        # the median run (the faster of the middle two for an even count) is the headline
        median_rate = statistics.median_high(r["events_per_s"] for r in runs)
        catchup = next(r for r in runs if r["events_per_s"] == median_rate)
        report["catchup"] = {
            **catchup,
            "runs_events_per_s": [r["events_per_s"] for r in runs],
            "runs": [
                {
                    k: r.get(k)
                    for k in (
                        "events_per_s",
                        "seconds",
                        "processor_cpu_s",
                        "processor_us_per_event",
                        "sink_cpu_s",
                        "kafka_cpu_s",
                        "other_cpu_s",
                        "verify_exit_code",
                    )
                }
                for r in runs
            ],
        }
        if "profile" in runs[0]:
            report["profile"] = runs[0]["profile"]

        # 4. Quix anchor
        report["quix"] = run_quix(ctx, args, topic, events)

        # 5. open model: a failure here is reported in the JSON (and the exit code), after
        # the throughput figures above are printed
        if not args.skip_open_model:
            try:
                report["open_model"] = open_model(ctx, args, events, median_rate)
            except (RuntimeError, TimeoutError, OSError) as e:
                log(f"open model failed: {e}")
                report["open_model"] = {"error": str(e)}
                status = 1
    finally:
        if not args.keep:
            for scope in ctx.created:  # idempotent: also what a failed or interrupted phase left
                try:
                    scope.drop()
                except Exception as e:  # clean-up is best-effort; say what was left behind
                    log(f"could not clean up {scope.pipeline_id}: {e}")
            cleanup_quix_topics(ctx.bootstrap, topic)
            shutil.rmtree(ctx.data_root / run_id, ignore_errors=True)
    report["bench_seconds"] = round(time.monotonic() - t_bench, 1)
    summary = headline(report)
    report["summary"] = summary
    text = json.dumps(report, default=str)
    (results / "bench.json").write_text(text)
    (REPO / "experiments/results/bench-latest.json").write_text(text)
    write_plots(report, results)
    print(render_table(report))
    print(json.dumps(summary))
    return status


def run_quix(ctx: Context, args: argparse.Namespace, topic: str, events: int) -> dict[str, Any]:
    if args.skip_quix:
        return {"events_per_s": None, "reason": "skipped (--skip-quix)"}
    log("anchor (b): Quix Streams venv")
    python, why = quix.ensure_venv(REPO)
    if python is None:
        log(f"  Quix anchor unavailable: {why}")
        return {"events_per_s": None, "reason": why}
    variants = ["group-by", "per-account"] if args.quix_variant == "both" else [args.quix_variant]
    n = min(args.quix_events or 100_000, events)
    results = {}
    for v in variants:
        log(f"  Quix job ({v}) over {n:,} records")
        cpu0 = children_cpu_s()
        results[v] = quix.run_job(
            python,
            REPO,
            ctx.bootstrap,
            topic,
            n,
            ctx.data_root / ctx.run_id / f"quix-{v}",
            None,
            v,
            ctx.results / f"quix-{v}.log",
            timeout_s=max(300.0, n / 2_000),
        )
        cpu = children_cpu_s() - cpu0
        results[v]["cpu_s"] = round(cpu, 2)
        results[v]["events_per_cpu_s"] = (
            round(n / cpu, 1) if results[v].get("events_per_s") and cpu > 0 else None
        )
        log(f"  {results[v].get('events_per_s') or 0:,.0f} events/s")
    ok = [r for r in results.values() if r.get("events_per_s")]
    best = max(ok, key=lambda r: r["events_per_s"]) if ok else next(iter(results.values()))
    return {**best, "variants": {v: r.get("events_per_s") for v, r in results.items()}}


def cleanup_quix_topics(bootstrap: str, topic: str) -> None:
    """Quix's repartition and changelog topics of this run's anchor."""
    try:
        doomed = [
            t for t in list_topics(bootstrap, "") if topic in t and ("repartition" in t or "changelog" in t)
        ]
        delete_topics(bootstrap, doomed)
    except Exception as e:  # cleanup is best-effort
        log(f"could not delete Quix topics: {e}")


def open_model(ctx: Context, args: argparse.Namespace, events: int, catchup_rate: float) -> dict[str, Any]:
    seconds = args.open_seconds or (10.0 if events < 1_000_000 else 30.0)
    trials: list[dict[str, Any]] = []

    def trial(rate: float) -> dict[str, Any]:
        log(f"open model: {rate:,.0f} events/s for {seconds:.0f} s")
        res = run_open_trial(ctx, rate, seconds, f"open{len(trials)}", list(args.gen_arg))
        log(
            f"  flat={res.get('flat')} ({res.get('reason')}), e2e p50 {res.get('e2e_p50_s')} s "
            f"p99 {res.get('e2e_p99_s')} s"
        )
        trials.append(res)
        return res

    if args.no_search:
        rate = args.rate or round_rate(0.5 * catchup_rate)
        res = trial(rate)
        return {
            "searched": False,
            "max_flat_rate": rate if res.get("flat") else None,
            "chosen": res,
            "trials": trials,
        }
    lo: float | None = None
    hi: float | None = None
    rate = args.rate or round_rate(0.7 * catchup_rate)
    for _ in range(args.search_steps):
        res = trial(rate)
        if res.get("flat"):
            lo = max(lo or 0.0, rate)
        else:
            hi = rate if hi is None else min(hi, rate)
        if hi is None:
            rate = round_rate(rate * 1.4)
        elif lo is None:
            rate = round_rate(rate * 0.6)
        else:
            if (hi - lo) / lo < 0.08:
                break
            rate = round_rate((lo + hi) / 2)
    flat = [t for t in trials if t.get("flat")]
    chosen = max(flat, key=lambda t: t["rate"]) if flat else min(trials, key=lambda t: t["rate"])
    return {
        "searched": True,
        "max_flat_rate": chosen["rate"] if flat else None,
        "lowest_non_flat_rate": hi,
        "chosen": chosen,
        "trials": trials,
    }


def round_rate(x: float) -> float:
    step = 1_000 if x < 100_000 else 5_000
    return float(max(step, round(x / step) * step))


def ratio(a: float | None, b: float | None, nd: int) -> float | None:
    return round(a / b, nd) if a and b else None


def headline(report: dict[str, Any]) -> dict[str, Any]:
    c = report.get("catchup", {})
    raw = report.get("raw_consume", {}).get("events_per_s")
    qx = report.get("quix", {}).get("events_per_s")
    om = report.get("open_model") or {}
    chosen = om.get("chosen") or {}
    rate = c.get("events_per_s")
    return {
        "events": report.get("events"),
        "events_per_s": rate,
        "raw_consume_events_per_s": raw,
        "quix_events_per_s": qx,
        "quix_reason": None if qx else report.get("quix", {}).get("reason"),
        "ratio_vs_raw": round(rate / raw, 3) if rate and raw else None,
        "ratio_vs_quix": round(rate / qx, 2) if rate and qx else None,
        # per CPU second: far less sensitive to other load on the box. vs raw: the processor
        # process alone (the raw anchor is the ceiling of a consuming process); vs Quix:
        # processor + sink (Quix does the whole job in one process)
        "processor_events_per_cpu_s": c.get("processor_events_per_cpu_s"),
        "raw_consume_events_per_cpu_s": report.get("raw_consume", {}).get("events_per_cpu_s"),
        "quix_events_per_cpu_s": report.get("quix", {}).get("events_per_cpu_s"),
        "ratio_vs_raw_cpu": ratio(
            c.get("processor_events_per_cpu_s"), report.get("raw_consume", {}).get("events_per_cpu_s"), 3
        ),
        "pipeline_events_per_cpu_s": c.get("pipeline_events_per_cpu_s"),
        "ratio_vs_quix_cpu": ratio(
            c.get("pipeline_events_per_cpu_s"), report.get("quix", {}).get("events_per_cpu_s"), 2
        ),
        "e2e_p50_s": chosen.get("e2e_p50_s"),
        "e2e_p99_s": chosen.get("e2e_p99_s"),
        "e2e_p999_s": chosen.get("e2e_p999_s"),
        "e2e_rate": chosen.get("rate"),
        "lag_flat": chosen.get("flat"),
        "max_flat_rate": om.get("max_flat_rate"),
        "max_flat_rate_searched": om.get("searched"),
        "processor_peak_rss_mb": c.get("processor_peak_rss_mb"),
        "sink_peak_rss_mb": c.get("sink_peak_rss_mb"),
        "min_rows_per_insert": c.get("min_rows_per_insert"),
        "open_min_rows_per_insert": chosen.get("min_rows_per_insert"),
        "processor_cpu_s": c.get("processor_cpu_s"),
        "sink_cpu_s": c.get("sink_cpu_s"),
        "ledger_commit_p50_s": c.get("ledger_commit_p50_s"),
        "ledger_commit_p99_s": c.get("ledger_commit_p99_s"),
        "checkpoint_interval_p50_s": c.get("checkpoint_interval_p50_s"),
        "processors": c.get("processors"),
        "kafka_cpu_s": c.get("kafka_cpu_s"),
        "processor_us_per_event": c.get("processor_us_per_event"),
        "sink_us_per_event": c.get("sink_us_per_event"),
        "open_generator_us_per_event": chosen.get("generator_us_per_event"),
        "open_processor_us_per_event": chosen.get("processor_us_per_event"),
        "verify_exit_code": c.get("verify_exit_code"),
        "run_id": report.get("run_id"),
    }


def children_cpu_s() -> float:
    """CPU seconds of every child reaped so far (what `/usr/bin/time` reports for one)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)  # type: ignore[no-any-return]
            except json.JSONDecodeError:
                return None
    return None


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "python": sys.version.split()[0]}


def git_state() -> dict[str, Any]:
    def git(*a: str) -> str:
        return subprocess.run(
            ["git", *a], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", "app")),
    }


if __name__ == "__main__":
    sys.exit(main())
