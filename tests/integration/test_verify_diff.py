"""verify end to end against real Kafka and Postgres and a temporary embedded ClickHouse.

Hand-made records go to a uuid topic; matching rollup rows go into a tmp_path chDB and
matching DLQ counts into the ledger under a unique pipeline_id. verify must say EXACT,
then MISMATCH (exit 1) after one row or one count changes. The service fixtures of
tests/conftest.py skip these tests when Kafka or Postgres is down (and fail them in CI).
The pure diff tests at the bottom need no services.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.clickhouse.schema import TABLE_OF_KIND
from app.verify.compare import TableSnapshot, diff, diff_dlq, diff_table
from app.verify.truth import HOUR_MS, INVALID, LATE_HOUR, LATE_MINUTE, MINUTE_MS, Rules, Truth, compute_truth

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/pipeline")
T0 = 1_764_115_200_000  # 2025-11-26T00:00:00Z


@pytest.fixture
def services(kafka: str, postgres: str) -> None:
    """Kafka and the Postgres ledger (tests/conftest.py: skip locally, fail in CI when down)."""


# ---- hand-made input -----------------------------------------------------------------------


def ev(t: int, account: int, amount: int, country: str = "DE") -> bytes:
    return json.dumps({"event_id": f"e-{t}-{account}", "account_id": account, "country": country,
                       "event_time": t, "amount": amount, "kind": "purchase"}).encode()


def make_log() -> dict[int, list[bytes | None]]:
    p0: list[bytes | None] = [ev(T0 + i * 1_000, i % 5, i * 10, "DE" if i % 2 else "FR") for i in range(150)]
    p0.append(ev(T0 + 2 * HOUR_MS, 1, 5))  # far future: jumps the watermark
    p0 += [ev(T0 + i * 1_000, 1, 1) for i in range(10)]  # too late for both kinds
    p0 += [b"not json", b'{"event_id": 1}', ev(T0, 2**64, 1), None, b"\xff\xfe"]
    p1: list[bytes | None] = [ev(T0 + i * 500, 100 + i % 3, -i) for i in range(120)]
    p1.append(ev(T0 + 10 * MINUTE_MS, 100, 1))  # minute windows of T0.. closed, hour still open
    p1 += [ev(T0 + i, 101, 1_000) for i in range(7)]  # minute-late, hour-folded
    p1.append(ev(T0, 2**64 - 1, 2**63 - 1, "ZZ"))  # extremes, minute-late as well
    p2: list[bytes | None] = [b"[]", b"{}"]
    return {0: p0, 1: p1, 2: p2}


def expected_truth() -> Truth:
    truth = compute_truth(make_log(), Rules())
    # Counted by hand from make_log, so the fixture is not only self-consistent.
    assert truth.dlq == {INVALID: 7, LATE_MINUTE: 18, LATE_HOUR: 10}
    assert truth.records == 161 + 5 + 129 + 2
    return truth


# ---- helpers ----------------------------------------------------------------------------------

# Runs in a child process: an embedded ClickHouse path is locked by the process that opens it,
# and this test process must leave it free for verify.
_WRITE_ROWS = textwrap.dedent("""
    import json, sys
    from datetime import datetime, timezone
    from app.clickhouse.client import connect, migrate
    url, payload = sys.argv[1], json.load(sys.stdin)
    client = connect(url)
    migrate(client)
    cols = ["window_start", "account_id", "country", "event_count", "sum_amount", "batch_id", "version"]
    for table, rows in payload.items():
        data = [[datetime.fromtimestamp(ws, tz=timezone.utc), a, c, n, int(s), b, v]
                for ws, a, c, n, s, b, v in rows]
        if data:
            client.insert(table, data, column_names=cols)
    client.close()
""")

_HOLD = textwrap.dedent("""
    import sys
    from app.clickhouse.client import connect
    client = connect(sys.argv[1])
    client.command("SELECT 1")
    print("ready", flush=True)
    sys.stdin.read()  # holds the path until the test closes our stdin (or kills us)
