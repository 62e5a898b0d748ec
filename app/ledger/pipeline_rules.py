"""What a pipeline id is pinned to (contract §2, §3): its classification rules and its input log.

The rules (--max-out-of-orderness, allowed lateness per kind, --max-record-bytes) decide
which events are folded, late or invalid, and the input log (topic name, Kafka topic id,
partition count) decides which records those are and that an account stays in one
partition. The processor's state, offsets and every row it emitted depend on both, so
both belong to the pipeline id: the first checkpoint records them (`pipeline_rules`,
migrations/versions/0007_pipeline_rules.py) in its own transaction, and every later
start, assignment and commit must see the same values. The row is never updated.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from app.core.config import LatenessFlags
from app.core.errors import InvariantViolation, PipelineMismatch
from app.core.kafka import TopicIdentity

CHANGE_RULES = "docs/watermarks.md, \"Changing the rules\""
INPUT_LOG = "docs/watermarks.md, \"The input log is pinned too\""


@dataclass(frozen=True, slots=True)
class PipelinePin:
    """The rules a processor runs with and the log it reads, as one comparable value."""

    rules: LatenessFlags
    log: TopicIdentity


@dataclass(frozen=True, slots=True)
class PinnedPipeline:
    """The pin as the ledger recorded it, and where."""

    pin: PipelinePin
    checkpoint_id: int
    pinned_at: datetime


_COLUMNS = """max_out_of_orderness_ms, allowed_lateness_minute_ms, allowed_lateness_hour_ms, max_record_bytes,
              topic, topic_id, partitions, checkpoint_id, pinned_at"""


def select_pinned(conn: psycopg.Connection[Any], pipeline_id: str) -> PinnedPipeline | None:
    """The pipeline's recorded pin; None before its first checkpoint."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM pipeline_rules WHERE pipeline_id = %s",  # noqa: S608 (fixed)
                       (pipeline_id,)).fetchone()
    if row is None:
        return None
    rules = LatenessFlags(int(row[0]), int(row[1]), int(row[2]), int(row[3]))
    return PinnedPipeline(PipelinePin(rules, TopicIdentity(row[4], row[5], int(row[6]))), int(row[7]), row[8])


def check_or_record(conn: psycopg.Connection[Any], pipeline_id: str, pin: PipelinePin,
                    checkpoint_id: int) -> None:
    """Inside a checkpoint's transaction: record the pin if this is the pipeline's first
    checkpoint, else require the recorded one. Race-free: of two first checkpoints with
    different pins, the second INSERT waits for the first transaction, finds its row and
    fails its own transaction, which then commits nothing."""
    pinned = select_pinned(conn, pipeline_id)
    if pinned is None:
        r, log = pin.rules, pin.log
        inserted = conn.execute(
            """INSERT INTO pipeline_rules (pipeline_id, max_out_of_orderness_ms, allowed_lateness_minute_ms,
                 allowed_lateness_hour_ms, max_record_bytes, topic, topic_id, partitions, checkpoint_id)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (pipeline_id) DO NOTHING RETURNING 1""",
            (pipeline_id, r.max_out_of_orderness_ms, r.allowed_lateness_minute_ms, r.allowed_lateness_hour_ms,
             r.max_record_bytes, log.topic, log.topic_id, log.partitions, checkpoint_id)).fetchone()
        if inserted is not None:
            return
        pinned = select_pinned(conn, pipeline_id)  # a new statement sees the concurrent first checkpoint
        if pinned is None:
            raise InvariantViolation(f"pipeline {pipeline_id!r}: its rules row conflicted but cannot be read")
    check_rules(pipeline_id, pinned, pin.rules)
    check_log(pipeline_id, pinned.pin.log, pin.log, recorded=recorded_by(pinned))


# ---- comparisons (pure) ---------------------------------------------------------------------------


def duration_text(ms: int) -> str:
    """As a duration flag takes it: 1h, 5m, 60s, 250ms."""
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def rule_differences(pinned: LatenessFlags, ours: LatenessFlags) -> list[tuple[str, str, str]]:
    """(flag, pinned value, our value) for every rule that differs."""
    def ms(a: int, b: int) -> tuple[str, str, bool]:
        return duration_text(a), duration_text(b), a != b

    pairs = (("--max-out-of-orderness", *ms(pinned.max_out_of_orderness_ms, ours.max_out_of_orderness_ms)),
             ("--allowed-lateness-minute",
              *ms(pinned.allowed_lateness_minute_ms, ours.allowed_lateness_minute_ms)),
             ("--allowed-lateness-hour", *ms(pinned.allowed_lateness_hour_ms, ours.allowed_lateness_hour_ms)),
             ("--max-record-bytes", str(pinned.max_record_bytes), str(ours.max_record_bytes),
              pinned.max_record_bytes != ours.max_record_bytes))
    return [(flag, a, b) for flag, a, b, differs in pairs if differs]


def check_rules(pipeline_id: str, pinned: PinnedPipeline, ours: LatenessFlags) -> None:
    diffs = rule_differences(pinned.pin.rules, ours)
    if diffs:
        named = "; ".join(f"{flag} {a} (this process: {b})" for flag, a, b in diffs)
        raise PipelineMismatch(
            f"pipeline {pipeline_id!r} is pinned to {named}, recorded with its first checkpoint "
            f"{pinned.checkpoint_id}: windows already emitted and dropped as final follow those rules; "
            f"run with them, or change rules with a new --pipeline-id or a backfill ({CHANGE_RULES})")


def check_log(pipeline_id: str, was: TopicIdentity, seen: TopicIdentity | None, *, recorded: str) -> None:
    """`was`: the log as `recorded` says (the ledger's first checkpoint, or what this process
    saw first); `seen`: the topic as Kafka describes it now (None: it does not exist)."""
    if seen is None:
        raise PipelineMismatch(
            f"topic {was.topic!r} of pipeline {pipeline_id!r} does not exist any more (topic id "
            f"{was.topic_id}, {recorded}): it was deleted, and a topic created again under that name is "
            f"another log; start a new --pipeline-id for it ({INPUT_LOG})")
    if seen.topic != was.topic:
        raise PipelineMismatch(
            f"pipeline {pipeline_id!r} reads topic {was.topic!r} ({recorded}), not {seen.topic!r}: "
            "another topic needs another --pipeline-id")
    if seen.topic_id is not None and was.topic_id is not None and seen.topic_id != was.topic_id:
        raise PipelineMismatch(
            f"topic {seen.topic!r} is not the log pipeline {pipeline_id!r} read: its topic id is "
            f"{seen.topic_id}, not {was.topic_id} ({recorded}); the topic was deleted and created again "
            f"and its offsets do not continue the ledger's: start a new --pipeline-id for it ({INPUT_LOG})")
    if seen.partitions != was.partitions:
        raise PipelineMismatch(
            f"topic {seen.topic!r} has {seen.partitions} partitions, not {was.partitions} ({recorded}): "
            "a changed partition count moves accounts to other partitions and splits their windows "
            "(contract §2); partitions cannot be removed again: repartition the events into a new topic "
            f"and start a new --pipeline-id ({INPUT_LOG})")


def recorded_by(pinned: PinnedPipeline) -> str:
    return f"recorded with the pipeline's first checkpoint {pinned.checkpoint_id}"
