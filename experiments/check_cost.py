"""What the sink's delivery check costs on one large group (issue 16), next to the insert.

In one process on a fresh embedded ClickHouse: a table that already holds `--history`
earlier emissions of half the group's keys (the windows a live group touches hold older
versions) plus other windows, then ONE group of `--rows` rows cut and sent as the sink
sends it (group order, the default block layout, the recorded settings), then the check
(`ClickHouseWriter.missing_rows`): first with one block of the group lost (steps 1 and 2:
it finds that block), then whole (step 1 answers), and its step 2 (row by row) alone.
Wall and CPU seconds (CPU of this process: chDB runs inside it). The last line of stdout
is one JSON object.

    python -m experiments.check_cost --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from app.clickhouse import presence
from app.clickhouse.client import block_layout_settings
from app.core.config import ArgumentParser, positive_int_arg
from app.core.logging import configure_logging
from app.sink.groups import ROLLUP_COLUMNS, cut_blocks
from app.sink.loop import DEFAULT_INSERT_BLOCK_ROWS
from app.sink.writer import ClickHouseWriter

T0 = 1_764_115_200  # a UTC midnight


def group(rows: int, windows: int, version: int, seed: int) -> pa.Table:
    """`rows` distinct (hour window, account, country) keys over `windows` hours, in group order."""
    rng = np.random.default_rng(seed)
    ws = T0 + rng.integers(0, windows, rows) * 3600
    acc = rng.choice(10_000_000, rows, replace=False).astype(np.uint64)
    country = rng.choice(np.array(["DE", "FR", "US", "GB", "IT"]), rows)
    order = np.lexsort((country, acc, ws))
    n = rows
    table = pa.table({
        "window_start": pa.array(ws[order]).cast(pa.timestamp("s")),
        "account_id": pa.array(acc[order]),
        "country": pa.array(country[order]),
        "event_count": pa.array(np.ones(n, dtype=np.uint64)),
        "sum_amount": pa.array(np.ones(n, dtype=np.int64)),
        "batch_id": pa.array(np.full(n, version, dtype=np.uint64)),
        "version": pa.array(np.full(n, version, dtype=np.uint64)),
    })
    return table.select(list(ROLLUP_COLUMNS))


def say(msg: str) -> None:
    print(f"check_cost: {msg}", file=sys.stderr, flush=True)


def timed(fn: Any) -> tuple[Any, float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.check_cost", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=positive_int_arg, default=1_000_000, help="rows of the group (default 1M)")
    p.add_argument("--windows", type=positive_int_arg, default=24, help="hour windows it spans (default 24)")
    p.add_argument("--history", type=int, default=3, help="earlier emissions of half its keys (default 3)")
    p.add_argument("--repeat", type=positive_int_arg, default=3)
    args = p.parse_args(argv)
    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="check-cost-") as tmp:
        writer = ClickHouseWriter(f"chdb://{Path(tmp) / 'clickhouse'}")
        writer.prepare()
        settings = block_layout_settings()
        table = "rollup_hour"
        g = group(args.rows, args.windows, version=10, seed=1)
        rng = np.random.default_rng(2)
        for v in range(10 - args.history, 10):  # older versions of half the keys, in the same windows
            idx = np.sort(rng.choice(args.rows, args.rows // 2, replace=False))
            older = g.take(pa.array(idx)).set_column(6, "version", pa.array(np.full(idx.size, v, dtype=np.uint64)))
            writer.insert(table, cut_blocks(older, DEFAULT_INSERT_BLOCK_ROWS, "utc_day"), f"old{v}", settings)
        other = group(args.rows, args.windows, version=3, seed=3)  # other windows: a day later
        other = other.set_column(0, "window_start", pa.array(
            other.column("window_start").cast(pa.int64()).to_numpy() + 86_400 * 2).cast(pa.timestamp("s")))
        writer.insert(table, cut_blocks(other, DEFAULT_INSERT_BLOCK_ROWS, "utc_day"), "other", settings)

        data = cut_blocks(g, DEFAULT_INSERT_BLOCK_ROWS, "utc_day")
        blocks = [len(c) for c in data.column(0).chunks]
        lost = slice(blocks[0], blocks[0] + blocks[1]) if len(blocks) > 1 else slice(0, blocks[0])
        keep = np.ones(data.num_rows, dtype=bool)
        keep[lost] = False
        say(f"table ready; the group of {args.rows:,} rows with one of its {len(blocks)} blocks lost")
        writer.insert(table, data.filter(pa.array(keep)), "group", settings)
        missing, short_wall, short_cpu = timed(lambda: writer.missing_rows(table, data))
        say("the lost block arrives; checking the whole group")
        writer.insert(table, data.filter(pa.array(~keep)), "rest", settings)
        checks = [timed(lambda: writer.missing_rows(table, data)) for _ in range(args.repeat)]
        assert all(m.size == 0 for m, _, _ in checks), "a whole group is missing rows"
        windows = pc.unique(data.column("window_start").cast(pa.int64())).to_numpy().astype(np.uint32).tolist()
        by_key = [timed(lambda: presence.missing_by_key(writer.client(), table, data, windows))
                  for _ in range(args.repeat)]  # step 2 alone: what a check costs once step 1 is short
        assert all(m.size == 0 for m, _, _ in by_key)
        say("the insert itself, for comparison (the same group into the empty minute table)")
        _, insert_wall, insert_cpu = timed(lambda: writer.insert("rollup_minute", data, "group", settings))
        stored = writer.client().query(f"SELECT count() FROM {table}").result_rows[0][0]
        writer.close()
    out = {
        "rows": args.rows, "windows": args.windows, "history": args.history, "table_rows": int(stored),
        "rows_in_the_groups_windows": int(args.rows * (1 + args.history / 2)),
        "insert_wall_s": round(insert_wall, 3), "insert_cpu_s": round(insert_cpu, 3),
        "check_wall_s": round(statistics.median(w for _, w, _ in checks), 3),
        "check_cpu_s": round(statistics.median(c for _, _, c in checks), 3),
        "checks_cpu_s": [round(c, 3) for _, _, c in checks],
        "by_key_wall_s": round(statistics.median(w for _, w, _ in by_key), 3),
        "by_key_cpu_s": round(statistics.median(c for _, _, c in by_key), 3),
        "lost_block_rows": int((~keep).sum()), "found_missing": int(missing.size),
        "check_with_loss_wall_s": round(short_wall, 3), "check_with_loss_cpu_s": round(short_cpu, 3),
    }
    print(json.dumps(out))
    return 0 if out["found_missing"] == out["lost_block_rows"] else 1


if __name__ == "__main__":
    sys.exit(main())
