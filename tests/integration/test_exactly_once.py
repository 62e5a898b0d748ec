"""Exactly-once through SIGKILL: kill the processor at each step of a checkpoint and the
sink between its insert and its acknowledgement, restart, and compare with the truth
that `verify` computes independently from the input log."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import Pipeline
from tests.helpers import clickhouse_rows

GEN = ("--seed", "7", "--events", "60000", "--accounts", "3000", "--partitions", "3",
       "--late-fraction", "0.05", "--invalid-fraction", "0.01", "--event-time-rate", "200")
# small checkpoints, so a crash lands mid-run with committed work before and after it
SMALL = ("--batch-max-wait", "0.05s", "--poll-records", "2000", "--snapshot-interval", "0.3s",
         "--session-timeout", "6s")


def _assert_exact(p: Pipeline) -> None:
    res = p.verify()
    assert res.returncode == 0, f"verify exit {res.returncode}\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}"
    assert "EXACT" in res.stdout


@pytest.mark.parametrize("crash_at", [
    "checkpoint.before_dlq_flush:3",
    "checkpoint.before_commit:4",
    "checkpoint.inside_commit:3",
    "checkpoint.after_commit:5",
])
def test_processor_killed_at_each_checkpoint_step(pipeline: Pipeline, crash_at: str) -> None:
    pipeline.gen(*GEN)
    first = pipeline.processor(*SMALL, crash_at=crash_at, check=False)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    pipeline.processor(*SMALL)
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
    assert killed.returncode == -signal.SIGKILL
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
    """Several SIGKILLs at arbitrary instants (not at a named step), sink running alongside."""
    import time
    pipeline.gen(*GEN)
    sink = pipeline.start("app.sink", "--until-idle")
    for delay in (0.8, 1.3, 0.5):
        proc = pipeline.start("app.processor", "--until-end", *SMALL)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    pipeline.processor(*SMALL)
    assert sink.wait(timeout=120) == 0
    _assert_exact(pipeline)
