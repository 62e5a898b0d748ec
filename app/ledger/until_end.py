"""An `--until-end` run as the ledger records it (`pipeline_run`): the end offsets the
processor saw at start, whether every partition got there (whoever processed it: with
several instances each exits once all are there), and the finish mark the sink's
`--until-idle` waits for."""

from __future__ import annotations

from collections.abc import Mapping

from psycopg.types.json import Jsonb

from app.ledger.ledger import Connection, Ledger


def start_run(ledger: Ledger, end_offsets: Mapping[int, int]) -> None:
    def tx(conn: Connection) -> None:
        conn.execute(
            """INSERT INTO pipeline_run (pipeline_id, topic, end_offsets) VALUES (%s, %s, %s)
               ON CONFLICT (pipeline_id) DO UPDATE SET topic = EXCLUDED.topic,
                 end_offsets = EXCLUDED.end_offsets, started_at = now(), finished_at = NULL""",
            (ledger.pipeline_id, ledger.topic, Jsonb({str(p): o for p, o in end_offsets.items()})))
    ledger.transaction(tx)


def finish_run(ledger: Ledger) -> None:
    def tx(conn: Connection) -> None:
        conn.execute("UPDATE pipeline_run SET finished_at = now() WHERE pipeline_id = %s", (ledger.pipeline_id,))
    ledger.transaction(tx)


def run_reached_end(ledger: Ledger) -> tuple[bool, bool]:
    """(every partition at or past the run's end offsets, run marked finished)."""
    def tx(conn: Connection) -> tuple[bool, bool]:
        row = conn.execute("SELECT end_offsets, finished_at FROM pipeline_run WHERE pipeline_id = %s",
                           (ledger.pipeline_id,)).fetchone()
        if row is None:
            return False, False
        ends = {int(p): int(o) for p, o in row[0].items()}
        offsets = {int(p): int(o) for p, o in conn.execute(
            "SELECT partition, next_offset FROM partition_state WHERE pipeline_id = %s AND topic = %s",
            (ledger.pipeline_id, ledger.topic))}
        reached = all(offsets.get(p, 0) >= end for p, end in ends.items() if end > 0)
        return reached, row[1] is not None
    return ledger.transaction(tx)


def sink_run_state(ledger: Ledger) -> tuple[bool, bool]:
    """For `sink --until-idle`: (processor's until-end run finished, batches pending)."""
    def tx(conn: Connection) -> tuple[bool, bool]:
        row = conn.execute("SELECT finished_at FROM pipeline_run WHERE pipeline_id = %s",
                           (ledger.pipeline_id,)).fetchone()
        pending = conn.execute("SELECT 1 FROM sink_batch WHERE pipeline_id = %s AND status = 'pending' LIMIT 1",
                               (ledger.pipeline_id,)).fetchone()
        return (row is not None and row[0] is not None), pending is not None
    return ledger.transaction(tx)
