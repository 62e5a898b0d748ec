"""`python -m app.status` against a running pipeline (issue 14, item 3): per partition the
ledger's position, the log end, lag, watermark, owner and generation; the sink's backlog;
DLQ counts; `--json`; exit 1 when stuck — a sink group retried past --max-group-attempts,
no progress for --stall-after with work waiting — and 0 again once it moves."""

from __future__ import annotations

import json
import socket
import subprocess
from typing import Any

from tests.conftest import Pipeline
from tests.helpers import wait_for

GEN = ("--accounts", "300", "--partitions", "2", "--late-fraction", "0.05", "--invalid-fraction", "0.02",
       "--event-time-rate", "100")


def status(p: Pipeline, *args: str) -> tuple[int, dict[str, Any]]:
    res: subprocess.CompletedProcess[str] = p.run("app.status", "--json", *args, check=False)
    assert res.returncode in (0, 1), f"status exit {res.returncode}:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return res.returncode, json.loads(res.stdout)


def ledger_dlq(p: Pipeline) -> dict[str, int]:
    with p.ledger() as conn:
        return {(f"{r[0]}/{r[1]}" if r[1] else r[0]): int(r[2]) for r in conn.execute(
            "SELECT reason, window_kind, sum(count) FROM dlq_count WHERE pipeline_id = %s GROUP BY 1, 2",
            (p.pipeline_id,))}


def test_status_of_a_running_pipeline_and_when_it_is_stuck(pipeline: Pipeline) -> None:
    p = pipeline
    p.gen(*GEN, "--seed", "1", "--events", "1000")
    proc = p.start("app.processor", "--batch-max-wait", "0.1s")
    sink = p.start("app.sink", "--batch-max-wait", "0.2s")

    def caught_up() -> dict[str, Any] | None:
        p.alive(proc, sink)
        code, doc = status(p)
        parts = doc["partitions"]
        done = (len(parts) == 2 and all(x["lag_records"] == 0 for x in parts)
                and doc["sink"]["pending_batches"] == 0 and doc["sink"]["last_ack_age_s"] is not None)
        return doc if done and code == 0 else None
    doc = wait_for(caught_up, 90, "status to show both partitions caught up and the sink idle")
    host = socket.gethostname()
    for x in doc["partitions"]:
        assert x["owner"] == f"{host}-{proc.pid}" and x["generation"] >= 1, x
        assert x["next_offset"] == x["log_end"] and x["lag_seconds"] == 0.0
        assert x["watermark_ms"] is not None and x["watermark"].endswith("Z")
    assert sum(x["log_end"] for x in doc["partitions"]) == 1000 and doc["total_lag_records"] == 0
    assert doc["dlq"] == ledger_dlq(p) and sum(doc["dlq"].values()) > 0
    assert doc["ok"] is True and doc["stuck"] == [] and doc["last_checkpoint_id"] is not None

    # the sink stops: batches wait, nothing is acknowledged; with --stall-after 1s that is stuck
    sink.terminate()
    assert sink.wait(timeout=60) == 0, p.log(sink)[-3000:]
    p.gen(*GEN, "--seed", "2", "--events", "300")

    def sink_stuck() -> dict[str, Any] | None:
        p.alive(proc)
        code, doc = status(p, "--stall-after", "1s")
        return doc if code == 1 and any(r.startswith("sink: ") for r in doc["stuck"]) else None
    doc = wait_for(sink_stuck, 60, "status to report the stopped sink as stuck (exit 1)")
    assert doc["sink"]["pending_batches"] > 0 and doc["ok"] is False
    assert not any(r.startswith("partition") for r in doc["stuck"]), doc["stuck"]  # the processor moves on

    # the processor stops too, and more input arrives: its partitions are stuck
    proc.terminate()
    assert proc.wait(timeout=60) == 0, p.log(proc)[-3000:]
    p.gen(*GEN, "--seed", "3", "--events", "300")

    def partitions_stuck() -> dict[str, Any] | None:
        code, doc = status(p, "--stall-after", "1s")
        return doc if code == 1 and sum(r.startswith("partition") for r in doc["stuck"]) == 2 else None
    doc = wait_for(partitions_stuck, 60, "status to report both partitions behind without progress")
    assert doc["total_lag_records"] == 300
    text = p.run("app.status", "--stall-after", "1s", check=False)
    assert text.returncode == 1 and "STUCK:" in text.stdout and "records behind" in text.stdout, text.stdout

    # everything catches up: ok again, whatever --stall-after says
    p.processor("--batch-max-wait", "0.1s")
    p.sink()
    code, doc = status(p, "--stall-after", "1s")
    assert code == 0 and doc["stuck"] == [] and doc["total_lag_records"] == 0, doc


def test_a_group_retried_past_the_threshold_is_stuck(pipeline: Pipeline) -> None:
    p = pipeline
    p.gen(*GEN, "--seed", "4", "--events", "500")
    p.processor("--batch-max-wait", "0.1s")
    failing = p.start("app.sink", "--fault-injection", "--fail-insert-every", "1", "--batch-max-wait", "0.1s")

    def stuck() -> dict[str, Any] | None:
        p.alive(failing)
        code, doc = status(p, "--max-group-attempts", "3")
        return doc if code == 1 and any(r.startswith("sink group") for r in doc["stuck"]) else None
    doc = wait_for(stuck, 90, "status to report the group the failing sink keeps retrying")
    worst = doc["sink"]["worst_groups"][0]
    assert worst["insert_attempts"] >= 3 and doc["sink"]["open_groups"] >= 1, doc["sink"]
    code, _ = status(p, "--max-group-attempts", "1000")
    assert code == 0
    failing.terminate()
    assert failing.wait(timeout=60) == 0, p.log(failing)[-3000:]
    p.sink()
    res = p.verify()
    assert res.returncode == 0 and "EXACT" in res.stdout, res.stdout[-3000:]
