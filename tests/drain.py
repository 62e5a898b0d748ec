"""Read a running process's stderr as it comes, so a test can wait for a log line while the
process runs (and a full pipe never blocks it)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable


class Lines:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        self.proc = proc
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._lock:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.lines)

    def wait_for(self, pred: Callable[[str], bool], what: str, timeout_s: float) -> str:
        """The first line for which pred holds; fails with `what` and the last lines after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in self.snapshot():
                if pred(line):
                    return line
            if self.proc.poll() is not None:
                self._thread.join(timeout=5)
                for line in self.snapshot():
                    if pred(line):
                        return line
                raise AssertionError(f"process exited {self.proc.returncode} before {what}:\n" + self.tail())
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}:\n" + self.tail())

    def finish(self, timeout_s: float = 60) -> int:
        """Wait for the process to exit and for its stderr to be read; its exit code."""
        code = self.proc.wait(timeout=timeout_s)
        self._thread.join(timeout=10)
        return code

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.snapshot()[-n:])
