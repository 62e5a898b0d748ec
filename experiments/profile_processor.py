"""Summarise a py-spy profile of the processor or the sink by pipeline stage.

Input: py-spy's raw (collapsed) output, e.g. from `make bench BENCH_ARGS=--profile` or by hand:

    py-spy record --format raw -r 100 -o processor.txt --pid <processor pid>
    python -m experiments.profile_processor processor.txt --kind processor

Each sample (the main Python thread on CPU) is charged to one stage by walking its stack
from the leaf up to the first frame that names a stage: our modules by file and function,
a few libraries by package. Time inside C extensions (librdkafka, msgspec, psycopg, chDB)
is charged to the Python line that called it: `consume(` in the processor's run loop is
the Kafka fetch. Prints a table (and --json a JSON object) of stage -> share of samples.
"""

from __future__ import annotations

import argparse
import ast
import json
import linecache
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IDLE = "idle (sleep; left out of the shares)"
# helpers that run a caller's work: charge what they do to the caller further up
TRANSPARENT = {"transaction": ("app/ledger/ledger.py",), "retry_call": ("app/core/retry.py",),
               "_call": ("app/sink/loop.py",), "attempt": ("app/sink/loop.py",),
               # the columnar state's helpers: charged to the checkpoint step that calls them
               "pack_columns": ("app/processor/leveldb_layout.py",), "put_order": ("app/processor/leveldb_layout.py",),
               "_take": ("app/processor/state.py", "app/processor/leveldb_store.py"),
               "_missing": ("app/processor/leveldb_store.py",), "_settle": ("app/processor/leveldb_store.py",)}
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")

# (file suffix, function or None = any) -> stage; first match from the leaf up wins.
# Every app/ file and function named here must exist (check_rules): a renamed function
# would otherwise silently move its samples to "other".
PROCESSOR_RULES: list[tuple[str, str | None, str]] = [
    ("prometheus_client/", None, "metrics"),
    ("structlog/", None, "logging"),
    ("app/processor/decode.py", None, "decode (msgspec + range checks)"),
    ("app/processor/dlq.py", None, "DLQ produce"),
    ("app/processor/windows.py", "fold_run", "classify + fold loop (Python per record)"),
    ("app/processor/windows.py", "_reject", "DLQ produce"),
    ("app/processor/windows.py", "fold_columns", "classify + fold (vectorised per run)"),
    ("app/processor/windows.py", "_fold", "classify + fold (vectorised per run)"),
    ("app/processor/deltas.py", "add_events", "classify + fold (vectorised per run)"),
    ("app/processor/deltas.py", None, "checkpoint: group deltas (numpy)"),
    ("app/processor/open_windows.py", None, "checkpoint: look up / update open windows (numpy)"),
    ("app/processor/rebuild.py", None, "restore (start-up)"),
    ("app/processor/engine.py", "_process", "per-run glue (records -> columns)"),
    ("app/ledger/rows.py", None, "emit: window rows -> Arrow (+ IPC encode)"),
    ("app/processor/batch.py", None, "emit: window rows -> Arrow (+ IPC encode)"),
    ("app/processor/", "take_dirty_table", "emit: take the dirty windows"),
    ("app/processor/", "fold", "state: fold deltas into the store"),
    ("app/processor/", "prepare", "state: write the checkpoint locally"),
    ("app/processor/", "drop_final", "state: drop final windows"),
    ("app/processor/", "snapshot_chunks", "state: snapshot"),
    ("app/processor/snapshots.py", None, "state: snapshot"),
    ("app/processor/", "load_table", "restore (start-up)"),
    ("app/ledger/ledger.py", "commit", "ledger commit (Postgres)"),
    ("app/ledger/backlog.py", None, "backpressure check (Postgres)"),
    ("app/ledger/restore.py", None, "restore (start-up)"),
    ("app/ledger/ledger.py", "claim_partition", "restore (start-up)"),
    ("app/ledger/", None, "ledger: other"),
    ("app/processor/checkpoint.py", None, "checkpoint bookkeeping"),
    ("app/processor/backpressure.py", None, "backpressure check (Postgres)"),
    ("app/processor/ownership.py", None, "restore (start-up)"),
    ("app/processor/", "close", "shut-down (clear state)"),
    ("app/processor/", None, "state: other"),
]

SINK_RULES: list[tuple[str, str | None, str]] = [
    ("prometheus_client/", None, "metrics"),
    ("structlog/", None, "logging"),
    ("app/ledger/sink_groups.py", "load_members", "load payload (Postgres + Arrow IPC decode)"),
    ("app/ledger/rows.py", None, "load payload (Postgres + Arrow IPC decode)"),
    ("app/ledger/sink_groups.py", "record_group", "ledger writes (record group, attempt, acknowledge)"),
    ("app/ledger/sink_groups.py", "record_group_attempt", "ledger writes (record group, attempt, acknowledge)"),
    ("app/ledger/sink_groups.py", "acknowledge_group", "ledger writes (record group, attempt, acknowledge)"),
    ("app/ledger/sink_groups.py", "open_groups", "poll pending work + run state (Postgres)"),
    ("app/ledger/sink_groups.py", "ungrouped_batches", "poll pending work + run state (Postgres)"),
    ("app/ledger/until_end.py", "sink_run_state", "poll pending work + run state (Postgres)"),
    ("app/ledger/backlog.py", None, "poll pending work + run state (Postgres)"),
    ("app/ledger/retention.py", None, "prune payloads (Postgres)"),
    ("app/ledger/", None, "ledger: other"),
    ("app/sink/groups.py", None, "build insert blocks (Arrow)"),
    ("app/sink/writer.py", "client", "start-up (connect + migrate)"),
    ("app/sink/writer.py", "insert", "ClickHouse insert (clickhouse-connect + chDB)"),
    ("app/clickhouse/", None, "start-up (connect + migrate)"),
    ("app/sink/", None, "sink loop: other"),
]


def _defined_functions(path: Path) -> set[str]:
    return {n.name for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def stale_rules() -> list[str]:
    """Every app/ file, and function in it, that a rule or TRANSPARENT names but the code no
    longer has."""
    named = [(suffix, fn) for rules in (PROCESSOR_RULES, SINK_RULES) for suffix, fn, _ in rules]
    named += [(f, fn) for fn, files in TRANSPARENT.items() for f in files]
    out = []
    for suffix, fn in named:
        if not suffix.startswith("app/"):
            continue  # a library: not ours to check
        target = REPO / suffix
        files = sorted(target.rglob("*.py")) if suffix.endswith("/") else [target]
        if not all(f.is_file() for f in files) or not files:
            out.append(f"{suffix} (no such file)")
        elif fn is not None and not any(fn in _defined_functions(f) for f in files):
            out.append(f"{suffix} {fn}() (no such function)")
    return out


def check_rules() -> None:
    stale = stale_rules()
    if stale:
        raise SystemExit("profile_processor: its stage rules name code that no longer exists, so their "
                         "samples would land in 'other': " + "; ".join(stale) + " (update PROCESSOR_RULES / "
                         "SINK_RULES / TRANSPARENT in experiments/profile_processor.py)")


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
    check_rules()
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
