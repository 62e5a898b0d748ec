"""Pure rules of proven delivery (app/sink/proof.py) and of when a group is inserted
(app/sink/groups.py, issue 12): which groups are checked, the repair's rows, and that a
group goes as soon as it holds --batch-min-rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from app.ledger.identity import repair_token, stable_id
from app.ledger.sink_groups import BatchHeader
from app.sink.groups import DAY_S, GroupPolicy, plan_group
from app.sink.proof import DeliveryProof, check_reason, sampled

IDS = [stable_id(f"group-{i}") for i in range(20_000)]


def hdr(batch: int, cp: int, rows: int, age: float = 0.0) -> BatchHeader:
    return BatchHeader(batch, cp, "rollup_minute", rows, age)


def test_the_sample_is_deterministic_and_takes_the_rate_asked_for() -> None:
    assert not any(sampled(g, 0.0) for g in IDS)
    assert all(sampled(g, 1.0) for g in IDS)
    for rate in (0.01, 0.02, 0.25):
        share = sum(sampled(g, rate) for g in IDS) / len(IDS)
        assert abs(share - rate) < 0.25 * rate + 0.003, (rate, share)
    assert [sampled(g, 0.02) for g in IDS[:500]] == [sampled(g, 0.02) for g in IDS[:500]]
    # a higher rate checks a superset: raising it never stops checking a group
    assert all(sampled(g, 0.25) for g in IDS if sampled(g, 0.02))


def test_a_group_sent_more_than_once_is_always_checked() -> None:
    never = next(g for g in IDS if not sampled(g, 0.02))
    always = next(g for g in IDS if sampled(g, 0.02))
    assert check_reason(never, 1, 0.02) is None
    assert check_reason(always, 1, 0.02) == "sampled"
    assert check_reason(never, 2, 0.0) == "retried"   # resumed after a crash, or an error retried
    assert check_reason(always, 5, 1.0) == "retried"  # the stronger reason wins


def test_a_repair_token_is_never_the_groups_or_another_repairs() -> None:
    tokens = {repair_token("p", 7, n) for n in range(1, 50)}
    assert len(tokens) == 49 and "p:g7" not in tokens
    assert repair_token("p", 7, 1) == "p:g7:r1" != repair_token("p", 8, 1)


def test_repair_rows_keep_the_group_order_and_its_block_rules() -> None:
    n = 10
    starts = np.array([0, 0, 60, 60, DAY_S, DAY_S, DAY_S + 60, 2 * DAY_S, 2 * DAY_S, 2 * DAY_S], dtype=np.int64)
    data = pa.table({"window_start": pa.array(starts).cast(pa.timestamp("s")),
                     "account_id": pa.array(np.arange(n, dtype=np.uint64)),
                     "version": pa.array(np.full(n, 3, dtype=np.uint64))})
    data = pa.Table.from_batches(data.to_batches(max_chunksize=4))  # as inserted: several blocks
    rows = DeliveryProof._rows(data, np.array([1, 2, 4, 5, 6, 9]), block_rows=2, cut="utc_day")
    assert rows.column("account_id").to_pylist() == [1, 2, 4, 5, 6, 9]
    # blocks of <= 2 rows that never cross a UTC day: (1, 2) day 0, (4, 5) (6) day 1, (9) day 2
    assert [b.column(1).to_pylist() for b in rows.to_batches()] == [[1, 2], [4, 5], [6], [9]]


def test_a_group_goes_as_soon_as_it_holds_min_rows() -> None:
    policy = GroupPolicy(batch_rows=100_000, max_wait_s=5.0, min_rows=10_000)
    young = [hdr(1, 1, rows=12_000, age=0.1), hdr(2, 2, rows=30_000, age=0.0)]
    plan = plan_group(young, policy, drain=False)
    assert plan is not None and plan.reason == "rows" and [m.batch_id for m in plan.members] == [1, 2]
    assert plan_group([hdr(1, 1, rows=9_999, age=4.9)], policy, drain=False) is None  # small and young: waits
    small = plan_group([hdr(1, 1, rows=9_999, age=5.0)], policy, drain=False)
    assert small is not None and small.reason == "max_wait"


def test_a_backlog_still_makes_groups_of_batch_rows() -> None:
    policy = GroupPolicy(batch_rows=100_000, max_wait_s=5.0, min_rows=10_000)
    backlog = [hdr(i, i, rows=30_000) for i in range(1, 10)]
    plan = plan_group(backlog, policy, drain=False)
    assert plan is not None and [m.batch_id for m in plan.members] == [1, 2, 3, 4]  # 120,000 >= 100,000


def test_min_rows_at_batch_rows_is_the_rule_before_issue_12() -> None:
    """`--batch-min-rows` equal to `--batch-rows` waits for a full group, as the sink did."""
    old = GroupPolicy(batch_rows=100_000, max_wait_s=5.0, min_rows=100_000)
    assert plan_group([hdr(1, 1, rows=60_000), hdr(2, 2, rows=30_000)], old, drain=False) is None
    full = plan_group([hdr(1, 1, rows=60_000), hdr(2, 2, rows=50_000)], old, drain=False)
    assert full is not None and full.reason == "rows" and full.row_count == 110_000
    # a min_rows above batch_rows cannot make a group wait past batch_rows
    assert GroupPolicy(batch_rows=6_000, min_rows=10_000).ready_rows == 6_000
