"""One chaos run, start to verdict: stack up, generator at a fixed rate, processors and the
sink under the seeded fault schedule, drain, verify, report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from app.core.config import REPO_ROOT, parse_time_ms
from app.core.kafka import producer_config
from experiments.benchkit.proc import Child
from experiments.chaos import hostile
from experiments.chaos.fleet import Exit, Fleet, RunAborted, log_events
from experiments.chaos.observe import Observer, Sample
from experiments.chaos.schedule import ChaosPlan, Fault, Schedule, build_schedule
from experiments.chaos.stack import TOPIC_MAX_MESSAGE_BYTES, KafkaCluster, Scope, wait_for


@dataclass(frozen=True, slots=True)
class RunConfig:
    seed: int
    events: int
    rate: float
    brokers: int
    processors: int
    partitions: int
    accounts: int
    plan: ChaosPlan
    run_dir: Path
    pipeline_id: str
    database_url: str
    bootstrap: str | None = None          # use this cluster instead of starting one (1 broker only)
    start_time: str = "2025-11-20T00:00:00Z"
    late_fraction: float = 0.02
    invalid_fraction: float = 0.002
    oversized: bool = True
    break_sink: bool = False              # the sink drops every 3rd insert silently (a negative control)
    max_pending_rows: int = 300_000
    drain_timeout_s: float = 900.0
    command: str = ""


@dataclass
class FaultRecord:
    """A planned fault as it happened."""

    at_s: float
    kind: str
    target: str
    hit: str
    ended_s: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    config: RunConfig
    schedule: Schedule
    samples: list[Sample]
    faults: list[FaultRecord]
    exits: list[Exit]
    generator_s: float
    drained: bool
    drain_s: float
    verify_rc: int | None
    verify_stdout: str
    verify_summary: dict[str, Any] | None
    ledger: dict[str, Any]
    clickhouse: dict[str, Any]
    hostile_records: dict[str, int]
    logs: dict[str, Any]
    versions: dict[str, str]
    started_utc: str
    wall_s: float

    @property
    def exact(self) -> bool:
        return self.drained and self.verify_rc == 0


class ChaosRun:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.schedule = build_schedule(cfg.seed, cfg.plan)
        self.cluster: KafkaCluster | None = None
        self.faults: list[FaultRecord] = []
        self.hostile_counts: dict[str, int] = {}
        self._active: list[tuple[float, FaultRecord, Fault]] = []   # faults with an end to undo
        self._hostile_threads: list[threading.Thread] = []
        self._observer: Observer | None = None

    # ---- the run -----------------------------------------------------------------

    def run(self) -> RunResult:
        cfg = self.cfg
        started_utc = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        wall0 = time.monotonic()
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        bootstrap = cfg.bootstrap
        if bootstrap is None:
            self.cluster = KafkaCluster(cfg.brokers, cfg.run_dir / "kafka")
            self._say(f"starting a {cfg.brokers}-broker Kafka cluster of its own")
            self.cluster.up()
            bootstrap = self.cluster.bootstrap
        scope = Scope(cfg.pipeline_id, cfg.run_dir, bootstrap, cfg.database_url)
        try:
            return self._run(scope, started_utc, wall0)
        finally:
            if self.cluster is not None:
                self._say("stopping the chaos Kafka cluster")
                try:
                    self.cluster.down()
                except Exception as e:  # noqa: BLE001 - best effort at the very end
                    self._say(f"kafka down failed: {e}")

    def _run(self, scope: Scope, started_utc: str, wall0: float) -> RunResult:
        cfg = self.cfg
        scope.reset()
        self._create_topics(scope)
        t0 = time.monotonic()
        observer = Observer(scope, t0)
        self._observer = observer
        fleet = Fleet(scope, self.schedule, t0, self._processor_args(), self._sink_args(),
                      break_sink=self.cfg.break_sink)
        observer.start()
        for slot in range(cfg.processors):
            fleet.start_processor(slot)
        fleet.start_sink()
        gen = self._start_generator(scope, t0)
        self._say(f"generator at {cfg.rate:,.0f} events/s for {cfg.events:,} events; "
                  f"{len(self.schedule.faults)} scheduled faults")
        pending = list(self.schedule.faults)
        gen_s = drain_s = 0.0
        drained = False
        last_report = 0.0
        aborted: str | None = None
        try:
            while True:
                now = time.monotonic() - t0
                for e in fleet.reap():
                    if e.returncode == -9:
                        self._say(f"t={e.t_s:7.1f}s {e.role}{e.slot if e.role == 'processor' else ''} killed "
                                  f"({e.cause}: {e.hit})")
                self._end_due(fleet, now)  # first: a kill deferred past a pause must see it ended
                while pending and pending[0].at_s <= now:
                    self._begin(pending.pop(0), fleet, scope, now, pending)
                if gen.poll() and not gen_s:
                    gen_s = now
                    if gen.returncode != 0:
                        raise RuntimeError(f"generator failed with {gen.returncode}: see {gen.log_path}")
                    self._say(f"generator done after {gen_s:.1f} s")
                if gen_s and not pending and not self._active:
                    break
                if now - last_report >= 15:
                    last_report = now
                    s = observer.latest()
                    if s is not None:
                        self._say(f"t={now:7.1f}s produced={s.produced:,} lag={s.lag:,} pending_rows={s.pending_rows:,} "
                                  f"kills={sum(1 for e in fleet.exits if e.returncode == -9)}")
                time.sleep(0.05)
            for t in self._hostile_threads:
                t.join(timeout=120)
            # drain: no more faults; every new incarnation starts unarmed
            self._say("schedule done: draining (no new faults, incarnations unarmed)")
            fleet.arm = False
            for inc in fleet.processors.values():
                if inc.armed:
                    inc.child.terminate()  # its next incarnation starts unarmed
            if fleet.sink is not None and (fleet.sink.armed or "fail_mode" in fleet.sink.settings):
                fleet.sink.child.terminate()
            drain0 = time.monotonic()
            drained = self._drain(fleet, observer, scope)
            drain_s = time.monotonic() - drain0
        except RunAborted as e:
            aborted = str(e)
            self._say(f"ABORTED: {aborted}")
        finally:
            fleet.terminate_all()
            gen.kill() if gen.returncode is None else None
            observer.stop()
        self._fence_outcomes()
        verify_rc, verify_out, verify_summary = self._verify(scope) if drained else (
            None, f"not verified: {aborted or 'the pipeline did not drain in time'}", None)
        return RunResult(cfg, self.schedule, observer.samples, self.faults, fleet.exits, gen_s, drained, drain_s,
                         verify_rc, verify_out, verify_summary, ledger_summary(scope), clickhouse_summary(scope),
                         self.hostile_counts, log_summary(fleet), versions(), started_utc,
                         time.monotonic() - wall0)

    # ---- set-up --------------------------------------------------------------------

    def _create_topics(self, scope: Scope) -> None:
        if self.cluster is not None:
            self.cluster.create_topic(scope.topic, self.cfg.partitions)
        else:
            from confluent_kafka.admin import AdminClient, NewTopic
            admin = AdminClient({"bootstrap.servers": scope.bootstrap, "log_level": 0})
            existing = admin.list_topics(timeout=10).topics
            for t in (scope.topic, scope.dlq_topic):
                if t in existing:
                    admin.delete_topics([t])[t].result(timeout=30)
            wait_for(lambda: not ({scope.topic, scope.dlq_topic} & set(admin.list_topics(timeout=10).topics)),
                     "old chaos topics to be deleted", 60)
            admin.create_topics([NewTopic(scope.topic, self.cfg.partitions, 1,
                                          config={"max.message.bytes": str(TOPIC_MAX_MESSAGE_BYTES)})]
                                )[scope.topic].result(timeout=30)

    def _processor_args(self) -> tuple[str, ...]:
        return ("--batch-max-wait", "0.5s", "--session-timeout", "6s", "--snapshot-interval", "20s",
                "--max-pending-rows", str(self.cfg.max_pending_rows), "--metrics-port", "0", "--log-level", "info",
                "--dlq-partitions", "1")

    def _sink_args(self) -> tuple[str, ...]:
        return ("--batch-rows", "20000", "--batch-max-wait", "1s", "--metrics-port", "0", "--log-level", "info")

    def _start_generator(self, scope: Scope, t0: float) -> Child:
        cfg = self.cfg
        argv = scope.argv("app.gen", "--seed", str(cfg.seed), "--events", str(cfg.events), "--rate", str(cfg.rate),
                          "--event-time-rate", str(cfg.rate), "--accounts", str(cfg.accounts),
                          "--partitions", str(cfg.partitions), "--late-fraction", str(cfg.late_fraction),
                          "--invalid-fraction", str(cfg.invalid_fraction), "--start-time", cfg.start_time,
                          "--metrics-port", "0")
        return Child.start("gen", argv, scope.env(), scope.run_dir, scope.run_dir / "logs" / "gen.log",
                           die_with_parent=True)

    # ---- faults ----------------------------------------------------------------------

    def _paused_until(self, target: str) -> float | None:
        """When a SIGSTOP of `target` ends, if one is in force: a kill waits for it, so that
        the stall or the fence runs its full course."""
        ends = [end for end, rec, f in self._active if rec.target == target and f.kind in ("sink_stall", "fence")]
        return max(ends) if ends else None

    def _begin(self, f: Fault, fleet: Fleet, scope: Scope, now: float, pending: list[Fault]) -> None:
        rec: FaultRecord
        target = "sink" if f.kind == "sink_kill" else f"processor{f.target}"
        until = self._paused_until(target) if f.kind in ("processor_kill", "sink_kill") else None
        if until is not None:
            pending.append(replace(f, at_s=max(until, now) + 0.5,
                                   note=f"deferred from {f.at_s:.1f} s (target stopped)"))
            pending.sort(key=lambda x: x.at_s)
            return
        if f.kind in ("processor_kill", "sink_kill"):
            if f.kind == "processor_kill":
                slot = f.target if f.target in fleet.processors else next(iter(fleet.processors), f.target)
                ok, target = fleet.kill_processor(slot), f"processor{slot}"
            else:
                ok, target = fleet.kill_sink(), "sink"
            if not ok and f.attempt < 40:
                # the target is between incarnations (just killed, not yet restarted): a planned
                # kill always lands, on the next incarnation, so the run's kill count is the plan's
                pending.append(replace(f, at_s=now + 0.5, attempt=f.attempt + 1))
                pending.sort(key=lambda x: x.at_s)
                return
            rec = FaultRecord(now, f.kind, target, "SIGKILL" if ok else "no live target after 20 s",
                              detail={"planned_at_s": f.at_s} if f.attempt else {})
        elif f.kind == "sink_stall":
            ok = fleet.pause(fleet.sink, True)
            rec = FaultRecord(now, f.kind, "sink", "SIGSTOP (ClickHouse stalled)" if ok else "sink not running")
            self._active.append((now + f.duration_s, rec, f))
        elif f.kind == "fence":
            inc = fleet.processors.get(f.target)
            ok = fleet.pause(inc, True)
            rec = FaultRecord(now, f.kind, f"processor{f.target}", "SIGSTOP" if ok else "not running",
                              detail={"incarnation": None if inc is None else inc.number,
                                      "log": None if inc is None else str(inc.child.log_path)})
            self._active.append((now + f.duration_s, rec, f))
        elif f.kind == "join_leave":
            slot = self.cfg.processors  # the extra slot
            fleet.retired.discard(slot)
            if slot not in fleet.processors:
                fleet.start_processor(slot, armed=False)
            rec = FaultRecord(now, f.kind, f"processor{slot}", "joined")
            self._active.append((now + f.duration_s, rec, f))
        elif f.kind == "broker_restart":
            assert self.cluster is not None
            node = f.target or (self.cluster.leader_of(scope.dlq_topic) or 1)
            self.cluster.kill_node(node)
            rec = FaultRecord(now, f.kind, f"broker{node}", "killed" + (" (the DLQ partition's leader)"
                                                                         if f.target == 0 else ""),
                              detail={"node": node})
            self._active.append((now + f.duration_s, rec, f))
        elif f.kind == "hostile_burst":
            final = f is self._last_hostile()
            rec = FaultRecord(now, f.kind, "input", "producing", detail={"seed": f.target, "final": final})
            latest = self._observer.latest() if self._observer else None
            produced = latest.produced if latest else 0
            # the generator's event time now: record i is at start + i * 1000 / rate ms
            now_ms = parse_time_ms(self.cfg.start_time) + int(produced * 1000 / max(self.cfg.rate, 1.0))
            t = threading.Thread(target=self._produce_hostile, args=(scope, f.target, now_ms, final, rec), daemon=True)
            t.start()
            self._hostile_threads.append(t)
        else:
            raise ValueError(f"unknown fault kind {f.kind}")
        self.faults.append(rec)
        self._say(f"t={now:7.1f}s fault {rec.kind} -> {rec.target}: {rec.hit}")

    def _last_hostile(self) -> Fault | None:
        bursts = [f for f in self.schedule.faults if f.kind == "hostile_burst"]
        return bursts[-1] if bursts else None

    def _end_due(self, fleet: Fleet, now: float) -> None:
        for item in list(self._active):
            end, rec, f = item
            if end > now:
                continue
            self._active.remove(item)
            rec.ended_s = now
            if f.kind == "sink_stall":
                fleet.pause(fleet.sink, False)
                rec.detail["backpressure_pauses"] = sum(1 for e in fleet.all_logs("processor")
                                                        if e.get("event") == "backpressure_paused"
                                                        and rec.at_s <= _event_t(e, fleet) <= now + 1)
            elif f.kind == "fence":
                inc = fleet.processors.get(f.target)
                if inc is not None and inc.number == rec.detail.get("incarnation"):
                    fleet.pause(inc, False)
            elif f.kind == "join_leave":
                slot = self.cfg.processors
                fleet.retired.add(slot)
                inc = fleet.processors.get(slot)
                if inc is not None:
                    inc.child.terminate()
                rec.hit = "joined, then left (SIGTERM)"
            elif f.kind == "broker_restart":
                assert self.cluster is not None
                self.cluster.start_node(rec.detail["node"])
                rec.hit += ", restarted"
            self._say(f"t={now:7.1f}s fault {rec.kind} -> {rec.target}: ended")

    def _produce_hostile(self, scope: Scope, seed: int, now_ms: int, final: bool, rec: FaultRecord) -> None:
        cfg = self.cfg
        producer = Producer(producer_config(scope.bootstrap, **{"message.max.bytes": TOPIC_MAX_MESSAGE_BYTES,
                                                                "linger.ms": 5}))
        n = 0
        for r in hostile.burst(seed, now_ms, oversized=cfg.oversized, final=final):
            producer.produce(scope.topic, r.value, r.key)
            producer.poll(0)
            self.hostile_counts[r.label] = self.hostile_counts.get(r.label, 0) + 1
            n += 1
        left = producer.flush(120)
        rec.hit = f"{n} hostile records" + (f", {left} undelivered" if left else "")
        rec.detail["records"] = n

    # ---- the end ----------------------------------------------------------------------

    def _drain(self, fleet: Fleet, observer: Observer, scope: Scope) -> bool:
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        steady_since: float | None = None
        while time.monotonic() < deadline:
            fleet.reap()
            s = observer.latest()
            open_groups = _open_groups(scope)
            done = s is not None and s.lag == 0 and s.pending_rows == 0 and open_groups == 0 and s.produced > 0
            if done:
                steady_since = steady_since or time.monotonic()
                if time.monotonic() - steady_since >= 3.0:
                    return True
            else:
                steady_since = None
            time.sleep(0.5)
        self._say("drain timed out")
        return False

    def _verify(self, scope: Scope) -> tuple[int, str, dict[str, Any] | None]:
        self._say("verify: recomputing the truth from the input log, diffing per key")
        res = subprocess.run(scope.argv("app.verify", "--json"), env=scope.env(LOG_LEVEL="warning"), cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=3600, check=False)
        summary = None
        for line in reversed(res.stdout.strip().splitlines()):
            if line.startswith("{"):
                try:
                    summary = json.loads(line)
                except json.JSONDecodeError:
                    pass
                break
        return res.returncode, res.stdout + ("\n" + res.stderr[-3000:] if res.returncode else ""), summary

    def _fence_outcomes(self) -> None:
        """What each fence did to the stopped instance once it ran again: its log after the
        SIGCONT shows partitions lost to the group, or commits refused by the ledger's fencing."""
        for rec in self.faults:
            if rec.kind != "fence" or not rec.detail.get("log"):
                continue
            events = log_events(Path(rec.detail["log"]))
            seen = {name: sum(1 for e in events if e.get("event") == name)
                    for name in ("partitions_lost", "checkpoint_fenced", "snapshot_fenced", "partitions_revoked")}
            rec.detail.update(seen)
            found = ", ".join(f"{k} {v}" for k, v in seen.items() if v)
            rec.hit = f"SIGSTOP past the session timeout; after SIGCONT: {found or 'nothing logged'}"

    def _say(self, text: str) -> None:
        print(f"chaos: {text}", flush=True)


