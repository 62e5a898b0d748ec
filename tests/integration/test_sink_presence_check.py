"""The sink's delivery check against a real embedded ClickHouse (no Kafka, no ledger):
a row is present when its key is stored with its version or a newer one (what FINAL
shows), whatever merges did; absent keys, older versions only, and other windows are
missing; doubled raw rows change nothing; the check leaves no keys behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from app.clickhouse.client import insert_settings
from app.clickhouse.presence import CHECK_KEYS
from app.sink.groups import ROLLUP_COLUMNS
from app.sink.writer import ClickHouseWriter

T0 = 1_764_115_200  # a UTC midnight


def rows(*keys: tuple[int, int, str, int]) -> pa.Table:
    """(window_start, account_id, country, version) -> rollup rows; the version names the
    batch too (one ledger batch per checkpoint and table), values derive from it."""
    ws, acc, country, version = (list(c) for c in zip(*keys, strict=True))
    return pa.table({
        "window_start": pa.array(np.array(ws, dtype=np.int64)).cast(pa.timestamp("s")),
        "account_id": pa.array(np.array(acc, dtype=np.uint64)),
        "country": pa.array(country),
        "event_count": pa.array(np.array(version, dtype=np.uint64)),
        "sum_amount": pa.array(np.array(version, dtype=np.int64)),
        "batch_id": pa.array(np.array(version, dtype=np.uint64)),
        "version": pa.array(np.array(version, dtype=np.uint64)),
    }).select(list(ROLLUP_COLUMNS))


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[ClickHouseWriter]:
    w = ClickHouseWriter(f"chdb://{tmp_path / 'clickhouse'}")
    w.prepare()
    yield w
    w.close()


def test_present_means_this_version_or_a_newer_one(writer: ClickHouseWriter) -> None:
    stored = rows((T0, 1, "DE", 5), (T0, 2, "DE", 5), (T0, 3, "FR", 5), (T0 + 3600, 4, "DE", 5),
                  (T0, 6, "DE", 2), (T0, 6, "DE", 9))
    writer.insert("rollup_hour", stored, "t1", None)
    writer.insert("rollup_hour", rows((T0, 1, "DE", 5)), "t2", None)  # a raw double of one row
    group = rows(
        (T0, 1, "DE", 5),          # 0: stored at its version (twice): present
        (T0, 2, "DE", 3),          # 1: stored at a newer version: present (FINAL shows the newer)
        (T0, 3, "FR", 7),          # 2: only an older version stored: missing
        (T0, 4, "DE", 5),          # 3: this key is stored in another window only: missing
        (T0, 5, "DE", 5),          # 4: never stored: missing
        (T0, 6, "DE", 9),          # 5: the newest of two stored versions: present
        (T0, 3, "DE", 5),          # 6: same account, other country: missing
    )
    assert writer.missing_rows("rollup_hour", group).tolist() == [2, 3, 4, 6]
    assert writer.missing_rows("rollup_hour", stored).size == 0
    assert writer.missing_rows("rollup_minute", group).tolist() == list(range(7))  # other table: nothing there
    client = writer.client()
    assert client.query(f"SELECT count() FROM {CHECK_KEYS}").result_rows == [(0,)]  # no keys left behind


def test_a_whole_group_is_proven_without_uploading_its_keys(writer: ClickHouseWriter) -> None:
    """Step 1 (whole batches, one aggregate) suffices when nothing is missing; the key
    table of step 2 is not even created in the session."""
    group = rows(*[(T0 + 60 * (a % 7), a, "DE", 3 + a % 2) for a in range(2000)])
    writer.insert("rollup_minute", group, "g", None)
    writer.insert("rollup_minute", group.slice(0, 500), "g-again", None)  # raw doubles count once
    client = writer.client()
    assert writer.missing_rows("rollup_minute", group).size == 0
    assert client.query(f"EXISTS TEMPORARY TABLE {CHECK_KEYS}").result_rows == [(0,)]
    assert writer.missing_rows("rollup_minute", rows((T0, 7, "DE", 4), (T0, 7, "FR", 4))).tolist() == [1]
    assert client.query(f"EXISTS TEMPORARY TABLE {CHECK_KEYS}").result_rows == [(1,)]


def test_rows_merged_away_by_a_newer_version_stay_present(writer: ClickHouseWriter) -> None:
    old = rows(*[(T0, a, "DE", 3) for a in range(1000)])
    new = rows(*[(T0, a, "DE", 4) for a in range(0, 1000, 2)])
    writer.insert("rollup_minute", old, "old", None)
    writer.insert("rollup_minute", new, "new", None)
    client = writer.client()
    client.command("OPTIMIZE TABLE rollup_minute FINAL")
    assert client.query("SELECT count() FROM rollup_minute").result_rows == [(1000,)]  # 500 old rows merged away
    assert writer.missing_rows("rollup_minute", old).size == 0
    assert writer.missing_rows("rollup_minute", new).size == 0
    newer = rows(*[(T0, a, "DE", 5) for a in range(0, 1000, 250)])
    assert writer.missing_rows("rollup_minute", newer).tolist() == [0, 1, 2, 3]


def test_the_check_finds_exactly_the_rows_of_a_lost_block(writer: ClickHouseWriter, tmp_path: Path) -> None:
    n = 50_000
    rng = np.random.default_rng(5)
    group = rows(*[(T0 + int(h) * 3600, int(a), "DE", 7) for h, a in
                   sorted(zip(rng.integers(0, 48, n), rng.choice(10**7, n, replace=False), strict=True))])
    keep = np.ones(n, dtype=bool)
    keep[10_000:20_000] = False  # one block of the insert never landed
    client = writer.client()
    client.insert_arrow("rollup_hour", group.filter(pa.array(keep)), settings=insert_settings("g"))
    assert writer.missing_rows("rollup_hour", group).tolist() == list(range(10_000, 20_000))


def test_only_rollup_tables_can_be_checked(writer: ClickHouseWriter) -> None:
    with pytest.raises(ValueError, match="not a rollup table"):
        writer.missing_rows("system.one; DROP TABLE rollup_hour", rows((T0, 1, "DE", 1)))
