"""Insert fault injection at the writer seam: which calls fail, and what each mode writes.

The inner writer here is a recorder of calls (the seam's contract is "insert these
record batches with this token"); what ClickHouse does with them is tested against the
real engine in tests/integration/test_sink_clickhouse.py."""

from __future__ import annotations

import pyarrow as pa
import pytest

from app.sink.faults import FaultyWriter, InjectedInsertFault, InsertFaultPlan
from app.sink.groups import split_blocks


class Recorder:
    def __init__(self) -> None:
        self.inserts: list[tuple[str, list[int], str]] = []
        self.closed = False

    def insert(self, table: str, rows: pa.Table, token: str, settings: object = None) -> None:
        self.inserts.append((table, [b.num_rows for b in rows.to_batches()], token))

    def close(self) -> None:
        self.closed = True


def _rows(n: int, block: int) -> pa.Table:
    return split_blocks(pa.table({"a": list(range(n))}), block)


def _schedule(plan: InsertFaultPlan, calls: int) -> list[bool]:
    w = FaultyWriter(Recorder(), plan)
    return [w.should_fail() for _ in range(calls)]


def test_every_nth_call_fails() -> None:
    assert _schedule(InsertFaultPlan(every=3), 9) == [False, False, True] * 3
    assert not any(_schedule(InsertFaultPlan(), 20))


def test_probability_is_seeded_and_repeatable() -> None:
    a = _schedule(InsertFaultPlan(probability=0.3, seed=5), 200)
    assert a == _schedule(InsertFaultPlan(probability=0.3, seed=5), 200)
    assert a != _schedule(InsertFaultPlan(probability=0.3, seed=6), 200)
    assert 30 <= sum(a) <= 90
    assert all(_schedule(InsertFaultPlan(probability=1.0), 10))


@pytest.mark.parametrize("mode,written", [("before", []), ("after", [[10, 10, 10, 10, 5]]), ("mid", [[10, 10, 10]])])
def test_each_mode_writes_what_it_says_then_raises(mode: str, written: list[list[int]]) -> None:
    inner = Recorder()
    w = FaultyWriter(inner, InsertFaultPlan(every=1, mode=mode))
    with pytest.raises(InjectedInsertFault):
        w.insert("rollup_minute", _rows(45, 10), "p:g1")
    assert [blocks for _t, blocks, _tok in inner.inserts] == written
    assert all(tok == "p:g1" for _t, _b, tok in inner.inserts)  # the prefix carries the group's token


def test_mid_on_a_single_block_writes_nothing() -> None:
    inner = Recorder()
    with pytest.raises(InjectedInsertFault):
        FaultyWriter(inner, InsertFaultPlan(every=1, mode="mid")).insert("t", _rows(5, 10), "tok")
    assert inner.inserts == []


def test_calls_that_do_not_fail_pass_through_and_close_propagates() -> None:
    inner = Recorder()
    w = FaultyWriter(inner, InsertFaultPlan(every=2, mode="before"))
    w.insert("t", _rows(3, 10), "a")
    with pytest.raises(InjectedInsertFault):
        w.insert("t", _rows(3, 10), "b")
    w.insert("t", _rows(3, 10), "b")  # the retry
    assert [tok for _t, _b, tok in inner.inserts] == ["a", "b"]
    w.close()
    assert inner.closed and w.injected == 1


@pytest.mark.parametrize("kwargs", [{"mode": "sideways"}, {"every": -1}, {"probability": 1.5}])
def test_bad_plans_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        InsertFaultPlan(**kwargs)  # type: ignore[arg-type]