def _event_t(event: dict[str, Any], fleet: Fleet) -> float:
    """A log event's time as seconds since the run started (structlog's ISO timestamp)."""
    ts = event.get("timestamp")
    if not ts:
        return -1.0
    wall = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    return wall - (time.time() - (time.monotonic() - fleet.started_at))


def _open_groups(scope: Scope) -> int:
    with scope.ledger() as conn:
        (n,) = conn.execute("SELECT count(*) FROM sink_group WHERE pipeline_id = %s AND status = 'pending'",
                            (scope.pipeline_id,)).fetchone()  # type: ignore[misc]
    return int(n)


def ledger_summary(scope: Scope) -> dict[str, Any]:
    with scope.ledger() as conn:
        p = scope.pipeline_id
        dlq = {f"{r}/{k or '-'}": int(n) for r, k, n in conn.execute(
            "SELECT reason, window_kind, sum(count) FROM dlq_count WHERE pipeline_id = %s GROUP BY 1, 2 ORDER BY 1, 2",
            (p,))}
        (checkpoints, records) = conn.execute(
            "SELECT count(*), coalesce(sum(records), 0) FROM ledger_checkpoint WHERE pipeline_id = %s",
            (p,)).fetchone()  # type: ignore[misc]
        (batches, rows, replayed_batches, replayed_rows) = conn.execute(
            """SELECT count(*), coalesce(sum(row_count), 0), count(*) FILTER (WHERE insert_attempts > 1),
                      coalesce(sum(row_count) FILTER (WHERE insert_attempts > 1), 0)
               FROM sink_batch WHERE pipeline_id = %s""", (p,)).fetchone()  # type: ignore[misc]
        (groups, resent_groups, sends) = conn.execute(
            """SELECT count(*), count(*) FILTER (WHERE insert_attempts > 1), coalesce(sum(insert_attempts), 0)
               FROM sink_group WHERE pipeline_id = %s""", (p,)).fetchone()  # type: ignore[misc]
        generations = {int(a): int(b) for a, b in conn.execute(
            "SELECT partition, owner_generation FROM partition_state WHERE pipeline_id = %s ORDER BY 1", (p,))}
    return {"checkpoints": int(checkpoints), "records": int(records), "batches": int(batches),
            "rows": int(rows), "batches_replayed": int(replayed_batches), "rows_replayed": int(replayed_rows),
            "groups": int(groups), "groups_resent": int(resent_groups), "insert_attempts": int(sends),
            "dlq": dlq, "owner_generations": generations}


