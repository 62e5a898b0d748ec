"""Issue 11, acceptance 1: `/readyz` fails while Postgres is down and recovers after, while
`/healthz` (the loop is alive) holds throughout; a processor that owns no partition is
alive but not ready. Postgres is "stopped" by tests/faultproxy.py in front of it (connections
cut, port closed), never the shared server itself."""

from __future__ import annotations

import json

from tests.conftest import Pipeline
from tests.faultproxy import FaultProxy
from tests.helpers import wait_for
from tests.metrics_support import free_port, get


def status(port: int, path: str) -> tuple[int, dict[str, object]]:
    code, body = get(f"http://127.0.0.1:{port}{path}")
    return code, (json.loads(body) if body.startswith("{") else {})


def test_readyz_fails_while_postgres_is_down_and_recovers(pipeline: Pipeline) -> None:
    p = pipeline
    p.gen("--events", "2000", "--partitions", "2")
    with FaultProxy("127.0.0.1", 5432) as proxy:
        proxied = p.database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        ports = {"processor": free_port(), "sink": free_port()}
        procs = [p.start("app.processor", "--database-url", proxied, "--metrics-port", str(ports["processor"])),
                 p.start("app.sink", "--database-url", proxied, "--metrics-port", str(ports["sink"]))]

        def all_ready(want: int) -> bool:
            p.alive(*procs)
            return all(status(port, "/readyz")[0] == want for port in ports.values())
        wait_for(lambda: all_ready(200), 60, "processor and sink to be ready (services answer, partitions owned)")
        assert all(status(port, "/healthz")[0] == 200 for port in ports.values())

        proxy.refuse()
        wait_for(lambda: all_ready(503), 30, "/readyz to fail on both while Postgres refuses connections")
        for port in ports.values():
            code, body = status(port, "/readyz")
            assert code == 503 and str(body["checks"]["postgres"]).startswith("failing"), body  # type: ignore[index]
            assert status(port, "/healthz")[0] == 200, "a process waiting on Postgres is alive"

        proxy.restore()
        wait_for(lambda: all_ready(200), 60, "/readyz to recover on both once Postgres answers again")
        assert all(status(port, "/healthz")[0] == 200 for port in ports.values())


def test_a_processor_without_partitions_is_alive_but_not_ready(pipeline: Pipeline) -> None:
    p = pipeline
    p.gen("--events", "200", "--partitions", "1")
    ports = [free_port(), free_port()]
    procs = [p.start("app.processor", "--metrics-port", str(port)) for port in ports]

    def one_owner() -> int | None:
        """The idle one's port once one is ready and the other is not for want of a partition
        alone (its first probes may still be running when the owner is ready)."""
        p.alive(*procs)
        answers = {port: status(port, "/readyz") for port in ports}
        if sorted(code for code, _ in answers.values()) != [200, 503]:
            return None
        idle = next(port for port, (code, _) in answers.items() if code == 503)
        checks = answers[idle][1]["checks"]  # type: ignore[index]
        return idle if all(v == "ok" for k, v in checks.items() if k != "owns_partitions") else None
    idle = wait_for(one_owner, 60, "one processor to own the only partition (ready) and the other none "
                                   "(not ready, its services answering)")
    _code, body = status(idle, "/readyz")
    assert body["checks"]["owns_partitions"] == "no", body  # type: ignore[index]
    assert body["checks"]["postgres"] == "ok" and body["checks"]["kafka"] == "ok", body  # type: ignore[index]
    assert status(idle, "/healthz")[0] == 200
