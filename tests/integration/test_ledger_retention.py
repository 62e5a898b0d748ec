"""Payload pruning keeps restore exact: after pruning, a restarted processor rebuilds the
same state from the snapshots plus the batches committed after them, and the final result
is still exact.

Every precondition is a ledger state the test waits for, not a moment it hopes for:
part A is committed with a snapshot of each partition published (so acknowledged batches
are covered by a snapshot: prunable); part B is then committed with snapshots off (batches
after the snapshot: restore needs them, pruning must keep them); part C is produced only
after the processor was killed, so the restart has work on top of the restored state."""

from __future__ import annotations

import signal

from app.ledger.ledger import Ledger
from app.ledger.retention import prune_payloads
from tests.conftest import Pipeline
from tests.helpers import log_events, wait_for

COMMON = ("--accounts", "2000", "--partitions", "2", "--late-fraction", "0.05", "--event-time-rate", "100")
# 200 s, then 100 s, then 100 s of event time: the hour window and some minutes span the parts
PART_A = ("--seed", "11", "--events", "20000", "--start-time", "2025-11-20T00:00:00Z", *COMMON)
PART_B = ("--seed", "12", "--events", "10000", "--start-time", "2025-11-20T00:03:00Z", *COMMON)
PART_C = ("--seed", "13", "--events", "10000", "--start-time", "2025-11-20T00:04:30Z", *COMMON)
LIVE = ("--batch-max-wait", "0.05s", "--poll-records", "1000", "--session-timeout", "6s", "--log-level", "info")
# The processor writes snapshot chunks only on loop turns that do not checkpoint, and an idle
# turn lasts the 0.2 s consume timeout: with a 0.05 s batch wait every turn checkpoints and a
# started snapshot is never published. A 1 s batch wait leaves idle turns for the snapshot.
SNAPSHOTS = ("--batch-max-wait", "1s", "--snapshot-interval", "0s")

# batches every partition of which has a snapshot at or after them (what prune_payloads may drop)
COVERED = """SELECT count(*) FROM sink_batch b WHERE b.pipeline_id = %s AND b.checkpoint_id <= (
               SELECT min(s.checkpoint_id) FROM window_snapshot s WHERE s.pipeline_id = b.pipeline_id
                 AND s.topic = b.topic AND s.partition = ANY(b.partitions)
               HAVING count(*) = cardinality(b.partitions))"""
# batches restore reads on top of a snapshot (or without one): committed after it
AFTER_SNAPSHOT = """SELECT count(*) FROM sink_batch b WHERE b.pipeline_id = %s AND b.payload IS NOT NULL
                      AND EXISTS (SELECT 1 FROM unnest(b.partitions) AS bp(p) WHERE NOT EXISTS (
                        SELECT 1 FROM window_snapshot s WHERE s.pipeline_id = b.pipeline_id AND s.topic = b.topic
                          AND s.partition = bp.p AND s.checkpoint_id >= b.checkpoint_id))"""
SNAPSHOTTED_PARTITIONS = "SELECT count(*) FROM window_snapshot WHERE pipeline_id = %s"
SNAPSHOT_CHECKPOINTS = "SELECT sum(checkpoint_id) FROM window_snapshot WHERE pipeline_id = %s"


def test_pruned_payloads_are_never_needed_again(pipeline: Pipeline) -> None:
    p = pipeline
    p.gen(*PART_A)
    a_events = 20000
    # part A, a snapshot after every checkpoint: wait until it is all committed and each
    # partition's snapshot covers at least one batch
    first = p.start("app.processor", *LIVE, *SNAPSHOTS, "--state-dir", str(p.tmp / "s1"))
    wait_for(lambda: (p.alive(first) and p.committed_offsets() == a_events
                      and p.ledger_value(SNAPSHOTTED_PARTITIONS) == 2 and p.ledger_value(COVERED) > 0),
             120, "part A committed with a published snapshot of both partitions covering a batch")
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 0, p.log(first)[-3000:]
    snapshots = p.ledger_value(SNAPSHOT_CHECKPOINTS)

    # part B with snapshots off: its batches are the ones restore must read after the snapshot
    p.gen(*PART_B)
    second = p.start("app.processor", *LIVE, "--snapshot-interval", "1h", "--state-dir", str(p.tmp / "s2"))
    wait_for(lambda: p.alive(second) and p.committed_offsets() == a_events + 10000, 120, "part B committed")
    second.send_signal(signal.SIGKILL)
    assert second.wait(timeout=60) == -signal.SIGKILL
    assert p.ledger_value(SNAPSHOT_CHECKPOINTS) == snapshots  # part B published no snapshot
    needed = p.ledger_value(AFTER_SNAPSHOT)
    assert needed > 0, "no batch was committed after the snapshots: restore would not read any"

    p.gen(*PART_C)  # the restart's own work, on top of the restored windows
    p.sink_until_acked()  # every batch so far acknowledged
    ledger = Ledger(p.database_url, p.pipeline_id, p.topic)
    try:
        pruned = prune_payloads(ledger)
    finally:
        ledger.close()
    assert pruned > 0
    with p.ledger() as conn:
        (unpruned_needed,) = conn.execute(
            """SELECT count(*) FROM sink_batch b WHERE b.pipeline_id = %s AND b.payload IS NULL
               AND (b.status = 'pending' OR EXISTS (SELECT 1 FROM window_snapshot s
                    WHERE s.pipeline_id = b.pipeline_id AND s.partition = ANY(b.partitions)
                      AND s.checkpoint_id < b.checkpoint_id))""", (p.pipeline_id,)).fetchone()  # type: ignore[misc]
    assert unpruned_needed == 0
    assert p.ledger_value(AFTER_SNAPSHOT) == needed  # pruning left every batch restore reads

    # a restart with no local state rebuilds each partition from its snapshot plus part B's
    # batches (more rows than the snapshot alone), then processes part C
    with p.ledger() as conn:
        snapshot_rows = dict(conn.execute("SELECT partition, window_count FROM window_snapshot "
                                          "WHERE pipeline_id = %s", (p.pipeline_id,)).fetchall())
    restart = p.processor(*LIVE, "--state-dir", str(p.tmp / "s3"))
    restores = log_events(restart.stderr, "partition_restored")
    assert sorted(r["partition"] for r in restores) == [0, 1], restart.stderr[-3000:]
    assert all(r["state"] == "rebuilt" and r["restored_rows"] > snapshot_rows[r["partition"]]
               for r in restores), (restores, snapshot_rows)
    assert p.committed_offsets() == a_events + 20000
    p.sink()
    res = p.verify()
    assert res.returncode == 0 and "EXACT" in res.stdout, res.stdout[-3000:]