def clickhouse_summary(scope: Scope) -> dict[str, Any]:
    from app.clickhouse.client import connect
    out: dict[str, Any] = {}
    client = connect(scope.clickhouse_url)
    try:
        for table in ("rollup_minute", "rollup_hour"):
            raw = client.query(f"SELECT count() FROM {table}").result_rows[0][0]
            final = client.query(f"SELECT count(), sum(event_count) FROM {table} FINAL").result_rows[0]
            out[table] = {"raw_rows": int(raw), "final_rows": int(final[0]), "final_events": int(final[1] or 0)}
    finally:
        client.close()
    return out


def log_summary(fleet: Fleet) -> dict[str, Any]:
    procs = fleet.all_logs("processor")
    sinks = fleet.all_logs("sink")

    def count(events: list[dict[str, Any]], name: str) -> int:
        return sum(1 for e in events if e.get("event") == name)

    modes: dict[str, int] = {}
    for e in sinks:
        if e.get("event") == "insert_fault_injected":
            modes[str(e.get("mode"))] = modes.get(str(e.get("mode")), 0) + 1
    return {
        "processor_starts": count(procs, "processor_started"),
        "partitions_assigned": count(procs, "partitions_assigned"),
        "partitions_revoked": count(procs, "partitions_revoked"),
        "partitions_lost": count(procs, "partitions_lost"),
        "checkpoints_fenced": count(procs, "checkpoint_fenced") + count(procs, "snapshot_fenced"),
        "restores_rebuilt": sum(1 for e in procs if e.get("event") == "partition_restored" and e.get("state") == "rebuilt"),
        "restores_reused": sum(1 for e in procs if e.get("event") == "partition_restored" and e.get("state") == "reused"),
        "backpressure_pauses": count(procs, "backpressure_paused"),
        "sink_starts": count(sinks, "sink_started"),
        "groups_replayed": count(sinks, "group_replayed"),
        "insert_faults_injected": modes,
        "insert_faults_total": sum(modes.values()),
        "clickhouse_insert_failed": count(sinks, "clickhouse_insert_failed"),
    }


