"""Issue 9, item 4: the rules belong to the pipeline id (contract §3).

The first checkpoint records --max-out-of-orderness, the allowed lateness per kind and
--max-record-bytes in the ledger (`pipeline_rules`); a processor started with other values
exits 2 with one line naming both, before it claims or reads anything; and two instances
started at once with different rules cannot both commit: the commit transaction checks the
pin again, race-free.

These tests failed on main (6e6c674): a restart with a larger lateness exited 0 and emitted
a window already dropped as final from empty state, with a higher version; passed since the
commit that pins the rules (see the branch history, "Pin the rules ...").
"""

from __future__ import annotations

import json
import subprocess
import threading
from typing import Any

import psycopg
import pytest

from app.core.config import LatenessFlags
from app.core.errors import PipelineMismatch
from app.core.kafka import TopicIdentity
from app.ledger.ledger import Checkpoint, Ledger, PartitionAdvance
from app.ledger.pipeline_rules import PipelinePin
from app.ledger.scope import forget_pipeline
from tests.conftest import Pipeline
from tests.helpers import clickhouse_rows, log_events, produce, read_topic, wait_for

T0 = 1_763_596_800_000  # 2025-11-20T00:00:00Z, an hour boundary
MINUTE = 60_000
DEFAULTS = LatenessFlags(5_000, 60_000, 60_000, 1_048_576)


def ev(i: int, *, t: int, account: int = 1, amount: int = 1) -> tuple[bytes, bytes]:
    return str(account).encode(), json.dumps({"event_id": f"e-{i}", "account_id": account, "country": "DE",
                                              "event_time": t, "amount": amount, "kind": "purchase"}).encode()


def error_line(res: Any) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("processor: error:")]
    assert len(lines) == 1, f"expected one error line, exit {res.returncode}:\n{res.stderr[-4000:]}"
    return lines[0]


def ledger_state(p: Pipeline) -> dict[str, Any]:
    """Everything a start could change: claims (owner generation), offsets, checkpoints, batches, pin."""
    with p.ledger() as conn:
        return {
            "partitions": conn.execute(
                """SELECT partition, next_offset, owner_generation, max_event_time_ms, watermark_ms
                   FROM partition_state WHERE pipeline_id = %s ORDER BY partition""",
                (p.pipeline_id,)).fetchall(),
            "checkpoints": conn.execute("SELECT count(*) FROM ledger_checkpoint WHERE pipeline_id = %s",
                                        (p.pipeline_id,)).fetchone(),
            "batches": conn.execute("SELECT count(*) FROM sink_batch WHERE pipeline_id = %s",
                                    (p.pipeline_id,)).fetchone(),
            "pin": pinned_rules(p),
        }


def pinned_rules(p: Pipeline) -> tuple[Any, ...] | None:
    with p.ledger() as conn:
        return conn.execute(
            """SELECT max_out_of_orderness_ms, allowed_lateness_minute_ms, allowed_lateness_hour_ms,
                      max_record_bytes, topic, topic_id IS NOT NULL, partitions
               FROM pipeline_rules WHERE pipeline_id = %s""", (p.pipeline_id,)).fetchone()


