"""What the sink relies on from the ClickHouse we ship (chDB, embedded), proven on it:
block layout, per-block dedup of retried inserts (also after a SIGKILL part way through
a multi-partition insert), the dedup-window sizing rule, and the read-side views.

No Kafka or Postgres here: rows are synthetic, inserts go through the sink's writer."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from clickhouse_connect.driver.client import Client

from app.clickhouse.client import connect, insert_settings, migrate
from app.clickhouse.schema import LATEST_VIEWS
from app.sink.groups import split_blocks
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
DAY = 86_400
T0 = 1_763_596_800  # 2025-11-20T00:00:00Z
FREEZE_MERGES = ("ALTER TABLE {} MODIFY SETTING max_bytes_to_merge_at_max_space_in_pool = 1, "
                 "max_bytes_to_merge_at_min_space_in_pool = 1")


def rollup_rows(n: int, days: int, seed: int, *, accounts: int = 2**40, version: int = 1) -> pa.Table:
    """n rows over `days` day partitions, sorted by window_start like the sink's groups."""
    rng = np.random.default_rng(seed)
    ws = np.sort(T0 + rng.integers(0, days * DAY // 60, n) * 60)
    acc = rng.integers(0, accounts, n).astype(np.uint64)
    return pa.Table.from_arrays(
        [pa.array(ws).cast(pa.timestamp("s")), pa.array(acc), pa.array(rng.choice(["DE", "FR", "US"], n)),
         pa.array(rng.integers(1, 100, n).astype(np.uint64)), pa.array(rng.integers(-10**6, 10**6, n)),
         pa.array(np.full(n, version, dtype=np.uint64)), pa.array(np.full(n, version, dtype=np.uint64))],
        names=["window_start", "account_id", "country", "event_count", "sum_amount", "batch_id", "version"])


def audit(client: Client, table: str = "rollup_minute") -> tuple[int, int, int]:
    """(raw rows, rows sharing (window, key, version) with another, merged parts)."""
    raw = client.query(f"SELECT count() FROM {table}").result_rows[0][0]
    dup = client.query(f"SELECT count() FROM (SELECT window_start, account_id, country, version, count() AS c "
                       f"FROM {table} GROUP BY ALL HAVING c > 1)").result_rows[0][0]
    merged = client.query("SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = "
                          "{t:String} AND active AND min_block_number <> max_block_number",
                          parameters={"t": table}).result_rows[0][0]
    return int(raw), int(dup), int(merged)


def active_parts(client: Client, table: str = "rollup_minute") -> int:
    return int(client.query("SELECT count() FROM system.parts WHERE database = currentDatabase() AND "
                            "table = {t:String} AND active", parameters={"t": table}).result_rows[0][0])


@pytest.fixture
def ch(tmp_path: Path) -> Iterator[tuple[str, Client]]:
    url = f"chdb://{tmp_path / 'clickhouse'}"
    client = connect(url)
    migrate(client)
    for table in ("rollup_minute", "rollup_hour"):
        client.command(FREEZE_MERGES.format(table))
    try:
        yield url, client
    finally:
        client.close()


def test_each_record_batch_is_one_block_whatever_its_size(ch: tuple[str, Client]) -> None:
    _url, client = ch
    rows = split_blocks(rollup_rows(100_000, 3, seed=1), 7_000)
    client.insert_arrow("rollup_minute", rows, settings=insert_settings("layout"))
    # one part per (block, day partition it touches): no squashing, no splitting
    expected = sum(len(set(pc_day)) for pc_day in
                   ([int(t.timestamp()) // DAY for t in b.column(0).to_pylist()] for b in rows.to_batches()))
    assert active_parts(client) == expected == 15 + 2
    assert audit(client) == (100_000, 0, 0)


@pytest.mark.parametrize("async_insert", [False, True], ids=["sync", "async"])
def test_a_prefix_of_the_blocks_then_the_whole_insert_stores_every_row_once(
        ch: tuple[str, Client], async_insert: bool) -> None:
    """What `--fail-insert-mode mid` simulates: blocks numbered within an insert, so the
    prefix's blocks carry the ids of the whole insert's first blocks."""
    _url, client = ch
    rows = split_blocks(rollup_rows(60_000, 4, seed=2), 5_000)
    prefix = pa.Table.from_batches(rows.to_batches()[:5], schema=rows.schema)
    settings = insert_settings("p:g42", async_insert=async_insert)
    client.insert_arrow("rollup_minute", prefix, settings=settings)
    assert audit(client)[0] == 25_000
    client.insert_arrow("rollup_minute", rows, settings=settings)
    client.insert_arrow("rollup_minute", rows, settings=settings)
    assert audit(client) == (60_000, 0, 0)


def test_a_retry_after_the_dedup_window_moved_on_is_not_recognised(ch: tuple[str, Client]) -> None:
    """The sizing rule, shown with a window of 4 parts: a retry is recognised only while
    every part of the first attempt is among the table's last `window` parts."""
    _url, client = ch
    client.command("CREATE TABLE probe AS rollup_minute ENGINE = ReplacingMergeTree(version) "
                   "PARTITION BY toYYYYMMDD(window_start) ORDER BY (window_start, account_id, country) "
                   "SETTINGS non_replicated_deduplication_window = 4")
    client.command(FREEZE_MERGES.format("probe"))
    group = split_blocks(rollup_rows(3_000, 1, seed=3), 1_000)           # 3 parts
    client.insert_arrow("probe", group, settings=insert_settings("g1"))
    client.insert_arrow("probe", group, settings=insert_settings("g1"))  # within the window: dropped
    assert audit(client, "probe")[0] == 3_000
    client.insert_arrow("probe", rollup_rows(10, 1, seed=4), settings=insert_settings("other"))  # 4 parts now
    client.insert_arrow("probe", group, settings=insert_settings("g1"))  # still all 3 within the last 4
    assert audit(client, "probe")[0] == 3_010
    client.insert_arrow("probe", rollup_rows(10, 1, seed=5), settings=insert_settings("other2"))
    # g1's first block fell out of the window: it is stored again, and its new id evicts
    # g1's second block before that one is checked, and so on: the whole group is stored twice
    client.insert_arrow("probe", group, settings=insert_settings("g1"))
    raw, dup, _ = audit(client, "probe")
    assert (raw, dup) == (3_020 + 3_000, 3_000)


CHILD = r"""
import sys
from app.clickhouse.client import connect
from app.sink.groups import split_blocks
from app.sink.writer import ClickHouseWriter
from tests.integration.test_sink_clickhouse import rollup_rows
url, n, days, block = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = split_blocks(rollup_rows(n, days, seed=9), block)
writer = ClickHouseWriter(url)
writer.client()
print("READY", flush=True)
writer.insert("rollup_minute", rows, "p:g-large")
print("DONE", flush=True)
"""


def test_insert_killed_after_some_parts_then_retried_stores_every_row_once(tmp_path: Path) -> None:
    """SIGKILL the inserting process once some of a large multi-partition insert's parts
    are on disk; the same insert (same rows, same blocks, same token) from a new process
    completes it: every row exactly once in the raw table, no merge involved."""
    n, days, block = 1_500_000, 20, 10_000
    url = f"chdb://{tmp_path / 'clickhouse'}"
    client = connect(url)
    migrate(client)
    client.command(FREEZE_MERGES.format("rollup_minute"))
    data_dir = Path(client.query("SELECT data_paths[1] FROM system.tables WHERE database = currentDatabase() "
                                 "AND name = 'rollup_minute'").result_rows[0][0])
    client.close()

    def committed_parts() -> int:
        return sum(1 for d in data_dir.iterdir() if d.name[:1].isdigit())

    argv = [sys.executable, "-c", CHILD, url, str(n), str(days), str(block)]
    child = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "READY", child.stderr
        wait_for(lambda: committed_parts() >= 10 or child.poll() is not None, 120,
                 "10 parts of the large insert on disk", interval=0.001)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, \
        f"the insert ended before the kill: {child.stderr.read()[-3000:]}"  # type: ignore[union-attr]

    client = connect(url)
    partial = audit(client)
    client.close()
    assert 0 < partial[0] < n, f"the kill did not land mid-insert: {partial[0]} of {n} rows"
    assert partial[1:] == (0, 0)

    retry = subprocess.run(argv, check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert retry.returncode == 0 and "DONE" in retry.stdout, retry.stderr[-3000:]
    client = connect(url)
    try:
        client.command("SYSTEM STOP MERGES rollup_minute")
        assert audit(client) == (n, 0, 0)  # raw count exact, nothing shares (window, key, version)
    finally:
        client.close()


def test_final_and_the_latest_views_never_double_count_before_or_after_merges(ch: tuple[str, Client]) -> None:
    _url, client = ch
    assert {r[0] for r in client.query("SELECT name FROM system.tables WHERE database = currentDatabase()"
                                       ).result_rows} >= set(LATEST_VIEWS.values())
    # 3 versions of 20k windows over 3 days, each version its own insert (own parts)
    base = rollup_rows(20_000, 3, seed=6, accounts=5_000)
    base = base.group_by(["window_start", "account_id", "country"]).aggregate([]).sort_by("window_start")
    n = base.num_rows
    truth_count = truth_amount = 0
    for version in (3, 1, 2):  # out of order on purpose: the highest version wins, not the last insert
        counts = np.full(n, version * 10, dtype=np.uint64)
        amounts = np.arange(n, dtype=np.int64) * version
        table = pa.Table.from_arrays(
            [base.column(0), base.column(1), base.column(2), pa.array(counts), pa.array(amounts),
             pa.array(np.full(n, version, dtype=np.uint64)), pa.array(np.full(n, version, dtype=np.uint64))],
            names=["window_start", "account_id", "country", "event_count", "sum_amount", "batch_id", "version"])
        client.insert_arrow("rollup_minute", split_blocks(table, 4_000), settings=insert_settings(f"v{version}"))
        if version == 3:
            truth_count, truth_amount = int(counts.sum()), int(amounts.sum())
    readers = {
        "final": "SELECT count(), sum(event_count), sum(sum_amount) FROM rollup_minute FINAL",
        "final_per_partition": "SELECT count(), sum(event_count), sum(sum_amount) FROM rollup_minute FINAL "
                               "SETTINGS do_not_merge_across_partitions_select_final = 1",
        "view": "SELECT count(), sum(event_count), sum(sum_amount) FROM rollup_minute_latest",
    }
    expected = (n, truth_count, truth_amount)

    def read_all() -> dict[str, tuple[int, int, int]]:
        return {k: tuple(int(x) for x in client.query(q).result_rows[0]) for k, q in readers.items()}

    assert read_all() == dict.fromkeys(readers, expected)  # before any merge
    plain = client.query("SELECT count() FROM rollup_minute").result_rows[0][0]
    assert plain == 3 * n  # what a reader without FINAL or the view would count
    client.command("ALTER TABLE rollup_minute RESET SETTING max_bytes_to_merge_at_max_space_in_pool, "
                   "max_bytes_to_merge_at_min_space_in_pool")
    client.command("OPTIMIZE TABLE rollup_minute FINAL")
    assert client.query("SELECT count() FROM rollup_minute").result_rows[0][0] == n
    assert read_all() == dict.fromkeys(readers, expected)  # after merges
