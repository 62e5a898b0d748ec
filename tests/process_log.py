"""Follow a running command's stderr (JSON log lines) without letting the pipe fill up.

A child that logs at info level writes more than a pipe holds (64 KiB) within seconds; if
nobody reads, it blocks in write(). StderrTail reads on a thread and keeps every line, so a
test can wait for a log event while the process runs and read everything after it ends.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any


class StderrTail:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        self.proc = proc
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            with self._lock:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines whose event is `name`."""
        out = []
        with self._lock:
            lines = list(self.lines)
        for line in lines:
            if f'"{name}"' not in line:
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("event") == name:
                out.append(doc)
        return out

    def wait_for(self, name: str, timeout_s: float, *, count: int = 1,
                 where: Callable[[dict[str, Any]], bool] = lambda _: True) -> list[dict[str, Any]]:
        """Until `count` log lines with event `name` (and matching `where`) were written;
        fails on timeout or exit."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [e for e in self.events(name) if where(e)]
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                self._thread.join(timeout=5)
                found = [e for e in self.events(name) if where(e)]
                if len(found) >= count:
                    return found
                raise AssertionError(f"process exited {self.proc.returncode} before logging {name!r} x{count}:\n"
                                     f"{self.text()[-4000:]}")
            assert time.monotonic() < deadline, f"timed out waiting for {name!r} x{count}:\n{self.text()[-4000:]}"
            time.sleep(0.05)

    def wait_exit(self, timeout_s: float) -> int:
        rc = self.proc.wait(timeout=timeout_s)
        self._thread.join(timeout=10)
        return rc