def window(p: Pipeline, table: str, start_ms: int) -> tuple[int, int]:
    """(event_count, version) of account 1 / DE's window at start_ms in ClickHouse FINAL."""
    rows = [r for r in clickhouse_rows(p.clickhouse_url, table, final=True)
            if r[0] == start_ms // 1000 and r[1] == 1 and r[2] == "DE"]
    assert len(rows) == 1, rows
    return int(rows[0][3]), int(rows[0][5])


def read_partitions(p: Pipeline) -> dict[int, int]:
    """Records per partition of the events topic."""
    counts: dict[int, int] = {}
    for part, _offset, _key, _value in read_topic(p.bootstrap, p.topic):
        counts[part] = counts.get(part, 0) + 1
    return counts


def assert_exact(p: Pipeline, *flags: str) -> None:
    res = p.verify(*flags)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def test_a_restart_with_a_larger_lateness_is_refused_and_the_final_window_stays_right(
        pipeline: Pipeline) -> None:
    p = pipeline
    # the minute [T0, T0+1m) is final (dropped from state) once the watermark passes T0+2m
    produce(p.bootstrap, p.topic, [ev(0, t=T0 + 1_000), ev(1, t=T0 + 2_000), ev(2, t=T0 + 3_000),
                                   ev(3, t=T0 + 10 * MINUTE)])
    p.processor()
    p.sink()
    count, version = window(p, "rollup_minute", T0)
    assert count == 3

    # a late event for that minute: too late under the pinned 1m, "allowed" under 1h
    produce(p.bootstrap, p.topic, [ev(4, t=T0 + 30_000)])
    before = ledger_state(p)
    refused = p.processor("--allowed-lateness", "1h", check=False)
    if refused.returncode == 0:  # show the damage such a run does
        p.sink()
        pytest.fail(f"a restart with other rules ran: the final minute window (3 events, version {version}) "
                    f"is now (events, version) = {window(p, 'rollup_minute', T0)}")
    assert refused.returncode == 2, refused.stderr[-4000:]
    line = error_line(refused)
    assert "--allowed-lateness-minute 1m (this process: 1h)" in line, line
    assert "--allowed-lateness-hour 1m (this process: 1h)" in line, line
    assert "new --pipeline-id or a backfill" in line, line
    assert ledger_state(p) == before, "a refused start claimed, read or committed something"
    assert before["pin"] == (5_000, 60_000, 60_000, 1_048_576, p.topic, True, 1)

    # with the pinned rules the late event goes to the DLQ for its minute and into its hour
    p.processor()
    p.sink()
    assert window(p, "rollup_minute", T0)[0] == 3, "the final minute window was replaced"
    assert window(p, "rollup_hour", T0)[0] == 5
    assert_exact(p)


def test_every_rule_is_pinned_and_the_same_values_spelled_otherwise_are_accepted(pipeline: Pipeline) -> None:
    p = pipeline
    produce(p.bootstrap, p.topic, [ev(i, t=T0 + i * 1_000) for i in range(5)])
    p.processor()
    before = ledger_state(p)
    for flags, named in ((("--max-out-of-orderness", "7s"), "--max-out-of-orderness 5s (this process: 7s)"),
                         (("--allowed-lateness-hour", "2m"), "--allowed-lateness-hour 1m (this process: 2m)"),
                         (("--max-record-bytes", "2048"), "--max-record-bytes 1048576 (this process: 2048)")):
        res = p.processor(*flags, check=False)
        assert res.returncode == 2, res.stderr[-4000:]
        line = error_line(res)
        assert named in line and line.count("(this process:") == 1, line
        assert ledger_state(p) == before, f"the start with {flags} changed the ledger"
    # the pin compares values, not spellings
    produce(p.bootstrap, p.topic, [ev(9, t=T0 + 9_000)])
    p.processor("--allowed-lateness-minute", "60000ms", "--max-out-of-orderness", "5000ms",
                "--max-record-bytes", "1_048_576")
    assert ledger_state(p)["partitions"][0][1] == 6


def test_two_instances_started_at_once_with_other_rules_only_one_commits(pipeline: Pipeline) -> None:
    """Both pass the start check (nothing is pinned yet), each owns partitions, then records
    arrive: the first commit pins its rules; the other instance's first commit fails in its
    transaction, it commits nothing and exits 2; the survivor takes over and ends exact."""
    p = pipeline
    produce(p.bootstrap, p.topic, [], partitions=4)  # the topic, empty: nobody can commit yet
    common = ("--batch-max-wait", "0.3s", "--session-timeout", "6s", "--log-level", "info")
    procs = {"5s": p.start("app.processor", *common, "--max-out-of-orderness", "5s",
                           "--state-dir", str(p.tmp / "a")),
             "7s": p.start("app.processor", *common, "--max-out-of-orderness", "7s",
                           "--state-dir", str(p.tmp / "b"))}
    def checked_unpinned(proc: subprocess.Popen[bytes]) -> bool:
        return p.alive(proc) and any(e["at"] == "start" and not e["pinned"]
                                     for e in log_events(p.log(proc), "pipeline_rules_checked"))

    for k, proc in procs.items():
        wait_for(lambda proc=proc: checked_unpinned(proc), 60,
                 f"the {k} instance's start check with nothing pinned")

    def partitions_shared() -> bool:  # both own partitions before there is anything to commit
        with p.ledger() as conn:
            owners, parts = conn.execute(
                "SELECT count(DISTINCT owner), count(*) FROM partition_state WHERE pipeline_id = %s",
                (p.pipeline_id,)).fetchone()  # type: ignore[misc]
        return p.alive(*procs.values()) and owners == 2 and parts == 4

    wait_for(partitions_shared, 60, "the two instances to share the 4 partitions", interval=0.2)
    assert pinned_rules(p) is None

    events = [ev(i, account=i % 40, t=T0 + i * 100) for i in range(400)]
    produce(p.bootstrap, p.topic, events, partitions=4)
    assert sorted(read_partitions(p)) == [0, 1, 2, 3], "a partition got no records: " \
        "an instance would have nothing to commit"
    wait_for(lambda: any(proc.poll() is not None for proc in procs.values()), 90,
             "one instance to be refused", interval=0.2,
             detail=lambda: "\n".join(p.log(proc)[-2000:] for proc in procs.values()))
    loser = next(k for k, proc in procs.items() if proc.poll() is not None)
    winner = "7s" if loser == "5s" else "5s"
    loser_log = p.log(procs[loser])
    assert procs[loser].returncode == 2, loser_log[-3000:]
    err = [s for s in loser_log.splitlines() if s.startswith("processor: error:")]
    assert len(err) == 1 and f"--max-out-of-orderness {winner} (this process: {loser})" in err[0], err
    assert not log_events(loser_log, "checkpoint_committed"), "the refused instance committed a checkpoint"
    assert procs[winner].poll() is None, p.log(procs[winner])[-3000:]
    assert pinned_rules(p)[0] == int(winner[:-1]) * 1000  # type: ignore[index]

    # the survivor takes over every partition and reads everything with its rules
    wait_for(lambda: p.alive(procs[winner]) and p.committed_offsets() >= len(events), 90,
             "the survivor to commit every record", interval=0.2)
    with p.ledger() as conn:
        gaps = conn.execute("SELECT DISTINCT max_event_time_ms - watermark_ms FROM partition_state "
                            "WHERE pipeline_id = %s", (p.pipeline_id,)).fetchall()
    assert gaps == [(int(winner[:-1]) * 1000,)], gaps  # every watermark in the ledger is the winner's
    procs[winner].terminate()
    assert procs[winner].wait(timeout=60) == 0, p.log(procs[winner])[-3000:]
    p.processor("--max-out-of-orderness", winner)  # marks the run finished for sink --until-idle
    p.sink()
    assert_exact(p, "--max-out-of-orderness", winner)


# ---- the commit transaction, without Kafka ----------------------------------------------------


def _checkpoint(partition: int, generation: int) -> Checkpoint:
    return Checkpoint(topic="events", tables={}, dlq_counts={},
                      advances=(PartitionAdvance(partition, 0, 10, T0, T0 - 5_000, generation),))


def test_two_first_commits_with_other_rules_race_and_exactly_one_lands(postgres: str) -> None:
    """Forced: both transactions are past the "nothing pinned yet" read and waiting to insert
    the pin when the test lets them go."""
    import uuid

    pid = f"t-{uuid.uuid4().hex[:10]}"
    log = TopicIdentity("events", "i46kwNzWSVmg5Yw4ayom0w", 2)
    ledgers = [Ledger(postgres, pid, "events"), Ledger(postgres, pid, "events")]
    ledgers[0].pin = PipelinePin(DEFAULTS, log)
    ledgers[1].pin = PipelinePin(LatenessFlags(5_000, 3_600_000, 60_000, 1_048_576), log)
    generations = [ledgers[i].claim_partition(i, f"instance-{i}").owner_generation for i in (0, 1)]
    outcome: dict[int, Any] = {}

    def commit(i: int) -> None:
        try:
            outcome[i] = ledgers[i].commit(_checkpoint(i, generations[i]))
        except Exception as e:  # noqa: BLE001 (the test inspects it)
            outcome[i] = e

    try:
        with psycopg.connect(postgres) as gate:
            gate.execute("LOCK TABLE pipeline_rules IN SHARE ROW EXCLUSIVE MODE")  # blocks INSERT, not SELECT
            threads = [threading.Thread(target=commit, args=(i,)) for i in (0, 1)]
            for t in threads:
                t.start()
            with psycopg.connect(postgres, autocommit=True) as watch:
                def both_wait() -> bool:
                    assert not outcome, f"a commit ended before both waited for the pin: {outcome}"
                    (waiting,) = watch.execute(  # type: ignore[misc]
                        """SELECT count(*) FROM pg_locks WHERE NOT granted
                             AND relation = 'pipeline_rules'::regclass
                             AND database = (SELECT oid FROM pg_database
                                             WHERE datname = current_database())""").fetchone()
                    return int(waiting) >= 2

                wait_for(both_wait, 30, "both commits to wait for the lock on pipeline_rules")
            gate.commit()
        for t in threads:
            t.join(timeout=30)
        refused = [i for i, o in outcome.items() if isinstance(o, PipelineMismatch)]
        landed = [i for i, o in outcome.items() if not isinstance(o, Exception)]
        assert len(refused) == 1 and len(landed) == 1, outcome
        assert "--allowed-lateness-minute" in str(outcome[refused[0]])
        with psycopg.connect(postgres, autocommit=True) as conn:
            offsets = dict(conn.execute(
                "SELECT partition, next_offset FROM partition_state WHERE pipeline_id = %s",
                (pid,)).fetchall())
            checkpoints = conn.execute("SELECT count(*) FROM ledger_checkpoint WHERE pipeline_id = %s",
                                       (pid,)).fetchone()[0]  # type: ignore[index]
            pinned = conn.execute(
                "SELECT allowed_lateness_minute_ms FROM pipeline_rules WHERE pipeline_id = %s",
                (pid,)).fetchone()[0]  # type: ignore[index]
        assert offsets == {landed[0]: 10, refused[0]: 0} and checkpoints == 1
        assert pinned == ledgers[landed[0]].pin.rules.allowed_lateness_minute_ms  # type: ignore[union-attr]
        # the refused side stays refused on retry; the winner goes on
        with pytest.raises(PipelineMismatch):
            ledgers[refused[0]].commit(_checkpoint(refused[0], generations[refused[0]]))
    finally:
        for ledger in ledgers:
            ledger.close()
        with psycopg.connect(postgres, autocommit=True) as conn:
            forget_pipeline(conn, pid)
