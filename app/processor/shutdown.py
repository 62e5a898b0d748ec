"""Stopping on SIGTERM within a bounded time, even while Postgres does not answer.

Every retry loop in the processor asks `should_stop` between attempts, and Kafka waits are
sliced, but one call can block on its own: a Postgres round trip on a connection whose
server or network hangs (no error, no answer, for as long as TCP keeps the socket). After
a stop request, LedgerStopTimer interrupts such a call once it has been waiting for a
grace period: a SIGALRM handler raises StopInterrupted in the main thread, which psycopg's
wait loop lets through (it checks for signals several times a second). The interrupted
transaction never commits (or its outcome is unknown, which restore reconciles, as after a
SIGKILL), and the processor then commits nothing more and exits.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from app.core.errors import RetryableError


class StopInterrupted(RetryableError):
    """A Postgres call abandoned because the process was asked to stop and it did not answer."""


class LedgerStopTimer:
    """Armed by the first stop request: after `grace_s`, and then every `tick_s`, a ledger call
    still in progress (`busy()`) is interrupted with StopInterrupted."""

    def __init__(self, busy: Callable[[], bool], *, grace_s: float = 4.0, tick_s: float = 0.25) -> None:
        self._busy = busy
        self.grace_s = grace_s
        self.tick_s = tick_s
        self.armed = False
        self._previous: Any = None

    def arm(self) -> None:
        if self.armed:
            return
        self.armed = True
        self._previous = signal.signal(signal.SIGALRM, self._on_alarm)
        signal.setitimer(signal.ITIMER_REAL, self.grace_s, self.tick_s)

    def disarm(self) -> None:
        if not self.armed:
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous or signal.SIG_DFL)
        self.armed = False

    def _on_alarm(self, *_: Any) -> None:
        # no logging here: a handler may run in the middle of a write to the same stream
        if self._busy():
            raise StopInterrupted(f"Postgres did not answer within {self.grace_s:g}s of the stop request")
