"""Payload pruning keeps restore exact: after pruning, a restarted processor rebuilds the
same state and the final result is still exact."""

from __future__ import annotations

from app.ledger.ledger import Ledger
from app.ledger.retention import prune_payloads
from tests.conftest import Pipeline

GEN = ("--seed", "11", "--events", "30000", "--accounts", "2000", "--partitions", "2",
       "--late-fraction", "0.05", "--event-time-rate", "100")


def test_pruned_payloads_are_never_needed_again(pipeline: Pipeline) -> None:
    pipeline.gen(*GEN)
    # half the log, with snapshots, all delivered
    pipeline.processor("--batch-max-wait", "0.05s", "--poll-records", "1000", "--snapshot-interval", "0.2s",
                       crash_at="checkpoint.after_commit:12", check=False)
    pipeline.sink()
    ledger = Ledger(pipeline.database_url, pipeline.pipeline_id, pipeline.topic)
    try:
        pruned = prune_payloads(ledger)
    finally:
        ledger.close()
    assert pruned > 0
    with pipeline.ledger() as conn:
        (unpruned_needed,) = conn.execute(
            """SELECT count(*) FROM sink_batch b WHERE b.pipeline_id = %s AND b.payload IS NULL
               AND (b.status = 'pending' OR EXISTS (SELECT 1 FROM window_snapshot s
                    WHERE s.pipeline_id = b.pipeline_id AND s.partition = ANY(b.partitions)
                      AND s.checkpoint_id < b.checkpoint_id))""", (pipeline.pipeline_id,)).fetchone()
    assert unpruned_needed == 0
    # the rest of the log after a restart that restores from snapshots + unpruned batches
    pipeline.processor("--batch-max-wait", "0.05s", "--poll-records", "1000")
    pipeline.sink()
    res = pipeline.verify()
    assert res.returncode == 0, res.stdout[-3000:]
