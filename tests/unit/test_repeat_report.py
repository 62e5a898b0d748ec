"""tests/repeat.py (`make test-repeat`): JUnit XML of each run -> the tests that failed at
least once, with how often."""

from __future__ import annotations

from pathlib import Path

from tests.repeat import RunResult, parse_junit, pytest_argv, report

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="5">
  <testcase classname="tests.integration.test_ledger_retention" name="test_pruned" time="20"/>
  <testcase classname="tests.integration.test_state_reconcile" name="test_killed[state.a:1]" time="9">
    <failure message="assert restores">...</failure></testcase>
  <testcase classname="tests.integration.test_x.TestGroup" name="test_in_class" time="1">
    <error message="fixture">...</error></testcase>
  <testcase classname="tests.integration.test_gen_kafka" name="test_needs_kafka" time="0">
    <skipped message="no broker"/></testcase>
  <testcase classname="" name="tests.integration.test_broken" time="0"><error message="collection"/></testcase>
</testsuite></testsuites>
"""


def test_parse_junit_names_failures_as_pytest_node_ids(tmp_path: Path) -> None:
    xml = tmp_path / "run-1.xml"
    xml.write_text(JUNIT)
    passed, skipped, failed = parse_junit(xml)
    assert (passed, skipped) == (1, 1)
    assert failed == ("tests/integration/test_state_reconcile.py::test_killed[state.a:1]",
                      "tests/integration/test_x.py::TestGroup::test_in_class",
                      "tests/integration/test_broken.py")


def test_report_counts_each_failing_test_over_the_runs() -> None:
    flaky, broken = "tests/integration/a.py::test_flaky", "tests/integration/b.py::test_broken"
    results = [RunResult(1, 1, 300.0, 429, 0, (flaky, broken)), RunResult(2, 1, 310.0, 430, 0, (broken,)),
               RunResult(3, 0, 305.0, 431, 0, ())]
    text = report(results, 3)
    assert "run 2/3: 430 passed, 1 failed, 0 skipped in 310 s (pytest exit 1)" in text
    assert "min 300 s, max 310 s, total 915 s" in text
    assert f"failed 2/3  {broken}" in text and f"failed 1/3  {flaky}" in text
    assert text.index(broken) < text.index(flaky)  # most frequent first
    assert "no test failed in any run" in report([RunResult(1, 0, 1.0, 5)], 1)


def test_each_run_keeps_its_own_temporary_files_unless_the_caller_chose_a_basetemp(tmp_path: Path) -> None:
    argv = pytest_argv(3, tmp_path, ["-n", "2", "tests/integration"])
    assert f"--basetemp={tmp_path / 'run-3'}" in argv and f"--junitxml={tmp_path / 'run-3.xml'}" in argv
    assert pytest_argv(1, tmp_path, ["--basetemp=/tmp/x"]).count("--basetemp=/tmp/x") == 1
    assert not any(a.startswith("--basetemp=") for a in pytest_argv(1, tmp_path, ["--basetemp", "/tmp/x"]))
