"""The human summary and the one-line JSON summary of a verification."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.verify.compare import DlqTopicReport, KeyDiff, Report
from app.verify.truth import TruthCounts


@dataclass(frozen=True, slots=True)
class RunInfo:
    topic: str
    pipeline_id: str
    clickhouse: str  # masked URL
    ledger_positions: Mapping[int, int]  # partition -> next_offset the processor will read
    end_offsets: Mapping[int, int]  # partition -> high watermark verify read up to
    elapsed_s: float
    read_s: float


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def _key_text(table: str, d: KeyDiff) -> str:
    ws, account, country = d.key
    when = datetime.fromtimestamp(ws, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    fmt = (lambda v: "-" if v is None else f"count={v[0]} sum={v[1]}")
    return (f"  {table} {when} account={account} country={country}: {d.what}; "
            f"truth {fmt(d.truth)}, clickhouse {fmt(d.clickhouse)}")


def verdict(report: Report) -> str:
    if report.exact:
        return "verify: EXACT"
    return f"verify: MISMATCH ({'; '.join(report.mismatches())})"


def summary_lines(truth: TruthCounts, report: Report, info: RunInfo, max_diffs: int) -> list[str]:
    r = truth.rules
    lines = [
        f"verify: topic {info.topic}, pipeline {info.pipeline_id}, clickhouse {info.clickhouse}",
        (f"rules: max-out-of-orderness {r.max_out_of_orderness_ms} ms, allowed lateness "
         f"minute {r.allowed_lateness_minute_ms} ms, hour {r.allowed_lateness_hour_ms} ms, "
         f"max record bytes {r.max_record_bytes}"),
        (f"{'partition':>9} {'records':>12} {'valid':>12} {'invalid':>9} {'late_min':>9} {'late_hour':>9}"
         f"  {'watermark':<23} {'ledger_next/end':>21}"),
    ]
    for p, s in truth.partitions.items():
        end = info.end_offsets.get(p, s.records)
        nxt = info.ledger_positions.get(p)
        pos = f"{'-' if nxt is None else nxt}/{end}" + ("" if nxt == end else " !")
        lines.append(f"{p:>9} {s.records:>12,} {s.valid:>12,} {s.invalid:>9,} {s.late_minute:>9,} "
                     f"{s.late_hour:>9,}  {_iso(s.watermark_ms(r)):<23} {pos:>21}")
    total_invalid = sum(s.invalid for s in truth.partitions.values())
    lines.append(f"{'total':>9} {truth.records:>12,} {truth.valid:>12,} {total_invalid:>9,} "
                 f"{truth.dlq[('late', 'minute')]:>9,} {truth.dlq[('late', 'hour')]:>9,}")
    if info.read_s > 0:
        lines.append(f"read and classified {truth.records:,} records in {info.read_s:.1f}s "
                     f"({truth.records / info.read_s:,.0f}/s)")
    for t in report.tables:
        state = "equal" if t.equal else "DIFFERENT"
        lines.append(f"{t.table}: {state}{'' if t.table_exists else ' (table does not exist)'}")
        lines.append(f"  truth      rows {t.truth_rows:>12,}  events {t.truth_events:>14,}  sum {t.truth_amount}")
        lines.append(f"  clickhouse rows {t.clickhouse_rows:>12,}  events {t.clickhouse_events:>14,}  "
                     f"sum {t.clickhouse_amount}")
        if not t.equal:
            lines.append(f"  missing {t.missing:,}  extra {t.extra:,}  different {t.different:,}  "
                         f"duplicate {t.duplicates:,}")
    lines.append(f"dlq counts: {'equal' if report.dlq.equal else 'DIFFERENT'}")
    for d in report.dlq.lines:
        name = d.reason + (f"/{d.window_kind}" if d.window_kind else "")
        mark = "" if d.truth == d.ledger else "  !"
        lines.append(f"  {name:<12} truth {d.truth:>12,}  ledger {d.ledger:>12,}{mark}")
    if report.dlq_topic is not None:
        lines.extend(_dlq_topic_lines(report.dlq_topic, max_diffs))
    if report.split_count:
        lines.append(f"accounts in more than one partition: {report.split_count:,} (contract §2: "
                     "every event of an account is in one partition; each partition emits its own value "
                     "of a window)")
        for account, partitions in list(report.split_accounts.items())[:max_diffs]:
            lines.append(f"  account {account}: partitions {', '.join(map(str, partitions))}")
    shown = [(t.table, e) for t in report.tables for e in t.examples][:max_diffs]
    if shown:
        total = sum(t.missing + t.extra + t.different + t.duplicates for t in report.tables)
        lines.append(f"first differing keys ({len(shown)} of {total:,}):")
        lines.extend(_key_text(table, e) for table, e in shown)
    lines.append(verdict(report))
    return lines


def _dlq_topic_lines(t: DlqTopicReport, max_diffs: int) -> list[str]:
    state = "equal" if t.equal else "DIFFERENT"
    distinct = sum(line.topic for line in t.lines)
    missing_topic = "" if t.exists else "; the topic does not exist"
    foreign = f"; {t.foreign:,} of other source topics" if t.foreign else ""
    head = f"dlq topic {t.topic}: {state} ({distinct:,} distinct identities in {t.records:,} records"
    lines = [f"{head}{missing_topic}{foreign})"]
    if t.unreadable:
        lines.append(f"  {t.unreadable:,} records are not DLQ records (not JSON or a field missing)  !")
    for p, low in sorted(t.trimmed.items()):
        lines.append(f"  DLQ partition {p} starts at offset {low}: retention removed its first records")
    for line in t.lines:
        name = line.reason + (f"/{line.window_kind}" if line.window_kind else "")
        mark = "" if not (line.missing_count or line.extra_count) else "  !"
        lines.append(f"  partition {line.partition:>4} {name:<12} truth {line.truth:>10,}  topic {line.topic:>10,}"
                     f"  missing {line.missing_count:>8,}  extra {line.extra_count:>8,}{mark}")
    shown = 0
    for line in t.lines:
        name = line.reason + (f"/{line.window_kind}" if line.window_kind else "")
        for what, offsets in (("missing from the topic", line.missing), ("extra in the topic", line.extra)):
            if offsets and shown < max_diffs:
                lines.append(f"  {name} partition {line.partition}, {what}: offsets "
                             f"{', '.join(map(str, offsets[:max_diffs - shown]))}")
                shown += 1
    return lines


def summary_json(truth: TruthCounts, report: Report, info: RunInfo) -> str:
    def diff_json(e: KeyDiff) -> dict[str, Any]:
        return {"window_start": e.key[0], "account_id": e.key[1], "country": e.key[2], "what": e.what,
                "truth": _pair(e.truth), "clickhouse": _pair(e.clickhouse)}

    doc: dict[str, Any] = {
        "verdict": "EXACT" if report.exact else "MISMATCH",
        "exact": report.exact,
        "mismatches": report.mismatches(),
        "topic": info.topic,
        "pipeline_id": info.pipeline_id,
        "records": truth.records,
        "valid": truth.valid,
        "partitions": [
            {"partition": p, "records": s.records, "valid": s.valid, "invalid": s.invalid,
             "late_minute": s.late_minute, "late_hour": s.late_hour,
             "watermark_ms": s.watermark_ms(truth.rules), "end_offset": info.end_offsets.get(p),
             "ledger_next_offset": info.ledger_positions.get(p)}
            for p, s in truth.partitions.items()
        ],
        "tables": [
            {"table": t.table, "kind": t.kind, "equal": t.equal, "exists": t.table_exists,
             "truth": {"rows": t.truth_rows, "events": t.truth_events, "sum_amount": str(t.truth_amount)},
             "clickhouse": {"rows": t.clickhouse_rows, "events": t.clickhouse_events,
                            "sum_amount": str(t.clickhouse_amount)},
             "missing": t.missing, "extra": t.extra, "different": t.different, "duplicates": t.duplicates,
             "examples": [diff_json(e) for e in t.examples]}
            for t in report.tables
        ],
        "dlq": [{"reason": d.reason, "window_kind": d.window_kind, "truth": d.truth, "ledger": d.ledger}
                for d in report.dlq.lines],
        "dlq_topic": None if report.dlq_topic is None else {
            "topic": report.dlq_topic.topic, "exists": report.dlq_topic.exists, "equal": report.dlq_topic.equal,
            "records": report.dlq_topic.records, "unreadable": report.dlq_topic.unreadable,
            "foreign": report.dlq_topic.foreign, "missing": report.dlq_topic.missing,
            "extra": report.dlq_topic.extra,
            "lines": [{"partition": line.partition, "reason": line.reason, "window_kind": line.window_kind,
                       "truth": line.truth, "topic": line.topic, "missing": line.missing_count,
                       "extra": line.extra_count, "missing_offsets": list(line.missing),
                       "extra_offsets": list(line.extra)} for line in report.dlq_topic.lines]},
        "split_accounts": {str(a): list(ps) for a, ps in report.split_accounts.items()},
        "split_account_count": report.split_count,  # split_accounts lists the first ones when more
        "elapsed_s": round(info.elapsed_s, 3),
        "read_records_per_s": round(truth.records / info.read_s) if info.read_s > 0 else None,
    }
    return json.dumps(doc, separators=(",", ":"))


def _pair(v: Sequence[int] | None) -> dict[str, Any] | None:
    # Sums are strings: they can exceed 2^53 and many JSON readers would round them.
    return None if v is None else {"count": v[0], "sum_amount": str(v[1])}
