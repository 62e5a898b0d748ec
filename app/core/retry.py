"""Retry with capped exponential backoff and one clear log line per failed attempt."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import structlog

from app.core import health
from app.core.errors import RetryableError, ServiceUnavailable

T = TypeVar("T")
log = structlog.get_logger("retry")

# --service-timeout of this process (None: retry forever). Set once by the command's entry
# point (`set_service_timeout`); a retry_call without its own deadline gives up after it.
_service_timeout_s: float | None = None


def set_service_timeout(seconds: float | None) -> None:
    global _service_timeout_s
    _service_timeout_s = seconds


def service_timeout() -> float | None:
    return _service_timeout_s


class Backoff:
    """Capped exponential backoff with jitter; reset() after a success."""

    def __init__(self, initial_s: float = 0.2, max_s: float = 10.0) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempt = 0

    def next_delay_s(self) -> float:
        self.attempt += 1
        base = min(self.max_s, self.initial_s * (2 ** (self.attempt - 1)))
        return base * (0.5 + random.random() / 2)

    def reset(self) -> None:
        self.attempt = 0


def retry_call(
    fn: Callable[[], T],
    *,
    what: str,
    retry_on: tuple[type[BaseException], ...] = (RetryableError,),
    deadline_s: float | None = None,
    backoff: Backoff | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> T:
    """Call fn until it succeeds; log `service_retry` with the error and the delay each time.
    Past `deadline_s` (default: the process's --service-timeout; None: never) the error is
    raised again as a ServiceUnavailable (exit code 3 at the command's edge)."""
    backoff = backoff or Backoff()
    started = time.monotonic()
    if deadline_s is None:
        deadline_s = _service_timeout_s
    while True:
        try:
            return fn()
        except retry_on as e:
            delay = backoff.next_delay_s()
            if should_stop():
                raise
            if deadline_s is not None and time.monotonic() - started + delay > deadline_s:
                if isinstance(e, ServiceUnavailable) or not isinstance(e, RetryableError):
                    raise
                raise ServiceUnavailable(f"{what}: gave up after {time.monotonic() - started:.0f}s "
                                         f"(--service-timeout {deadline_s:g}s): {e}") from e
            health.beat()  # waiting on a service is not a dead loop: a restart would not help
            log.warning("service_retry", what=what, attempt=backoff.attempt, delay_s=round(delay, 2),
                        error=f"{type(e).__name__}: {e}")
            time.sleep(delay)
