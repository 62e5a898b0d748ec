"""After an exception anywhere in the processing path the processor commits nothing more
(issue 9, item 1): not the revoke callback's checkpoint during close, not the final one.

Each case runs the real Processor in this process against the real Kafka and Postgres and
makes one of our own steps raise once, at a moment when uncommitted progress exists (so
a checkpoint on the way down would commit offsets past records whose windows or DLQ
records were never completed). The ledger must not move after the failure, run() must
raise, and a clean restart must end exact (verify)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from app.core.config import ServiceSettings
from app.core.errors import InvariantViolation
from app.processor.engine import Processor, ProcessorConfig
from app.processor.windows import LatenessPolicy
from tests.conftest import Pipeline

GEN = ("--seed", "5", "--events", "20000", "--accounts", "300", "--partitions", "2",
       "--late-fraction", "0.05", "--invalid-fraction", "0.02", "--event-time-rate", "100")


class Injected(Exception):
    """Stands for any unexpected error (a bug, a library error)."""


@pytest.fixture
def signals() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def _processor(p: Pipeline, *, snapshot_chunk_rows: int = 100_000) -> Processor:
    services = ServiceSettings(kafka_bootstrap_servers=p.bootstrap, database_url=p.database_url,
                               clickhouse_url=p.clickhouse_url, events_topic=p.topic, dlq_topic=p.dlq_topic,
                               pipeline_id=p.pipeline_id)
    cfg = ProcessorConfig(services=services, policy=LatenessPolicy(5_000, 60_000, 60_000), batch_max_wait_s=0.05,
                          poll_records=150, snapshot_interval_s=0.0, backpressure_check_s=0.0, until_end=True, state_dir=p.tmp / "state",
                          session_timeout_ms=6_000, snapshot_chunk_rows=snapshot_chunk_rows)
    return Processor(cfg)


def _ledger_state(p: Pipeline) -> tuple[int, dict[int, int]]:
    with p.ledger() as conn:
        (checkpoints,) = conn.execute("SELECT count(*) FROM ledger_checkpoint WHERE pipeline_id = %s",
                                      (p.pipeline_id,)).fetchone()  # type: ignore[misc]
        offsets = dict(conn.execute("SELECT partition, next_offset FROM partition_state WHERE pipeline_id = %s",
                                    (p.pipeline_id,)).fetchall())
    return int(checkpoints), offsets


def _one_checkpoint_then_none(proc: Processor) -> Callable[[], bool]:
    """The checkpointer's due(), made to commit exactly once, as soon as records are read.

    A snapshot starts right after a commit and writes one chunk per loop turn. When every
    turn checkpoints (a loaded machine, a 0.05 s batch wait) each chunk is written with
    nothing uncommitted, and a short run could end before any chunk ever was: the failure
    was then never injected (seen once in a fresh-clone run). With a single early commit
    and one window per chunk, the next turn that reads records writes a chunk with those
    records uncommitted, whatever the machine's speed."""
    committed = {"n": 0}

    def due() -> bool:
        if committed["n"] == 0 and _uncommitted(proc):
            committed["n"] = 1
            return True
        return False
    return due


def _uncommitted(proc: Processor) -> bool:
    return any(o.next_offset != o.committed_offset for o in proc.owned.values())


def _fail_once(p: Pipeline, proc: Processor, fn: Callable[..., Any], error: BaseException,
               seen: dict[str, Any], *, after: int = 0) -> Callable[..., Any]:
    """fn, except that one call, with uncommitted progress and after `after` earlier calls, raises."""
    calls = {"n": 0}

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if "ledger" not in seen and calls["n"] > after and _uncommitted(proc):
            seen["ledger"] = _ledger_state(p)
            raise error
        return fn(*args, **kwargs)
    return wrapped


SITES = ["hot_path_dlq_send", "dlq_flush", "ledger_commit", "snapshot_chunk", "backpressure_read"]


@pytest.mark.parametrize("site", SITES)
def test_no_commit_after_an_error(pipeline: Pipeline, signals: None, site: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    p = pipeline
    p.gen(*GEN)
    proc = _processor(p, snapshot_chunk_rows=1 if site == "snapshot_chunk" else 100_000)
    seen: dict[str, Any] = {}
    too_large = KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    if site == "hot_path_dlq_send":
        proc.dlq.send = _fail_once(p, proc, proc.dlq.send, too_large, seen, after=20)  # type: ignore[method-assign]
    elif site == "dlq_flush":
        proc.dlq.flush = _fail_once(p, proc, proc.dlq.flush, Injected("flush"), seen, after=1)  # type: ignore[method-assign]
    elif site == "ledger_commit":
        proc.ledger.commit = _fail_once(p, proc, proc.ledger.commit,  # type: ignore[method-assign]
                                        InvariantViolation("injected"), seen, after=1)
    elif site == "snapshot_chunk":
        proc.checkpointer.due = _one_checkpoint_then_none(proc)  # type: ignore[method-assign]
        proc.ledger.write_snapshot_chunk = _fail_once(  # type: ignore[method-assign]
            p, proc, proc.ledger.write_snapshot_chunk, Injected("snapshot"), seen)
    elif site == "backpressure_read":
        import app.ledger.backlog as groups
        monkeypatch.setattr(groups, "pending_work",
                            _fail_once(p, proc, groups.pending_work, Injected("backlog"), seen, after=2))
    with pytest.raises((Injected, KafkaException, InvariantViolation)):
        proc.run()
    assert "ledger" in seen, f"the {site} failure was never injected (the run ended first)"
    assert _ledger_state(p) == seen["ledger"], "the processor committed after the error"

    p.processor("--batch-max-wait", "0.1s")  # a clean restart finishes the log
    p.sink()
    res = p.verify()
    assert res.returncode == 0 and "EXACT" in res.stdout, res.stdout[-3000:]
