"""Crash points for the exactly-once tests: SIGKILL this process at a named step.

`PIPELINE_CRASH_AT=checkpoint.inside_commit:3` kills the process with SIGKILL the third
time it reaches that step. Unset (always, outside tests), a crash point costs one dict
lookup. The kill is real: no cleanup, no flush, no exception handlers run.
"""

from __future__ import annotations

import os
import signal
from typing import Final

_SPEC: Final = os.environ.get("PIPELINE_CRASH_AT", "")
_TARGETS: dict[str, int] = {}
for part in filter(None, _SPEC.split(",")):
    name, _, nth = part.partition(":")
    _TARGETS[name.strip()] = int(nth or 1)
_SEEN: dict[str, int] = {}


def crash_point(name: str) -> None:
    if not _TARGETS or name not in _TARGETS:
        return
    _SEEN[name] = _SEEN.get(name, 0) + 1
    if _SEEN[name] == _TARGETS[name]:
        os.kill(os.getpid(), signal.SIGKILL)