""")


def write_rows(url: str, rows: dict[str, list[list[object]]]) -> None:
    subprocess.run([sys.executable, "-c", _WRITE_ROWS, url], input=json.dumps(rows), text=True, cwd=REPO,
                   check=True, capture_output=True, timeout=120)


def rows_of(truth: Truth, version: int = 1) -> dict[str, list[list[object]]]:
    return {TABLE_OF_KIND[kind]: [[ws, a, c, n, str(s), 7, version] for (ws, a, c), (n, s) in rows.items()]
            for kind, rows in truth.rollups.items()}


def run_verify(topic: str, pipeline_id: str, ch_url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "app.verify", "--bootstrap-servers", BOOTSTRAP, "--database-url", DATABASE_URL,
           "--clickhouse-url", ch_url, "--events-topic", topic, "--dlq-topic", f"{topic}.dlq",
           "--pipeline-id", pipeline_id, "--json", "--log-level", "warning", *extra]
    return subprocess.run(cmd, cwd=REPO, text=True, capture_output=True, timeout=300, check=False)


@pytest.fixture
def topic(kafka: str) -> Iterator[str]:
    from confluent_kafka import Producer

    from app.core.kafka import admin, ensure_topic, producer_config

    name = f"verify-test-{uuid.uuid4().hex[:12]}"
    ensure_topic(BOOTSTRAP, name, 3, replication=1)
    producer = Producer(producer_config(BOOTSTRAP))
    for partition, values in make_log().items():
        for value in values:
            producer.produce(name, value=value, key=key_of(value), partition=partition)
    # the DLQ topic holds exactly the truth's identities (contract §5), one of them twice
    ensure_topic(BOOTSTRAP, f"{name}.dlq", 1, replication=1)
    for (p, reason, kind), offsets in expected_truth().dlq_offsets.items():
        for offset in [*offsets, *offsets[:1]]:
            producer.produce(f"{name}.dlq", json.dumps({
                "reason": reason, "window_kind": kind or None, "source_topic": name, "source_partition": p,
                "source_offset": offset, "error": "", "event": None, "raw": None}).encode())
    assert producer.flush(30) == 0
    yield name
    client = admin(BOOTSTRAP)  # keep a reference: a collected client drops its requests
    for f in client.delete_topics([name, f"{name}.dlq"], operation_timeout=10).values():
        f.result(timeout=30)


def key_of(value: bytes | None) -> bytes:
    """Contract §2: the account id in ASCII decimal (whatever key for values that are no event)."""
    try:
        account = json.loads(value or b"")["account_id"]
    except (ValueError, KeyError, TypeError):
        return b"k"
    return b"%d" % account if type(account) is int else b"k"


@pytest.fixture
def ledger(postgres: str) -> Iterator[tuple[str, object]]:
    import psycopg

    from app.core.config import psycopg_conninfo
    from app.ledger.scope import forget_pipeline

    pipeline_id = f"verify-test-{uuid.uuid4().hex[:12]}"
    conn = psycopg.connect(psycopg_conninfo(DATABASE_URL), autocommit=True)
    try:
        yield pipeline_id, conn
    finally:
        forget_pipeline(conn, pipeline_id)
        conn.close()


def insert_dlq(conn: object, pipeline_id: str, topic: str, truth: Truth) -> None:
    rows = []
    for p, s in truth.partitions.items():
        for (reason, kind), n in ((INVALID, s.invalid), (LATE_MINUTE, s.late_minute), (LATE_HOUR, s.late_hour)):
            if n:
                rows.append((pipeline_id, topic, p, reason, kind, n))
    with conn.cursor() as cur:  # type: ignore[attr-defined]
        cur.executemany("INSERT INTO dlq_count (pipeline_id, topic, partition, reason, window_kind, count) "
                        "VALUES (%s, %s, %s, %s, %s, %s)", rows)
        cur.executemany("INSERT INTO partition_state (pipeline_id, topic, partition, next_offset) "
                        "VALUES (%s, %s, %s, %s)",
                        [(pipeline_id, topic, p, s.records) for p, s in truth.partitions.items()])


# ---- end to end -------------------------------------------------------------------------------


@pytest.mark.usefixtures("services")
def test_exact_then_mismatch(topic: str, ledger: tuple[str, object], tmp_path: Path) -> None:
    pipeline_id, conn = ledger
    truth = expected_truth()
    ch_url = f"chdb://{tmp_path / 'ch'}"
    write_rows(ch_url, rows_of(truth))
    insert_dlq(conn, pipeline_id, topic, truth)

    done = run_verify(topic, pipeline_id, ch_url)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-2] == "verify: EXACT"
    summary = json.loads(lines[-1])
    assert summary["exact"] is True and summary["records"] == truth.records
    assert [p["records"] for p in summary["partitions"]] == [166, 129, 2]
    assert [p["ledger_next_offset"] for p in summary["partitions"]] == [166, 129, 2]
    assert {d["reason"] + d["window_kind"]: d["ledger"] for d in summary["dlq"]} == \
        {"invalid": 7, "lateminute": 18, "latehour": 10}

    # One key's newer version differs: FINAL shows it, verify must say so and exit 1.
    (ws, account, country), (n, s) = min(truth.rollups["minute"].items())
    write_rows(ch_url, {"rollup_minute": [[ws, account, country, n + 1, str(s), 8, 2]]})
    done = run_verify(topic, pipeline_id, ch_url, "--max-diffs", "5")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-2] == "verify: MISMATCH (rollup_minute: 1 different)"
    table = json.loads(lines[-1])["tables"][0]
    assert table["different"] == 1 and table["examples"][0]["clickhouse"]["count"] == n + 1

    # Put it back (newer version again), then break a DLQ count instead.
    write_rows(ch_url, {"rollup_minute": [[ws, account, country, n, str(s), 9, 3]]})
    assert run_verify(topic, pipeline_id, ch_url).returncode == 0
    conn.execute("UPDATE dlq_count SET count = count + 1 WHERE pipeline_id = %s AND reason = 'invalid' "  # type: ignore[attr-defined]
                 "AND partition = 2", (pipeline_id,))
    done = run_verify(topic, pipeline_id, ch_url)
    assert done.returncode == 1
    assert "dlq invalid: truth 7 ledger 8" in done.stdout

    # An extra row.
    hour_key, _ = max(truth.rollups["hour"].items())
    write_rows(ch_url, {"rollup_hour": [[hour_key[0] + 3600, 1, "DE", 1, "1", 10, 4]]})
    done = run_verify(topic, pipeline_id, ch_url)
    assert "rollup_hour: 1 extra" in done.stdout.splitlines()[-2]


@pytest.mark.usefixtures("services")
def test_empty_clickhouse_reports_every_key_missing(topic: str, ledger: tuple[str, object], tmp_path: Path) -> None:
    pipeline_id, conn = ledger
    truth = expected_truth()
    insert_dlq(conn, pipeline_id, topic, truth)
    done = run_verify(topic, pipeline_id, f"chdb://{tmp_path / 'fresh'}")
    assert done.returncode == 1, done.stderr
    verdict = done.stdout.splitlines()[-2]
    assert f"rollup_minute: {len(truth.rollups['minute'])} missing" in verdict
    assert "(table does not exist)" in done.stdout


@pytest.mark.usefixtures("services")
def test_locked_clickhouse_path_exits_3(topic: str, ledger: tuple[str, object], tmp_path: Path) -> None:
    pipeline_id, _ = ledger
    ch_url = f"chdb://{tmp_path / 'held'}"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, ch_url], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        done = run_verify(topic, pipeline_id, ch_url)
        assert done.returncode == 3, done.stdout + done.stderr
        assert "in use by another process" in done.stderr
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.usefixtures("services")
def test_retention_gap_exits_2(topic: str, ledger: tuple[str, object], tmp_path: Path) -> None:
    from confluent_kafka import TopicPartition

    from app.core.kafka import admin

    pipeline_id, _ = ledger
    client = admin(BOOTSTRAP)  # keep a reference: a collected client never resolves its futures
    for f in client.delete_records([TopicPartition(topic, 1, 3)]).values():
        f.result(timeout=30)
    done = run_verify(topic, pipeline_id, f"chdb://{tmp_path / 'ch'}")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "retention removed input" in done.stderr and "[1]" in done.stderr


@pytest.mark.usefixtures("services")
def test_unreachable_kafka_gives_up_clearly(ledger: tuple[str, object], tmp_path: Path) -> None:
    pipeline_id, _ = ledger
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "app.verify", "--bootstrap-servers", "127.0.0.1:1", "--database-url", DATABASE_URL,
         "--clickhouse-url", f"chdb://{tmp_path / 'ch'}", "--pipeline-id", pipeline_id, "--service-timeout", "3s"],
        cwd=REPO, text=True, capture_output=True, timeout=120, check=False)
    assert done.returncode == 3, done.stdout + done.stderr  # docs/operations.md: unreachable past the timeout
    assert "Kafka" in done.stderr.splitlines()[-1]
    assert time.monotonic() - started < 60


@pytest.mark.usefixtures("services")
def test_missing_topic_exits_2(ledger: tuple[str, object], tmp_path: Path) -> None:
    pipeline_id, _ = ledger
    done = run_verify(f"verify-missing-{uuid.uuid4().hex[:8]}", pipeline_id, f"chdb://{tmp_path / 'ch'}")
    assert done.returncode == 2 and "does not exist" in done.stderr


@pytest.mark.usefixtures("services")
def test_read_partition_returns_the_log_in_order(topic: str) -> None:
    from app.verify.read_log import open_consumer, partition_ranges, read_ranges

    consumer = open_consumer(BOOTSTRAP, "verify-test")
    try:
        ranges = partition_ranges(consumer, topic)
        assert [(r.partition, r.low, r.high) for r in ranges] == [(0, 0, 166), (1, 0, 129), (2, 0, 2)]
        got: dict[int, list[bytes | None]] = {r.partition: [] for r in ranges}
        for partition, values in read_ranges(consumer, topic, ranges, batch=7):
            got[partition] += values
    finally:
        consumer.close()
    # verify reads each log once per run; a second read uses its own consumer (re-assigning a
    # consumer that paused a partition at its end was flaky under load)
    consumer = open_consumer(BOOTSTRAP, "verify-test")
    try:
        one: list[bytes | None] = []
        for partition, values in read_ranges(consumer, topic, ranges[1:2]):
            assert partition == 1
            one += values
    finally:
        consumer.close()
    assert got == make_log()
    assert one == make_log()[1]


# ---- pure diff (no services) --------------------------------------------------------------------


def test_diff_classifies_each_key() -> None:
    truth_rows = {(60, 1, "DE"): (1, 5), (60, 2, "DE"): (2, 2**70), (120, 1, "DE"): (1, 1)}
    snap = TableSnapshot("rollup_minute", {(60, 1, "DE"): (1, 5), (60, 2, "DE"): (2, 2**70 + 1),
                                           (180, 1, "DE"): (1, 1)}, duplicates=((60, 1, "DE"),))
    report = diff_table("minute", truth_rows, snap, max_diffs=10)
    assert (report.missing, report.extra, report.different, report.duplicates) == (1, 1, 1, 1)
    assert [(e.key, e.what) for e in report.examples] == [
        ((60, 1, "DE"), "duplicate"), ((60, 2, "DE"), "different"), ((120, 1, "DE"), "missing"),
        ((180, 1, "DE"), "extra")]
    assert report.truth_amount == 5 + 2**70 + 1 and report.clickhouse_amount == 5 + 2**70 + 1 + 1
    assert not report.equal
    assert len(diff_table("minute", truth_rows, snap, max_diffs=2).examples) == 2


def test_diff_equal_and_dlq() -> None:
    truth = compute_truth({0: [ev(T0, 1, 1), b"x"]}, Rules())
    snaps = {k: TableSnapshot(TABLE_OF_KIND[k], dict(truth.rollups[k])) for k in TABLE_OF_KIND}
    assert diff(truth, snaps, {INVALID: 1}).exact
    report = diff(truth, snaps, {INVALID: 1, LATE_HOUR: 2, ("late", "day"): 1})
    assert not report.exact
    assert report.mismatches() == ["dlq late/hour: truth 0 ledger 2", "dlq late/day: truth 0 ledger 1"]
    assert diff_dlq({INVALID: 0}, {}).equal
