"""Crash points for the exactly-once tests: SIGKILL this process at a named step.

Fault injection is off unless a command is started with `--fault-injection`: only then
is `PIPELINE_CRASH_AT` read, so a variable left in an operator's environment can never
kill a production process. `PIPELINE_CRASH_AT=checkpoint.inside_commit:3` kills the
process with SIGKILL the third time it reaches that step. Disarmed (always, outside
tests), a crash point costs one dict lookup. The kill is real: no cleanup, no flush, no
exception handlers run; one JSON line naming the step is written to stderr first, so a
test can check that the crash happened where it meant it to.
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Final

import orjson
import structlog

CRASH_ENV: Final = "PIPELINE_CRASH_AT"
_TARGETS: dict[str, int] = {}
_SEEN: dict[str, int] = {}

log = structlog.get_logger("faults")


def add_fault_injection_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fault-injection", action="store_true",
                        help=f"testing only: honour ${CRASH_ENV} crash points (and the sink's --fail-insert-* "
                             "flags); off by default, so stray values are ignored")


def parse_crash_spec(spec: str) -> dict[str, int]:
    """'a.b:3,c.d' -> {'a.b': 3, 'c.d': 1}. Raises ValueError on a bad count."""
    targets: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, nth = part.partition(":")
        count = int(nth or 1)
        if count < 1:
            raise ValueError(f"crash point {part!r}: the count must be >= 1")
        targets[name.strip()] = count
    return targets


def arm(enabled: bool, *, command: str) -> dict[str, int]:
    """Called once at start by each command. Returns the armed crash points."""
    _TARGETS.clear()
    _SEEN.clear()
    spec = os.environ.get(CRASH_ENV, "")
    if not enabled:
        if spec:
            log.info("fault_injection_ignored", command=command, variable=CRASH_ENV,
                     hint="crash points are honoured only with --fault-injection")
        return {}
    _TARGETS.update(parse_crash_spec(spec))
    log.warning("fault_injection_enabled", command=command, crash_at=dict(_TARGETS))
    return dict(_TARGETS)


def crash_point(name: str) -> None:
    if not _TARGETS or name not in _TARGETS:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if _SEEN[name] == _TARGETS[name]:
        os.write(2, orjson.dumps({"event": "crash_point_reached", "crash_point": name, "nth": _SEEN[name],
                                  "level": "warning"}) + b"\n")
        os.kill(os.getpid(), signal.SIGKILL)
