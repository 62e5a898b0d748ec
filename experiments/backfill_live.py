"""Backfill while live (brief §10.6, issue 11 item 4).

Question: while live processing runs, does recomputing a historical hour converge to the
truth with newer versions (no parallel duplicates), and leave every window outside it
byte-identical?

The generator sends --rate events/s with event time running fast (--event-time-rate, so
hours of event time pass in minutes); processor and sink run live. Once the hour
[--hour-offset, +1 h) after the first event is settled (final in every partition),
the sink is stopped for a moment to snapshot ClickHouse FINAL (every settled window, with
its version and batch id), restarted, and `python -m app.backfill --from-time --to-time`
recomputes the hour while gen, processor and sink keep going. After the drain:
  * outside the hour: every window of the snapshot has the same (event_count, sum_amount,
    batch_id, version) as before: byte-identical, untouched;
  * inside the hour: every window is at a version newer than any it had before, with
    the same values (the hour converged; a settled window cannot change), and one row per
    window under FINAL;
  * verify EXACT (the whole table against the truth recomputed from the log).

    python -m experiments.backfill_live                     # ~4 min
    python -m experiments.backfill_live --rate 10000 --duration 5m
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from app.core.config import duration_arg
from experiments.findings_out import label_figure, out_dir, pyplot, write_json
from experiments.livekit import REPO, LiveRun, say

NAME = "backfill_live"
RUNS = REPO / ".data" / "findings" / NAME
START_MS = 1_767_571_200_000  # 2026-01-05T00:00:00Z, the generator's --start-time here
LATENESS_MS = 60_000          # the processor's default allowed lateness
SNAPSHOT_SQL = ("SELECT '{t}', toUnixTimestamp(window_start) * 1000, account_id, country, event_count, "
                "toString(sum_amount), batch_id, version FROM {t} FINAL WHERE toUnixTimestamp(window_start) * 1000 "
                "<= {upto}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.backfill_live", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=3000.0, help="events/s (default 3000)")
    ap.add_argument("--duration", type=duration_arg, default=150.0, help="how long the generator sends (default 150s)")
    ap.add_argument("--event-time-rate", type=float, default=30.0,
                    help="events per second of event time (default 30: at 3000/s, 100 s of event time per second)")
    ap.add_argument("--hour-offset", type=int, default=1, help="which hour after the start to backfill (default 1)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--accounts", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--out", type=Path, default=None, help="output directory (default docs/findings/backfill_live)")
    return ap


def wait_until_held(path: Path, timeout_s: float) -> None:
    """Until the restarted sink holds the embedded path. A backfill started while the sink
    is still opening it can race it to the engine's lock and fail with a generic chDB
    error instead of landing without reading ClickHouse, as it does once the sink holds it."""
    from app.clickhouse.client import _raise_if_locked
    from app.core.errors import ServiceLocked
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _raise_if_locked(path)
        except ServiceLocked:
            return
        time.sleep(0.2)
    raise TimeoutError(f"the restarted sink did not take {path} within {timeout_s:.0f} s")


def wait_acked_through(live: LiveRun, timeout_s: float) -> None:
    """Until no batch of a checkpoint at or below the partitions' latest is pending."""
    (upto,) = live.scope._query("SELECT max(last_checkpoint_id) FROM partition_state WHERE pipeline_id = %s",
                                (live.scope.pipeline_id,))[0]
    deadline = time.monotonic() + timeout_s
    while live.scope._query("SELECT count(*) FROM sink_batch WHERE pipeline_id = %s AND status = 'pending' "
                            "AND checkpoint_id <= %s", (live.scope.pipeline_id, upto))[0][0]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the sink did not acknowledge checkpoint {upto} within {timeout_s:.0f} s")
        time.sleep(0.2)


def min_watermark(live: LiveRun) -> int | None:
    rows = live.scope._query("SELECT min(watermark_ms), count(watermark_ms) FROM partition_state WHERE pipeline_id = %s",
                             (live.scope.pipeline_id,))
    return int(rows[0][0]) if rows and rows[0][0] is not None else None


