"""Peak RSS of the processor while its open windows hold state for N distinct accounts.

Produces N events, one per account (account_id = 0..N-1, each with its own home country),
all inside one hour of event time, so that at the end of the run the hour windows alone
hold N keys (the minute windows close behind the watermark and are dropped as they go).
Then runs the real processor (`python -m app.processor --until-end`) on that topic,
samples its RSS from /proc every 0.2 s, and finally counts the keys in the LevelDB state
it left. Prints the peak RSS and the key count, and writes a JSON line (and the RSS
series) under experiments/results/.

    python -m experiments.state_rss --keys 10000000            # the issue-3 acceptance run
    python -m experiments.state_rss --keys 1000000 --state-store memory   # for comparison

It runs in its own scope (pipeline `state-rss`, topics `state-rss.events`/`.dlq`), which
it resets first. No sink runs: the processor's backpressure bound is lifted for the run.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from app.core.config import env, psycopg_conninfo
from app.core.kafka import ensure_topic, producer_config
from app.ledger.scope import forget_pipeline
from experiments.benchkit.footprint import dir_bytes

COUNTRIES = ("US", "DE", "GB", "FR", "JP", "IN", "BR", "CA", "AU", "IT", "ES", "MX", "KR", "NL", "SE", "CH")
HOUR_START_MS = 1_763_596_800_000  # 2025-11-20T00:00:00Z
RESULTS = REPO / "experiments" / "results"


def scope_env(pipeline_id: str) -> dict[str, str]:
    return {"PIPELINE_ID": pipeline_id, "EVENTS_TOPIC": f"{pipeline_id}.events", "DLQ_TOPIC": f"{pipeline_id}.dlq",
            "KAFKA_BOOTSTRAP_SERVERS": env("KAFKA_BOOTSTRAP_SERVERS"), "DATABASE_URL": env("DATABASE_URL"),
            "CLICKHOUSE_URL": f"chdb://{REPO / '.data' / (pipeline_id + '-clickhouse')}"}


def reset_scope(scope: dict[str, str], state_dir: Path) -> None:
    with psycopg.connect(psycopg_conninfo(scope["DATABASE_URL"]), autocommit=True) as conn:
        forget_pipeline(conn, scope["PIPELINE_ID"])
    admin = AdminClient({"bootstrap.servers": scope["KAFKA_BOOTSTRAP_SERVERS"]})
    topics = [scope["EVENTS_TOPIC"], scope["DLQ_TOPIC"]]
    existing = admin.list_topics(timeout=10).topics
    doomed = [t for t in topics if t in existing]
    if doomed:
        for f in admin.delete_topics(doomed).values():
            f.result(timeout=30)
        while any(t in admin.list_topics(timeout=10).topics for t in doomed):
            time.sleep(0.5)
    shutil.rmtree(state_dir, ignore_errors=True)


def produce_distinct(scope: dict[str, str], keys: int, partitions: int, *, first_account: int = 0,
                     span_ms: int = 3_000_000, start_ms: int = HOUR_START_MS) -> float:
    """`keys` events, account first_account+i each, event times spread over span_ms from
    start_ms. Returns the seconds it took."""
    topic = scope["EVENTS_TOPIC"]
    ensure_topic(scope["KAFKA_BOOTSTRAP_SERVERS"], topic, partitions)
    p = Producer(producer_config(scope["KAFKA_BOOTSTRAP_SERVERS"]))
    started = time.monotonic()
    n_countries = len(COUNTRIES)
    for i in range(keys):
        account = first_account + i
        t = start_ms + i * span_ms // keys
        value = (f'{{"event_id":{account},"account_id":{account},"country":"{COUNTRIES[account % n_countries]}",'
                 f'"event_time":{t},"amount":{account % 9973 + 1},"kind":"purchase"}}').encode()
        while True:
            try:
                p.produce(topic, value, str(account).encode())
                break
            except BufferError:
                p.poll(0.05)
        if i % 50_000 == 0:
            p.poll(0)
    assert p.flush(120) == 0, "producer could not deliver everything"
    return time.monotonic() - started


class RssSampler:
    """Samples VmRSS / VmHWM of one pid every `interval_s` until it exits."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.series: list[tuple[float, int]] = []
        self.peak_kb = 0
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        path = Path(f"/proc/{self.pid}/status")
        while True:
            try:
                fields = dict(line.split(":", 1) for line in path.read_text().splitlines() if ":" in line)
            except (FileNotFoundError, ProcessLookupError):
                return
            rss = int(fields.get("VmRSS", "0 kB").split()[0])
            hwm = int(fields.get("VmHWM", "0 kB").split()[0])
            if rss == 0:  # a zombie awaiting reaping
                return
            self.peak_kb = max(self.peak_kb, hwm, rss)
            self.series.append((round(time.monotonic() - self._t0, 2), rss))
            time.sleep(self.interval_s)

    def join(self) -> None:
        self._thread.join(timeout=5)


