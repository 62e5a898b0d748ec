"""Run the integration tests N times in a row and report every test that failed at least once.

    python3 tests/repeat.py --runs 5                # what `make test-repeat N=5` runs
    python3 tests/repeat.py --runs 3 -- -k reconcile tests/integration/test_state_reconcile.py

Each run is a separate pytest process writing JUnit XML to --out (default
.data/test-repeat/<time>/run-K.xml) and its tests' temporary files (process logs, data
dirs) to <out>/run-K/, so a failure's logs outlive the next run; the report lists each
run's counts and wall time, then every test that failed or errored in any run with how often. Exit status: 0 when every run
passed, 1 when any test failed in any run, 2 when a run could not report (crash, usage).
A flaky test shows up here as "failed 1/5"; a broken one as "failed 5/5".
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PATHS = ["tests/integration"]


@dataclass(frozen=True)
class RunResult:
    run: int
    exit_code: int
    seconds: float
    passed: int = 0
    skipped: int = 0
    failed: tuple[str, ...] = field(default_factory=tuple)  # test ids that failed or errored

    def line(self, runs: int) -> str:
        return (f"run {self.run}/{runs}: {self.passed} passed, {len(self.failed)} failed, "
                f"{self.skipped} skipped in {self.seconds:.0f} s (pytest exit {self.exit_code})")


def test_id(case: ET.Element) -> str:
    """pytest's node id from a JUnit testcase: classname 'tests.integration.test_x[.Class]'."""
    if not case.get("classname"):  # a collection error: the name is the module
        return case.get("name", "?").replace(".", "/") + ".py"
    parts = case.get("classname", "").split(".")
    module = [p for p in parts if not p[:1].isupper()]
    classes = parts[len(module):]
    return "::".join(["/".join(module) + ".py", *classes, case.get("name", "?")])


def parse_junit(path: Path) -> tuple[int, int, tuple[str, ...]]:
    """(passed, skipped, failed ids) of one JUnit XML file."""
    passed = skipped = 0
    failed = []
    for case in ET.parse(path).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        if tags & {"failure", "error"}:
            failed.append(test_id(case))
        elif "skipped" in tags:
            skipped += 1
        else:
            passed += 1
    return passed, skipped, tuple(failed)


def pytest_argv(k: int, out: Path, pytest_args: list[str]) -> list[str]:
    """Run k's pytest command: its own JUnit file and, unless the caller chose one, its own
    basetemp (pytest empties a basetemp on start, so a shared one loses the previous run's logs)."""
    own = [f"--junitxml={out / f'run-{k}.xml'}"]
    if not any(a == "--basetemp" or a.startswith("--basetemp=") for a in pytest_args):
        own.append(f"--basetemp={out / f'run-{k}'}")
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *own, *pytest_args]


def run_once(k: int, out: Path, pytest_args: list[str]) -> RunResult:
    xml = out / f"run-{k}.xml"
    argv = pytest_argv(k, out, pytest_args)
    started = time.monotonic()
    code = subprocess.call(argv, cwd=REPO)
    seconds = time.monotonic() - started
    if not xml.exists() or code not in (0, 1, 5):  # 5: nothing collected; others: pytest itself failed
        return RunResult(k, code, seconds, failed=(f"<run {k}: pytest exit {code}, see its output>",))
    return RunResult(k, code, seconds, *parse_junit(xml))


def report(results: list[RunResult], runs: int) -> str:
    lines = ["", f"== {len(results)} of {runs} runs =="] + [r.line(runs) for r in results]
    times = [r.seconds for r in results]
    if times:
        lines.append(f"wall time per run: min {min(times):.0f} s, max {max(times):.0f} s, "
                     f"total {sum(times):.0f} s")
    counts = Counter(t for r in results for t in r.failed)
    if counts:
        lines.append(f"{len(counts)} test(s) failed at least once:")
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # most frequent first
        lines += [f"  failed {n}/{len(results)}  {t}" for t, n in ranked]
    else:
        lines.append("no test failed in any run")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 tests/repeat.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="how many times to run the tests (default 5)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for the JUnit XML of each run (default .data/test-repeat/<time>)")
    parser.add_argument("pytest_args", nargs="*", help=f"passed to pytest (default paths: {DEFAULT_PATHS})")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    pytest_args = list(args.pytest_args)
    if not any(not a.startswith("-") and (REPO / a.split("::")[0]).exists() for a in pytest_args):
        pytest_args += DEFAULT_PATHS
    out = args.out or REPO / ".data" / "test-repeat" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    try:
        for k in range(1, args.runs + 1):
            print(f"== run {k}/{args.runs}: pytest {' '.join(pytest_args)}", flush=True)
            results.append(run_once(k, out, pytest_args))
            print(results[-1].line(args.runs), flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    print(report(results, args.runs))
    print(f"JUnit XML and temporary files (logs) of each run: {out}")
    if any(r.failed and r.failed[0].startswith("<run") for r in results) or len(results) < args.runs:
        return 2
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
