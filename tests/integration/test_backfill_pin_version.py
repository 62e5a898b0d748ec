"""The backfill's pin covers exactly the versions below the run's (issue 9, item 5), against
a real Postgres with live checkpoints committing concurrently.

This is what makes the backfill safe for live rows: a row it may delete or outrank
(version below the run's) was committed before the pin, so the replay reproduces it; a
row the live processor emits after the pin (an idle partition folding an old event) has
a higher version and is neither deleted nor hidden.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from app.ledger import backfill_runs as ledger_backfill
from app.ledger.ledger import Ledger
from app.ledger.rows import WindowRow, rows_to_table
from app.processor.windows import WindowKind

PARTITIONS = 3
RUNS = 25


@pytest.fixture
def ledger(postgres: str) -> Iterator[Ledger]:
    pid = f"t-{uuid.uuid4().hex[:10]}"
    topic = f"{pid}.events"
    with psycopg.connect(postgres, autocommit=True) as conn:
        for p in range(PARTITIONS):
            conn.execute("INSERT INTO partition_state (pipeline_id, topic, partition, owner_generation, owner) "
                         "VALUES (%s, %s, %s, 1, 'test')", (pid, topic, p))
    led = Ledger(postgres, pid, topic)
    yield led
    led.close()
    with psycopg.connect(postgres, autocommit=True) as conn:
        for table in ("backfill_run", "sink_batch", "partition_state", "ledger_checkpoint"):
            conn.execute(f"DELETE FROM {table} WHERE pipeline_id = %s", (pid,))  # noqa: S608 (fixed names)


class LiveCommitter(threading.Thread):
    """Commits checkpoints the way app/ledger/ledger.py does -- lock the partition row, take
    the checkpoint id, (a pause while the id is taken and not yet committed), advance the
    partition by one record -- round-robin over the partitions, until stopped."""

    def __init__(self, url: str, pipeline_id: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.url, self.pipeline_id, self.topic = url, pipeline_id, topic
        self.stopping = threading.Event()
        self.committed = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.url) as conn:
                while not self.stopping.is_set():
                    p = self.committed % PARTITIONS
                    with conn.transaction():
                        conn.execute("SELECT 1 FROM partition_state WHERE pipeline_id = %s AND topic = %s "
                                     "AND partition = %s FOR UPDATE", (self.pipeline_id, self.topic, p))
                        (cid,) = conn.execute(
                            "INSERT INTO ledger_checkpoint (pipeline_id, source, topic, partitions, records) "
                            "VALUES (%s, 'live', %s, %s, 1) RETURNING checkpoint_id",
                            (self.pipeline_id, self.topic, [p])).fetchone()  # type: ignore[misc]
                        time.sleep(0.002)  # widen the race: an id handed out, not committed yet
                        conn.execute("UPDATE partition_state SET next_offset = next_offset + 1, "
                                     "last_checkpoint_id = %s WHERE pipeline_id = %s AND topic = %s "
                                     "AND partition = %s", (cid, self.pipeline_id, self.topic, p))
                    self.committed += 1
        except BaseException as e:  # reported by the test thread
            self.error = e


def live_positions_below(url: str, pipeline_id: str, version: int) -> dict[int, int]:
    """Per partition, how many live checkpoints (one record each) have an id below `version`."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT partitions[1], count(*) FROM ledger_checkpoint WHERE pipeline_id = %s "
                            "AND source = 'live' AND checkpoint_id < %s GROUP BY 1", (pipeline_id, version))
        return {int(p): int(n) for p, n in rows}


def test_the_pin_covers_exactly_the_versions_below_the_runs(ledger: Ledger, postgres: str) -> None:
    live = LiveCommitter(postgres, ledger.pipeline_id, ledger.topic)
    live.start()
    try:
        deadline = time.monotonic() + 30
        while live.committed < 20:  # the live side is committing before the first run
            assert live.error is None, live.error
            assert time.monotonic() < deadline, "timed out waiting for live checkpoints"
            time.sleep(0.01)
        runs = []
        for i in range(RUNS):
            runs.append(ledger_backfill.start_run(ledger, f"test-request-{i}"))
            time.sleep(0.003)  # let live checkpoints in between runs
    finally:
        live.stopping.set()
        live.join(timeout=30)
    assert live.error is None, live.error
    assert live.committed > RUNS, "the live committer did not run alongside the runs"

    for run in runs:
        assert run.pin.covers_below == run.checkpoint_id
        pinned = {p.partition: p.next_offset for p in run.pin.partitions}
        below = live_positions_below(postgres, ledger.pipeline_id, run.checkpoint_id)
        assert pinned == {p: below.get(p, 0) for p in range(PARTITIONS)}, (
            f"run {run.request}: pinned {pinned}, but the live checkpoints below version {run.checkpoint_id} "
            f"advanced the partitions to {below}")
        stored = ledger_backfill.latest_run(ledger, run.request)
        assert stored is not None and stored.pin == run.pin  # a resumed run gets the same pin and version


def test_a_run_without_batches_is_forgotten_and_one_with_batches_is_kept(ledger: Ledger, postgres: str) -> None:
    empty = ledger_backfill.start_run(ledger, "refused")
    assert ledger_backfill.abandon_run(ledger, empty)
    assert ledger_backfill.latest_run(ledger, "refused") is None
    with psycopg.connect(postgres) as conn:
        (n,) = conn.execute("SELECT count(*) FROM ledger_checkpoint WHERE checkpoint_id = %s",
                            (empty.checkpoint_id,)).fetchone()  # type: ignore[misc]
    assert n == 0

    started = ledger_backfill.start_run(ledger, "landing")
    rows = rows_to_table([WindowRow(int(WindowKind.HOUR), 0, 1_763_596_800, 7, "DE", 1, 5)])
    ledger_backfill.commit_batch(ledger, started, "rollup_hour", 0, rows, {0: (0, 1)})
    assert not ledger_backfill.abandon_run(ledger, started)
    kept = ledger_backfill.latest_run(ledger, "landing")
    assert kept is not None and kept.checkpoint_id == started.checkpoint_id and not kept.landed
