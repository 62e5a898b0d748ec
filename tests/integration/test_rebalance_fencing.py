"""Zombie fencing: an instance that lost a partition can never commit for it afterwards.

The ledger test drives two Ledger objects (two owners) against the real Postgres; the
process test freezes a real processor (SIGSTOP) past its session timeout so the group
hands its partitions to another instance, then lets it run again (SIGCONT)."""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from app.ledger.ledger import Checkpoint, Ledger, PartitionAdvance, PartitionFenced
from app.ledger.rows import WindowRow, rows_to_table
from app.ledger.scope import forget_pipeline, pipeline_tables
from tests.conftest import Pipeline
from tests.helpers import wait_for


@pytest.fixture
def scope(postgres: str) -> Iterator[tuple[str, str]]:
    pid = f"t-{uuid.uuid4().hex[:10]}"
    yield postgres, pid
    with psycopg.connect(postgres, autocommit=True) as conn:
        forget_pipeline(conn, pid)


def _ledger_rows(url: str, pid: str) -> dict[str, list[Any]]:
    """Every ledger row of the pipeline id, per table."""
    with psycopg.connect(url) as conn:
        return {t: sorted(map(repr, conn.execute(sql.SQL("SELECT * FROM {} WHERE pipeline_id = %s")
                                                 .format(sql.Identifier(t)), (pid,)).fetchall()))
                for t in pipeline_tables(conn)}


def _cp(advances: list[PartitionAdvance]) -> Checkpoint:
    rows = [WindowRow(0, a.partition, 60, 7, "DE", a.next_offset, 100) for a in advances]
    return Checkpoint(topic="events", advances=tuple(advances),
                      tables={"rollup_minute": rows_to_table(rows)},
                      dlq_counts={(a.partition, "invalid", ""): 1 for a in advances})


def test_a_fenced_owners_late_checkpoint_is_rejected_and_changes_nothing(scope: tuple[str, str]) -> None:
    url, pid = scope
    old, new = Ledger(url, pid, "events"), Ledger(url, pid, "events")
    try:
        g0 = old.claim_partition(0, "old").owner_generation
        g1 = old.claim_partition(1, "old").owner_generation
        first = old.commit(_cp([PartitionAdvance(0, 0, 10, 1000, 0, g0), PartitionAdvance(1, 0, 5, 1000, 0, g1)]))
        # a new owner takes partition 1 (the group moved it) and restores from the ledger
        claim = new.claim_partition(1, "new")
        assert claim.owner_generation == g1 + 1 and claim.next_offset == 5
        assert claim.last_checkpoint == first.checkpoint_ref
        before = _ledger_rows(url, pid)

        # the zombie's next checkpoint still names partition 1 with its old generation
        with pytest.raises(PartitionFenced) as fenced:
            old.commit(_cp([PartitionAdvance(0, 10, 20, 2000, 0, g0), PartitionAdvance(1, 5, 9, 2000, 0, g1)]))
        assert fenced.value.partitions == (1,)
        # ... and its snapshot of partition 1 cannot be published either
        old.write_snapshot_chunk(1, first.checkpoint_id, 0, rows_to_table([]))
        with pytest.raises(PartitionFenced):
            old.publish_snapshot(1, first.checkpoint_id, 1, g1)
        after = _ledger_rows(url, pid)
        after.pop("window_snapshot_chunk"), before.pop("window_snapshot_chunk")  # the orphan chunk only
        assert after == before, "a fenced checkpoint changed the ledger"

        # the partitions it still owns commit as usual; the new owner's commit is accepted
        old.commit(_cp([PartitionAdvance(0, 10, 20, 2000, 0, g0)]))
        new.commit(_cp([PartitionAdvance(1, 5, 9, 2000, 0, claim.owner_generation)]))
        assert old.partition_offsets() == {0: 20, 1: 9}
    finally:
        old.close()
        new.close()


def test_a_retried_commit_that_already_landed_reports_its_checkpoint(scope: tuple[str, str]) -> None:
    """The answer to COMMIT was lost: the retry must name the checkpoint that landed, since
    the local store records it for reconciliation."""
    url, pid = scope
    ledger = Ledger(url, pid, "events")
    try:
        g = ledger.claim_partition(0, "me").owner_generation
        cp = _cp([PartitionAdvance(0, 0, 10, 1000, 0, g)])
        first = ledger.commit(cp)
        again = ledger.commit(cp)
        assert again.already_committed and not first.already_committed
        assert (again.checkpoint_id, again.checkpoint_ref) == (first.checkpoint_id, first.checkpoint_ref)
    finally:
        ledger.close()


