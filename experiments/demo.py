"""`make demo`: the main job end to end on the embedded ClickHouse, ending with verify's verdict.

generator -> Kafka -> processor -> Postgres ledger -> sink -> ClickHouse (chDB) -> verify.
It runs in its own scope (pipeline `demo`, topics `demo.events` / `demo.dlq`, ClickHouse
at .data/demo-clickhouse) and resets that scope first, so it never touches other data.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from confluent_kafka.admin import AdminClient

REPO = Path(__file__).resolve().parents[1]

from app.core.config import env, psycopg_conninfo
from app.ledger.scope import forget_pipeline


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="events to generate (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--late-fraction", default="0.02")
    ap.add_argument("--invalid-fraction", default="0.001")
    args = ap.parse_args()

    data = REPO / ".data"
    ch_path = data / "demo-clickhouse"
    scope = {
        "PIPELINE_ID": "demo", "EVENTS_TOPIC": "demo.events", "DLQ_TOPIC": "demo.dlq",
        "CLICKHOUSE_URL": f"chdb://{ch_path}",
        "KAFKA_BOOTSTRAP_SERVERS": env("KAFKA_BOOTSTRAP_SERVERS"), "DATABASE_URL": env("DATABASE_URL"),
    }
    run_env = {**os.environ, **scope, "PYTHONPATH": str(REPO)}
    run_env.setdefault("LOG_LEVEL", "warning")

    print(f"demo: resetting scope pipeline=demo topics=demo.events,demo.dlq clickhouse={ch_path}")
    reset(scope, ch_path)

    timings: dict[str, float] = {}

    def step(name: str, argv: list[str]) -> None:
        t0 = time.monotonic()
        print(f"demo: {name}: {' '.join(argv)}", flush=True)
        subprocess.run([sys.executable, "-m", *argv], env=run_env, cwd=REPO, check=True)
        timings[name] = time.monotonic() - t0

    step("generate", ["app.gen", "--events", str(args.events), "--seed", str(args.seed),
                      "--partitions", str(args.partitions), "--late-fraction", args.late_fraction,
                      "--invalid-fraction", args.invalid_fraction])
    t0 = time.monotonic()
    print("demo: processor + sink (concurrently) until the whole topic is in ClickHouse", flush=True)
    sink = subprocess.Popen([sys.executable, "-m", "app.sink", "--until-idle", "--metrics-port", "0"],
                            env=run_env, cwd=REPO)
    proc = subprocess.run([sys.executable, "-m", "app.processor", "--until-end", "--metrics-port", "0"],
                          env=run_env, cwd=REPO)
    if proc.returncode != 0:
        sink.terminate()
        print(f"demo: processor failed with exit code {proc.returncode}", file=sys.stderr)
        return proc.returncode
    if sink.wait() != 0:
        print(f"demo: sink failed with exit code {sink.returncode}", file=sys.stderr)
        return sink.returncode
    timings["process+sink"] = time.monotonic() - t0
    t0 = time.monotonic()
    print("demo: verify (ground truth recomputed from the input log, diffed per key)", flush=True)
    verdict = subprocess.run([sys.executable, "-m", "app.verify"], env=run_env, cwd=REPO)
    timings["verify"] = time.monotonic() - t0

    print("\ndemo: timings")
    for name, secs in timings.items():
        rate = f"  ({args.events / secs:,.0f} events/s)" if name != "verify" else ""
        print(f"  {name:<14} {secs:7.1f} s{rate}")
    print(f"demo: verify exit code {verdict.returncode} ({'EXACT' if verdict.returncode == 0 else 'NOT exact'})")
    return verdict.returncode


def reset(scope: dict[str, str], ch_path: Path) -> None:
    admin = AdminClient({"bootstrap.servers": scope["KAFKA_BOOTSTRAP_SERVERS"]})
    existing = admin.list_topics(timeout=10).topics
    doomed = [t for t in (scope["EVENTS_TOPIC"], scope["DLQ_TOPIC"]) if t in existing]
    if doomed:
        for f in admin.delete_topics(doomed).values():
            f.result()
        deadline = time.monotonic() + 30
        while any(t in admin.list_topics(timeout=10).topics for t in doomed) and time.monotonic() < deadline:
            time.sleep(0.5)
    with psycopg.connect(psycopg_conninfo(scope["DATABASE_URL"]), autocommit=True) as conn:
        forget_pipeline(conn, scope["PIPELINE_ID"])
    shutil.rmtree(ch_path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
