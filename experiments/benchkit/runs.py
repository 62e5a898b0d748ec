"""The measured runs: catch-up (processor --until-end + sink --until-idle over a pre-produced
topic) and one open-model trial (generator at a fixed rate, processor and sink running)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from experiments.benchkit import analyse as an
from experiments.benchkit.proc import Child, cpu_snapshot, listening_pids, py_spy
from experiments.benchkit.scope import EndOffsets, Scope, record_timestamps


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Context:
    repo: Path
    run_id: str
    results: Path  # experiments/results/<run_id>
    data_root: Path  # .data: scopes live in .data/<run_id>/<name>
    bootstrap: str
    database_url: str
    base_env: dict[str, str]
    partitions: int
    processor_args: tuple[str, ...]  # extra flags for every processor (e.g. --batch-max-wait)
    processor_has_state_dir: bool  # newer processors keep state on disk: give it the scope's dir
    keep: bool
    created: list[Scope] = field(default_factory=list)  # every scope of the run, for the final clean-up

    def scope(self, name: str, events_topic: str | None = None) -> Scope:
        s = Scope.create(self.run_id, name, self.data_root, self.bootstrap, self.database_url, events_topic)
        self.created.append(s)
        return s

    def env(self, scope: Scope, **extra: str) -> dict[str, str]:
        return {**self.base_env, **scope.env(), "PYTHONPATH": str(self.repo), "LOG_LEVEL": "info", **extra}

    def broker_pids(self) -> set[int] | None:
        """The broker process(es) listening on the bootstrap servers' ports (None: not found
        on this host; then every java process counts as broker)."""
        pids: set[int] = set()
        for server in self.bootstrap.split(","):
            port = server.rsplit(":", 1)[-1]
            if port.isdigit():
                pids |= listening_pids(int(port))
        return pids or None

    def module(self, name: str, *args: str) -> list[str]:
        return [sys.executable, "-m", name, *args]

    def processor_argv(self, scope: Scope, *args: str) -> list[str]:
        extra = list(self.processor_args)
        if self.processor_has_state_dir:
            extra += ["--state-dir", str(scope.data_dir / "state")]
        return self.module("app.processor", "--metrics-port", "0", *args, *extra)


def generate(ctx: Context, scope: Scope, events: int, rate: float, name: str, extra: list[str]) -> Child:
    argv = ctx.module(
        "app.gen", "--events", str(events), "--rate", str(rate), "--partitions", str(ctx.partitions), *extra
    )
    return Child.start(name, argv, ctx.env(scope), ctx.repo, ctx.results / f"{name}.log")


def gen_result(child: Child) -> dict[str, Any]:
    done = [e for e in an.log_events(child.log_path) if e["event"] == "gen_done"]
    if not done:
        return {}
    d = done[-1]
    return {k: d.get(k) for k in ("events", "late", "invalid", "seconds", "events_per_s")}


# ---- catch-up -------------------------------------------------------------------------


def run_catchup(
    ctx: Context, scope: Scope, events: int, processors: int, profile: bool, timeout_s: float
) -> dict[str, Any]:
    """Processor(s) --until-end and sink --until-idle from an empty ledger, concurrently."""
    name = scope.pipeline_id.removeprefix(ctx.run_id + "-")
    env = ctx.env(scope)
    brokers = ctx.broker_pids()
    before = cpu_snapshot(brokers)
    sink = Child.start(
        "sink",
        ctx.module("app.sink", "--until-idle", "--metrics-port", "0"),
        env,
        ctx.repo,
        ctx.results / f"{name}-sink.log",
    )
    procs = [
        Child.start(
            f"processor{i}",
            ctx.processor_argv(scope, "--until-end"),
            env,
            ctx.repo,
            ctx.results / f"{name}-processor{i}.log",
        )
        for i in range(processors)
    ]
    spies = []
    if profile:
        spy = py_spy()
        if spy is None:
            log("--profile: py-spy not found (pip install py-spy); running without it")
        else:
            for c, kind in [(p, "processor") for p in procs] + [(sink, "sink")]:
                out = ctx.results / f"{name}-{c.name}.pyspy.txt"
                spies.append(
                    (
                        kind,
                        out,
                        subprocess.Popen(
                            [
                                spy,
                                "record",
                                "--pid",
                                str(c.pid),
                                "--format",
                                "raw",
                                "--rate",
                                "100",
                                "--output",
                                str(out),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        ),
                    )
                )
    try:
        for p in procs:
            if p.wait(timeout_s) != 0:
                raise RuntimeError(f"{p.name} exited {p.returncode}: see {p.log_path}")
        if sink.wait(timeout_s) != 0:
            raise RuntimeError(f"sink exited {sink.returncode}: see {sink.log_path}")
    finally:
        for c in (*procs, sink):
            c.kill()
    after = cpu_snapshot(brokers)
    for _, _, sp in spies:
        try:
            sp.wait(30)
        except subprocess.TimeoutExpired:
            sp.kill()

    checkpoints, batches = scope.checkpoints(), scope.batches()
    pevents = [an.log_events(p.log_path) for p in procs]
    t_start = min(t for t in (an.first_assignment(ev) for ev in pevents) if t is not None)
    acked = [b.acked_at for b in batches if b.acked_at is not None]
    t_acked = max(acked)
    t_committed = max(c.created_at for c in checkpoints)
    commits = [s for ev in pevents for s in an.commit_seconds(ev)]
    c50, c99 = an.quantiles(commits)
    intervals = an.checkpoint_intervals(checkpoints)
    i50, i99 = an.quantiles(intervals)
    records = [c.records for c in checkpoints]
    cpu_proc = sum(p.cpu_s or 0.0 for p in procs)
    services = after.minus(before)
    # CPU of the machine not accounted to this run: other users of the box (noise)
    services["other_cpu_s"] = round(
        services["machine_busy_cpu_s"]
        - cpu_proc
        - (sink.cpu_s or 0.0)
        - services["kafka_cpu_s"]
        - services["postgres_cpu_s"],
        2,
    )
    out: dict[str, Any] = {
        "pipeline_id": scope.pipeline_id,
        "processors": processors,
        "events_per_s": round(events / (t_acked - t_start), 1),
        "seconds": round(t_acked - t_start, 3),
        "processor_events_per_s": round(events / (t_committed - t_start), 1),
        "sink_tail_s": round(t_acked - t_committed, 3),
        "wall_s": round(
            max(c.ended_at or 0.0 for c in (*procs, sink)) - min(c.started_at for c in (*procs, sink)), 3
        ),
        "processor_cpu_s": round(cpu_proc, 2),
        "sink_cpu_s": round(sink.cpu_s or 0.0, 2),
        "processor_us_per_event": round(cpu_proc / events * 1e6, 3),
        "processor_events_per_cpu_s": round(events / max(cpu_proc, 1e-9), 1),
        "pipeline_events_per_cpu_s": round(events / max(cpu_proc + (sink.cpu_s or 0.0), 1e-9), 1),
        "sink_us_per_event": round((sink.cpu_s or 0.0) / events * 1e6, 3),
        "processor_peak_rss_mb": round(max(p.peak_rss_mb or 0.0 for p in procs), 1),
        "sink_peak_rss_mb": round(sink.peak_rss_mb or 0.0, 1),
        **services,
        "checkpoints": len(checkpoints),
        "records_per_checkpoint_median": float(np.median(records)) if records else None,
        "checkpoint_interval_p50_s": an.r(i50),
        "checkpoint_interval_p99_s": an.r(i99),
        "ledger_commit_p50_s": an.r(c50, 4),
        "ledger_commit_p99_s": an.r(c99, 4),
        "insert_replays": sum(max(b.insert_attempts - 1, 0) for b in batches),
        **an.rows_per_insert(batches, checkpoints, scope.insert_groups()),
        "timeline": {
            "processor": [
                [round(s.t - t_start, 2), round(s.cpu_s, 2), round(s.rss_mb, 1)] for s in procs[0].samples
            ],
            "sink": [[round(s.t - t_start, 2), round(s.cpu_s, 2), round(s.rss_mb, 1)] for s in sink.samples],
        },
    }
    if spies:
        from experiments.profile_processor import summarise

        out["profile"] = {
            f"{kind}:{path.name}": summarise(path, kind) for kind, path, _ in spies if path.exists()
        }
    return out


def run_verify(ctx: Context, scope: Scope) -> int:
    res = subprocess.run(
        ctx.module("app.verify"),
        env=ctx.env(scope, LOG_LEVEL="warning"),
        cwd=ctx.repo,
        capture_output=True,
        text=True,
        check=False,
    )
    (ctx.results / f"{scope.pipeline_id.removeprefix(ctx.run_id + '-')}-verify.log").write_text(
        res.stdout + res.stderr
    )
    return res.returncode


# ---- open model -----------------------------------------------------------------------


def run_open_trial(
    ctx: Context, rate: float, seconds: float, name: str, gen_extra: list[str]
) -> dict[str, Any]:
    """Generator at `rate` for `seconds` while processor and sink run; lag and e2e latency."""
    from app.core.kafka import ensure_topic

    scope = ctx.scope(name)
    events = int(rate * seconds)
    env = ctx.env(scope)
    ensure_topic(ctx.bootstrap, scope.events_topic, ctx.partitions)
    brokers = ctx.broker_pids()
    before = cpu_snapshot(brokers)
    sink = Child.start(
        "sink", ctx.module("app.sink", "--metrics-port", "0"), env, ctx.repo, ctx.results / f"{name}-sink.log"
    )
    proc = Child.start(
        "processor", ctx.processor_argv(scope), env, ctx.repo, ctx.results / f"{name}-processor.log"
    )
    gen: Child | None = None
    offsets = EndOffsets(ctx.bootstrap, scope.events_topic)
    samples: list[tuple[float, int, int, int]] = []  # (t, kafka end, ledger next_offset, pending rows)
    try:
        deadline = time.monotonic() + 60
        while an.first_assignment(an.log_events(proc.log_path)) is None:
            if proc.poll() or time.monotonic() > deadline:
                raise RuntimeError(f"processor never got its partitions: see {proc.log_path}")
            time.sleep(0.2)
        gen = generate(ctx, scope, events, rate, f"{name}-gen", gen_extra)
        t_gen0 = time.time()

        def sample() -> None:
            end = sum(offsets.read().values())
            nxt, pending = scope.ledger_progress()
            samples.append((time.time(), end, nxt, pending))

        while not gen.poll():
            sample()
            time.sleep(0.5)
        if gen.returncode != 0:
            raise RuntimeError(f"generator exited {gen.returncode}: see {gen.log_path}")
        t_gen1 = time.time()
        drain_deadline = time.monotonic() + max(60.0, seconds)
        drained_at = None
        while time.monotonic() < drain_deadline:
            sample()
            _, end, nxt, pending = samples[-1]
            if nxt >= end and pending == 0:
                drained_at = samples[-1][0]
                break
            time.sleep(0.25)
        for c in (proc, sink):
            c.terminate()
        for c in (proc, sink):
            c.wait(60)
    finally:
        offsets.close()
        for c in (proc, sink, *([gen] if gen else [])):
            c.kill()
    after = cpu_snapshot(brokers)
    services = after.minus(before)
    services["other_cpu_s"] = round(
        services["machine_busy_cpu_s"]
        - sum(c.cpu_s or 0.0 for c in (proc, sink, *([gen] if gen else [])))
        - services["kafka_cpu_s"]
        - services["postgres_cpu_s"],
        2,
    )

    checkpoints, batches = scope.checkpoints(), scope.batches()
    cps = an.checkpoint_times(checkpoints, batches)
    ends = EndOffsets(ctx.bootstrap, scope.events_topic)
    end_offsets = ends.read()
    ends.close()
    stamps = record_timestamps(ctx.bootstrap, scope.events_topic, end_offsets)
    latency = an.e2e_latency(cps, stamps)
    times = [s[0] for s in samples]
    covered = an.acked_coverage_at(cps, times)
    lag_e2e = [s[1] - c for s, c in zip(samples, covered, strict=True)]
    lag_ledger = [s[1] - s[2] for s in samples]
    g = gen_result(gen) if gen else {}
    achieved = float(g.get("events_per_s") or 0.0)
    warmup = min(5.0, 0.2 * seconds)
    verdict = an.lag_verdict(
        times,
        lag_e2e,
        rate,
        (t_gen0 + warmup, t_gen1),
        None if drained_at is None else drained_at - t_gen1,
        achieved,
    )
    rows = an.rows_per_insert(batches, checkpoints, scope.insert_groups())
    commits = an.commit_seconds(an.log_events(proc.log_path))
    c50, c99 = an.quantiles(commits)
    out = {
        "rate": rate,
        "seconds": seconds,
        "events": sum(end_offsets.values()),
        "generator": g,
        **verdict,
        **latency,
        "min_rows_per_insert": rows["min_rows_per_insert"],
        "median_rows_per_insert": rows["median_rows_per_insert"],
        "steady_inserts_under_10k_rows": rows["steady_inserts_under_10k_rows"],
        "ledger_commit_p50_s": an.r(c50, 4),
        "ledger_commit_p99_s": an.r(c99, 4),
        "processor_cpu_s": round(proc.cpu_s or 0.0, 2),
        "sink_cpu_s": round(sink.cpu_s or 0.0, 2),
        "generator_cpu_s": round(gen.cpu_s or 0.0, 2) if gen else None,
        # CPU per event of each stage while the generator ran at `rate` (start-up included)
        **_per_event(sum(end_offsets.values()), processor=proc.cpu_s, sink=sink.cpu_s,
                     generator=gen.cpu_s if gen else None, kafka=services["kafka_cpu_s"],
                     postgres=services["postgres_cpu_s"]),
        "processor_peak_rss_mb": round(proc.peak_rss_mb or 0.0, 1),
        **services,
        "lag_series": [
            [round(t - t_gen0, 2), le, ll] for t, le, ll in zip(times, lag_e2e, lag_ledger, strict=True)
        ],
    }
    if not ctx.keep:
        scope.drop()
    return out


def _per_event(events: int, **cpu_s: float | None) -> dict[str, float | None]:
    return {f"{k}_us_per_event": (round(v / events * 1e6, 3) if v is not None and events else None)
            for k, v in cpu_s.items()}
