"""Pure rules of coalesced inserts: group planning, group identity, row order, blocks."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest

from app.ledger.sink_groups import BatchHeader, MemberRows, group_id, group_token, new_group
from app.ledger.rows import WindowRow, rows_to_table
from app.sink.groups import GroupPolicy, block_count, group_rows, plan_group, split_blocks

POLICY = GroupPolicy(batch_rows=10_000, max_wait_s=5.0)


def hdr(batch: int, cp: int, table: str = "rollup_minute", rows: int = 1000, age: float = 0.0) -> BatchHeader:
    return BatchHeader(batch, cp, table, rows, age)


def test_nothing_pending_or_too_small_and_young_waits() -> None:
    assert plan_group([], POLICY, drain=False) is None
    assert plan_group([hdr(1, 1, age=1.0), hdr(2, 2, age=0.5)], POLICY, drain=False) is None


def test_coalesces_consecutive_batches_until_batch_rows() -> None:
    batches = [hdr(i, i, rows=3000) for i in range(1, 8)]
    plan = plan_group(batches, POLICY, drain=False)
    assert plan is not None and plan.reason == "rows"
    assert [m.batch_id for m in plan.members] == [1, 2, 3, 4]  # 12,000 >= 10,000: stop there
    assert plan.row_count == 12_000


def test_a_batch_larger_than_batch_rows_is_a_group_of_one() -> None:
    plan = plan_group([hdr(1, 1, rows=50_000), hdr(2, 2)], POLICY, drain=False)
    assert plan is not None and [m.batch_id for m in plan.members] == [1]


def test_small_group_once_the_oldest_batch_waited_max_wait() -> None:
    plan = plan_group([hdr(1, 1, age=6.0), hdr(2, 2, age=1.0)], POLICY, drain=False)
    assert plan is not None and plan.reason == "max_wait" and plan.row_count == 2000


def test_drain_flushes_whatever_is_pending() -> None:
    plan = plan_group([hdr(1, 1), hdr(2, 2)], POLICY, drain=True)
    assert plan is not None and plan.reason == "drain" and len(plan.members) == 2


def test_tables_are_never_mixed_and_the_oldest_ready_table_goes_first() -> None:
    batches = [hdr(1, 1, "rollup_hour", rows=500, age=1.0), hdr(2, 1, "rollup_minute", rows=6000),
               hdr(3, 2, "rollup_hour", rows=500), hdr(4, 2, "rollup_minute", rows=6000)]
    plan = plan_group(batches, POLICY, drain=False)
    assert plan is not None and plan.table_name == "rollup_minute"  # hour is small and young: waits
    assert [m.batch_id for m in plan.members] == [2, 4]
    drained = plan_group(batches, POLICY, drain=True)
    assert drained is not None and drained.table_name == "rollup_hour"  # same checkpoint: name order
    assert {m.table_name for m in drained.members} == {"rollup_hour"}


def test_planning_ignores_the_order_batches_are_listed_in() -> None:
    batches = [hdr(i, i, rows=2500) for i in range(1, 9)]
    shuffled = batches[:]
    random.Random(3).shuffle(shuffled)
    assert plan_group(batches, POLICY, drain=False) == plan_group(shuffled, POLICY, drain=False)


def test_group_identity_is_deterministic_and_order_sensitive() -> None:
    assert group_id("p", "rollup_minute", [1, 2, 3]) == group_id("p", "rollup_minute", [1, 2, 3])
    assert group_id("p", "rollup_minute", [1, 2, 3]) != group_id("p", "rollup_minute", [1, 2])
    assert group_id("p", "rollup_minute", [1, 2]) != group_id("p", "rollup_hour", [1, 2])
    assert group_id("p", "rollup_minute", [1, 2]) != group_id("q", "rollup_minute", [1, 2])
    assert 0 <= group_id("p", "t", [1]) < 2**63
    g = new_group("p", "rollup_minute", [hdr(7, 1, rows=10), hdr(9, 2, rows=5)], "rows")
    assert g.member_batch_ids == (7, 9) and g.row_count == 15
    assert g.token == group_token("p", g.group_id) == f"p:g{g.group_id}"


def _member(batch: int, version: int, keys: list[tuple[int, int, str]]) -> MemberRows:
    rows = [WindowRow(0, 0, ws, acc, c, 1 + version, version * 10) for ws, acc, c in keys]
    return MemberRows(batch, version, rows_to_table(rows))


def test_group_rows_are_in_one_total_order_whatever_the_member_order() -> None:
    day = 86_400
    a = _member(11, 5, [(2 * day, 3, "DE"), (0, 9, "FR"), (day, 1, "DE")])
    b = _member(12, 6, [(0, 9, "FR"), (day, 1, "AT"), (0, 2, "DE")])
    t1, t2 = group_rows([a, b]), group_rows([b, a])
    assert t1.equals(t2)
    keys = list(zip(t1.column("window_start").cast(pa.int64()).to_pylist(), t1.column("account_id").to_pylist(),
                    t1.column("country").to_pylist(), t1.column("version").to_pylist(), strict=True))
    assert keys == sorted(keys)
    assert keys[0] == (0, 2, "DE", 6) and keys[1] == (0, 9, "FR", 5) and keys[2] == (0, 9, "FR", 6)
    # each row keeps its member's batch id and version (= checkpoint id)
    assert set(zip(t1.column("batch_id").to_pylist(), t1.column("version").to_pylist(), strict=True)) == {
        (11, 5), (12, 6)}
    assert t1.schema.names == ["window_start", "account_id", "country", "event_count", "sum_amount", "batch_id",
                               "version"]


@pytest.mark.parametrize("rows,block", [(0, 10), (1, 10), (10, 10), (25, 10), (25, 100)])
def test_split_blocks_makes_fixed_size_record_batches(rows: int, block: int) -> None:
    table = pa.concat_tables([pa.table({"a": list(range(rows))})] * 2)  # start from several chunks
    blocks = split_blocks(table, block)
    sizes = [b.num_rows for b in blocks.to_batches()]
    assert sum(sizes) == 2 * rows
    assert all(s == block for s in sizes[:-1]) and (not sizes or 0 < sizes[-1] <= block)
    assert blocks.column("a").to_pylist() == table.column("a").to_pylist()
    assert split_blocks(blocks, block).to_batches() == blocks.to_batches()  # idempotent
    if rows:
        assert len(sizes) == block_count(2 * rows, block)
