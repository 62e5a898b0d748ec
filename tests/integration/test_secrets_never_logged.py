"""No secret in any log line (contract §1; issue 14, item 5): a whole pipeline runs with a
password in every place one can be given — a Postgres role's password in the URL (TLS
required: `sslmode=require`, checked in pg_stat_ssl) and in a keyword DSN, a ClickHouse
URL's `?password=` (chDB accepts and ignores it) and a server URL's userinfo (a real,
old Debian ClickHouse server, whose errors quote the URL), a Kafka SASL password from
KAFKA_CONFIG_* — at debug level, and every line of every command's stdout and stderr is
searched for the secrets."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from tests.clickhouse_server import SERVER_PASSWORD, ClickHouseServer
from tests.clickhouse_server import clickhouse_server as running_clickhouse_server
from tests.conftest import REPO, Pipeline
from tests.helpers import free_port, log_events, wait_for
from tests.metrics_support import get

GEN = ("--seed", "9", "--events", "600", "--accounts", "100", "--partitions", "2", "--late-fraction", "0.05",
       "--invalid-fraction", "0.02", "--event-time-rate", "100")
PG_SECRET = f"pg-{uuid.uuid4().hex[:12]}-Pa55"
CH_SECRET = f"ch-{uuid.uuid4().hex[:12]}-Pa55"
KAFKA_SECRET = f"kafka-{uuid.uuid4().hex[:12]}-Pa55"


@pytest.fixture(scope="module")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    with running_clickhouse_server(tmp_path_factory.mktemp("clickhouse-server")) as server:
        yield server


@pytest.fixture
def ledger_role(postgres: str) -> Iterator[str]:
    """A login role with a password, allowed into the test ledger's tables only; dropped after."""
    role = f"ops_secret_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(PG_SECRET)))
        conn.execute(sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {}").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_no_secret_in_any_log_line(pipeline: Pipeline, ledger_role: str, clickhouse_server: ClickHouseServer,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    p = pipeline
    hostport, db = p.database_url.split("@", 1)[1].split("/", 1)
    host, port = hostport.split(":")
    app_name = f"ops-tls-{uuid.uuid4().hex[:6]}"
    url = f"postgresql://{ledger_role}:{quote(PG_SECRET)}@{hostport}/{db}?sslmode=require&application_name={app_name}"
    keyword_dsn = (f"host={host} port={port} dbname={db} user={ledger_role} password={PG_SECRET} "
                   f"sslmode=require application_name={app_name}")
    p.clickhouse_url = f"{p.clickhouse_url}?password={CH_SECRET}"
    monkeypatch.setenv("KAFKA_CONFIG_SASL_USERNAME", "pipeline")  # every child inherits these
    monkeypatch.setenv("KAFKA_CONFIG_SASL_PASSWORD", KAFKA_SECRET)
    env = {"LOG_LEVEL": "debug", "DATABASE_URL": url}
    outputs: dict[str, subprocess.CompletedProcess[str]] = {}
    outputs["gen"] = p.run("app.gen", *GEN, extra_env=env)
    port = free_port()  # the health probes connect with the same settings, in their own thread
    proc = p.start("app.processor", "--batch-max-wait", "0.1s", "--database-url", keyword_dsn, "--log-level", "debug",
                   "--metrics-port", str(port))
    proc_env_ok = wait_for(lambda: p.alive(proc) and _tls_sessions(ledger_role, app_name), 60,
                           "the processor's ledger connection, over TLS, in pg_stat_ssl")
    assert proc_env_ok, "no TLS session"
    wait_for(lambda: p.alive(proc) and p.committed_offsets() == 600, 60, "the processor to commit every record")
    wait_for(lambda: p.alive(proc) and get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 60,
             "the processor's /readyz: its Postgres (keyword DSN) and Kafka (KAFKA_CONFIG_*) probes answered")
    proc.terminate()
    assert proc.wait(timeout=60) == 0, p.log(proc)[-3000:]
    outputs["processor --until-end"] = p.run("app.processor", "--until-end", extra_env=env)
    outputs["sink"] = p.run("app.sink", "--until-idle", extra_env=env)
    outputs["verify"] = p.run("app.verify", extra_env=env)
    outputs["status"] = p.run("app.status", "--json", extra_env=env)
    outputs["alembic"] = subprocess.run([sys.executable, "-m", "alembic", "current"], cwd=REPO,
                                        env=p.env(**env), capture_output=True, text=True, timeout=120, check=True)
    # errors quote URLs too: a server that refuses the client (too old for it), a wrong password
    outputs["sink, server error"] = p.run("app.sink", "--until-idle", check=False,
                                          extra_env={**env, "CLICKHOUSE_URL": clickhouse_server.url()})
    outputs["sink, wrong password"] = p.run("app.sink", "--until-idle", check=False, extra_env={
        **env, "CLICKHOUSE_URL": clickhouse_server.url(password=CH_SECRET)})
    outputs["verify, ClickHouse down"] = p.run("app.verify", "--service-timeout", "2s", check=False,
                                               extra_env={**env, "CLICKHOUSE_URL": f"http://u:{CH_SECRET}@127.0.0.1:1/db"})
    outputs["processor, Postgres down"] = p.run(
        "app.processor", "--service-timeout", "2s", check=False,
        extra_env={**env, "DATABASE_URL": f"postgresql://{ledger_role}:{PG_SECRET}@127.0.0.1:1/{db}"})
    assert "EXACT" in outputs["verify"].stdout, outputs["verify"].stdout[-3000:]
    assert outputs["sink, server error"].returncode == 1
    assert outputs["sink, wrong password"].returncode == 2
    assert outputs["verify, ClickHouse down"].returncode == 3
    assert outputs["processor, Postgres down"].returncode == 3
    logs = {name: res.stdout + res.stderr for name, res in outputs.items()}
    logs["processor (live, keyword DSN)"] = p.log(proc)
    assert log_events(logs["processor (live, keyword DSN)"], "processor_starting")[0]["database_url"].count("***") == 1
    for name, text in logs.items():
        assert text.strip(), f"{name} wrote nothing"
        for secret in (PG_SECRET, CH_SECRET, KAFKA_SECRET, SERVER_PASSWORD):
            for form in {secret, quote(secret)}:
                leaked = [line for line in text.splitlines() if form in line]
                assert not leaked, f"{name} logged a secret:\n" + "\n".join(leaked[:5])


def _tls_sessions(role: str, app_name: str) -> int:
    """The role's sessions of this test that use TLS (read as the superuser)."""
    from tests.conftest import DATABASE_URL
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        row = conn.execute(
            """SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a
               JOIN pg_stat_ssl s ON s.pid = a.pid WHERE a.usename = %s AND a.application_name = %s""",
            (role, app_name)).fetchone()
    assert row is not None
    ssl, total = int(row[0]), int(row[1])
    assert ssl == total, f"{total - ssl} of the ledger's sessions without TLS"
    return ssl
