"""Recovery time of the processor with large state: restart and partition handover.

For each state size K (distinct accounts with an open hour window; default 1M and 10M):

  build     K events, one per account, inside one hour of event time (as state_rss.py);
            `python -m app.processor --until-end` folds them: the state holds >= K windows,
            committed to the ledger and to the instance's LevelDB.
  then, with a producer adding new events at --rate the whole time:
  restart_local    the processor was down for --downtime s; restarted on its own state dir
                   (LevelDB matches the ledger: reused);
  restart_rebuild  the same, on an empty state dir (a new host): every partition is rebuilt
                   from the ledger (chunked snapshot + later batches);
  handover         one instance runs steady on all partitions; a second one (empty state
                   dir) joins; the group moves half the partitions to it, it rebuilds them.

Measured: `restore_s` = the longest partition restore (claim + reconcile + load, from the
processor's `partition_restored` log line), and `to_steady_s` = from the process start
(handover: from the second instance's start) until the lag is steady, i.e. the end offsets
minus the ledger's next offsets stay <= --steady-seconds of input (rate x seconds) for 3 s.
For the handover also `gap_s`: from the first instance revoking the partitions (after
committing them) to the second instance's first committed checkpoint (claim + rebuild +
first batch): how long the moved partitions made no progress.

    python -m experiments.recovery                            # 1M and 10M, ~20 min
    python -m experiments.recovery --keys 1000000 --rate 5000
    python -m experiments.recovery --keys 10000000 --reuse-scope state-rss   # skip the build:
        # use the scope experiments.state_rss left (its topic, ledger and state dir)

Writes one JSON line per K to experiments/results/ and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition

from app.core.config import psycopg_conninfo
from app.core.kafka import producer_config
from experiments.state_rss import COUNTRIES, HOUR_START_MS, RESULTS, produce_distinct, reset_scope, scope_env

PROCESSOR_FLAGS = ("--metrics-port", "0", "--log-level", "info", "--session-timeout", "6s",
                   "--max-pending-rows", str(10**12), "--max-pending-bytes", "0",
                   # no snapshot during the measurement: it is recovery we time
                   "--snapshot-interval", "1h")


class SteadyProducer:
    """New accounts at a fixed rate, event times advancing slowly (the hour stays open)."""

    def __init__(self, scope: dict[str, str], first_account: int, rate: float) -> None:
        self.scope, self.next_account, self.rate = scope, first_account, rate
        self.stop = threading.Event()
        self.sent = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        p = Producer(producer_config(self.scope["KAFKA_BOOTSTRAP_SERVERS"], **{"linger.ms": 5}))
        topic = self.scope["EVENTS_TOPIC"]
        started = time.monotonic()
        while not self.stop.is_set():
            due = int((time.monotonic() - started) * self.rate)
            while self.sent < due:
                a = self.next_account
                t = HOUR_START_MS + 3_000_000 + self.sent // 100  # +10 s of event time per 1M events
                p.produce(topic, (f'{{"event_id":{a},"account_id":{a},"country":"{COUNTRIES[a % len(COUNTRIES)]}",'
                                  f'"event_time":{t},"amount":1,"kind":"purchase"}}').encode(), str(a).encode())
                self.next_account += 1
                self.sent += 1
            p.poll(0)
            time.sleep(0.01)
        p.flush(30)

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=60)


class Lag:
    """End offsets (Kafka) minus next offsets (ledger): records not yet committed."""

    def __init__(self, scope: dict[str, str]) -> None:
        self.scope = scope
        self.consumer = Consumer({"bootstrap.servers": scope["KAFKA_BOOTSTRAP_SERVERS"], "group.id": "recovery-lag"})
        topic = scope["EVENTS_TOPIC"]
        self.tps = [TopicPartition(topic, p) for p in self.consumer.list_topics(topic, timeout=10)
                    .topics[topic].partitions]
        self.conn = psycopg.connect(psycopg_conninfo(scope["DATABASE_URL"]), autocommit=True)

    def records(self) -> int:
        end = sum(self.consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self.tps)
        (done,) = self.conn.execute("SELECT coalesce(sum(next_offset), 0) FROM partition_state WHERE pipeline_id = %s",
                                    (self.scope["PIPELINE_ID"],)).fetchone()  # type: ignore[misc]
        return end - int(done)

    def close(self) -> None:
        self.consumer.close()
        self.conn.close()


def start_processor(run_env: dict[str, str], state_dir: Path, log_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "app.processor", "--state-dir", str(state_dir),
                             *PROCESSOR_FLAGS, *extra], env=run_env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=open(log_path, "wb"))


def wait_steady(lag: Lag, threshold: int, since: float, timeout_s: float, hold_s: float = 3.0) -> tuple[float, int]:
    """Seconds from `since` until lag <= threshold (held for hold_s), and the peak lag seen."""
    first_ok: float | None = None
    peak = 0
    while time.monotonic() - since < timeout_s:
        n = lag.records()
        peak = max(peak, n)
        now = time.monotonic()
        if n <= threshold:
            first_ok = first_ok or now
            if now - first_ok >= hold_s:
                return round(first_ok - since, 2), peak
        else:
            first_ok = None
        time.sleep(0.2)
    raise TimeoutError(f"lag not steady within {timeout_s}s (last {lag.records()} records)")


def events(log_path: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        if f'"{name}"' in line:
            out.append(json.loads(line))
    return out


def restores(log_path: Path) -> list[dict[str, Any]]:
    return events(log_path, "partition_restored")


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_size(keys: int, args: argparse.Namespace) -> dict[str, Any]:
    pipeline_id = args.reuse_scope or f"recovery-{keys}"
    scope = scope_env(pipeline_id)
    run_env = {**os.environ, **scope, "PYTHONPATH": str(REPO)}
    state_root = REPO / ".data" / "state" / pipeline_id
    logs = RESULTS / f"recovery-{keys}-{time.strftime('%Y%m%d-%H%M%S')}"
    logs.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"experiment": "recovery", "keys": keys, "rate": args.rate, "scope": pipeline_id}
    if not args.reuse_scope:
        reset_scope(scope, state_root)
        t0 = time.monotonic()
        produce_distinct(scope, keys, args.partitions)
        build = subprocess.run([sys.executable, "-m", "app.processor", "--until-end", "--state-dir", str(state_root),
                                *PROCESSOR_FLAGS], env=run_env, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=open(logs / "build.log", "wb"), check=False)  # noqa: SIM115
        if build.returncode != 0:
            raise SystemExit(f"build run failed: {build.returncode}, see {logs / 'build.log'}")
        out["build_s"] = round(time.monotonic() - t0, 1)
    local_dir = state_root  # slot-0 of it holds the built state
    threshold = int(args.rate * args.steady_seconds)
    producer = SteadyProducer(scope, first_account=10**12, rate=args.rate)
    lag = Lag(scope)
    try:
        for name, state_dir in (("restart_local", local_dir), ("restart_rebuild", logs / "empty-state")):
            time.sleep(args.downtime)  # down: the producer keeps going, a backlog builds
            backlog = lag.records()
            t0 = time.monotonic()
            proc = start_processor(run_env, state_dir, logs / f"{name}.log")
            to_steady, peak = wait_steady(lag, threshold, t0, args.timeout)
            stop(proc)
            rs = restores(logs / f"{name}.log")
            out[name] = {"to_steady_s": to_steady, "backlog_records": backlog, "peak_lag": peak,
                         "restore_s": max(r["seconds"] for r in rs), "modes": sorted({r["state"] for r in rs}),
                         "restored_rows": sum(r["restored_rows"] for r in rs),
                         "windows": sum(sum(r["windows"].values()) for r in rs)}
            print(f"recovery: K={keys:,} {name}: {out[name]}", flush=True)
            if name == "restart_rebuild":
                shutil.rmtree(state_dir, ignore_errors=True)
        # handover: A steady on its own (matching) state, B joins with nothing
        a = start_processor(run_env, local_dir, logs / "handover_a.log")
        wait_steady(lag, threshold, time.monotonic(), args.timeout)
        t0 = time.monotonic()
        b = start_processor(run_env, logs / "empty-state-b", logs / "handover_b.log")
        peak_before = 0
        while not events(logs / "handover_b.log", "checkpoint_committed"):  # B has taken over something
            if time.monotonic() - t0 > args.timeout or b.poll() is not None:
                raise SystemExit(f"the second instance never committed; see {logs / 'handover_b.log'}")
            peak_before = max(peak_before, lag.records())
            time.sleep(0.2)
        to_steady, peak = wait_steady(lag, threshold, t0, args.timeout)
        peak = max(peak, peak_before)
        stop(b)
        stop(a)
        rs = restores(logs / "handover_b.log")
        # the gap: A commits and lets the partitions go -> B claimed, rebuilt, committed them
        revoked = [e for e in events(logs / "handover_a.log", "partitions_revoked") if e["partitions"]]
        b_commits = events(logs / "handover_b.log", "checkpoint_committed")
        gap = (round(_ts(b_commits[0]) - _ts(revoked[0]), 2) if revoked and b_commits else None)
        out["handover"] = {"gap_s": gap, "to_steady_s": to_steady, "peak_lag": peak, "partitions_moved": len(rs),
                           "restore_s": max((r["seconds"] for r in rs), default=0.0),
                           "restored_rows": sum(r["restored_rows"] for r in rs)}
        print(f"recovery: K={keys:,} handover: {out['handover']}", flush=True)
        shutil.rmtree(logs / "empty-state-b", ignore_errors=True)
    finally:
        producer.close()
        lag.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", default="1000000,10000000", help="state sizes, comma-separated")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rate", type=float, default=5000, help="steady input rate, events/s (default 5000)")
    ap.add_argument("--downtime", type=float, default=10, help="seconds down before each restart (default 10)")
    ap.add_argument("--steady-seconds", type=float, default=3,
                    help="lag counts as steady at <= this many seconds of input (default 3)")
    ap.add_argument("--timeout", type=float, default=900, help="give up on a scenario after this (default 900)")
    ap.add_argument("--reuse-scope", default=None,
                    help="pipeline id of an already built scope (e.g. state-rss): skip the build")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = [run_size(int(k), args) for k in args.keys.split(",")]
    print(f"\n{'keys':>11} {'scenario':<16} {'restore_s':>9} {'to_steady_s':>11} {'gap_s':>6} {'rows restored':>13}")
    for r in results:
        for name in ("restart_local", "restart_rebuild", "handover"):
            s = r[name]
            print(f"{r['keys']:>11,} {name:<16} {s['restore_s']:>9} {s['to_steady_s']:>11} {s.get('gap_s', '')!s:>6} "
                  f"{s['restored_rows']:>13,}")
    with open(RESULTS / f"recovery-{time.strftime('%Y%m%d-%H%M%S')}.json", "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    for r in results:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
