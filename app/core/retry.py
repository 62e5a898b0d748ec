"""Retry with capped exponential backoff and one clear log line per failed attempt."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import structlog

from app.core import health
from app.core.errors import RetryableError

T = TypeVar("T")
log = structlog.get_logger("retry")


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
    """Call fn until it succeeds; log `service_retry` with the error and the delay each time."""
    backoff = backoff or Backoff()
    started = time.monotonic()
    while True:
        try:
            return fn()
        except retry_on as e:
            delay = backoff.next_delay_s()
            if should_stop() or (deadline_s is not None and time.monotonic() - started + delay > deadline_s):
                raise
            health.beat()  # waiting on a service is not a dead loop: a restart would not help
            log.warning("service_retry", what=what, attempt=backoff.attempt, delay_s=round(delay, 2),
                        error=f"{type(e).__name__}: {e}")
            time.sleep(delay)
