"""A started snapshot is published while the processor checkpoints on every loop turn.

Snapshot starvation (found in the issue 15 review): the processor advanced a snapshot by one
chunk only on loop turns that did not checkpoint. With --batch-max-wait below the 0.2 s
consume timeout (or under load, when --batch-rows is reached every turn) every turn
checkpoints, so a started snapshot was never published: payloads never became prunable and
every restore read every batch since the start. Failed at 6a783f9 (timed out waiting for
the snapshot); passes since the snapshot step runs on every turn, after the checkpoint.
"""

from __future__ import annotations

from tests.conftest import Pipeline
from tests.helpers import log_events, topic_end, wait_for

SNAPSHOTS = "SELECT count(*) FROM window_snapshot WHERE pipeline_id = %s AND chunks >= 2"


def test_snapshot_is_published_while_every_turn_checkpoints(pipeline: Pipeline) -> None:
    p = pipeline
    # continuous input for ~60 s: 1,200 events/s on 2 partitions
    gen = p.start("app.gen", "--seed", "13", "--events", "72000", "--accounts", "400", "--partitions", "2",
                  "--rate", "1200")
    wait_for(lambda: p.alive(gen) and topic_end(p.bootstrap, p.topic, not_ready_ok=True) > 0, 60,
             "the generator's first records")
    proc = p.start("app.processor", "--batch-max-wait", "0.05s", "--snapshot-interval", "0s",
                   "--snapshot-chunk-rows", "50", "--log-level", "info")
    wait_for(lambda: p.alive(proc) and p.checkpoints() >= 3, 60, "the processor's first checkpoints")
    wait_for(lambda: p.alive(proc) and p.ledger_value(SNAPSHOTS) >= 1, 30,
             "a snapshot of at least 2 chunks to be published while the processor checkpoints every turn")
    assert gen.poll() is None, "the input stopped before the snapshot was published: the test proves nothing"
    published = log_events(p.log(proc), "snapshot_published")
    assert published and published[0]["chunks"] >= 2, published
