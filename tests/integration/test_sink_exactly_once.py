"""Coalesced inserts stay exactly once through insert faults, a SIGKILL part way through a
large multi-partition insert, async inserts with replays, and connection errors at the
client seam. Every test ends with `verify` (FINAL equals the truth) AND a raw audit of
ClickHouse read before any merge: the raw row count equals the rows the ledger recorded
and no two stored rows share (window_start, account_id, country, version) — the dedup
token, not a later merge, stopped every replayed block.

Merges are frozen by a table setting (`SYSTEM STOP MERGES` only lasts as long as the
engine instance, and each chDB process is a new one); the audit also checks that every
active part still covers a single insert block, i.e. that no merge ran at all."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from clickhouse_connect.driver.exceptions import OperationalError
from structlog.testing import capture_logs

from app.clickhouse.client import connect, migrate
from app.core.config import ServiceSettings
from app.sink.groups import GroupPolicy
from app.sink.loop import Sink, SinkConfig
from app.sink.writer import ClickHouseWriter
from tests.conftest import Pipeline
from tests.helpers import assert_crashed_at, wait_for

TABLES = ("rollup_minute", "rollup_hour")
FREEZE_MERGES = ("ALTER TABLE {} MODIFY SETTING max_bytes_to_merge_at_max_space_in_pool = 1, "
                 "max_bytes_to_merge_at_min_space_in_pool = 1")
# ~2.3 days of event time: every insert spans 3 day partitions
GEN = ("--seed", "5", "--events", "40000", "--accounts", "4000", "--partitions", "3", "--event-time-rate", "0.2",
       "--late-fraction", "0.02", "--invalid-fraction", "0.005")
# a checkpoint after every poll of 2000 records (--batch-rows 1): ~20 batches per table
# whatever the machine's load (a time-based cut made 3 groups on a loaded CI machine)
SMALL = ("--batch-max-wait", "0.05s", "--poll-records", "2000", "--batch-rows", "1")


def freeze_merges(url: str) -> dict[str, Path]:
    """Create the tables, freeze their merges, return their data directories."""
    client = connect(url)
    try:
        migrate(client)
        dirs = {}
        for table in TABLES:
            client.command(FREEZE_MERGES.format(table))
            dirs[table] = Path(client.query("SELECT data_paths[1] FROM system.tables WHERE database = "
                                            "currentDatabase() AND name = {t:String}",
                                            parameters={"t": table}).result_rows[0][0])
        return dirs
    finally:
        client.close()


def raw_audit(url: str) -> dict[str, tuple[int, int, int]]:
    """Per table: (raw rows, keys stored twice at one version, merged parts)."""
    client = connect(url)
    try:
        out = {}
        for t in TABLES:
            client.command(f"SYSTEM STOP MERGES {t}")
            raw = client.query(f"SELECT count() FROM {t}").result_rows[0][0]
            dup = client.query(f"SELECT count() FROM (SELECT window_start, account_id, country, version, count() c "
                               f"FROM {t} GROUP BY ALL HAVING c > 1)").result_rows[0][0]
            merged = client.query("SELECT count() FROM system.parts WHERE database = currentDatabase() AND table "
                                  "= {t:String} AND active AND min_block_number <> max_block_number",
                                  parameters={"t": t}).result_rows[0][0]
            out[t] = (int(raw), int(dup), int(merged))
        return out
    finally:
        client.close()


def ledger_rows(p: Pipeline) -> dict[str, int]:
    with p.ledger() as conn:
        rows = conn.execute("SELECT table_name, sum(row_count), count(*) FILTER (WHERE status <> 'acked') "
                            "FROM sink_batch WHERE pipeline_id = %s GROUP BY 1", (p.pipeline_id,)).fetchall()
    assert all(r[2] == 0 for r in rows), f"batches left pending: {rows}"
    return {r[0]: int(r[1]) for r in rows}


def groups(p: Pipeline) -> list[tuple[Any, ...]]:
    with p.ledger() as conn:
        return conn.execute("SELECT group_id, table_name, member_batch_ids, row_count, reason, status, "
                            "insert_attempts FROM sink_group WHERE pipeline_id = %s ORDER BY seq",
                            (p.pipeline_id,)).fetchall()


def assert_exactly_once(p: Pipeline) -> None:
    res = p.verify()
    assert res.returncode == 0 and "EXACT" in res.stdout, f"verify:\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}"
    expected = ledger_rows(p)
    audit = raw_audit(p.clickhouse_url)
    for t in TABLES:
        assert audit[t] == (expected.get(t, 0), 0, 0), f"{t}: (raw, doubled keys, merged parts) = {audit[t]}, " \
                                                       f"ledger rows {expected.get(t, 0)}"


@pytest.mark.parametrize("faults", [
    ("--fail-insert-every", "2", "--fail-insert-mode", "before"),
    ("--fail-insert-probability", "0.3", "--fail-insert-seed", "7", "--fail-insert-mode", "after"),
    ("--fail-insert-every", "2", "--fail-insert-mode", "mid"),
], ids=["before", "after", "mid"])
def test_injected_insert_faults_are_retried_to_an_exact_result(pipeline: Pipeline,
                                                               faults: tuple[str, ...]) -> None:
    p = pipeline
    p.gen(*GEN)
    p.processor(*SMALL)
    freeze_merges(p.clickhouse_url)
    res = p.sink("--batch-rows", "6000", "--insert-block-rows", "1000", "--fault-injection", *faults)
    assert res.stderr.count('"insert_fault_injected"') >= 2, res.stderr[-3000:]
    gs = groups(p)
    assert len(gs) >= 4 and all(g[5] == "acked" for g in gs)
    assert sum(g[6] for g in gs) > len(gs)  # some groups were sent more than once
    assert all(g[4] != "rows" or g[3] >= 6000 for g in gs)
    assert_exactly_once(p)


def test_sink_killed_during_a_large_multi_partition_insert(pipeline: Pipeline) -> None:
    """SIGKILL once some parts of a ~100k-row, 5-day insert are on disk; the restarted
    sink re-sends the very same group (members, rows, blocks, token)."""
    p = pipeline
    p.gen("--seed", "8", "--events", "120000", "--accounts", "40000", "--partitions", "3",
          "--event-time-rate", "0.3", "--late-fraction", "0.01")
    p.processor()
    dirs = freeze_merges(p.clickhouse_url)
    sink_args = ("--batch-rows", "1000000", "--insert-block-rows", "500")

    def minute_parts() -> int:
        return sum(1 for d in dirs["rollup_minute"].iterdir() if d.name[:1].isdigit())

    sink = p.start("app.sink", "--until-idle", *sink_args)
    wait_for(lambda: minute_parts() >= 5 or sink.poll() is not None, 120,
             "5 parts of the large insert on disk", interval=0.001)
    sink.send_signal(signal.SIGKILL)
    assert sink.wait(timeout=30) == -signal.SIGKILL, f"the sink ended before the kill:\n{p.log(sink)[-3000:]}"

    before = {g[1]: g for g in groups(p)}
    minute = before["rollup_minute"]
    assert minute[5] == "pending" and minute[6] == 1  # recorded and sent once, never acknowledged
    partial = raw_audit(p.clickhouse_url)["rollup_minute"]
    assert 0 < partial[0] < minute[3], f"the kill did not land mid-insert: {partial[0]} of {minute[3]} rows"

    p.sink(*sink_args)
    after = [g for g in groups(p) if g[1] == "rollup_minute"]
    assert len(after) == 1, "a different group was formed instead of resuming the open one"
    assert after[0][:5] == minute[:5] and after[0][5:] == ("acked", 2)
    assert_exactly_once(p)


def test_async_inserts_with_a_crash_and_a_full_replay(pipeline: Pipeline) -> None:
    p = pipeline
    p.gen(*GEN)
    p.processor(*SMALL)
    freeze_merges(p.clickhouse_url)
    args = ("--async-insert", "--batch-rows", "6000", "--insert-block-rows", "2000")
    killed = p.sink(*args, crash_at="sink.after_insert:2", check=False)
    assert_crashed_at(killed.returncode, killed.stderr, "sink.after_insert", nth=2)
    p.sink(*args)
    assert_exactly_once(p)
    audited = raw_audit(p.clickhouse_url)
    with p.ledger() as conn:  # an operator replays everything
        conn.execute("UPDATE sink_batch SET status = 'pending', acked_at = NULL WHERE pipeline_id = %s",
                     (p.pipeline_id,))
    p.sink(*args)
    assert raw_audit(p.clickhouse_url) == audited
    assert_exactly_once(p)


class FlakyClient:
    """The real client, except that scheduled insert calls raise clickhouse-connect's
    OperationalError, as a server connection would: 'refused' before sending anything,
    'timeout' after the server applied the insert."""

    def __init__(self, inner: Any, schedule: list[str]) -> None:
        self.inner = inner
        self.schedule = schedule

    def insert_arrow(self, table: str, rows: pa.Table, **kwargs: Any) -> Any:
        # rollup inserts only: the delivery check of a retried group uploads its keys too
        fault = self.schedule.pop(0) if self.schedule and table in TABLES else None
        if fault == "refused":
            raise OperationalError("Error HTTPConnectionPool(host='ch', port=8123): Connection refused")
        result = self.inner.insert_arrow(table, rows, **kwargs)
        if fault == "timeout":
            raise OperationalError("Error HTTPConnectionPool(host='ch', port=8123): Read timed out. (read timeout=300)")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_connection_errors_at_the_client_seam_are_retried_with_clear_logs(pipeline: Pipeline) -> None:
    p = pipeline
    p.gen(*GEN)
    p.processor(*SMALL)
    freeze_merges(p.clickhouse_url)
    schedule = ["refused", "ok", "timeout", "refused", "timeout"]
    clients: list[FlakyClient] = []

    def connect_fn(url: str) -> Any:
        clients.append(FlakyClient(connect(url), schedule))
        return clients[-1]

    services = ServiceSettings(kafka_bootstrap_servers=p.bootstrap, database_url=p.database_url,
                               clickhouse_url=p.clickhouse_url, events_topic=p.topic, dlq_topic=p.dlq_topic,
                               pipeline_id=p.pipeline_id)
    sink = Sink(SinkConfig(services=services, until_idle=True, policy=GroupPolicy(batch_rows=6000),
                           insert_block_rows=1000),
                ClickHouseWriter(p.clickhouse_url, connect_fn=connect_fn))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with capture_logs() as logs:
            assert sink.run() == 0
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert not schedule
    failed = [e for e in logs if e["event"] == "clickhouse_insert_failed"]
    assert len(failed) == 4
    assert all(e["error_class"] == "OperationalError" and e["transport"] and e["reconnect"] for e in failed)
    assert sum("Read timed out" in e["error"] for e in failed) == 2
    retries = [e for e in logs if e["event"] == "service_retry" and e["what"] == "clickhouse_insert"]
    assert len(retries) == 4 and all("connection" in e["error"] for e in retries)
    assert len(clients) == 5  # a fresh connection after every transport error
    assert_exactly_once(p)  # the two inserts applied before their timeout were not stored twice
