"""The backfill's pin covers exactly the versions below the run's (issue 9, item 5), against
a real Postgres with live checkpoints committing concurrently.

This is what makes the backfill safe for live rows: a row it may delete or outrank
(version below the run's) was committed before the pin, so the replay reproduces it; a
row the live processor emits after the pin (an idle partition folding an old event) has
a higher version and is neither deleted nor hidden.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from app.ledger import backfill_runs as ledger_backfill
from app.ledger.ledger import Ledger
from app.ledger.rows import WindowRow, rows_to_table
from app.ledger.scope import forget_pipeline
from app.processor.windows import WindowKind
from tests.helpers import wait_for

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
        forget_pipeline(conn, pid)


class LiveCommitter(threading.Thread):
    """Commits checkpoints the way app/ledger/ledger.py does -- lock the partition row, take
    the checkpoint id, advance the partition by one record -- round-robin over the
    partitions, until stopped.

    On request (`hold_next`) it holds its next checkpoint open between taking the id and
    committing, until a backfill run is waiting for the lock on `ledger_checkpoint` (or has
    returned, which a correct pin never does first): the race the pin must win, forced on
    every run instead of left to timing."""

    def __init__(self, url: str, pipeline_id: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.url, self.pipeline_id, self.topic = url, pipeline_id, topic
        self.stopping = threading.Event()
        self.hold_next = threading.Event()   # the test asks: hold the next checkpoint open
        self.holding = threading.Event()     # an id is handed out and not committed
        self.run_returned = threading.Event()
        self.held_ids: list[int] = []
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
                        if self.hold_next.is_set():
                            self.hold_next.clear()
                            self.held_ids.append(int(cid))
                            self.holding.set()
                            wait_for(lambda: self.run_returned.is_set() or run_waits_for_lock(conn), 30,
                                     "the backfill run to wait for the lock on ledger_checkpoint")
                        conn.execute("UPDATE partition_state SET next_offset = next_offset + 1, "
                                     "last_checkpoint_id = %s WHERE pipeline_id = %s AND topic = %s "
                                     "AND partition = %s", (cid, self.pipeline_id, self.topic, p))
                    self.committed += 1
        except BaseException as e:  # reported by the test thread
            self.error = e

    def committed_at_least(self, n: int) -> bool:
        """For wait_for: whether `n` checkpoints committed; fails at once if the thread died."""
        assert self.error is None, f"the live committer failed: {self.error!r}"
        return self.committed >= n


def run_waits_for_lock(conn: psycopg.Connection[Any]) -> bool:
    """Another session of this database waits for a lock on ledger_checkpoint (the backfill's
    LOCK TABLE ... SHARE ROW EXCLUSIVE, which our uncommitted INSERT holds off)."""
    (n,) = conn.execute(
        """SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'ledger_checkpoint'::regclass
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND pid <> pg_backend_pid()""").fetchone()  # type: ignore[misc]
    return int(n) > 0


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
        # the live side is committing before the first run
        wait_for(lambda: live.committed_at_least(20), 30, "20 live checkpoints")
        runs = []
        for i in range(RUNS):
            # live checkpoints in between runs, then one taken and not committed as the run starts
            after = live.committed
            wait_for(lambda after=after: live.committed_at_least(after + 2), 30,
                     "2 more live checkpoints between runs")
            live.run_returned.clear()
            live.hold_next.set()
            wait_for(lambda: live.committed_at_least(0) and live.holding.is_set(), 30,
                     "a live checkpoint id handed out and not committed yet")
            live.holding.clear()
            try:
                runs.append(ledger_backfill.start_run(ledger, f"test-request-{i}"))
            finally:
                live.run_returned.set()
    finally:
        live.stopping.set()
        live.join(timeout=30)
    assert live.error is None, live.error
    assert live.committed > RUNS, "the live committer did not run alongside the runs"
    assert len(live.held_ids) == RUNS

    for run, held in zip(runs, live.held_ids, strict=True):
        assert run.pin.covers_below == run.checkpoint_id
        # the live checkpoint open when the run started has the lower version: the pin must hold it
        assert held < run.checkpoint_id, (run.request, held, run.checkpoint_id)
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