SMALL = ("--batch-max-wait", "0.05s", "--poll-records", "1000", "--snapshot-interval", "0.3s",
         "--session-timeout", "6s", "--log-level", "info")


def _stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP delivered), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "T"


def _tcp_ports(pid: int) -> list[int]:
    """The local ports of the TCP sockets process `pid` has open (its fds' inodes in /proc/net/tcp)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _in_ledger_transaction(p: Pipeline, pid: int) -> bool:
    """Whether one of process `pid`'s Postgres sessions is inside a transaction (it may hold
    row locks on partition_state: frozen there, it would block every other owner's claim)."""
    with p.ledger() as conn:
        (n,) = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%s) "
                            "AND xact_start IS NOT NULL", (_tcp_ports(pid),)).fetchone()  # type: ignore[misc]
    return int(n) > 0


def _freeze_outside_a_transaction(p: Pipeline, proc: subprocess.Popen[bytes]) -> bool:
    """SIGSTOP `proc`; if it stopped inside a ledger transaction, let it go on (SIGCONT) and
    report False, for wait_for to try again."""
    proc.send_signal(signal.SIGSTOP)
    wait_for(lambda: p.alive(proc) and _stopped(proc.pid), 10, "the SIGSTOP to take effect")
    if not _in_ledger_transaction(p, proc.pid):
        return True
    proc.send_signal(signal.SIGCONT)
    return False


def test_a_frozen_instance_loses_its_partitions_and_the_result_stays_exact(pipeline: Pipeline) -> None:
    events = 150_000
    pipeline.gen("--seed", "5", "--events", str(events), "--accounts", "5000", "--partitions", "4",
                  "--late-fraction", "0.02", "--invalid-fraction", "0.01", "--event-time-rate", "500")
    sink = pipeline.start("app.sink", "--until-idle")
    zombie = pipeline.start("app.processor", "--until-end", *SMALL, "--state-dir", str(pipeline.tmp / "z"))

    def owners() -> set[str]:
        with pipeline.ledger() as conn:
            rows = conn.execute("SELECT owner FROM partition_state WHERE pipeline_id = %s",
                                (pipeline.pipeline_id,)).fetchall()
        return {r[0] for r in rows} if len(rows) == 4 else set()

    wait_for(lambda: pipeline.alive(zombie) and pipeline.committed_offsets() > 0, 120,
             "the first instance's first checkpoint")
    try:
        # frozen right after its first checkpoint (work is left), between two ledger transactions
        wait_for(lambda: _freeze_outside_a_transaction(pipeline, zombie), 60,
                 "the first instance frozen outside a ledger transaction")
        assert pipeline.committed_offsets() < events
        assert len(owners()) == 1, "the first instance does not own every partition"
        # the group evicts the frozen member after its session timeout; the other takes all
        other = pipeline.start("app.processor", "--until-end", *SMALL, "--state-dir", str(pipeline.tmp / "o"))
        started = wait_for(lambda: pipeline.logged(other, "processor_started"), 60,
                           "the other instance's processor_started line")
        other_owner = started[0]["instance"]  # the owner it writes to the ledger when it claims
        wait_for(lambda: pipeline.alive(other) and owners() == {other_owner}, 120,
                 "the other instance to claim all 4 partitions")
    finally:
        zombie.send_signal(signal.SIGCONT)
    assert other.wait(timeout=120) == 0, pipeline.log(other)[-3000:]
    assert zombie.wait(timeout=120) == 0, pipeline.log(zombie)[-3000:]
    assert sink.wait(timeout=120) == 0, pipeline.log(sink)[-3000:]
    zombie_log = pipeline.log(zombie)
    # the zombie either tried a checkpoint (fenced) or heard it lost the partitions first
    assert '"checkpoint_fenced"' in zombie_log or '"partitions_lost"' in zombie_log, zombie_log[-3000:]
    with pipeline.ledger() as conn:
        generations = [r[0] for r in conn.execute(
            "SELECT owner_generation FROM partition_state WHERE pipeline_id = %s", (pipeline.pipeline_id,))]
    assert len(owners()) >= 1 and max(generations) >= 2
    assert pipeline.committed_offsets() == events
    res = pipeline.verify()
    assert res.returncode == 0, f"verify exit {res.returncode}\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}"
