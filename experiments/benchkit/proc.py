"""Child processes measured the way `/usr/bin/time -v` would: CPU seconds and peak RSS from
the kernel's rusage of the reaped child (wait4), plus a timeline sampled from /proc.

Also the CPU of the shared services (the Kafka broker's JVM, every Postgres process) and of
the whole machine, read from /proc before and after a phase, so a table can say where the
two cores went.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(slots=True)
class Sample:
    t: float  # time.time()
    cpu_s: float  # user + system so far
    rss_mb: float


@dataclass(slots=True)
class Child:
    """One measured subprocess. `wait()` reaps it with os.wait4 to get its exact rusage."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    ended_at: float | None = None
    returncode: int | None = None
    cpu_s: float | None = None  # from rusage (exact), or the last /proc sample
    peak_rss_mb: float | None = None  # ru_maxrss, or VmHWM sampled
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def start(
        cls,
        name: str,
        argv: list[str],
        env: dict[str, str],
        cwd: Path,
        log_path: Path,
        sample_every_s: float = 0.5,
        die_with_parent: bool = False,
    ) -> Child:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "wb")  # noqa: SIM115 - closed by the child's lifetime
        popen = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
        log.close()
        child = cls(name, argv, popen, log_path, time.time())
        threading.Thread(target=child._sample_loop, args=(sample_every_s,), daemon=True).start()
        return child

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _sample_loop(self, every_s: float) -> None:
        while not self._stop.is_set():
            s = proc_sample(self.pid)
            if s is not None and not self._stop.is_set():
                self.samples.append(s)
            self._stop.wait(every_s)

    def poll(self) -> bool:
        """True once the child exited (and was reaped)."""
        if self.returncode is not None:
            return True
        try:
            pid, status, ru = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return False
        self._stop.set()
        self.ended_at = time.time()
        self.returncode = os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.returncode  # keep Popen from waiting on a reaped pid
        self.cpu_s = ru.ru_utime + ru.ru_stime
        self.peak_rss_mb = ru.ru_maxrss / 1024.0
        return True

    def wait(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while not self.poll():
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(
                    f"{self.name} did not finish within {timeout_s:.0f} s (log: {self.log_path})"
                )
            time.sleep(0.05)
        assert self.returncode is not None
        return self.returncode

    def terminate(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait(30)

    @property
    def wall_s(self) -> float:
        return (self.ended_at or time.time()) - self.started_at


def py_spy() -> str | None:
    """py-spy's path: on PATH, or installed beside this interpreter (a venv's python run
    directly, its bin/ not on PATH)."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if os.access(beside, os.X_OK) else None)


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the process that started it dies, even by
    SIGKILL (Linux PR_SET_PDEATHSIG), so a killed harness leaves no pipeline running."""
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def proc_sample(pid: int) -> Sample | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    rss_kb = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return Sample(time.time(), cpu, rss_kb / 1024.0)


# ---- the shared services and the machine ------------------------------------


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """CPU seconds per process of the shared services at one instant, and the machine's.

    The phase's figure for a service is the sum of per-process differences over the processes
    alive at both instants (plus the whole CPU of processes started in between). A sum over
    whatever processes exist at each instant went negative whenever one exited in between
    (another helper's test broker stopping: -8.4 s "broker CPU" in one run)."""

    t: float
    kafka: dict[int, float]     # pid -> CPU s of the broker(s) serving the bench's bootstrap port
    postgres: dict[int, float]  # pid -> own + reaped children's CPU s of every postgres process
    busy_s: float  # the whole machine, all cores
    idle_s: float

    def minus(self, before: CpuSnapshot) -> dict[str, float]:
        wall = self.t - before.t
        busy = self.busy_s - before.busy_s
        return {
            "wall_s": round(wall, 3),
            "kafka_cpu_s": round(_delta(before.kafka, self.kafka), 2),
            "postgres_cpu_s": round(_delta(before.postgres, self.postgres), 2),
            "machine_busy_cpu_s": round(busy, 2),
            "machine_utilisation": round(busy / max(busy + self.idle_s - before.idle_s, 1e-9), 3),
        }


def _delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two snapshots by the processes of `after` (never negative: a pid
    reused by a new process shows less CPU than before and counts whole)."""
    total = 0.0
    for pid, cpu in after.items():
        was = before.get(pid, 0.0)
        total += cpu - was if cpu >= was else cpu
    return total


def listening_pids(port: int) -> set[int]:
    """Pids of the processes with a TCP socket listening on `port` (the broker)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    pids: set[int] = set()
    if not inodes:
        return pids
    wanted = {f"socket:[{i}]" for i in inodes}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                if os.readlink(fd.path) in wanted:
                    pids.add(int(entry.name))
                    break
        except OSError:
            continue
    return pids


def cpu_snapshot(broker_pids: set[int] | None = None) -> CpuSnapshot:
    """`broker_pids`: the broker process(es) to account (listening_pids of the bootstrap
    port); None = every java process."""
    kafka: dict[int, float] = {}
    postgres: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        pid = int(entry.name)
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        own = (int(fields[11]) + int(fields[12])) / CLK_TCK
        reaped = (int(fields[13]) + int(fields[14])) / CLK_TCK  # cutime, cstime
        if pid in broker_pids if broker_pids is not None else comm == "java":
            kafka[pid] = own
        elif comm.startswith(("postgres", "postmaster")):
            postgres[pid] = own + reaped
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(x) for x in cpu]
    idle = (vals[3] + vals[4]) / CLK_TCK  # idle + iowait
    busy = (sum(vals[:8]) - vals[3] - vals[4]) / CLK_TCK  # user..steal, without guest
    return CpuSnapshot(time.time(), kafka, postgres, busy, idle)
