"""The backfill's report on stdout: a few aligned lines, and optionally one JSON line."""

from __future__ import annotations

import json
from typing import Any

from app.backfill.compare import TableDiff
from app.backfill.outcome import Outcome
from app.backfill.request import iso
from app.processor.windows import KINDS


def summary_lines(o: Outcome) -> list[str]:
    r, p = o.request, o.request.policy
    if o.dry_run:
        head = "backfill DRY RUN: nothing written"
    elif o.run is None:
        head = "backfill: nothing to land (no settled window in the range, nothing to delete)"
    else:
        head = f"backfill LANDED: run {o.run.run_no}{' (resumed)' if o.resumed else ''}, version {o.run.checkpoint_id}"
    lines = [head,
             (f"  request    {r.describe()}; rules max-out-of-orderness {p.max_out_of_orderness_ms}ms, "
              f"allowed lateness minute {p.allowed_lateness_minute_ms}ms / hour {p.allowed_lateness_hour_ms}ms")]
    if o.pending_run is not None:
        lines.append(f"  resume     run {o.pending_run.run_no} of this request is unfinished (version "
                     f"{o.pending_run.checkpoint_id}): a real run resumes it with the same pin")
    pins = "; ".join(f"p{x.partition} @{x.next_offset} W {iso(x.watermark_ms)}" for x in o.pin.partitions)
    covers = ("" if o.pin.covers_below is None
              else f"; covers versions below {o.pin.covers_below}{'' if o.run is not None else ' (a run now)'}")
    lines.append(f"  pinned     {pins or 'no partition processed yet'}{covers}")
    settled = ", ".join(f"{k.label} windows starting before {iso(b)}" if (b := o.selection.first_open_ms(k))
                        is not None else f"no {k.label} window" for k in KINDS)
    lines.append(f"  settled    {settled} (final in every partition)")
    skipped = [f"{k.label} [{iso(s[0])}, {iso(s[1])})" for k in KINDS if (s := o.selection.skipped_open(k))]
    lines.append(f"  skipped    {', '.join(skipped) + ' still open live (rerun later)' if skipped else 'none'}")
    lines.append(f"  replayed   {o.records:,} records of {len(o.selection.replay_to)} partition(s) in "
                 f"{o.replay_s:.1f}s; watermarks and DLQ counts equal the ledger's at the pin")
    for t in o.tables:
        lines.append(f"  {t.table:<13} {_table(t)}")
    if o.clickhouse_note:
        lines.append(f"  clickhouse {o.clickhouse_note}")
    examples = [(t.table, e) for t in o.tables for e in t.examples]
    if examples:
        lines.append("  differences (first of each table):")
        for table, e in examples:
            truth = "absent" if e.truth is None else f"{e.truth[0]} events, amount {e.truth[1]}"
            stored = ("absent" if e.stored is None
                      else f"{e.stored[0]} events, amount {e.stored[1]} (version {e.stored[2]})")
            lines.append(f"    {table} {iso(e.key[0] * 1000)} account {e.key[1]} {e.key[2]}: "
                         f"{e.what}: truth {truth}, ClickHouse {stored}")
    if o.run is not None:
        deleted = "ClickHouse not read, nothing deleted" if o.deleted_keys is None else f"{o.deleted_keys} keys deleted"
        lines.append(f"  landed     {o.batches_new + o.batches_existing} sink batches at version {o.run.checkpoint_id} "
                     f"({o.batches_existing} already committed by an earlier attempt), {deleted}; "
                     f"source 'backfill' in sink_batch, delivered by the sink")
    elif o.dry_run:
        stored = max((t.max_version for t in o.tables), default=0)
        above = (f"the highest version ClickHouse holds in the range ({stored}; written outside the ledger, "
                 "so the ledger's id sequence is moved past it)" if stored > o.live_max_version
                 else f"every live version (highest checkpoint of this pipeline so far: {o.live_max_version})")
        lines.append(f"  would land {o.windows:,} windows at a new version above {above}")
    lines.append(f"  elapsed    {o.elapsed_s:.1f}s")
    return lines


def _table(t: TableDiff) -> str:
    text = f"{t.windows:,} windows ({t.events:,} events, amount {t.amount})"
    if not t.readable:
        return text + "; ClickHouse not read"
    extra = f", {len(t.extra):,} extra" if t.extra else ""
    after = f", {t.after_pin:,} written live after the pin (left alone)" if t.after_pin else ""
    return (text + f"; ClickHouse holds {t.stored_rows:,}: {t.equal:,} equal, {t.missing:,} missing, "
            f"{t.different:,} different{extra}{after}")


def summary_json(o: Outcome) -> str:
    data: dict[str, Any] = {
        "dry_run": o.dry_run,
        "request": o.request.key,
        "run_no": None if o.run is None else o.run.run_no,
        "version": None if o.run is None else o.run.checkpoint_id,
        "resumed": o.resumed,
        "pin_covers_below": o.pin.covers_below,
        "records": o.records,
        "windows": o.windows,
        "clickhouse_read": o.clickhouse_note is None,
        "tables": {t.table: {"windows": t.windows, "events": t.events, "amount": str(t.amount),
                             "readable": t.readable, "stored": t.stored_rows, "equal": t.equal,
                             "missing": t.missing, "different": t.different, "extra": len(t.extra),
                             "after_pin": t.after_pin, "max_version": t.max_version} for t in o.tables},
        "skipped_open": {k.label: [s[0], s[1]] for k in KINDS if (s := o.selection.skipped_open(k))},
        "batches_new": o.batches_new,
        "batches_existing": o.batches_existing,
        "deleted_keys": o.deleted_keys,
        "elapsed_s": round(o.elapsed_s, 3),
    }
    return json.dumps(data, sort_keys=True)
