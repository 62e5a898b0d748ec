"""What every command shares at its edge: the exit codes, the version, one-line errors, the
metrics port, and stop signals while a command waits for its services.

The exit codes, one table for every command (docs/operations.md):

    0    done, or stopped on request (SIGTERM / SIGINT) by a long-running command
    1    failed: verify found a mismatch; an invariant broke; an unexpected error
    2    usage or configuration: bad flags or LOG_LEVEL, rules other than the pinned ones, an
         unmigrated ledger, wrong credentials, a metrics port already taken
    3    a service unreachable past --service-timeout (or an embedded ClickHouse path held by
         another process)
    130  a one-shot command (backfill, verify) interrupted before it finished: run it again
"""

from __future__ import annotations

import errno
import signal
import socket
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any, Final, Self

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3
EXIT_INTERRUPTED: Final = 130

_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@cache
def package_version() -> str:
    """The project's version: pyproject.toml in a checkout (what is running), else the
    installed distribution's."""
    try:
        return str(tomllib.loads(_PYPROJECT.read_text())["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        pass
    try:
        return metadata.version("rollups-pipeline")
    except metadata.PackageNotFoundError:
        return "unknown"


def error_line(prog: str, message: str) -> None:
    """The one line a command ends with when it stops on an error (stdout flushed first, so
    the line is last)."""
    sys.stdout.flush()
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.stderr.flush()


def fail(prog: str, message: str, code: int) -> int:
    error_line(prog, message)
    return code


@contextmanager
def metrics_port(prog: str, port: int, host: str) -> Iterator[None]:
    """Around serve_metrics: a port that cannot be bound is a configuration error, one line
    naming the port and the flag (exit 2), not a traceback."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            why = f"metrics port {port} on {host} is already in use (another process, e.g. a second " \
                  f"{prog.split()[-1].removeprefix('app.')}?): pass another --metrics-port, or 0 to turn it off"
        elif e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(e, socket.gaierror):
            why = f"cannot bind the metrics endpoint to --metrics-host {host} ({e.strerror or e}): pass another " \
                  "--metrics-host"
        elif e.errno == errno.EACCES:
            why = f"metrics port {port} needs privileges (--metrics-port): use a port above 1023, or 0 to turn it off"
        else:
            raise
        error_line(prog, why)
        raise SystemExit(EXIT_USAGE) from None


class StopSignals:
    """SIGTERM / SIGINT while a command waits for its services at start: remember the request
    (the wait stops, the command exits 0) instead of dying mid-way; the previous handlers
    come back on exit."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        for s in (signal.SIGTERM, signal.SIGINT):
            self._previous[s] = signal.signal(s, self._on_signal)
        return self

    def __exit__(self, *_: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.requested = signal.Signals(signum).name

    def __call__(self) -> bool:
        return self.requested is not None