def snapshot(live: LiveRun, settled_until_ms: int) -> dict[tuple[str, int, int, str], tuple[int, str, int, int]]:
    """Every window starting at or before `settled_until_ms`, from FINAL, both tables."""
    out = {}
    for table in ("rollup_minute", "rollup_hour"):
        for t, start, a, c, n, s, b, v in live.clickhouse_rows(SNAPSHOT_SQL.format(t=table, upto=settled_until_ms)):
            out[(t, int(start), int(a), str(c))] = (int(n), str(s), int(b), int(v))
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out_dir(NAME, args.out)
    hour_from = START_MS + args.hour_offset * 3_600_000
    hour_to = hour_from + 3_600_000
    live = LiveRun.create(NAME, RUNS, partitions=args.partitions)
    try:
        live.start_sink("--batch-max-wait", "1s")
        live.start_processor()
        live.wait_assigned()
        t0 = time.time()
        live.start_gen("--seed", str(args.seed), "--events", str(int(args.rate * args.duration)), "--rate",
                       str(args.rate), "--event-time-rate", str(args.event_time_rate), "--accounts",
                       str(args.accounts), "--start-time", "2026-01-05T00:00:00Z")
        # settled (final in every partition): window end + lateness <= the smallest committed
        # watermark. Wait until every window starting before the next hour's end is, so the
        # snapshot holds the whole hour and settled windows on both sides of it.
        need = hour_to + 3_600_000 + LATENESS_MS + 60_000
        deadline = time.monotonic() + args.duration * 2
        while (wm := min_watermark(live)) is None or wm < need:
            if time.monotonic() > deadline or live.children["gen"].poll():
                raise RuntimeError(f"the hour never settled before the generator ended (watermark {wm}, need {need}); "
                                   "raise --duration or --event-time-rate")
            time.sleep(0.5)
        # the windows settled by that watermark are final, but their last rows may still be
        # on their way to ClickHouse: wait for the sink to acknowledge every batch up to it
        wait_acked_through(live, 120)
        # a snapshot needs the sink's embedded path: stop it (clean), read, start it again
        live.children["sink"].terminate()
        live.wait_exit("sink", 120)
        settled = wm - LATENESS_MS - 3_600_000  # windows starting here or before are final (both kinds)
        before = snapshot(live, settled)
        say(NAME, f"snapshot at t={time.time() - t0:.0f} s: {len(before):,} settled windows")
        live.start_sink("--batch-max-wait", "1s", role="sink-2")
        wait_until_held(live.scope.data_dir / "clickhouse", 120)
        t_bf = time.time()
        bf = live.start_module("backfill", "app.backfill", "--from-time", str(hour_from), "--to-time", str(hour_to),
                               "--json", "--metrics-port", "0")
        if bf.wait(900) != 0:
            raise RuntimeError(f"backfill exited {bf.returncode}: see {bf.log_path}")
        bf_s = time.time() - t_bf
        summary = next((json.loads(ln) for ln in reversed(bf.log_path.read_text().splitlines())
                        if ln.startswith("{") and '"event"' not in ln), None)
        say(NAME, f"backfill done in {bf_s:.1f} s while live")
        live.wait_exit("gen", args.duration * 3 + 120)
        live.wait_drained(max(180.0, args.duration * 2))
        live.stop()
        after = snapshot(live, settled)
        verdict = live.verify().brief()
    finally:
        live.drop()

    def in_hour(k: tuple[str, int, int, str]) -> bool:
        return hour_from <= k[1] < hour_to
    outside = [k for k in before if not in_hour(k)]
    inside = [k for k in before if in_hour(k)]
    changed_outside = [k for k in outside if after.get(k) != before[k]]
    max_live_version = max((before[k][3] for k in inside), default=0)
    newer = [k for k in inside if k in after and after[k][3] > max_live_version]
    same_values = [k for k in inside if k in after and after[k][:2] == before[k][:2]]
    new_keys_in_hour = [k for k in after if in_hour(k) and k not in before]
    doc = {"experiment": NAME, "command": "python -m experiments.backfill_live " + " ".join(argv or sys.argv[1:]),
           "rate": args.rate, "duration_s": args.duration, "event_time_rate": args.event_time_rate,
           "hour": [hour_from, hour_to], "pipeline_id": live.scope.pipeline_id,
           "backfill_seconds_while_live": round(bf_s, 1), "backfill_summary": summary,
           "outside_hour": {"windows": len(outside), "byte_identical": len(outside) - len(changed_outside),
                            "changed": len(changed_outside), "examples_changed": [list(k) for k in changed_outside[:5]]},
           "inside_hour": {"windows": len(inside), "at_newer_version": len(newer), "same_values": len(same_values),
                           "max_live_version_before": max_live_version, "new_windows": len(new_keys_in_hour),
                           "missing_after": len([k for k in inside if k not in after])},
           "verify": verdict}
    ok = (verdict["exact"] and not changed_outside and len(newer) == len(inside) == len(same_values)
          and not new_keys_in_hour)
    doc["passed"] = ok
    write_json(out / "result.json", doc)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    bars = [("outside: byte-identical", len(outside) - len(changed_outside), "tab:blue"),
            ("outside: changed", len(changed_outside), "tab:red"),
            ("hour: newer version, same value", len(set(newer) & set(same_values)), "tab:green"),
            ("hour: not replaced", len(inside) - len(newer), "tab:red")]
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
    for i, b in enumerate(bars):
        ax.text(i, b[1], f"{b[1]:,}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("settled windows (minute + hour tables)"); ax.grid(alpha=0.3, axis="y")
    ax.tick_params(axis="x", labelsize=8)
    label_figure(fig, f"Backfill of one hour while live ({args.rate:,.0f} events/s): verify {verdict['verdict']}")
    fig.tight_layout(rect=(0, 0.03, 1, 0.93))
    fig.savefig(out / "backfill_live.png", dpi=90)
    plt.close(fig)
    say(NAME, f"outside {len(outside):,} windows, changed {len(changed_outside)}; hour {len(inside):,} windows, "
              f"newer {len(newer):,}, same values {len(same_values):,}; verify {verdict['verdict']}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
