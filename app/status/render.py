"""The status as a person reads it (a few lines and a table) or as a script reads it (one
JSON object)."""

from __future__ import annotations

import orjson

from app.status.report import Status, age


def as_json(status: Status) -> str:
    return orjson.dumps(status.as_json()).decode()


def as_text(status: Status, *, where: str) -> str:
    lines = [f"pipeline {status.pipeline_id}  topic {status.topic}  {where}"]
    if status.kafka_error:
        lines.append(f"kafka: UNREACHABLE: {status.kafka_error}")
    header = ("partition", "next_offset", "log_end", "lag", "lag_age", "watermark", "owner", "gen", "progress")
    rows = [header]
    for p in status.partitions:
        rows.append((str(p.partition), _n(p.next_offset), _n(p.log_end), _n(p.lag_records),
                     "-" if p.lag_seconds is None else age(p.lag_seconds), p.watermark or "-", p.owner or "-",
                     _n(p.generation), "-" if p.last_progress_s is None else f"{age(p.last_progress_s)} ago"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if status.total_lag_records is not None:
        lines.append(f"lag: {status.total_lag_records} records")
    cp = ("none yet" if status.last_checkpoint_id is None
          else f"{status.last_checkpoint_id}, {age(status.last_checkpoint_age_s or 0)} ago")
    lines.append(f"last checkpoint: {cp}" + ("" if status.run_finished is None
                                              else f"; --until-end run {'finished' if status.run_finished else 'running'}"))
    s = status.sink
    oldest = "" if s.oldest_pending_age_s is None else f", oldest {age(s.oldest_pending_age_s)}"
    last_ack = "never" if s.last_ack_age_s is None else f"{age(s.last_ack_age_s)} ago"
    lines.append(f"sink: {s.pending_batches} batches pending ({s.pending_rows} rows{oldest}), "
                 f"{s.ungrouped_batches} not yet grouped, {s.open_groups} open groups; last acknowledgement {last_ack}")
    for g in s.worst_groups[:5]:
        if g.insert_attempts:
            lines.append(f"  open group {g.group_id} {g.table_name}: {g.rows} rows, {g.insert_attempts} attempts, "
                         f"open {age(g.age_s)}")
    dlq = ", ".join(f"{k} {v}" for k, v in status.dlq.items()) or "none"
    lines.append(f"dlq: {dlq}")
    if status.stuck:
        lines.append("STUCK:")
        lines += [f"  {reason}" for reason in status.stuck]
    else:
        lines.append("status: ok" if status.kafka_error is None else "status: kafka unreachable")
    return "\n".join(lines)


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)
