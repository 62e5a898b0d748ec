"""LevelDB <-> Postgres reconciliation (docs/exactly-once.md, "Local state"): the ledger is
the commit point; a local store is used only when it reflects exactly the ledger's last
checkpoint of the partition, else it is rebuilt from the ledger. SIGKILL between the two
writes, in both orders, and state that moved to another instance and back, all end exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Pipeline
from tests.helpers import assert_crashed_at, wait_for

GEN = ("--seed", "7", "--events", "60000", "--accounts", "3000", "--partitions", "3",
       "--late-fraction", "0.05", "--invalid-fraction", "0.01", "--event-time-rate", "200")
SMALL = ("--batch-max-wait", "0.05s", "--poll-records", "2000", "--snapshot-interval", "0.3s",
         "--session-timeout", "6s", "--log-level", "info")


def _restores(stderr: str) -> list[dict]:  # type: ignore[type-arg]
    out = []
    for line in stderr.splitlines():
        if '"partition_restored"' in line:
            out.append(json.loads(line))
    return out


def _assert_exact(p: Pipeline) -> None:
    res = p.verify()
    assert res.returncode == 0, f"verify exit {res.returncode}\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}"
    assert "EXACT" in res.stdout


def _part(seed: int, events: int, start: str) -> tuple[str, ...]:
    """GEN with another seed, size and start (HH:MM:SS on 2025-11-20)."""
    return (*GEN[4:], "--seed", str(seed), "--events", str(events), "--start-time", f"2025-11-20T{start}Z")


def _state(p: Pipeline, name: str) -> tuple[str, str]:
    return ("--state-dir", str(p.tmp / name))


@pytest.mark.parametrize("crash_point", [
    "state.after_commit_before_local",   # ledger committed, LevelDB still "prepared": behind the ledger
    "state.after_local_before_commit",   # LevelDB written, ledger not committed: ahead of the ledger
])
def test_killed_between_ledger_commit_and_local_write(pipeline: Pipeline, crash_point: str) -> None:
    """Part A is processed cleanly (every partition has ledger state and a matching local
    store); the first checkpoint of part B is killed between its two writes; part C is
    produced after the kill, so the restart always has work and must reconcile all three
    partitions (the crash cannot have committed the whole topic)."""
    a, b, c = 30_000, 6_000, 6_000
    pipeline.gen(*_part(7, a, "00:00:00"))
    pipeline.processor(*SMALL, *_state(pipeline, "a"))
    assert pipeline.committed_offsets() == a
    pipeline.gen(*_part(8, b, "00:02:00"))
    first = pipeline.processor(*SMALL, *_state(pipeline, "a"), crash_at=f"{crash_point}:1", check=False)
    assert_crashed_at(first.returncode, first.stderr, crash_point, nth=1)
    committed = pipeline.committed_offsets()
    if crash_point == "state.after_commit_before_local":
        assert a < committed <= a + b  # the crashed checkpoint is in the ledger
    else:
        assert committed == a          # ... or not at all
    pipeline.gen(*_part(9, c, "00:02:40"))
    second = pipeline.processor(*SMALL, *_state(pipeline, "a"))
    restores = _restores(second.stderr)
    assert sorted(r["partition"] for r in restores) == [0, 1, 2], second.stderr[-3000:]
    # the crashed checkpoint left every partition it covered "prepared": never trusted, rebuilt;
    # a partition it did not cover may be reused, and only if it matches the ledger exactly
    assert any(r["state"] == "rebuilt" and r["local_checkpoint"] is None and r["restored_rows"] > 0
               for r in restores), restores
    assert all(r["state"] == "rebuilt" or r["local_checkpoint"] == r["ledger_checkpoint"] is not None
               for r in restores), restores
    assert pipeline.committed_offsets() == a + b + c
    pipeline.sink()
    _assert_exact(pipeline)


def test_local_state_is_reused_only_while_it_matches_the_ledger(pipeline: Pipeline) -> None:
    """Dir a processes part 1 and stops cleanly; dir b (another instance) processes part 2;
    dir a comes back for part 3 and must rebuild (the ledger moved on without it); then,
    with a again for part 4, its state matches and is reused. Exact at the end."""
    parts = [("--seed", str(seed), "--start-time", f"2025-11-20T00:{minute:02d}:00Z") for seed, minute in
             ((7, 0), (8, 4), (9, 8), (10, 12))]
    modes = []
    for part, state in zip(parts, ("a", "b", "a", "a"), strict=True):
        pipeline.gen(*GEN[2:], *part)
        res = pipeline.processor(*SMALL, *_state(pipeline, state))
        restores = _restores(res.stderr)
        assert len(restores) == 3, res.stderr[-3000:]
        modes.append({r["state"] for r in restores})
    # part 1: nothing anywhere (rebuilt from an empty ledger); part 2: b never saw it;
    # part 3: a is behind the ledger; part 4: a reflects exactly the ledger's checkpoint
    assert modes == [{"rebuilt"}, {"rebuilt"}, {"rebuilt"}, {"reused"}]
    pipeline.sink()
    _assert_exact(pipeline)


def test_memory_store_rebuilds_from_chunked_snapshots(pipeline: Pipeline) -> None:
    """--state-store memory has no local state: every start restores from the ledger's
    chunked snapshot plus later batches, and the snapshot really is in several chunks."""
    memory = ("--state-store", "memory", "--snapshot-chunk-rows", "500")
    pipeline.gen(*GEN)
    # snapshot chunks are written on loop turns without a checkpoint; an idle turn lasts the
    # 0.2 s consume timeout, so a 1 s batch wait leaves room for them once the input is read
    first = pipeline.start("app.processor", *SMALL, *memory, "--batch-max-wait", "1s",
                           "--snapshot-interval", "0s")
    chunked = "SELECT count(*) FROM window_snapshot WHERE pipeline_id = %s AND chunks >= 2"
    wait_for(lambda: (pipeline.alive(first) and pipeline.committed_offsets() == 60_000
                      and pipeline.ledger_value(chunked) == 3),
             180, "a snapshot of every partition published in 2 or more chunks")
    first.terminate()
    assert first.wait(timeout=60) == 0, pipeline.log(first)[-3000:]
    pipeline.gen(*_part(8, 60_000, "00:03:00"))
    second = pipeline.processor(*SMALL, *memory)
    restores = _restores(second.stderr)
    assert sorted(r["partition"] for r in restores) == [0, 1, 2], second.stderr[-3000:]
    assert all(r["restored_rows"] > 0 and r["state"] == "rebuilt" for r in restores), restores
    pipeline.sink()
    _assert_exact(pipeline)


def test_state_dir_layout(pipeline: Pipeline) -> None:
    """A processor takes slot-0 under --state-dir and keeps one LevelDB per partition."""
    pipeline.gen(*GEN[:4], "--partitions", "2")
    pipeline.processor(*SMALL, *_state(pipeline, "s"))
    slot = Path(pipeline.tmp / "s" / "slot-0")
    assert sorted(d.name for d in slot.iterdir()) == [f"{pipeline.topic}-0", f"{pipeline.topic}-1"]
