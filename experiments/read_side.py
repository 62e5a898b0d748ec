"""Read-side query times on >= 10M rows of rollup_minute in embedded ClickHouse (chDB):
`FINAL` (default, forced across partitions, per partition) vs the argMax-by-version view
vs a plain read, before any merge (many parts, several versions per window) and after
`OPTIMIZE ... FINAL`. Every exact reader must return the same answer; the script checks.

Rows are written the way the sink writes them (sorted groups, fixed blocks, a token per
insert, `app.sink.writer.ClickHouseWriter`), with versions rising insert after insert
like a live pipeline's checkpoints. Results: JSON under experiments/results/.

    python -m experiments.read_side                     # 10M rows, ~3-5 minutes
    python -m experiments.read_side --rows 1000000      # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]

from app.sink.groups import split_blocks
from app.sink.writer import ClickHouseWriter

T0 = 1_763_596_800  # 2025-11-20T00:00:00Z
COUNTRIES = np.array(["DE", "FR", "US", "GB", "NL", "ES", "IT", "PL"])

SOURCES = {
    "final": ("rollup_minute FINAL", ""),
    "final_across_partitions": ("rollup_minute FINAL",
                                (" SETTINGS enable_automatic_decision_for_merging_across_partitions_for_final = 0,"
                                 " do_not_merge_across_partitions_select_final = 0")),
    "final_per_partition": ("rollup_minute FINAL", " SETTINGS do_not_merge_across_partitions_select_final = 1"),
    "latest_view": ("rollup_minute_latest", ""),
    "plain_no_final": ("rollup_minute", ""),   # reference only: over-counts before merges
}
EXACT_SOURCES = ("final", "final_across_partitions", "final_per_partition", "latest_view")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000, help="rows to insert (default %(default)s)")
    p.add_argument("--windows", type=int, default=4_000_000,
                   help="distinct (window, account, country) keys the rows are versions of (default %(default)s)")
    p.add_argument("--inserts", type=int, default=100, help="inserts (= versions, = parts per day) (default %(default)s)")
    p.add_argument("--days", type=int, default=7, help="day partitions the windows span (default %(default)s)")
    p.add_argument("--block-rows", type=int, default=200_000, help="rows per insert block (default %(default)s)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per query, median reported (default %(default)s)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--path", type=Path, default=None, help="chDB data path (default: a temporary directory)")
    p.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "read_side.json",
                   help="results JSON (default %(default)s)")
    return p.parse_args(argv)


def key_columns(keys: np.ndarray, days: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    minutes = days * 1440
    ws = T0 + (keys % minutes) * 60
    account = (keys // minutes).astype(np.uint64)
    country = COUNTRIES[(account % len(COUNTRIES)).astype(np.int64)]
    return ws, account, country


def load(writer: ClickHouseWriter, args: argparse.Namespace) -> dict[str, float]:
    rng = np.random.default_rng(args.seed)
    per_insert = args.rows // args.inserts
    started = time.monotonic()
    for version in range(1, args.inserts + 1):
        keys = np.sort(rng.choice(args.windows, per_insert, replace=False))
        ws, account, country = key_columns(keys, args.days)
        table = pa.Table.from_arrays(
            [pa.array(ws).cast(pa.timestamp("s")), pa.array(account), pa.array(country),
             pa.array(rng.integers(1, 50, per_insert).astype(np.uint64)),
             pa.array(rng.integers(-10**6, 10**7, per_insert)),
             pa.array(np.full(per_insert, version, dtype=np.uint64)),
             pa.array(np.full(per_insert, version, dtype=np.uint64))],
            names=["window_start", "account_id", "country", "event_count", "sum_amount", "batch_id", "version"])
        table = table.take(np.lexsort((table.column("account_id").to_numpy(),
                                       table.column("window_start").cast(pa.int64()).to_numpy())))
        writer.insert("rollup_minute", split_blocks(table, args.block_rows), f"read-side:{version}")
    seconds = time.monotonic() - started
    return {"seconds": round(seconds, 2), "rows_per_s": round(per_insert * args.inserts / seconds)}


def queries(args: argparse.Namespace) -> dict[str, str]:
    day3 = T0 + 3 * 86_400
    hour = day3 + 12 * 3600
    ws, account, country = key_columns(np.array([args.windows // 3]), args.days)
    return {
        "total": "SELECT count(), sum(event_count), sum(sum_amount) FROM {src}",
        "one_day": f"SELECT count(), sum(event_count), sum(sum_amount) FROM {{src}} "
                   f"WHERE window_start >= toDateTime({day3}) AND window_start < toDateTime({day3 + 86_400})",
        "one_hour_by_country": f"SELECT country, count(), sum(event_count) FROM {{src}} "
                               f"WHERE window_start >= toDateTime({hour}) AND window_start < toDateTime({hour + 3600}) "
                               f"GROUP BY country ORDER BY country",
        "point_lookup": f"SELECT event_count, sum_amount, version FROM {{src}} WHERE window_start = "
                        f"toDateTime({int(ws[0])}) AND account_id = {int(account[0])} AND country = '{country[0]}'",
    }


def measure(client, args: argparse.Namespace) -> dict[str, dict[str, dict[str, object]]]:  # type: ignore[no-untyped-def]
    out: dict[str, dict[str, dict[str, object]]] = {}
    for qname, template in queries(args).items():
        out[qname] = {}
        answers = {}
        for sname, (src, settings) in SOURCES.items():
            sql = template.format(src=src) + settings
            answer = client.query(sql).result_rows  # warm-up, and the answer
            runs = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                client.query(sql)
                runs.append((time.perf_counter() - t0) * 1000)
            answers[sname] = [tuple(str(x) for x in r) for r in answer]
            out[qname][sname] = {"median_ms": round(statistics.median(runs), 1), "min_ms": round(min(runs), 1),
                                 "runs": args.repeat}
            print(f"  {qname:<20} {sname:<24} {statistics.median(runs):9.1f} ms", flush=True)
        exact = {answers[s] == answers["final"] for s in EXACT_SOURCES}
        out[qname]["exact_readers_agree"] = {"value": exact == {True}}  # type: ignore[dict-item]
        out[qname]["plain_equals_final"] = {"value": answers["plain_no_final"] == answers["final"]}  # type: ignore[dict-item]
        if exact != {True}:
            raise SystemExit(f"exact readers disagree on {qname}: {answers}")
    return out


def table_shape(client) -> dict[str, int]:  # type: ignore[no-untyped-def]
    rows, parts = client.query("SELECT sum(rows), count() FROM system.parts WHERE database = currentDatabase() "
                               "AND table = 'rollup_minute' AND active").result_rows[0]
    (windows,) = client.query("SELECT count() FROM rollup_minute FINAL").result_rows[0]
    return {"rows": int(rows), "active_parts": int(parts), "windows": int(windows)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = args.path or Path(tempfile.mkdtemp(prefix="read-side-"))
    shutil.rmtree(path, ignore_errors=True)
    url = f"chdb://{path}"
    writer = ClickHouseWriter(url)
    client = writer.client()
    client.command("SYSTEM STOP MERGES rollup_minute")  # "before any merge" stays that way while we read
    print(f"read_side: loading {args.rows:,} rows ({args.windows:,} windows, {args.inserts} inserts, "
          f"{args.days} days) into {url}", flush=True)
    loaded = load(writer, args)
    result: dict[str, object] = {
        "experiment": "read_side",
        "clickhouse_version": client.query("SELECT version()").result_rows[0][0],
        "cpus": os.cpu_count(), "machine": platform.machine(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "max_threads": int(client.query("SELECT getSetting('max_threads')").result_rows[0][0]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "load": loaded, "states": {},
    }
    states: dict[str, object] = {}
    print("state: unmerged", flush=True)
    states["unmerged"] = {"table": table_shape(client), "queries": measure(client, args)}
    t0 = time.monotonic()
    client.command("SYSTEM START MERGES rollup_minute")
    client.command("OPTIMIZE TABLE rollup_minute FINAL")
    optimize_s = time.monotonic() - t0
    print(f"state: merged (OPTIMIZE FINAL took {optimize_s:.1f} s)", flush=True)
    states["merged"] = {"table": table_shape(client), "optimize_final_s": round(optimize_s, 1),
                        "queries": measure(client, args)}
    result["states"] = states
    writer.close()
    if args.path is None:
        shutil.rmtree(path, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"read_side: results in {args.out}")
    print(json.dumps({"experiment": "read_side", "rows": args.rows,
                      "total_ms": {s: {k: v["median_ms"] for k, v in st["queries"]["total"].items()  # type: ignore[index]
                                       if isinstance(v, dict) and "median_ms" in v}
                                   for s, st in states.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
