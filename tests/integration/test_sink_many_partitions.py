"""One group whose rows span 150 day partitions is inserted and acknowledged, exactly once.

ClickHouse refuses a block that touches more than `max_partitions_per_insert_block` (100)
partitions (code 252), and the sink used to retry that forever with the group still open:
open groups resume first, so delivery stopped for good and backpressure then halted the
processor. This test failed on main at 6e6c674 (the sink never finished: code 252 retried
until the test's deadline) and passes since 9b4b256 (blocks cut at UTC day boundaries,
recorded with the group's layout)."""

from __future__ import annotations

import subprocess

from app.clickhouse.client import connect
from tests.conftest import Pipeline
from tests.integration.test_sink_exactly_once import (
    TABLES,
    assert_exactly_once,
    freeze_merges,
    groups,
)

DAYS = 150
EVENTS = 1_800
# one event every 2 hours of event time: 150 days, each event its own minute and hour window
GEN = ("--seed", "21", "--events", str(EVENTS), "--accounts", "200", "--partitions", "2",
       "--event-time-rate", f"{EVENTS / (DAYS * 86_400):.10f}", "--late-fraction", "0", "--invalid-fraction", "0")


def test_a_group_over_150_day_partitions_is_acknowledged_and_exact(pipeline: Pipeline) -> None:
    p = pipeline
    p.gen(*GEN)
    p.processor("--batch-max-wait", "0.05s")
    freeze_merges(p.clickhouse_url)
    try:
        p.run("app.sink", "--until-idle", "--batch-rows", "1000000", timeout=120)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"the sink did not finish a 150-day group within 120 s:\n"
                             f"{(e.stderr or b'')[-3000:]!r}") from e
    gs = groups(p)
    assert sorted(g[1] for g in gs) == sorted(TABLES), f"expected one group per table, got {gs}"
    assert all(g[5] == "acked" for g in gs)
    client = connect(p.clickhouse_url)
    try:
        for table in TABLES:  # the precondition: one insert really spanned >= 150 partitions
            days = client.query(f"SELECT uniqExact(toYYYYMMDD(window_start)) FROM {table}").result_rows[0][0]
            assert days >= DAYS, f"{table} spans only {days} day partitions"
    finally:
        client.close()
    assert_exactly_once(p)