def versions() -> dict[str, str]:
    import platform

    import chdb
    import clickhouse_connect
    import confluent_kafka
    out = {"python": platform.python_version(), "confluent_kafka": confluent_kafka.__version__,
           "librdkafka": confluent_kafka.libversion()[0], "clickhouse_connect": clickhouse_connect.__version__,
           "chdb": getattr(chdb, "__version__", "?")}
    pom = (REPO_ROOT / "infra" / "pom.xml").read_text()
    start = pom.find("<kafka.version>")
    if start >= 0:
        out["kafka"] = pom[start + len("<kafka.version>"):pom.find("</kafka.version>")]
    try:
        out["postgres"] = subprocess.run(["psql", "--version"], capture_output=True, text=True,
                                         check=False).stdout.strip()
    except FileNotFoundError:
        pass
    try:
        out["clickhouse_engine"] = chdb.query("SELECT version()", "CSV").data().strip().strip('"')
    except Exception:  # noqa: BLE001 - a version string is nice to have
        pass
    out["machine"] = f"{os.cpu_count()} cores, {platform.machine()}, {platform.system()} {platform.release()}"
    return out


def result_json(r: RunResult) -> dict[str, Any]:
    cfg = asdict(r.config)
    cfg["run_dir"] = str(r.config.run_dir)
    cfg.pop("database_url", None)
    return {
        "exact": r.exact, "command": r.config.command, "started_utc": r.started_utc, "wall_s": round(r.wall_s, 1),
        "config": cfg, "versions": r.versions, "schedule": {"seed": r.schedule.seed, "planned": r.schedule.counts()},
        "generator_s": round(r.generator_s, 1), "drained": r.drained, "drain_s": round(r.drain_s, 1),
        "faults": [asdict(f) for f in r.faults], "exits": [asdict(e) for e in r.exits],
        "ledger": r.ledger, "clickhouse": r.clickhouse, "hostile_records": r.hostile_records, "logs": r.logs,
        "verify": {"exit_code": r.verify_rc, "summary": r.verify_summary, "stdout": r.verify_stdout[-6000:]},
        "timeline": [[s.t_s, s.produced, s.committed, s.pending_rows] for s in r.samples],
    }
