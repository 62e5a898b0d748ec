"""Rebuilding several partitions at once (app/processor/rebuild.py, ledger/restore.py
`restore_partitions`): every payload read once, each partition's rows loaded by its own
worker, must give exactly the state that rebuilding each partition on its own gives
(`restore_windows`: its snapshot, then its rows of every later batch); and a processor that
starts on an empty state directory rebuilds all its partitions that way and ends exact."""

from __future__ import annotations

import json

from app.ledger.ledger import Ledger
from app.ledger.restore import restore_windows
from app.processor.leveldb_store import LevelDBOptions, LevelDBWindowStore
from app.processor.rebuild import rebuild
from app.processor.state import InMemoryWindowStore, final_stops
from app.processor.windows import LatenessPolicy
from tests.conftest import Pipeline
from tests.helpers import wait_for

GEN = ("--seed", "3", "--accounts", "3000", "--partitions", "3", "--late-fraction", "0.05",
       "--invalid-fraction", "0.01", "--event-time-rate", "200")
# a snapshot after the first seconds, then more batches: the restore needs both
SMALL = ("--batch-max-wait", "0.05s", "--poll-records", "2000", "--snapshot-interval", "0.3s", "--log-level", "info")


def _items(store: InMemoryWindowStore | LevelDBWindowStore) -> dict:  # type: ignore[type-arg]
    return dict(store.items())


def test_rebuilding_partitions_at_once_equals_one_by_one(pipeline: Pipeline) -> None:
    pipeline.gen(*GEN, "--events", "40000")
    # a running processor publishes a snapshot; stopped once the ledger has one
    first = pipeline.start("app.processor", *SMALL, "--state-dir", str(pipeline.tmp / "a"))

    def snapshots() -> int:
        pipeline.alive(first)
        with pipeline.ledger() as conn:
            row = conn.execute("SELECT count(*) FROM window_snapshot WHERE pipeline_id = %s",
                               (pipeline.pipeline_id,)).fetchone()
        return int(row[0]) if row else 0

    wait_for(snapshots, 120, "a published snapshot")
    first.terminate()
    assert first.wait(60) == 0, pipeline.log(first)[-3000:]
    pipeline.gen(*GEN, "--events", "20000", "--seed", "4", "--start-time", "2025-11-20T00:03:20Z")
    pipeline.processor("--batch-max-wait", "0.05s", "--poll-records", "2000", "--snapshot-interval", "1h",
                       "--state-dir", str(pipeline.tmp / "a"))
    ledger = Ledger(pipeline.database_url, pipeline.pipeline_id, pipeline.topic)
    try:
        one_by_one = {}
        for p in range(3):
            store = InMemoryWindowStore(p)
            for table in restore_windows(ledger, p):
                store.load_table(table)
            one_by_one[p] = _items(store)
        assert all(one_by_one.values())
        at_once = {p: InMemoryWindowStore(p) for p in range(3)}
        rows = rebuild(ledger, at_once)
        assert all(rows[p] > 0 for p in range(3))
        assert {p: _items(s) for p, s in at_once.items()} == one_by_one
        # the LevelDB store, with a window cache too small to hold them (on disk only) and large enough
        for cache in (10, 1_000_000):
            stores = {p: LevelDBWindowStore(p, pipeline.tmp / f"ldb-{cache}-{p}", LevelDBOptions(cache_windows=cache))
                      for p in range(3)}
            rebuild(ledger, stores)
            assert {p: _items(s) for p, s in stores.items()} == one_by_one
            for s in stores.values():
                s.close()
        # windows final under a partition's watermark are not loaded at all: the same state
        # as loading them and dropping them (what a restore does right after)
        with pipeline.ledger() as conn:
            marks = dict(conn.execute("SELECT partition, max_event_time_ms FROM partition_state WHERE pipeline_id = %s",
                                      (pipeline.pipeline_id,)).fetchall())
        policy = LatenessPolicy()
        open_from = {p: final_stops(policy, policy.watermark_ms(marks[p])) for p in range(3)}
        trimmed = {p: InMemoryWindowStore(p) for p in range(3)}
        rows_trimmed = rebuild(ledger, trimmed, open_from)
        assert sum(rows_trimmed.values()) < sum(rows.values())  # final windows were left out
        for p in range(3):
            trimmed[p].drop_final(policy, policy.watermark_ms(marks[p]))
            at_once[p].drop_final(policy, policy.watermark_ms(marks[p]))
        assert {p: _items(s) for p, s in trimmed.items()} == {p: _items(s) for p, s in at_once.items()}
        assert all(_items(s) for s in trimmed.values())
    finally:
        ledger.close()


def test_a_processor_on_an_empty_state_dir_rebuilds_every_partition_and_stays_exact(pipeline: Pipeline) -> None:
    pipeline.gen(*GEN, "--events", "30000")
    pipeline.processor(*SMALL, "--state-dir", str(pipeline.tmp / "a"))
    pipeline.gen(*GEN, "--events", "10000", "--seed", "5", "--start-time", "2025-11-20T00:02:30Z")
    second = pipeline.processor(*SMALL, "--state-dir", str(pipeline.tmp / "b"))  # a new host: nothing local
    restores = [json.loads(line) for line in second.stderr.splitlines() if '"partition_restored"' in line]
    assert sorted(r["partition"] for r in restores) == [0, 1, 2], second.stderr[-3000:]
    assert all(r["state"] == "rebuilt" and r["restored_rows"] > 0 for r in restores), restores
    pipeline.sink()
    res = pipeline.verify()
    assert res.returncode == 0 and "EXACT" in res.stdout, f"{res.stdout[-3000:]}\n{res.stderr[-2000:]}"
