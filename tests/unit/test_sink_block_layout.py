"""A group's block layout: where blocks are cut (per UTC day, then every block_rows rows),
which layout a group recorded before migration 0006 gets, and the classification of
ClickHouse errors by code (the real errors are in tests/integration/test_sink_clickhouse_errors.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError, ProgrammingError

from app.clickhouse.client import block_layout_settings, insert_settings, legacy_insert_settings
from app.clickhouse.errors import ClickHouseConfigError, ClickHouseRejected, classify, translate
from app.core.errors import InvariantViolation, RetryableError
from app.ledger.sink_groups import BlockLayout, InsertGroup
from app.sink.groups import DAY_S, cut_blocks, resolve_layout, split_blocks

T0 = 1_763_596_800  # 2025-11-20T00:00:00Z


def rows_at(seconds: list[int]) -> pa.Table:
    ws = np.sort(np.array(seconds, dtype=np.int64))
    return pa.table({"window_start": pa.array(ws).cast(pa.timestamp("s")), "i": pa.array(np.arange(len(ws)))})


def block_days(table: pa.Table) -> list[list[int]]:
    return [sorted({int(s) // DAY_S for s in b.column(0).cast(pa.int64()).to_pylist()}) for b in table.to_batches()]


def test_utc_day_cut_starts_a_block_at_every_day_and_every_block_rows() -> None:
    seconds = [T0, T0 + 60, T0 + 120, T0 + DAY_S - 1, T0 + DAY_S, T0 + DAY_S + 60, T0 + 5 * DAY_S]
    blocks = cut_blocks(rows_at(seconds), 2, "utc_day")
    assert [b.num_rows for b in blocks.to_batches()] == [2, 2, 2, 1]
    assert all(len(days) == 1 for days in block_days(blocks))
    assert blocks.column("i").to_pylist() == list(range(len(seconds)))  # order kept, nothing lost


def test_utc_day_cut_of_150_days_makes_one_block_per_day() -> None:
    rng = np.random.default_rng(3)
    seconds = (T0 + rng.integers(0, 150 * DAY_S, 20_000)).tolist()
    blocks = cut_blocks(rows_at(seconds), 200_000, "utc_day")
    days = block_days(blocks)
    assert len(days) == 150 and all(len(d) == 1 for d in days)
    assert sum(b.num_rows for b in blocks.to_batches()) == 20_000


@pytest.mark.parametrize("block", [1, 3, 7, 1000])
def test_utc_day_cut_is_deterministic_and_idempotent(block: int) -> None:
    rng = np.random.default_rng(block)
    table = rows_at((T0 + rng.integers(0, 4 * DAY_S, 500)).tolist())
    once = cut_blocks(table, block, "utc_day")
    assert cut_blocks(pa.concat_tables([table.slice(0, 100), table.slice(100)]), block, "utc_day").to_batches() \
        == once.to_batches()
    assert cut_blocks(once, block, "utc_day").to_batches() == once.to_batches()
    assert all(0 < b.num_rows <= block for b in once.to_batches())


def test_rows_cut_is_the_pre_0006_fixed_size_split() -> None:
    table = rows_at([T0, T0 + DAY_S, T0 + 2 * DAY_S, T0 + 3 * DAY_S, T0 + 4 * DAY_S])
    assert cut_blocks(table, 2, "rows").to_batches() == split_blocks(table, 2).to_batches()
    assert cut_blocks(rows_at([]), 5, "utc_day").num_rows == 0
    with pytest.raises(ValueError):
        cut_blocks(table, 2, "hourly")


CURRENT = BlockLayout(200_000, "utc_day", block_layout_settings())
LEGACY = BlockLayout(200_000, "rows", legacy_insert_settings())


@pytest.mark.parametrize("attempts,status,expected", [
    (0, "pending", (CURRENT, False)),   # never sent: nothing carries its token yet
    (1, "pending", (LEGACY, True)),     # sent by the old sink: its blocks are the old ones
    (0, "acked", (LEGACY, True)),       # acknowledged, then a member reset by an operator
])
def test_a_group_recorded_before_0006_gets_a_layout(attempts: int, status: str,
                                                    expected: tuple[BlockLayout, bool]) -> None:
    group = InsertGroup(1, "rollup_minute", "p:g1", (1, 2), 10, "rows", attempts, status)
    assert resolve_layout(group, current=CURRENT, legacy=LEGACY) == expected


def test_layout_settings_are_the_insert_settings_without_the_token() -> None:
    assert {**block_layout_settings(async_insert=True), "insert_deduplication_token": "t"} == \
        insert_settings("t", async_insert=True)
    legacy = legacy_insert_settings(async_insert=True)
    assert legacy.pop("max_partitions_per_insert_block") == 0  # lifted: old blocks may span > 100 days
    assert legacy == block_layout_settings(async_insert=True)  # otherwise exactly what the old sink sent
    with pytest.raises(InvariantViolation):
        BlockLayout(0, "utc_day", {})


@pytest.mark.parametrize("error,kind", [
    (DatabaseError("Code: 60. DB::Exception: Unknown table", code=60), "permanent"),
    (DatabaseError("x", code=516), "config"),
    (DatabaseError("x", code=81), "config"),
    (DatabaseError("x", code=252), "transient"),   # TOO_MANY_PARTS; see app/clickhouse/errors.py
    (DatabaseError("x", code=242), "transient"),   # TABLE_IS_READ_ONLY
    (DatabaseError("x", code=159), "transient"),   # TIMEOUT_EXCEEDED
    (DatabaseError("x", code=9999), "permanent"),  # unknown: a loud stop, not an endless loop
    (DatabaseError("HTTP driver received HTTP status 401, server response: Code: 193, e.displayText() = "
                   "DB::Exception: Wrong password for user pipeline"), "config"),
    (OperationalError("HTTPConnectionPool: Read timed out"), "transient"),
    (ConnectionRefusedError(), "transient"),
    (ProgrammingError("Unrecognized column type"), "permanent"),
])
def test_classification_by_code(error: BaseException, kind: str) -> None:
    assert classify(error).kind == kind


def test_translation_names_code_and_masks_the_password() -> None:
    url = "http://pipeline:hunter2@127.0.0.1:8123/default"
    config = translate(DatabaseError("Code: 193, e.displayText() = DB::Exception: Wrong password\nmore"),
                       "connecting", url)
    assert isinstance(config, ClickHouseConfigError) and config.exit_code == 2
    assert "authentication failed (code 193 WRONG_PASSWORD)" in str(config) and "hunter2" not in str(config)
    assert "\n" not in str(config)
    permanent = translate(DatabaseError("Code: 60. Unknown table", code=60, name="UNKNOWN_TABLE"), "the insert", url)
    assert type(permanent) is ClickHouseRejected and permanent.exit_code == 1 and permanent.code == 60
    assert isinstance(translate(OperationalError("reset"), "the insert", url), RetryableError)
