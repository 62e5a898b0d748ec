"""What the ledger says about one pipeline, read in one transaction: each partition's
position and owner, the sink's backlog and open groups, the DLQ counts, the last
checkpoint. Read-only; every statement is scoped by pipeline id with bound parameters."""

from __future__ import annotations

from dataclasses import dataclass

from app.ledger.ledger import Connection, Ledger, single_row


@dataclass(frozen=True, slots=True)
class PartitionRow:
    partition: int
    next_offset: int
    watermark_ms: int | None
    owner: str | None
    generation: int
    updated_age_s: float         # since the last claim or checkpoint of this partition


@dataclass(frozen=True, slots=True)
class OpenGroup:
    group_id: int
    table_name: str
    rows: int
    insert_attempts: int
    age_s: float


@dataclass(frozen=True, slots=True)
class SinkRow:
    pending_batches: int
    pending_rows: int
    oldest_pending_age_s: float | None
    ungrouped_batches: int
    open_group_count: int
    open_groups: tuple[OpenGroup, ...]     # recorded, not yet acknowledged; most attempts first (a few)
    last_ack_age_s: float | None


@dataclass(frozen=True, slots=True)
class LedgerView:
    partitions: tuple[PartitionRow, ...]
    sink: SinkRow
    dlq: dict[str, int]                    # "late/minute", "late/hour", "invalid" -> count
    last_checkpoint_id: int | None
    last_checkpoint_age_s: float | None
    run_finished: bool | None              # an --until-end run: finished? None: no run recorded


def read(ledger: Ledger, max_groups: int = 20) -> LedgerView:
    def tx(conn: Connection) -> LedgerView:
        pid, topic = ledger.pipeline_id, ledger.topic
        partitions = tuple(PartitionRow(int(r[0]), int(r[1]), None if r[2] is None else int(r[2]), r[3], int(r[4]),
                                        float(r[5]))
                           for r in conn.execute(
            """SELECT partition, next_offset, watermark_ms, owner, owner_generation,
                      extract(epoch FROM now() - updated_at)::float8
               FROM partition_state WHERE pipeline_id = %s AND topic = %s ORDER BY partition""", (pid, topic)))
        b = single_row(conn.execute(
            """SELECT count(*), coalesce(sum(row_count), 0),
                      extract(epoch FROM now() - min(created_at))::float8, count(*) FILTER (WHERE group_id IS NULL)
               FROM sink_batch WHERE pipeline_id = %s AND status = 'pending'""", (pid,)))
        groups = tuple(OpenGroup(int(r[0]), r[1], int(r[2]), int(r[3]), float(r[4])) for r in conn.execute(
            """SELECT group_id, table_name, row_count, insert_attempts, extract(epoch FROM now() - created_at)::float8
               FROM sink_group WHERE pipeline_id = %s AND status = 'pending'
               ORDER BY insert_attempts DESC, created_at LIMIT %s""", (pid, max_groups)))
        (open_count,) = single_row(conn.execute(
            "SELECT count(*) FROM sink_group WHERE pipeline_id = %s AND status = 'pending'", (pid,)))
        (last_ack,) = single_row(conn.execute(
            """SELECT extract(epoch FROM now() - max(acked_at))::float8 FROM sink_batch
               WHERE pipeline_id = %s AND status = 'acked'""", (pid,)))
        dlq = {(f"{r[0]}/{r[1]}" if r[1] else r[0]): int(r[2]) for r in conn.execute(
            """SELECT reason, window_kind, sum(count) FROM dlq_count WHERE pipeline_id = %s AND topic = %s
               GROUP BY reason, window_kind ORDER BY reason, window_kind""", (pid, topic))}
        cp = conn.execute(
            """SELECT checkpoint_id, extract(epoch FROM now() - created_at)::float8 FROM ledger_checkpoint
               WHERE pipeline_id = %s AND source = 'live' ORDER BY checkpoint_id DESC LIMIT 1""", (pid,)).fetchone()
        run = conn.execute("SELECT finished_at IS NOT NULL FROM pipeline_run WHERE pipeline_id = %s",
                           (pid,)).fetchone()
        sink = SinkRow(int(b[0]), int(b[1]), None if b[2] is None else float(b[2]), int(b[3]), int(open_count), groups,
                       None if last_ack is None else float(last_ack))
        return LedgerView(partitions, sink, dlq, None if cp is None else int(cp[0]),
                          None if cp is None else float(cp[1]), None if run is None else bool(run[0]))
    return ledger.transaction(tx)
