"""Backfill against real Kafka, Postgres and embedded ClickHouse (issue 5 acceptance).

A historical hour of ClickHouse is corrupted (wrong values at a higher version, deleted
rows, a key that never existed), the backfill recomputes it from the input log, the
ordinary sink lands it, and `verify` proves the result exact; every row outside the hour
is byte-identical (values and versions) before and after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from app.clickhouse.client import connect
from tests.conftest import Pipeline
from tests.helpers import assert_crashed_at, clickhouse_rows, wait_for

EVENTS = 24_000
# 24,000 events at 5 per second of event time: 80 minutes from 2025-11-20T00:00:00Z, so
# hour 00:00 is final (watermark past 01:01) and the last minutes are still open.
GEN = ("--seed", "11", "--events", str(EVENTS), "--accounts", "400", "--partitions", "3",
       "--event-time-rate", "5", "--late-fraction", "0.03", "--invalid-fraction", "0.01")
LIVE = ("--batch-max-wait", "0.05s", "--poll-records", "1000")
H0 = 1_763_596_800  # 2025-11-20T00:00:00Z, the corrupted hour
HOUR = ("--from-time", "2025-11-20T00:00:00Z", "--to-time", "2025-11-20T01:00:00Z")
TABLES = ("rollup_minute", "rollup_hour")
# Live events while the backfill runs: 6 s of wall time, event times from 06:00, far from
# every existing window (their lag is at most 2 h), so no existing row may change.
TRICKLE_EVENTS = 600
TRICKLE_H = 1_763_618_400  # 2025-11-20T06:00:00Z
TRICKLE = ("--seed", "12", "--events", str(TRICKLE_EVENTS), "--accounts", "400", "--rate", "100",
           "--start-time", "2025-11-20T06:00:00Z", "--late-fraction", "0.03", "--metrics-port", "0")


def drained(p: Pipeline, events: int) -> bool:
    return p.committed_offsets() == events and p.pending_batches() == 0


def holds_path(proc: subprocess.Popen[bytes], p: Pipeline) -> bool:
    """Whether `proc` has the embedded path's lock file open (looked up in /proc, without
    touching the lock: probing it could make the sink's own open fail)."""
    status = os.path.realpath(os.path.join(p.clickhouse_url[len("chdb://"):], "status"))
    fds = f"/proc/{proc.pid}/fd"
    for fd in os.listdir(fds):
        try:
            if os.readlink(os.path.join(fds, fd)) == status:
                return True
        except OSError:
            continue
    return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def raw(p: Pipeline) -> dict[str, list[tuple]]:  # type: ignore[type-arg]
    """Every stored row, older versions included (as far as merges have kept them)."""
    return {t: clickhouse_rows(p.clickhouse_url, t, final=False) for t in TABLES}


def final(p: Pipeline) -> dict[str, list[tuple]]:  # type: ignore[type-arg]
    """Each window's row as readers see it: values and version. (Raw rows are no basis for
    a before/after comparison: a background merge may drop older versions at any time.)"""
    return {t: clickhouse_rows(p.clickhouse_url, t, final=True) for t in TABLES}


def outside_hour(rows: dict[str, list[tuple]]) -> dict[str, list[tuple]]:  # type: ignore[type-arg]
    return {t: [r for r in rs if not H0 <= r[0] < H0 + 3600] for t, rs in rows.items()}


def corrupt(p: Pipeline, *, version: Callable[[int], int], extra: bool) -> None:
    """Wrong values for 5 minute keys and 1 hour key at `version(current version)`, 5 minute
    keys deleted, and optionally a key that has no event at all."""
    c = connect(p.clickhouse_url)
    try:
        where = f"window_start >= toDateTime({H0}) AND window_start < toDateTime({H0 + 3600})"
        minute = c.query(f"SELECT toUInt32(window_start), account_id, country, event_count, sum_amount, version "
                         f"FROM rollup_minute FINAL WHERE {where} ORDER BY 1, 2, 3").result_rows
        hour = c.query(f"SELECT toUInt32(window_start), account_id, country, event_count, sum_amount, version "
                       f"FROM rollup_hour FINAL WHERE {where} ORDER BY 1, 2, 3").result_rows
        wrong = [("rollup_minute", r) for r in minute[10:15]] + [("rollup_hour", hour[3])]
        for table, (ws, account, country, count, amount, v) in wrong:
            c.command(f"INSERT INTO {table} VALUES (toDateTime({ws}), {account}, '{country}', {count + 7}, "
                      f"{amount + 1000}, 1, {version(v)})")
        for ws, account, country, *_ in minute[100:105]:
            c.command(f"ALTER TABLE rollup_minute DELETE WHERE window_start = toDateTime({ws}) "
                      f"AND account_id = {account} AND country = '{country}' SETTINGS mutations_sync = 2")
        if extra:
            c.command(f"INSERT INTO rollup_minute VALUES (toDateTime({H0 + 120}), 999999999, 'ZZ', 5, 5, 1, 3)")
    finally:
        c.close()


