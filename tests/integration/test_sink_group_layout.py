"""A group's block layout belongs to the group: a sink that dies part way through a
multi-block insert and restarts with another `--insert-block-rows` and another insert
mode still re-sends the very blocks of the first attempt, so ClickHouse's per-block dedup
(token + block ordinal, not content) drops exactly what landed and stores the rest.

Before the fix the retry was cut with the new flags: its first block carried the id of
the first attempt's first block and was dropped whole (rows lost for good). This test
failed on main at 6e6c674 (verify: 1,227 and 1,272 hour rows missing in two runs) and
passes since 9b4b256 (the layout recorded with the group, migration 0006_group_layout)."""

from __future__ import annotations

from tests.conftest import Pipeline
from tests.helpers import log_events, wait_for
from tests.integration.test_sink_exactly_once import (
    assert_exactly_once,
    freeze_merges,
    groups,
    raw_audit,
)

# ~0.8 day of event time (2 day partitions) over 2 topic partitions, ~10k rows per table
GEN = ("--seed", "11", "--events", "10000", "--accounts", "3000", "--partitions", "2", "--event-time-rate", "0.15",
       "--late-fraction", "0.01", "--invalid-fraction", "0.002")
SMALL = ("--batch-max-wait", "0.05s", "--poll-records", "2000")


def test_a_group_resumed_with_other_block_flags_keeps_its_recorded_layout(pipeline: Pipeline) -> None:
    p = pipeline
    p.gen(*GEN)
    p.processor(*SMALL)
    freeze_merges(p.clickhouse_url)

    # 1. every insert writes the first half of its 1,000-row blocks, then fails: the first
    #    group is stuck with a prefix of its blocks in ClickHouse. Kill the sink there.
    first = p.start("app.sink", "--until-idle", "--batch-rows", "1000000", "--insert-block-rows", "1000",
                    "--fault-injection", "--fail-insert-every", "1", "--fail-insert-mode", "mid")
    # two attempts counted = the first attempt's prefix insert returned before its fault
    stuck = wait_for(lambda: p.alive(first) and [g for g in groups(p) if g[6] >= 2], 90,
                     "a group sent twice (its first half of blocks landed)")
    first.kill()
    first.wait(timeout=30)
    assert first.returncode < 0, f"the sink ended on its own ({first.returncode}): it must be killed mid-group"
    assert len(stuck) == 1
    gid, table, _members, group_rows, _reason, status, _attempts = stuck[0]
    assert status == "pending"
    landed = raw_audit(p.clickhouse_url)[table][0]
    assert 0 < landed < group_rows, f"expected a prefix of the group's {group_rows} rows in {table}, found {landed}"
    injected = log_events(p.log(first), "insert_fault_injected")
    assert injected and all(e["mode"] == "mid" for e in injected), p.log(first)[-3000:]

    # 2. restart with other block flags and another insert mode: the open group must be
    #    re-sent with its recorded layout (1,000-row blocks, synchronous settings).
    p.sink("--batch-rows", "1000000", "--insert-block-rows", "100000", "--async-insert")
    after = groups(p)
    resumed = [g for g in after if g[0] == gid]
    assert len(resumed) == 1 and resumed[0][5] == "acked" and resumed[0][3] == group_rows
    assert all(g[5] == "acked" for g in after)
    assert_exactly_once(p)  # verify EXACT, raw rows = the ledger's sum(row_count), nothing doubled or merged
