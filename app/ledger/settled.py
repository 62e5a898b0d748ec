"""The ledger's settled totals (migration 0009): windows final in every partition, what they
add up to, and which of them ClickHouse must already hold.

Written by the processor's checkpoint transaction (settled_write.py, app/processor/settled.py
says what is counted); read by the sink's reconciliation (`settled_range`). A window start
s of a kind of size Z with allowed lateness L is *settled* when
  1. it is final in every partition with a watermark: s + Z + L <= min(watermark) (the
     ledger's committed watermarks and pinned rules), so nothing can change it any more;
  2. it is acknowledged: every batch up to the row's last checkpoint is acknowledged
     (no pending batch of the table at or below it), so ClickHouse holds the final value
     of each of its windows.
`settled_range` returns the latest `buckets` settled window starts as one range [start, end)
with the ledger's totals over it: the reconciliation's cost is bounded by that range.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.ledger.ledger import Connection, Ledger

KIND_OF_TABLE = {"rollup_minute": (60_000, "allowed_lateness_minute_ms"),
                 "rollup_hour": (3_600_000, "allowed_lateness_hour_ms")}


@dataclass(frozen=True, slots=True)
class SettledRange:
    table_name: str
    start_ms: int          # first window start of the range
    end_ms: int            # exclusive
    windows: int
    events: int
    amount: int


def settled_range(ledger: Ledger, table: str, buckets: int) -> SettledRange | None:
    """The latest `buckets` settled window starts of `table` and the ledger's totals over
    them; None while nothing is settled."""
    size_ms, lateness_col = KIND_OF_TABLE[table]

    def tx(conn: Connection) -> SettledRange | None:
        row = conn.execute(
            f"""SELECT {lateness_col},
                       (SELECT min(watermark_ms) FROM partition_state
                        WHERE pipeline_id = %(p)s AND topic = %(t)s AND watermark_ms IS NOT NULL),
                       (SELECT min(checkpoint_id) FROM sink_batch
                        WHERE pipeline_id = %(p)s AND status = 'pending' AND table_name = %(tbl)s)
                FROM pipeline_rules WHERE pipeline_id = %(p)s""",
            {"p": ledger.pipeline_id, "t": ledger.topic, "tbl": table}).fetchone()
        if row is None or row[1] is None:
            return None
        lateness, min_watermark, min_pending = int(row[0]), int(row[1]), row[2]
        last_final = min_watermark - size_ms - lateness          # s <= this: final everywhere
        end = last_final - last_final % size_ms + size_ms
        if min_pending is not None:
            unacked = conn.execute(
                """SELECT min(window_start_ms) FROM settled_window_total
                   WHERE pipeline_id = %s AND table_name = %s AND window_start_ms < %s
                     AND last_checkpoint_id >= %s""",
                (ledger.pipeline_id, table, end, int(min_pending))).fetchone()
            if unacked is not None and unacked[0] is not None:
                end = int(unacked[0])
        starts = [int(r[0]) for r in conn.execute(
            """SELECT window_start_ms FROM settled_window_total
               WHERE pipeline_id = %s AND table_name = %s AND window_start_ms < %s
               ORDER BY window_start_ms DESC LIMIT %s""", (ledger.pipeline_id, table, end, buckets))]
        if not starts:
            return None
        start, end = starts[-1], starts[0] + size_ms
        w, e, a = conn.execute(
            """SELECT coalesce(sum(windows), 0), coalesce(sum(events), 0), coalesce(sum(amount), 0)
               FROM settled_window_total
               WHERE pipeline_id = %s AND table_name = %s AND window_start_ms >= %s AND window_start_ms < %s""",
            (ledger.pipeline_id, table, start, end)).fetchone() or (0, 0, 0)
        return SettledRange(table, start, end, int(w), int(e), int(a))
    return ledger.transaction(tx)
