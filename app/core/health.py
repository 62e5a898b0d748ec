"""Liveness and readiness of one process, as Kubernetes probes read them (app/core/serve.py).

- live (`/healthz`): the process loop turned (`beat()`) within `stall_s`. A loop waiting
  on a service that is down still beats (the retry loop beats between attempts): a
  restart cannot fix a stopped Postgres, so liveness does not fail for one.
- ready (`/readyz`): every service this process depends on answered its latest probe, and
  every readiness condition holds (the processor: it owns partitions). Probes run in a
  background thread every `probe_every_s`, each bounded by its own short timeout, so a
  probe request answers at once from the latest results (Kubernetes' default probe
  timeout is 1 s) and a hung service cannot hang the endpoint.

One `Health` per process (`HEALTH`); the commands register their probes and conditions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import structlog

log = structlog.get_logger("health")

STALL_S: Final = 120.0       # a loop silent for this long is dead (a long restore still beats: see retry)
PROBE_EVERY_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    detail: str = ""
    at: float = 0.0          # monotonic time of the probe


class Health:
    def __init__(self, *, stall_s: float = STALL_S, probe_every_s: float = PROBE_EVERY_S) -> None:
        self.stall_s = stall_s
        self.probe_every_s = probe_every_s
        self._beat = time.monotonic()
        self._probes: dict[str, Callable[[], None]] = {}       # name -> raises when the service does not answer
        self._conditions: dict[str, Callable[[], bool]] = {}   # name -> holds
        self._results: dict[str, ProbeResult] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # a probe added: probe now, not a whole interval later

    # ---- what the process registers and reports --------------------------------

    def beat(self) -> None:
        self._beat = time.monotonic()

    def add_probe(self, name: str, probe: Callable[[], None]) -> None:
        """`probe()` returns when the service answers and raises otherwise; it must bound its own time."""
        with self._lock:
            self._probes[name] = probe
            self._results[name] = ProbeResult(False, "not probed yet")
        self._wake.set()
        self._start()

    def add_condition(self, name: str, holds: Callable[[], bool]) -> None:
        with self._lock:
            self._conditions[name] = holds

    # ---- what the endpoints read -------------------------------------------------

    def live(self) -> tuple[bool, dict[str, object]]:
        silent = time.monotonic() - self._beat
        return silent < self.stall_s, {"loop_silent_s": round(silent, 3), "stall_s": self.stall_s}

    def ready(self) -> tuple[bool, dict[str, object]]:
        live, _ = self.live()
        with self._lock:
            results = dict(self._results)
            conditions = dict(self._conditions)
        checks: dict[str, object] = {"loop": "ok" if live else "stalled"}
        ok = live
        for name, r in sorted(results.items()):
            checks[name] = "ok" if r.ok else f"failing: {r.detail}"
            ok = ok and r.ok
        for name, holds in sorted(conditions.items()):
            try:
                held = bool(holds())
            except Exception as e:  # noqa: BLE001 - a condition that cannot be read does not hold
                held = False
                checks[name] = f"unreadable: {type(e).__name__}"
            else:
                checks[name] = "ok" if held else "no"
            ok = ok and held
        return ok, checks

    # ---- the probe thread ----------------------------------------------------------

    def probe_once(self) -> None:
        with self._lock:
            probes = dict(self._probes)
        for name, probe in probes.items():
            try:
                probe()
                result = ProbeResult(True, "", time.monotonic())
            except Exception as e:  # noqa: BLE001 - any failure means the service did not answer
                text = str(e).strip().splitlines()
                result = ProbeResult(False, f"{type(e).__name__}: {text[0] if text else ''}"[:200], time.monotonic())
            with self._lock:
                before = self._results.get(name)
                self._results[name] = result
            if before is not None and before.at and before.ok != result.ok:
                log.warning("readiness_changed", service=name, ready=result.ok, detail=result.detail)

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="health-probes", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.probe_once()
            self._wake.wait(self.probe_every_s)
            self._wake.clear()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()


HEALTH = Health()


def beat() -> None:
    """The process loop (or a retry loop waiting on a service) is alive."""
    HEALTH.beat()
