"""Summarise a py-spy profile of the processor or the sink by pipeline stage.

Input: py-spy's raw (collapsed) output, e.g. from `make bench ARGS=--profile` or by hand:

    py-spy record --format raw -r 100 -o processor.txt --pid <processor pid>
    python experiments/profile_processor.py processor.txt --kind processor

Each sample (the main Python thread on CPU) is charged to one stage by walking its stack
from the leaf up to the first frame that names a stage: our modules by file and function,
a few libraries by package. Time inside C extensions (librdkafka, msgspec, psycopg, chDB)
is charged to the Python line that called it: `consume(` in the processor's run loop is
the Kafka fetch. Prints a table (and --json a JSON object) of stage -> share of samples.
"""

from __future__ import annotations

import argparse
import json
import linecache
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IDLE = "idle (sleep; left out of the shares)"
# helpers that run a caller's work: charge what they do to the caller further up
TRANSPARENT = {"_run": ("app/ledger/ledger.py",), "retry_call": ("app/core/retry.py",)}
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")

# (file suffix, function or None = any) -> stage; first match from the leaf up wins.
PROCESSOR_RULES: list[tuple[str, str | None, str]] = [
    ("prometheus_client/", None, "metrics"),
    ("structlog/", None, "logging"),
    ("app/processor/decode.py", None, "decode (msgspec + range checks)"),
    ("app/processor/dlq.py", None, "DLQ produce"),
    ("app/processor/engine.py", "_dead_letter", "DLQ produce"),
    ("app/ledger/rows.py", None, "emit: window rows -> Arrow (+ IPC encode)"),
    ("app/processor/engine.py", "_tables_by_kind", "emit: window rows -> Arrow (+ IPC encode)"),
    ("app/processor/", "take_dirty", "emit: take_dirty (WindowRow objects)"),
    ("app/processor/", "fold", "state: fold deltas into the store"),
    ("app/processor/", "drop_final", "state: drop final windows"),
    ("app/processor/", "snapshot", "state: snapshot"),
    ("app/processor/", "load", "restore (start-up)"),
    ("app/ledger/ledger.py", "commit", "ledger commit (Postgres)"),
    ("app/ledger/ledger.py", "pending_rows", "backpressure check (Postgres)"),
    ("app/ledger/ledger.py", "restore_windows", "restore (start-up)"),
    ("app/ledger/ledger.py", "claim_partition", "restore (start-up)"),
    ("app/ledger/ledger.py", None, "ledger: other"),
    ("app/processor/engine.py", "_process", "classify + fold loop (Python per record)"),
    ("app/processor/engine.py", "checkpoint", "checkpoint bookkeeping"),
    ("app/processor/engine.py", "_backpressure", "backpressure check (Postgres)"),
    ("app/processor/engine.py", "_on_assign", "restore (start-up)"),
    ("app/processor/engine.py", "_restore", "restore (start-up)"),
    ("app/processor/", "close", "shut-down (clear state)"),
    ("app/processor/", None, "state: other"),
]

SINK_RULES: list[tuple[str, str | None, str]] = [
    ("prometheus_client/", None, "metrics"),
    ("structlog/", None, "logging"),
    ("app/ledger/ledger.py", "load_payload", "load payload (Postgres + Arrow IPC decode)"),
    ("app/ledger/rows.py", None, "load payload (Postgres + Arrow IPC decode)"),
    ("app/ledger/ledger.py", "record_attempt", "ledger writes (attempt + acknowledge)"),
    ("app/ledger/ledger.py", "acknowledge", "ledger writes (attempt + acknowledge)"),
    ("app/ledger/ledger.py", "pending_batches", "poll pending batches + run state (Postgres)"),
    ("app/ledger/ledger.py", "sink_run_state", "poll pending batches + run state (Postgres)"),
    ("app/ledger/ledger.py", None, "ledger: other"),
    ("app/sink/writer.py", "insert_table", "build insert columns (Arrow)"),
    ("app/sink/writer.py", "client", "start-up (connect + migrate)"),
    ("app/sink/writer.py", "insert", "ClickHouse insert (clickhouse-connect + chDB)"),
    ("app/clickhouse/", None, "start-up (connect + migrate)"),
    ("app/sink/", None, "sink loop: other"),
]


def function_name(qualified: str) -> str:
    """py-spy names frames by qualified name: 'Store.take_dirty.<locals>.<listcomp>' is
    charged to 'take_dirty'."""
    return qualified.split(".<locals>.", 1)[0].rsplit(".", 1)[-1]


def classify(frames: list[str], rules: list[tuple[str, str | None, str]], kind: str) -> str:
    for frame in reversed(frames):
        m = FRAME.match(frame)
        if m is None:
            continue
        func, file, line = function_name(m["func"]), m["file"], int(m["line"])
        if file.startswith("app/") or "/app/" in file:
            path = REPO / file[file.index("app/") :]
            text = linecache.getline(str(path), line)
            if "sleep(" in text:
                return IDLE
            if kind == "processor" and func == "run" and "consume(" in text:
                return "consume (librdkafka fetch, Message objects)"
        if func in TRANSPARENT and any(file.endswith(t) for t in TRANSPARENT[func]):
            continue
        for suffix, fn, stage in rules:
            if suffix in file and (fn is None or func == fn):
                return stage
    return "other (start-up, imports, loop glue)"


def summarise(path: Path, kind: str) -> dict[str, float]:
    rules = PROCESSOR_RULES if kind == "processor" else SINK_RULES
    counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rstrip().rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = [f for f in stack.split(";") if f]
        # py-spy prefixes thread names ("process 123:..." / "thread (0x..)"); skip those
        stage = classify(frames, rules, kind)
        if stage == IDLE:
            continue
        counts[stage] += int(n)
        total += int(n)
    return {stage: round(c / total, 4) for stage, c in counts.most_common()} if total else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", type=Path, help="py-spy raw (collapsed) output")
    ap.add_argument("--kind", choices=["processor", "sink"], default="processor")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    shares = summarise(args.profile, args.kind)
    if args.json:
        print(json.dumps(shares))
    else:
        for stage, share in shares.items():
            print(f"  {share:6.1%}  {stage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