def backfill(p: Pipeline, *args: str, crash_at: str | None = None, rc: int = 0) -> subprocess.CompletedProcess[str]:
    res = p.run("app.backfill", *args, crash_at=crash_at, check=False)
    assert res.returncode == rc, f"backfill exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def summary(res: subprocess.CompletedProcess[str]) -> dict:  # type: ignore[type-arg]
    return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def assert_exact(p: Pipeline) -> None:
    res = p.verify()
    assert res.returncode == 0, f"verify exit {res.returncode}\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}"


def assert_no_duplicate_versions(rows: dict[str, list[tuple]]) -> None:  # type: ignore[type-arg]
    for table, rs in rows.items():
        keys = [r[:3] + (r[5],) for r in rs]
        assert len(keys) == len(set(keys)), f"{table}: two stored rows share window key and version"


def test_backfill_repairs_a_corrupted_hour_while_live_processing_runs(pipeline: Pipeline) -> None:
    p = pipeline
    p.gen(*GEN)
    processor = p.start("app.processor", *LIVE)          # live: no --until-end
    sink = p.start("app.sink")
    wait_for(lambda: p.alive(processor, sink) and drained(p, EVENTS), 180, "the live pipeline to drain")
    stop(sink)                                           # the embedded path has one owner at a time
    before = final(p)
    live_max = p.ledger_value("SELECT max(checkpoint_id) FROM ledger_checkpoint WHERE pipeline_id = %s")
    corrupt(p, version=lambda v: v + 1, extra=False)     # wrong values win over the live row
    assert max(r[5] for r in clickhouse_rows(p.clickhouse_url, "rollup_minute", final=False)) <= live_max + 1
    sink = p.start("app.sink")                           # the sink owns ClickHouse again...
    trickle = p.start("app.gen", *TRICKLE)               # ...once live events flow through it
    wait_for(lambda: p.alive(sink) and holds_path(sink, p), 90, "the sink to hold the embedded path")
    wait_for(lambda: p.alive(processor) and p.committed_offsets() > EVENTS, 90,
             "the live processor to commit trickle events")

    dry = backfill(p, *HOUR, "--dry-run", "--json")
    assert "in use by another process" in dry.stdout and "DRY RUN" in dry.stdout
    plan = summary(dry)
    assert plan["clickhouse_read"] is False and plan["skipped_open"] == {} and plan["windows"] > 5_000
    assert p.ledger_value("SELECT count(*) FROM sink_batch WHERE pipeline_id = %s AND source = 'backfill'") == 0

    # windows still open live are never written: a range at the live edge is skipped
    edge = summary(backfill(p, "--from-time", "2025-11-20T05:00:00Z", "--to-time", "2025-11-20T07:00:00Z",
                            "--dry-run", "--json"))
    assert set(edge["skipped_open"]) == {"minute", "hour"}

    landed = summary(backfill(p, *HOUR, "--json"))
    version = landed["version"]
    assert landed["windows"] == plan["windows"] and landed["deleted_keys"] is None
    assert version > live_max + 1                        # above every live version and the corruption
    assert trickle.wait(timeout=60) == 0
    wait_for(lambda: p.alive(processor, sink) and drained(p, EVENTS + TRICKLE_EVENTS), 180,
             "the sink to deliver everything")
    assert processor.poll() is None                      # live processing ran throughout
    stop(sink)

    after = final(p)
    # every window outside the hour is untouched (values and versions); new ones are the
    # live windows of the trickle, hours later
    old = {t: [r for r in rs if r[0] < TRICKLE_H - 3 * 3600] for t, rs in outside_hour(after).items()}
    assert old == outside_hour(before)
    assert any(r[0] >= TRICKLE_H - 3 * 3600 for r in after["rollup_minute"])
    for table in TABLES:
        hour = [r for r in after[table] if H0 <= r[0] < H0 + 3600]
        assert hour and all(r[5] == version for r in hour), f"{table}: the hour is not the backfill's"
    assert_no_duplicate_versions(raw(p))
    with p.ledger() as conn:
        rows = conn.execute("SELECT status, count(*), sum(row_count) FROM sink_batch "
                            "WHERE pipeline_id = %s AND source = 'backfill' GROUP BY status",
                            (p.pipeline_id,)).fetchall()
    assert rows == [("acked", 2, landed["windows"])]
    assert_exact(p)
    stop(processor)