def count_state(state_dir: Path) -> dict[str, int]:
    """Keys of the LevelDB state the processor left (every slot, every partition)."""
    import plyvel

    counts = {"minute": 0, "hour": 0, "partitions": 0}
    for db_dir in sorted(state_dir.glob("slot-*/*")):
        if not db_dir.is_dir():
            continue
        db = plyvel.DB(str(db_dir))
        try:
            counts["partitions"] += 1
            for key in db.iterator(stop=b"\xff", include_value=False):
                counts["minute" if key[0] == 0 else "hour"] += 1
        finally:
            db.close()
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=10_000_000, help="distinct accounts (default 10,000,000)")
    ap.add_argument("--partitions", type=int, default=4, help="partitions of the events topic (default 4)")
    ap.add_argument("--state-store", choices=["leveldb", "memory"], default="leveldb")
    ap.add_argument("--pipeline-id", default="state-rss", help="scope of the run (reset first)")
    ap.add_argument("--skip-produce", action="store_true",
                    help="reuse the topic of an earlier run (only the ledger and the state are reset)")
    ap.add_argument("--processor-arg", action="append", default=[],
                    help="extra flag for the processor, e.g. --processor-arg=--state-cache-mb=64")
    args = ap.parse_args()

    scope = scope_env(args.pipeline_id)
    state_dir = REPO / ".data" / "state" / args.pipeline_id
    run_env = {**os.environ, **scope, "PYTHONPATH": str(REPO)}
    if args.skip_produce:
        with psycopg.connect(psycopg_conninfo(scope["DATABASE_URL"]), autocommit=True) as conn:
            forget_pipeline(conn, scope["PIPELINE_ID"])
        shutil.rmtree(state_dir, ignore_errors=True)
        produce_s = 0.0
    else:
        reset_scope(scope, state_dir)
        print(f"state_rss: producing {args.keys:,} events, one per account, into {scope['EVENTS_TOPIC']}",
              flush=True)
        produce_s = produce_distinct(scope, args.keys, args.partitions)
        print(f"state_rss: produced in {produce_s:.1f} s", flush=True)

    argv = [sys.executable, "-m", "app.processor", "--until-end", "--metrics-port", "0",
            "--state-store", args.state_store, "--state-dir", str(state_dir),
            "--max-pending-rows", str(10**12), "--max-pending-bytes", "0", "--log-level", "warning",
            *args.processor_arg]
    print(f"state_rss: {' '.join(argv[1:])}", flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=run_env, cwd=REPO)
    sampler = RssSampler(proc.pid)
    rc = proc.wait()
    elapsed = time.monotonic() - started
    sampler.join()
    if rc != 0:
        print(f"state_rss: processor exited {rc}", file=sys.stderr)
        return rc
    counts = count_state(state_dir) if args.state_store == "leveldb" else {}
    with psycopg.connect(psycopg_conninfo(scope["DATABASE_URL"])) as conn:
        (records,) = conn.execute("SELECT coalesce(sum(next_offset), 0) FROM partition_state WHERE pipeline_id = %s",
                                  (scope["PIPELINE_ID"],)).fetchone()  # type: ignore[misc]
    du = dir_bytes(state_dir)
    result = {
        "experiment": "state_rss", "keys": args.keys, "state_store": args.state_store,
        "partitions": args.partitions, "records_processed": int(records),
        "open_hour_windows": counts.get("hour"), "open_minute_windows": counts.get("minute"),
        "peak_rss_mb": round(sampler.peak_kb / 1024, 1), "under_2_gib": sampler.peak_kb < 2 * 1024 * 1024,
        "processor_seconds": round(elapsed, 1), "events_per_s": round(int(records) / elapsed),
        "produce_seconds": round(produce_s, 1), "state_disk_mb": round(du / 2**20, 1),
        "processor_argv": argv[3:],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"state_rss-{args.state_store}-{args.keys}-{stamp}.series.json").write_text(
        json.dumps(sampler.series))
    print(f"state_rss: peak RSS {result['peak_rss_mb']} MiB with {counts.get('hour', 'n/a')} open hour windows "
          f"(distinct accounts) + {counts.get('minute', 'n/a')} minute windows in state; "
          f"{result['events_per_s']:,} events/s")
    line = json.dumps(result)
    (RESULTS / f"state_rss-{args.state_store}-{args.keys}-{stamp}.json").write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
