"""One live pipeline run for a findings experiment: its own scope (pipeline id, topics,
ClickHouse path, state dir), gen / processor / sink started with metrics ports that the
experiment's Prometheus discovers, a drain that waits for the ledger to catch up with Kafka,
and verify at the end.

    with Monitoring(run_dir / "prometheus") as mon:
        live = LiveRun.create("sustained-a", run_dir, mon_env=mon.env)
        live.start_sink("--batch-max-wait", "5s"); live.start_processor(); live.start_gen(...)
        live.wait_gen(timeout_s); live.wait_drained(timeout_s); live.stop()
        result = live.verify()

Builds on experiments/benchkit (Child: measured subprocess; Scope: ledger reads and drop)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.config import duration_arg
from app.core.kafka import ensure_topic
from experiments.benchkit.proc import Child
from experiments.benchkit.scope import EndOffsets, Scope, delete_topics
from experiments.monitoring import free_port

REPO = Path(__file__).resolve().parents[1]
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/pipeline")


def say(name: str, msg: str) -> None:
    print(f"{name}: {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    exit_code: int
    exact: bool
    summary: dict[str, Any] | None
    tail: str                      # the last lines of verify's report (the diff, when there is one)
    peak_rss_mb: float | None = None

    def brief(self) -> dict[str, Any]:
        """What a findings JSON keeps: the verdict, per table truth vs ClickHouse, DLQ counts."""
        s = self.summary or {}
        return {"exit_code": self.exit_code, "exact": self.exact, "verdict": s.get("verdict"),
                "records": s.get("records"),
                "tables": [{**{k: t.get(k) for k in ("table", "equal", "truth", "clickhouse", "missing", "extra",
                                                      "different", "duplicates")},
                            "examples": (t.get("examples") or [])[:3]}
                           for t in s.get("tables", [])],
                "dlq": s.get("dlq"), "dlq_topic_equal": (s.get("dlq_topic") or {}).get("equal"),
                "peak_rss_mb": self.peak_rss_mb,
                **({} if self.exact else {"report_tail": self.tail})}


@dataclass
class LiveRun:
    scope: Scope
    logs: Path
    mon_env: dict[str, str]
    partitions: int
    children: dict[str, Child] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)      # roles SIGKILLed on purpose

    @classmethod
    def create(cls, name: str, run_dir: Path, *, mon_env: dict[str, str] | None = None,
               partitions: int = 4, events_topic: str | None = None) -> LiveRun:
        """A fresh scope named findings-<name>-<time>: never anyone else's ids, topics or paths
        (`events_topic`: read another scope's input instead of its own)."""
        run_id = f"findings-{name}-{time.strftime('%H%M%S')}"
        scope = Scope.create(run_id, "live", REPO / ".data" / "findings", BOOTSTRAP, DATABASE_URL, events_topic)
        logs = run_dir / "logs" / run_id
        logs.mkdir(parents=True, exist_ok=True)
        ensure_topic(BOOTSTRAP, scope.events_topic, partitions)
        return cls(scope, logs, dict(mon_env or {"METRICS_TARGETS_DIR": ""}), partitions)

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if k != "PIPELINE_CRASH_AT"}
        return {**base, **self.scope.env(), **self.mon_env, "PYTHONPATH": str(REPO), "LOG_LEVEL": "info",
                **extra}

    def _start(self, role: str, module: str, args: tuple[str, ...], metrics: bool | None = True,
               crash_at: str | None = None) -> Child:
        """metrics: True = a free port announced to Prometheus, False = off, None = no flag.
        crash_at: a PIPELINE_CRASH_AT spec, honoured because --fault-injection is added."""
        port = [] if metrics is None else ["--metrics-port", str(free_port()) if metrics else "0"]
        fault = ["--fault-injection"] if crash_at else []
        argv = [sys.executable, "-m", module, *port, *fault, *args]
        env = self.env(PIPELINE_CRASH_AT=crash_at) if crash_at else self.env()
        child = Child.start(role, argv, env, REPO, self.logs / f"{role}.log", die_with_parent=True)
        self.children[role] = child
        return child

    def start_sink(self, *args: str, role: str = "sink", crash_at: str | None = None) -> Child:
        return self._start(role, "app.sink", args, crash_at=crash_at)

    def start_processor(self, *args: str, role: str = "processor", crash_at: str | None = None) -> Child:
        return self._start(role, "app.processor", ("--state-dir", str(self.scope.data_dir / "state"), *args),
                           crash_at=crash_at)

    def kill(self, role: str) -> None:
        """SIGKILL `role` on purpose (a drain does not count it as a failure)."""
        self.killed.add(role)
        self.children[role].kill()

    def wait_crashed(self, role: str, point: str, timeout_s: float) -> None:
        """Until `role` died by SIGKILL at its crash point (its `crash_point_reached` line)."""
        from experiments.benchkit.analyse import log_events
        child = self.children[role]
        rc = child.wait(timeout_s)
        reached = any(e.get("event") == "crash_point_reached" and e.get("crash_point") == point
                      for e in log_events(child.log_path))
        self.killed.add(role)
        if rc != -9 or not reached:
            raise RuntimeError(f"{role} was meant to be killed at {point}, exited {rc}: see {child.log_path}")

    def start_gen(self, *args: str, role: str = "gen") -> Child:
        return self._start(role, "app.gen", ("--partitions", str(self.partitions), *args))

    def start_module(self, role: str, module: str, *args: str) -> Child:
        """Any other command (e.g. the naive baseline), without a metrics flag."""
        return self._start(role, module, args, metrics=None)

    # ---- progress ------------------------------------------------------------

    def wait_assigned(self, role: str = "processor", timeout_s: float = 90) -> float:
        """Until the processor logged its partitions (it fetches right after): epoch s."""
        from experiments.benchkit.analyse import first_assignment, log_events
        child = self.children[role]
        deadline = time.monotonic() + timeout_s
        while (t := first_assignment(log_events(child.log_path))) is None:
            if child.poll() or time.monotonic() > deadline:
                raise RuntimeError(f"{role} never got its partitions: see {child.log_path}")
            time.sleep(0.2)
        return t

    def end_offsets(self) -> int:
        ends = EndOffsets(self.scope.bootstrap, self.scope.events_topic)
        try:
            return sum(ends.read().values())
        finally:
            ends.close()

    def wait_exit(self, role: str, timeout_s: float) -> int:
        rc = self.children[role].wait(timeout_s)
        if rc != 0:
            raise RuntimeError(f"{role} exited {rc}: see {self.children[role].log_path}")
        return rc

    def wait_drained(self, timeout_s: float) -> float:
        """Until the ledger's next offsets reach Kafka's end offsets and nothing awaits
        ClickHouse, steady for 2 s; returns when that first held (epoch s)."""
        deadline = time.monotonic() + timeout_s
        ends = EndOffsets(self.scope.bootstrap, self.scope.events_topic)
        since: float | None = None
        try:
            while time.monotonic() < deadline:
                for role, c in self.children.items():
                    if c.poll() and c.returncode not in (0, None) and role != "gen" and role not in self.killed:
                        raise RuntimeError(f"{role} exited {c.returncode} while draining: see {c.log_path}")
                end = sum(ends.read().values())
                nxt, pending = self.scope.ledger_progress()
                if nxt >= end and pending == 0 and self._open_groups() == 0:
                    since = since or time.time()
                    if time.time() - since >= 2.0:
                        return since
                else:
                    since = None
                time.sleep(0.5)
        finally:
            ends.close()
        raise TimeoutError(f"{self.scope.pipeline_id} did not drain within {timeout_s:.0f} s "
                           f"(logs: {self.logs})")

    def _open_groups(self) -> int:
        rows = self.scope._query(
            "SELECT count(*) FROM sink_group WHERE pipeline_id = %s AND status = 'pending'",
            (self.scope.pipeline_id,))
        return int(rows[0][0])

    # ---- the end -------------------------------------------------------------

    def stop(self, timeout_s: float = 60) -> None:
        """SIGTERM everyone still running (a clean stop), SIGKILL what does not stop."""
        for c in self.children.values():
            c.terminate()
        for c in self.children.values():
            try:
                c.wait(timeout_s)
            except TimeoutError:
                pass

    def verify(self, *args: str, timeout_s: float = 1800) -> VerifyResult:
        """Run verify; its own peak RSS comes from wait4 on its pid (not the max over every
        child this process ever waited for, which is what RUSAGE_CHILDREN gives)."""
        log = self.logs / "verify.log"
        with open(log, "w+") as out:
            proc = subprocess.Popen([sys.executable, "-m", "app.verify", "--json", *args],
                                    env=self.env(LOG_LEVEL="warning"), cwd=REPO, stdout=out,
                                    stderr=subprocess.STDOUT, text=True)
            timer = threading.Timer(timeout_s, proc.kill)
            timer.start()
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            finally:
                timer.cancel()
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            stdout = out.read()
        summary = None
        for line in reversed(stdout.strip().splitlines()):
            if line.startswith("{"):
                try:
                    summary = json.loads(line)
                except json.JSONDecodeError:
                    pass
                break
        # the human report's last lines (verdict, first differing keys), not its JSON summary
        tail = "\n".join([ln for ln in stdout.strip().splitlines() if not ln.startswith("{")][-12:])
        return VerifyResult(proc.returncode, proc.returncode == 0, summary, tail,
                            peak_rss_mb=round(usage.ru_maxrss / 1024, 1))  # ru_maxrss: KiB on Linux

    def clickhouse_rows(self, sql: str) -> list[list[Any]]:
        """Rows of one query against this run's embedded ClickHouse, in a child process (an
        embedded path is owned by one process, and this one may open several runs')."""
        code = ("import json,sys; from app.clickhouse.client import connect; "
                "print(json.dumps(connect(sys.argv[1]).query(sys.argv[2]).result_rows, default=str))")
        res = subprocess.run([sys.executable, "-c", code, self.scope.clickhouse_url, sql], env=self.env(),
                             cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"ClickHouse query failed: {res.stderr[-1500:]}")
        return list(json.loads(res.stdout.strip().splitlines()[-1]))

    def drop(self, *, topics: bool = True) -> None:
        """Forget this run: ledger rows, local data and topics (the JSON keeps the numbers)."""
        for c in self.children.values():
            c.kill()
        self.scope.drop(topics=topics)
        if not topics:  # the input is another scope's; the DLQ topic is this run's own
            delete_topics(self.scope.bootstrap, [self.scope.dlq_topic])


def durations(text: str) -> list[str]:
    """A flag's comma-separated durations ("200ms,1s"), each checked as the pipeline's flags check one."""
    parts = [x.strip() for x in text.split(",")]
    for p in parts:
        duration_arg(p)
    return parts