def test_backfill_killed_midway_resumes_to_the_same_result(pipeline: Pipeline) -> None:
    p = pipeline
    p.gen(*GEN)
    p.processor(*LIVE)
    p.sink()
    before = final(p)
    with p.ledger() as conn:  # the id sequence is shared by every pipeline of the database
        (last_id,) = conn.execute("SELECT max(checkpoint_id) FROM ledger_checkpoint").fetchone()  # type: ignore[misc]
    far = int(last_id) + 1_000_000
    corrupt(p, version=lambda v: far, extra=True)        # a version no ledger id has reached yet

    # the sink is stopped: ClickHouse is readable and the dry run shows every difference
    plan = summary(backfill(p, *HOUR, "--dry-run", "--json"))["tables"]
    assert (plan["rollup_minute"]["missing"], plan["rollup_minute"]["different"],
            plan["rollup_minute"]["extra"]) == (5, 5, 1)
    assert plan["rollup_hour"]["different"] == 1

    chunked = (*HOUR, "--batch-rows", "1000", "--json")
    killed = p.run("app.backfill", *chunked, crash_at="backfill.between_batches:3", check=False)
    assert_crashed_at(killed.returncode, killed.stderr, "backfill.between_batches", nth=3)
    batches = "SELECT count(*) FROM sink_batch WHERE pipeline_id = %s AND source = 'backfill'"
    assert p.ledger_value(batches) == 3
    killed = p.run("app.backfill", *chunked, crash_at="backfill.after_delete", check=False)
    assert_crashed_at(killed.returncode, killed.stderr, "backfill.after_delete", nth=1)
    assert p.ledger_value(batches) == 3

    done = summary(backfill(p, *chunked))
    assert done["resumed"] and done["run_no"] == 1 and done["batches_existing"] == 3
    assert done["version"] > far                         # the ledger's ids moved past the foreign version
    total = done["batches_new"] + done["batches_existing"]
    assert p.ledger_value(batches) == total == 8        # 6,465 minute rows in 7 chunks + 1 hour batch
    p.sink()
    assert_exact(p)
    assert_no_duplicate_versions(raw(p))
    assert outside_hour(final(p)) == outside_hour(before)

    # the same request after it landed is a new run: newer version, same exact result
    again = summary(backfill(p, *chunked))
    assert again["run_no"] == 2 and again["version"] > done["version"] and again["batches_new"] == total
    p.sink()
    assert_exact(p)
    assert_no_duplicate_versions(raw(p))


def test_backfill_refuses_other_rules_and_a_log_cut_by_retention(pipeline: Pipeline) -> None:
    p = pipeline
    p.gen("--seed", "3", "--events", "3000", "--accounts", "50", "--partitions", "2", "--event-time-rate", "2",
          "--late-fraction", "0.05")
    p.processor()
    # the rules pinned to the pipeline id by its first checkpoint, each named with both values
    other = backfill(p, *HOUR, "--allowed-lateness", "30s", rc=2)
    assert "--allowed-lateness-minute 1m (this process: 30s)" in other.stderr, other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    assert "--max-out-of-orderness 5s (this process: 2s)" in backfill(p, *HOUR, "--max-out-of-orderness", "2s",
                                                                      rc=2).stderr
    assert "--max-record-bytes 1048576 (this process: 2000)" in backfill(p, *HOUR, "--max-record-bytes", "2000",
                                                                         rc=2).stderr
    assert "beyond partition 0" in backfill(p, "--partition", "0", "--from-offset", "0", "--to-offset", "99999",
                                            rc=2).stderr
    admin = AdminClient({"bootstrap.servers": p.bootstrap})  # kept alive until the futures resolve
    for f in admin.delete_records([TopicPartition(p.topic, 0, 100)]).values():
        f.result(timeout=30)
    cut = backfill(p, *HOUR, rc=2)
    assert "retention" in cut.stderr and len(cut.stderr.strip().splitlines()) == 1
    assert p.ledger_value("SELECT count(*) FROM backfill_run WHERE pipeline_id = %s") == 0
