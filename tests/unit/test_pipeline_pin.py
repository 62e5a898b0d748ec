"""The pure comparisons behind the pipeline pin (app/ledger/pipeline_rules.py) and the
log position check (app/processor/log_guard.py): what is refused and what the one-line
error names."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from app.core.config import LatenessFlags
from app.core.errors import FatalError, PipelineMismatch
from app.core.kafka import TopicIdentity
from app.ledger.pipeline_rules import (
    PinnedPipeline,
    PipelinePin,
    check_log,
    check_rules,
    duration_text,
    recorded_by,
    rule_differences,
)
from app.processor.log_guard import check_position, rules_of
from app.processor.windows import LatenessPolicy

RULES = LatenessFlags(5_000, 60_000, 60_000, 1_048_576)
LOG = TopicIdentity("events", "i46kwNzWSVmg5Yw4ayom0w", 4)
PINNED = PinnedPipeline(PipelinePin(RULES, LOG), 17, datetime(2026, 1, 1, tzinfo=timezone.utc))


def test_durations_read_like_the_flags_that_set_them() -> None:
    assert [duration_text(ms) for ms in (0, 250, 5_000, 60_000, 90_000, 3_600_000, 5_400_000)] == \
        ["0ms", "250ms", "5s", "1m", "90s", "1h", "90m"]


def test_equal_rules_pass_and_each_difference_is_named_with_both_values() -> None:
    check_rules("rollups", PINNED, LatenessFlags(5_000, 60_000, 60_000, 1_048_576))
    assert rule_differences(RULES, LatenessFlags(7_000, 60_000, 3_600_000, 2048)) == [
        ("--max-out-of-orderness", "5s", "7s"), ("--allowed-lateness-hour", "1m", "1h"),
        ("--max-record-bytes", "1048576", "2048")]
    with pytest.raises(PipelineMismatch) as e:
        check_rules("rollups", PINNED, LatenessFlags(5_000, 3_600_000, 3_600_000, 1_048_576))
    msg = str(e.value)
    assert "\n" not in msg and "pipeline 'rollups'" in msg and "first checkpoint 17" in msg
    assert ("--allowed-lateness-minute 1m (this process: 1h); "
            "--allowed-lateness-hour 1m (this process: 1h)") in msg
    assert "new --pipeline-id or a backfill" in msg
    assert isinstance(e.value, FatalError)  # never retried


def test_the_processor_config_maps_to_the_pinned_rules() -> None:
    assert rules_of(LatenessPolicy(5_000, 60_000, 120_000), 1_048_576) == \
        LatenessFlags(5_000, 60_000, 120_000, 1_048_576)


def test_the_log_must_be_the_recorded_one() -> None:
    rec = recorded_by(PINNED)
    check_log("rollups", LOG, TopicIdentity("events", LOG.topic_id, 4), recorded=rec)
    # a broker without topic ids cannot tell: the partition count still counts
    check_log("rollups", LOG, TopicIdentity("events", None, 4), recorded=rec)
    cases = {
        "does not exist any more": None,
        "reads topic 'events' (recorded with the pipeline's first checkpoint 17), not 'other'":
            TopicIdentity("other", "AAAAAAAAAAAAAAAAAAAAAQ", 4),
        "its topic id is Zm9vYmFyYmF6cXV4cXV1eA, not i46kwNzWSVmg5Yw4ayom0w":
            TopicIdentity("events", "Zm9vYmFyYmF6cXV4cXV1eA", 4),
        "has 6 partitions, not 4": TopicIdentity("events", LOG.topic_id, 6),
    }
    for expected, seen in cases.items():
        with pytest.raises(PipelineMismatch) as e:
            check_log("rollups", LOG, seen, recorded=rec)
        assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_the_log_must_hold_the_next_offset() -> None:
    for next_offset, low, high in ((0, 0, 0), (0, 0, 9), (5, 5, 9), (9, 5, 9), (7, 0, 9)):
        check_position("events", 3, next_offset, low, high)
    with pytest.raises(PipelineMismatch, match=r"events\[3\] now starts at offset 12.*records \[9, 12\) were "
                                               r"deleted"):
        check_position("events", 3, 9, 12, 20)
    with pytest.raises(PipelineMismatch, match=r"records \[0, 4\) were deleted"):
        check_position("events", 3, 0, 4, 20)  # a partition never read: its first records are gone too
    with pytest.raises(PipelineMismatch, match=r"events\[3\] ends at offset 4, but the ledger has read up "
                                               r"to 9"):
        check_position("events", 3, 9, 0, 4)
