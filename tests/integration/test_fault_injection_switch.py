"""Fault injection is off unless a command is started with --fault-injection: a stray
PIPELINE_CRASH_AT in the environment never kills a production process, and the sink's
--fail-insert-* flags are refused without the switch."""

from __future__ import annotations

from tests.conftest import Pipeline
from tests.helpers import assert_crashed_at

GEN = ("--seed", "3", "--events", "5000", "--accounts", "200", "--partitions", "2", "--event-time-rate", "100")
SMALL = ("--batch-max-wait", "0.05s", "--poll-records", "500")


def test_a_plain_start_ignores_a_stray_crash_variable(pipeline: Pipeline) -> None:
    pipeline.gen(*GEN)
    # every checkpoint and insert would crash if the variable were honoured
    stray = {"PIPELINE_CRASH_AT": "checkpoint.before_commit:1,sink.before_insert:1"}
    proc = pipeline.run("app.processor", "--until-end", *SMALL, "--log-level", "info", check=False,
                        extra_env=stray)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"fault_injection_ignored"' in proc.stderr
    assert '"crash_point_reached"' not in proc.stderr
    sink = pipeline.run("app.sink", "--until-idle", check=False, extra_env=stray)
    assert sink.returncode == 0, sink.stderr[-3000:]
    res = pipeline.verify()
    assert res.returncode == 0 and "EXACT" in res.stdout, res.stdout[-3000:]


def test_the_switch_arms_crash_points_and_says_so(pipeline: Pipeline) -> None:
    pipeline.gen(*GEN)
    # --batch-rows 1: a checkpoint after every poll of <= 500 records, so there is a 2nd one
    res = pipeline.processor(*SMALL, "--batch-rows", "1", "--log-level", "info",
                             crash_at="checkpoint.before_commit:2", check=False)
    assert_crashed_at(res.returncode, res.stderr, "checkpoint.before_commit", nth=2)
    assert '"fault_injection_enabled"' in res.stderr
    assert pipeline.checkpoints() == 1  # killed before the 2nd checkpoint's commit


def test_insert_faults_need_the_switch(pipeline: Pipeline) -> None:
    res = pipeline.run("app.sink", "--until-idle", "--fail-insert-every", "2", check=False)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "--fault-injection" in res.stderr and len(res.stderr.strip().splitlines()) == 1
