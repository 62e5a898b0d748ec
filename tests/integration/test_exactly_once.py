"""Exactly-once through SIGKILL: kill the processor at each step of a checkpoint and the
sink between its insert and its acknowledgement, restart, and compare with the truth
that `verify` computes independently from the input log."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import Pipeline
from tests.helpers import assert_crashed_at, clickhouse_rows, log_events, wait_for

GEN = ("--seed", "7", "--events", "60000", "--accounts", "3000", "--partitions", "3",
       "--late-fraction", "0.05", "--invalid-fraction", "0.01", "--event-time-rate", "200")
EVENTS = 60_000
# small checkpoints, so a crash lands mid-run with committed work before and after it: with
# --batch-rows 1 every poll that changed a window is committed, so a checkpoint holds at most
# --poll-records records however fast the machine is, and the topic takes >= 30 of them
POLL = 2_000
SMALL = ("--batch-max-wait", "0.05s", "--poll-records", str(POLL), "--batch-rows", "1",
         "--snapshot-interval", "0.3s", "--session-timeout", "6s")


def _assert_exact(p: Pipeline) -> None:
    res = p.verify()
    assert res.returncode == 0, f"verify exit {res.returncode}\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}"
    assert "EXACT" in res.stdout


@pytest.mark.parametrize("crash_point, nth, committed_before", [
    ("checkpoint.before_dlq_flush", 3, 2),
    ("checkpoint.before_commit", 4, 3),
    ("checkpoint.inside_commit", 3, 2),
    ("checkpoint.after_commit", 5, 5),
])
def test_processor_killed_at_each_checkpoint_step(pipeline: Pipeline, crash_point: str, nth: int,
                                                  committed_before: int) -> None:
    pipeline.gen(*GEN)
    first = pipeline.processor(*SMALL, crash_at=f"{crash_point}:{nth}", check=False)
    assert_crashed_at(first.returncode, first.stderr, crash_point, nth=nth)
    # the ledger holds exactly the checkpoints before the crash (and the crashed one only if
    # the kill came after its commit); most of the topic is still unread
    assert pipeline.checkpoints() == committed_before
    assert 0 < pipeline.committed_offsets() <= committed_before * POLL < EVENTS
    second = pipeline.processor(*SMALL, "--log-level", "info")
    restored = log_events(second.stderr, "partition_restored")
    assert any(r["ledger_checkpoint"] is not None for r in restored), second.stderr[-3000:]
    assert pipeline.committed_offsets() == EVENTS
    pipeline.sink()
    _assert_exact(pipeline)


def test_sink_killed_between_insert_and_acknowledgement(pipeline: Pipeline) -> None:
    pipeline.gen(*GEN)
    pipeline.processor(*SMALL)
    with pipeline.ledger() as conn:
        (batches,) = conn.execute("SELECT count(*) FROM sink_batch WHERE pipeline_id = %s",
                                  (pipeline.pipeline_id,)).fetchone()
    assert batches >= 6
    killed = pipeline.sink("--batch-rows", "1", crash_at="sink.after_insert:3", check=False)
    assert_crashed_at(killed.returncode, killed.stderr, "sink.after_insert", nth=3)
    pipeline.sink()
    with pipeline.ledger() as conn:
        (replayed,) = conn.execute(
            "SELECT count(*) FROM sink_batch WHERE pipeline_id = %s AND insert_attempts > 1",
            (pipeline.pipeline_id,)).fetchone()
    assert replayed == 1  # the one-batch group inserted before the kill was sent again
    _assert_exact(pipeline)
    for table in ("rollup_minute", "rollup_hour"):
        stored = [r[:3] + (r[5],) for r in clickhouse_rows(pipeline.clickhouse_url, table, final=False)]
        assert len(stored) == len(set(stored)), "a replayed insert was stored twice"


def test_replaying_an_inserted_batch_changes_nothing(pipeline: Pipeline) -> None:
    pipeline.gen(*GEN)
    pipeline.processor(*SMALL)
    pipeline.sink()
    before = {t: (clickhouse_rows(pipeline.clickhouse_url, t, final=False),
                  clickhouse_rows(pipeline.clickhouse_url, t, final=True)) for t in ("rollup_minute", "rollup_hour")}
    with pipeline.ledger() as conn:
        n = conn.execute("UPDATE sink_batch SET status = 'pending', acked_at = NULL WHERE pipeline_id = %s",
                         (pipeline.pipeline_id,)).rowcount
    assert n >= 2
    pipeline.sink()  # every batch inserted a second time, same rows, same token
    after = {t: (clickhouse_rows(pipeline.clickhouse_url, t, final=False),
                 clickhouse_rows(pipeline.clickhouse_url, t, final=True)) for t in ("rollup_minute", "rollup_hour")}
    assert after == before
    _assert_exact(pipeline)


def test_processor_killed_at_random_moments(pipeline: Pipeline) -> None:
    """Several SIGKILLs at arbitrary instants (not at a named step), sink running alongside.
    Each kill waits until the ledger shows the instance working (a share of the topic
    committed), so it lands mid-run with work left; each successor must restore what its
    killed predecessor committed and carry on."""
    pipeline.gen(*GEN)
    sink = pipeline.start("app.sink", "--until-idle")
    killed_at: list[int] = []
    for share in (0.1, 0.35, 0.6):
        before = pipeline.committed_offsets()
        proc = pipeline.start("app.processor", "--until-end", *SMALL, "--log-level", "info")
        wait_for(lambda s=share: pipeline.alive(proc) and pipeline.committed_offsets() >= s * EVENTS, 180,
                 f"the processor to commit {share:.0%} of the topic")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL, "the processor ended before the kill"
        log = pipeline.log(proc)
        if before:  # it restored what the instance before it had committed
            restored = log_events(log, "partition_restored")
            assert any(r["ledger_checkpoint"] is not None for r in restored), log[-3000:]
        assert log_events(log, "checkpoint_committed"), log[-3000:]
        killed_at.append(pipeline.committed_offsets())
    # every kill came while much of the topic was still to do (several checkpoints of margin)
    assert all(c < EVENTS - 4 * POLL for c in killed_at), killed_at
    last = pipeline.processor(*SMALL, "--log-level", "info")
    assert any(r["ledger_checkpoint"] is not None for r in log_events(last.stderr, "partition_restored"))
    assert pipeline.committed_offsets() == EVENTS
    assert sink.wait(timeout=120) == 0
    _assert_exact(pipeline)
