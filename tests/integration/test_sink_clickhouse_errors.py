"""ClickHouse errors are classified by their numeric server code: transient ones are
retried with backoff, permanent ones stop the sink at once with one error line and an
exit code (2 = configuration: authentication, unknown database; 1 = any other permanent
error), never an endless retry loop with delivery stopped.

Authentication needs a real server (chDB has none): Debian's clickhouse-server, installed
and started on demand by the `clickhouse_server` fixture (tests/clickhouse_server.py). The
classification of data and schema errors is checked on real chDB errors.

test_wrong_password_exits_2_within_seconds, test_unknown_database_exits_2 and
test_an_incompatible_table_stops_the_sink_with_exit_1_and_loses_nothing failed on main at
6e6c674 (every ClickHouse error retried forever: no exit within the deadline); the
classification tests failed there for want of app/clickhouse/errors.py. All pass since
9b4b256."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import orjson
import pytest
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

from app.clickhouse.client import connect
from app.clickhouse.schema import MIGRATIONS
from tests.clickhouse_server import SERVER_PASSWORD, ClickHouseServer
from tests.clickhouse_server import clickhouse_server as running_clickhouse_server
from tests.conftest import Pipeline
from tests.integration.test_sink_exactly_once import (
    assert_exactly_once,
    freeze_merges,
    groups,
)


@pytest.fixture(scope="module")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    with running_clickhouse_server(tmp_path_factory.mktemp("clickhouse-server")) as server:
        yield server


GEN = ("--seed", "4", "--events", "3000", "--accounts", "500", "--partitions", "2", "--event-time-rate", "0.5")


def run_sink(p: Pipeline, url: str, timeout_s: float = 30) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    try:
        res = p.run("app.sink", "--until-idle", timeout=timeout_s, check=False, extra_env={"CLICKHOUSE_URL": url})
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"the sink did not stop within {timeout_s:.0f}s; its log ends with:\n"
                             f"{(e.stderr or b'')[-2000:]!r}") from e
    return res, time.monotonic() - t0


def fatal_line(stderr: str) -> dict[str, object]:
    """The one error line the sink ends with."""
    lines = [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    errors = [e for e in lines if e.get("level") == "error"]
    assert len(errors) == 1, f"expected exactly one error line, got {errors}\n{stderr[-3000:]}"
    assert "\n" not in str(errors[0]["error"])
    return errors[0]


def test_wrong_password_exits_2_within_seconds(pipeline: Pipeline, clickhouse_server: ClickHouseServer) -> None:
    p = pipeline
    p.gen(*GEN)
    p.processor()
    res, took = run_sink(p, clickhouse_server.url(password="not-the-password"))
    assert res.returncode == 2, res.stderr[-3000:]
    assert took < 10, f"took {took:.1f}s"
    err = fatal_line(res.stderr)
    assert err["code"] == 193 and "authentication" in str(err["error"]), err  # WRONG_PASSWORD
    assert "not-the-password" not in res.stderr and SERVER_PASSWORD not in res.stderr  # no secrets in logs
    assert all(g[5] == "pending" for g in groups(p))  # nothing acknowledged that was not inserted


def test_unknown_database_exits_2(pipeline: Pipeline, clickhouse_server: ClickHouseServer) -> None:
    p = pipeline
    p.gen(*GEN)
    p.processor()
    res, took = run_sink(p, clickhouse_server.url(database="no_such_db"))
    assert res.returncode == 2 and took < 10, res.stderr[-3000:]
    assert fatal_line(res.stderr)["code"] == 81  # UNKNOWN_DATABASE


def test_a_server_the_client_cannot_use_exits_1(pipeline: Pipeline,
                                                clickhouse_server: ClickHouseServer) -> None:
    """Right credentials, but Debian's 18.16 server predates what clickhouse-connect reads at
    connect time (system.settings.readonly: code 47, UNKNOWN_IDENTIFIER): a permanent error."""
    p = pipeline
    p.gen(*GEN)
    p.processor()
    res, took = run_sink(p, clickhouse_server.url())
    assert res.returncode == 1 and took < 10, res.stderr[-3000:]
    assert fatal_line(res.stderr)["code"] == 47


def test_an_incompatible_table_stops_the_sink_with_exit_1_and_loses_nothing(pipeline: Pipeline) -> None:
    """An operator-made rollup table with a wrong column type: every insert fails with the
    same data error (code 6, CANNOT_PARSE_TEXT). The sink stops with exit 1, the group stays
    open, and once the table is fixed the next run delivers it exactly once."""
    p = pipeline
    p.gen(*GEN)
    p.processor()
    client = connect(p.clickhouse_url)
    try:
        client.command("CREATE TABLE rollup_minute (window_start DateTime, account_id UInt64, country UInt8, "
                       "event_count UInt64, sum_amount Int128, batch_id UInt64, version UInt64) "
                       "ENGINE = ReplacingMergeTree(version) ORDER BY (window_start, account_id)")
    finally:
        client.close()
    res, took = run_sink(p, p.clickhouse_url)
    assert res.returncode == 1 and took < 10, res.stderr[-3000:]
    err = fatal_line(res.stderr)
    assert err["code"] == 6 and "rollup_minute" in str(err["error"]), err
    stuck = [g for g in groups(p) if g[1] == "rollup_minute"]
    assert len(stuck) == 1 and stuck[0][5] == "pending" and stuck[0][6] == 1, stuck  # open, tried once

    client = connect(p.clickhouse_url)
    try:  # the operator's fix: the table as the shipped DDL makes it
        client.command("DROP TABLE rollup_minute")
        for statement in MIGRATIONS[0][2]:
            client.command(statement)
    finally:
        client.close()
    freeze_merges(p.clickhouse_url)
    p.sink()
    assert [g for g in groups(p) if g[0] == stuck[0][0]][0][5] == "acked"
    assert_exactly_once(p)


# ---- classification of real errors ------------------------------------------------------

def _error_of(url: str, sql: str) -> ClickHouseError:
    client = connect(url)
    try:
        client.command(sql)
    except ClickHouseError as e:
        return e
    finally:
        client.close()
    raise AssertionError(f"{sql!r} did not fail")


@pytest.mark.parametrize("sql,code,kind", [
    ("SELECT * FROM no_such_table", 60, "permanent"),                    # UNKNOWN_TABLE
    ("SELEC 1", 62, "permanent"),                                        # SYNTAX_ERROR
    ("SELECT * FROM no_such_db.t", 81, "config"),                        # UNKNOWN_DATABASE
    ("SELECT toUInt8('DE')", 6, "permanent"),                            # CANNOT_PARSE_TEXT
    ("SELECT CAST(1 AS Array(UInt8))", 53, "permanent"),                 # TYPE_MISMATCH
    ("SELECT CAST([1] AS UInt8)", 43, "permanent"),                      # ILLEGAL_TYPE_OF_ARGUMENT
    ("SELECT groupArray(number) FROM numbers(10000000) SETTINGS max_memory_usage = 1000000",
     241, "transient"),                                                  # MEMORY_LIMIT_EXCEEDED
], ids=["unknown-table", "syntax", "unknown-database", "parse", "type-mismatch", "illegal-type", "memory"])
def test_real_chdb_errors_are_classified_by_code(tmp_path: Path, sql: str, code: int, kind: str) -> None:
    from app.clickhouse.errors import classify

    e = _error_of(f"chdb://{tmp_path / 'ch'}", sql)
    assert isinstance(e, DatabaseError) and e.code == code, (e.code, str(e)[:200])
    assert classify(e).kind == kind


def test_real_server_errors_without_the_code_header_are_classified(clickhouse_server: ClickHouseServer) -> None:
    """18.16 sends no X-ClickHouse-Exception-Code header: the code comes from the body's
    structured 'Code: N' prefix, never from the message's words."""
    from app.clickhouse.errors import classify

    with pytest.raises(DatabaseError) as caught:
        clickhouse_connect.get_client(dsn=clickhouse_server.url(password="wrong"))
    assert caught.value.code is None  # no header from this server
    c = classify(caught.value)
    assert (c.kind, c.code) == ("config", 193)


def test_transport_errors_are_transient() -> None:
    from app.clickhouse.errors import classify

    assert classify(OperationalError("Connection refused")).kind == "transient"
    assert classify(ConnectionResetError()).kind == "transient"
    assert classify(DatabaseError("HTTP driver received HTTP status 502")).kind == "transient"  # a proxy, no code

