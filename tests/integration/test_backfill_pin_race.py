"""A backfill never deletes or hides a live row its pin does not cover (issue 9, item 5).

A partition with no watermark at the pin (idle, or added later) does not hold the settled
windows back, so it may still fold an old event into one of them and the live processor
emits that window after the pin. Such a row is not in the backfill's truth (the replay
stops at the pinned positions); if its version were below the backfill's, the backfill
would take it for a corrupt extra key and delete it, and the live processor never emits
it again.

The tests pause the backfill (SIGSTOP) right after it read its pin, let the live
processor and sink land an event of the idle partition for the backfilled hour, then let
the backfill go on (SIGCONT) -- straight to the end, or killed at `backfill.after_start`
and resumed. The live key must survive in FINAL and verify must be exact.
"""

from __future__ import annotations

import json
import signal

import pytest

from app.gen.partition import partition_for_key
from tests.conftest import Pipeline
from tests.helpers import assert_crashed_at, clickhouse_rows, produce, wait_for
from tests.integration.test_backfill import (
    LIVE,
    assert_exact,
    assert_no_duplicate_versions,
    backfill,
    drained,
    holds_path,
    raw,
    stop,
    summary,
)

PARTITIONS = 2
H0 = 1_763_596_800  # 2025-11-20T00:00:00Z, the backfilled hour
HOUR = ("--from-time", "2025-11-20T00:00:00Z", "--to-time", "2025-11-20T01:00:00Z")
# Partition 0 only: one event every 10 s of event time from 00:00 to 01:05, so its
# watermark (01:04:55) settles hour 00 and all its minutes; partition 1 stays idle.
STEP_S = 10
BUSY_EVENTS = 3900 // STEP_S
LIVE_EVENT_MS = (H0 + 1800) * 1000 + 123  # 00:30:00.123, folded live by the idle partition
LIVE_AMOUNT = 777


def accounts_of(partition: int, n: int) -> list[int]:
    """The first `n` account ids whose key Kafka's default partitioner puts in `partition`."""
    out = [a for a in range(1, 10_000) if partition_for_key(str(a).encode(), PARTITIONS) == partition]
    return out[:n]


def event(i: int, account: int, country: str, time_ms: int, amount: int) -> tuple[bytes, bytes]:
    value = {"event_id": f"e-{i}", "account_id": account, "country": country, "event_time": time_ms,
             "amount": amount, "kind": "purchase"}
    return str(account).encode(), json.dumps(value).encode()


def key_rows(p: Pipeline, table: str, account: int, country: str) -> list[tuple]:  # type: ignore[type-arg]
    """The FINAL rows of one (account, country) in `table`."""
    return [r for r in clickhouse_rows(p.clickhouse_url, table, final=True) if r[1:3] == (account, country)]


@pytest.mark.parametrize("crash_at", [None, "backfill.after_start"], ids=["straight", "killed-and-resumed"])
def test_live_row_emitted_after_the_pin_survives_the_backfill(pipeline: Pipeline,
                                                              crash_at: str | None) -> None:
    p = pipeline
    busy = accounts_of(0, 8)
    (idle_account,) = accounts_of(1, 1)
    produce(p.bootstrap, p.topic, (event(i, busy[i % len(busy)], "DE" if i % 3 else "US", (H0 + i * STEP_S) * 1000,
                                         100 + i) for i in range(BUSY_EVENTS)),
            partitions=PARTITIONS, partition=0)
    processor = p.start("app.processor", *LIVE)          # live: no --until-end
    sink = p.start("app.sink")
    wait_for(lambda: p.alive(processor, sink) and drained(p, BUSY_EVENTS), 180, "the live pipeline to drain")
    idle = p.ledger_value("SELECT count(*) FROM partition_state WHERE pipeline_id = %s "
                          "AND partition = 1 AND watermark_ms IS NULL")
    assert idle == 1, "partition 1 is not idle at the pin"
    stop(sink)                                           # the backfill reads ClickHouse: the path must be free

    # the backfill reads its pin, logs backfill_start, and is frozen there (killed there, if armed)
    proc = p.start("app.backfill", *HOUR, "--json", "--log-level", "info", crash_at=crash_at)
    started = wait_for(lambda: p.logged(proc, "backfill_start"), 90, "the backfill's backfill_start line")
    assert started[0]["version"] is not None, started
    proc.send_signal(signal.SIGSTOP)  # a no-op once an armed backfill has died at its crash point
    assert proc.poll() is not None or not holds_path(proc, p), "the backfill opened ClickHouse before the pause"
    assert p.ledger_value("SELECT count(*) FROM sink_batch WHERE pipeline_id = %s "
                          "AND source = 'backfill'") == 0

    # meanwhile the idle partition folds an event of the backfilled hour; the sink lands it
    sink = p.start("app.sink")
    produce(p.bootstrap, p.topic, [event(BUSY_EVENTS, idle_account, "FR", LIVE_EVENT_MS, LIVE_AMOUNT)],
            partitions=PARTITIONS, partition=1)
    wait_for(lambda: p.alive(processor, sink) and drained(p, BUSY_EVENTS + 1), 180,
             "the live row of the idle partition to reach ClickHouse")
    live_version = p.ledger_value("SELECT max(checkpoint_id) FROM sink_batch WHERE pipeline_id = %s "
                                  "AND source = 'live' AND 1 = ANY(partitions)")
    assert live_version > 0
    stop(sink)
    live_hour = key_rows(p, "rollup_hour", idle_account, "FR")
    assert live_hour == [(H0, idle_account, "FR", 1, str(LIVE_AMOUNT), live_version)], live_hour

    # the backfill goes on from its pin
    proc.send_signal(signal.SIGCONT)
    rc = proc.wait(timeout=300)
    if crash_at is None:
        assert rc == 0, f"backfill exit {rc}\n{p.log(proc)[-3000:]}"
        done = json.loads(p.output(proc).strip().splitlines()[-1])
    else:
        assert_crashed_at(rc, p.log(proc), crash_at)
        done = summary(backfill(p, *HOUR, "--json"))
        assert done["resumed"] and done["run_no"] == 1
    assert key_rows(p, "rollup_hour", idle_account, "FR") == live_hour, "the backfill deleted the live row"
    assert done["windows"] > 0 and done["deleted_keys"] == 0, done
    assert done["version"] == started[0]["version"]      # the resumed run kept the pin's version

    sink = p.start("app.sink")
    wait_for(lambda: p.alive(processor, sink) and drained(p, BUSY_EVENTS + 1), 180,
             "the sink to deliver the backfill")
    assert processor.poll() is None                      # live processing ran throughout
    stop(sink)

    # the live row is still what readers see, and everything else is the backfill's
    assert key_rows(p, "rollup_hour", idle_account, "FR") == live_hour
    minute = key_rows(p, "rollup_minute", idle_account, "FR")
    assert minute == [(H0 + 1800, idle_account, "FR", 1, str(LIVE_AMOUNT), live_version)], minute
    hour = [r for r in clickhouse_rows(p.clickhouse_url, "rollup_hour", final=True) if r[0] == H0]
    assert {r[5] for r in hour if r[1] != idle_account} == {done["version"]}
    assert done["version"] < live_version                # the pin and the version are one instant
    assert_no_duplicate_versions(raw(p))
    assert_exact(p)
    stop(processor)
