"""The pipeline's processes during a chaos run: processor slots and the sink, each started
again (as its next incarnation) whenever it dies, with what every incarnation hit read
from its own log."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from experiments.benchkit.proc import Child
from experiments.chaos.schedule import ProcessorIncarnation, Schedule, SinkIncarnation
from experiments.chaos.stack import Scope


@dataclass(frozen=True, slots=True)
class Exit:
    """One incarnation's end."""

    role: str              # 'processor' | 'sink'
    slot: int
    incarnation: int
    t_s: float
    returncode: int
    cause: str             # 'crash_point' | 'sigkill' | 'sigterm' | 'exit'
    hit: str               # the crash point, or what the process was doing (its last log event)
    armed: str | None      # the crash spec it was started with
    settings: dict[str, Any] = field(default_factory=dict)
    log: str = ""


def log_events(path: Path) -> list[dict[str, Any]]:
    out = []
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _what_it_hit(role: str, events: list[dict[str, Any]]) -> str:
    """From the last events of a killed incarnation: which step it was in."""
    for ev in reversed(events):
        name = ev.get("event", "")
        if name == "crash_point_reached":
            return str(ev.get("crash_point"))
        if role == "sink" and name in ("group_recorded", "group_replayed"):
            return f"insert in flight or unacknowledged: group {ev.get('group_id')} ({ev.get('rows', '?')} rows)"
        if role == "sink" and name == "insert_fault_injected":
            return (f"after an injected {ev.get('mode')} insert fault "
                    f"({ev.get('blocks_written')}/{ev.get('blocks')} blocks written)")
        if role == "sink" and name == "group_acknowledged":
            return "between groups (last group acknowledged)"
        if role == "processor" and name == "checkpoint_committed":
            return "between checkpoints (folding records)"
        if role == "processor" and name in ("partition_restored", "partitions_assigned"):
            return "restoring partitions"
    return "starting up"


class RunAborted(Exception):
    """A process failed in a way a restart cannot fix; the run cannot reach a verdict."""


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return "(no log)"
    return lines[-1][:500] if lines else "(empty log)"


@dataclass
class Incarnation:
    child: Child
    number: int
    armed: str | None
    settings: dict[str, Any]
    stopped: bool = False   # SIGSTOPped right now
    killed_by_harness: bool = False
    working: bool = False   # has logged the first sign of its real work (see Fleet.at_work)


@dataclass
class Fleet:
    scope: Scope
    schedule: Schedule
    started_at: float
    processor_args: tuple[str, ...]
    sink_args: tuple[str, ...]
    break_sink: bool = False             # every sink incarnation drops every insert silently
    arm: bool = True                     # False while draining: new incarnations start unarmed
    exits: list[Exit] = field(default_factory=list)
    processors: dict[int, Incarnation] = field(default_factory=dict)
    sink: Incarnation | None = None
    _next_processor: dict[int, int] = field(default_factory=dict)
    _next_sink: int = 0
    retired: set[int] = field(default_factory=set)   # slots not restarted (a joiner that left)
    _failures: dict[str, int] = field(default_factory=dict)  # consecutive exit-1 per role and slot

    def now_s(self) -> float:
        return round(time.monotonic() - self.started_at, 3)

    # ---- starting -------------------------------------------------------------

    def start_processor(self, slot: int, *, armed: bool | None = None) -> None:
        n = self._next_processor.get(slot, 0)
        self._next_processor[slot] = n + 1
        inc: ProcessorIncarnation = self.schedule.processor_incarnations[slot][n % len(
            self.schedule.processor_incarnations[slot])]
        use = self.arm if armed is None else armed
        spec = inc.crash_spec if use else None
        args = [*self.processor_args, "--state-dir", str(self.scope.run_dir / "state" / f"slot{slot}")]
        extra = {}
        if spec:
            args.append("--fault-injection")
            extra["PIPELINE_CRASH_AT"] = spec
        log = self.scope.run_dir / "logs" / f"processor{slot}.{n}.log"
        child = Child.start(f"processor{slot}.{n}", self.scope.argv("app.processor", *args),
                            self.scope.env(**extra), self.scope.run_dir, log, die_with_parent=True)
        self.processors[slot] = Incarnation(child, n, spec, {})

    def start_sink(self) -> None:
        n = self._next_sink
        self._next_sink += 1
        inc: SinkIncarnation = self.schedule.sink_incarnations[n % len(self.schedule.sink_incarnations)]
        args = [*self.sink_args, "--insert-block-rows", str(inc.insert_block_rows)]
        if inc.async_insert:
            args.append("--async-insert")
        extra = {}
        spec = None
        settings: dict[str, Any] = {"insert_block_rows": inc.insert_block_rows, "async_insert": inc.async_insert}
        if self.break_sink:  # a negative control: never armed otherwise, even while draining
            # no sampled delivery check: it would find and repair some of the dropped inserts
            args += ["--fault-injection", "--fail-insert-every", "1", "--fail-insert-mode", "drop",
                     "--check-sample-rate", "0"]
            settings.update(fail_mode="drop")
        elif self.arm:
            spec = inc.crash_spec
            args += ["--fault-injection", "--fail-insert-probability", str(inc.fail_probability),
                     "--fail-insert-mode", inc.fail_mode, "--fail-insert-seed", str(inc.fail_seed)]
            settings.update(fail_probability=inc.fail_probability, fail_mode=inc.fail_mode)
            if spec:
                extra["PIPELINE_CRASH_AT"] = spec
        log = self.scope.run_dir / "logs" / f"sink.{n}.log"
        child = Child.start(f"sink.{n}", self.scope.argv("app.sink", *args), self.scope.env(**extra),
                            self.scope.run_dir, log, die_with_parent=True)
        self.sink = Incarnation(child, n, spec, settings)

    # ---- supervising ------------------------------------------------------------

    def reap(self) -> list[Exit]:
        """Record every incarnation that ended and start the next one in its place, as a
        supervisor would. A configuration error (exit 2), or a role failing (exit 1) five
        times in a row, is not something a restart fixes: RunAborted."""
        ended = []
        for slot, inc in list(self.processors.items()):
            if inc.child.poll():
                ended.append(self._check(self._record("processor", slot, inc)))
                del self.processors[slot]
                if slot not in self.retired:
                    self.start_processor(slot)
        if self.sink is not None and self.sink.child.poll():
            ended.append(self._check(self._record("sink", 0, self.sink)))
            self.start_sink()
        return ended

    def _check(self, e: Exit) -> Exit:
        if e.returncode == 2:
            raise RunAborted(f"{e.role} exited 2 (configuration): {_last_line(self.scope.run_dir / e.log)}")
        key = f"{e.role}{e.slot}"
        self._failures[key] = self._failures.get(key, 0) + 1 if e.returncode == 1 else 0
        if self._failures[key] >= 5:
            raise RunAborted(f"{e.role} failed (exit 1) 5 times in a row: {_last_line(self.scope.run_dir / e.log)}")
        return e

    def _record(self, role: str, slot: int, inc: Incarnation) -> Exit:
        rc = inc.child.returncode if inc.child.returncode is not None else 0
        events = log_events(inc.child.log_path)
        crashed = any(e.get("event") == "crash_point_reached" for e in events[-5:])
        if rc == -signal.SIGKILL:
            cause = "crash_point" if crashed else "sigkill"
        elif rc == 0:
            cause = "exit"
        elif rc == -signal.SIGTERM:
            cause = "sigterm"
        else:
            cause = f"exit {rc}"
        e = Exit(role, slot, inc.number, self.now_s(), rc, cause, _what_it_hit(role, events), inc.armed,
                 dict(inc.settings), str(inc.child.log_path.relative_to(self.scope.run_dir)))
        self.exits.append(e)
        return e

    # A planned kill lands once its target shows its first sign of real work, or has been up
    # long enough to be past start-up (idle, with nothing to do): a kill during start-up
    # (imports, connecting) hits none of the paths under test, and on a loaded machine every
    # planned sink kill could land there (a CI run once injected no insert error at all).
    WORK_STARTED: ClassVar[dict[str, bytes]] = {"processor": b'"event": "processor_started"',
                                                "sink": b'"event": "group_recorded"'}
    PAST_START_UP_S: ClassVar[float] = 20.0

    def at_work(self, inc: Incarnation, role: str) -> bool:
        if not inc.working:
            try:
                inc.working = (self.WORK_STARTED[role] in inc.child.log_path.read_bytes()
                               or time.time() - inc.child.started_at >= self.PAST_START_UP_S)
            except FileNotFoundError:
                return False
        return inc.working

    def kill_processor(self, slot: int) -> bool:
        inc = self.processors.get(slot)
        if inc is None or inc.child.returncode is not None or inc.killed_by_harness:
            return False
        if not self.at_work(inc, "processor"):
            return False
        if inc.stopped:
            os.kill(inc.child.pid, signal.SIGCONT)
            inc.stopped = False
        inc.killed_by_harness = True
        os.kill(inc.child.pid, signal.SIGKILL)
        return True

    def kill_sink(self) -> bool:
        if self.sink is None or self.sink.child.returncode is not None or self.sink.killed_by_harness:
            return False
        if not self.at_work(self.sink, "sink"):
            return False
        if self.sink.stopped:
            os.kill(self.sink.child.pid, signal.SIGCONT)
            self.sink.stopped = False
        self.sink.killed_by_harness = True
        os.kill(self.sink.child.pid, signal.SIGKILL)
        return True

    def pause(self, inc: Incarnation | None, stop: bool) -> bool:
        if inc is None or inc.child.returncode is not None or inc.stopped == stop:
            return False
        os.kill(inc.child.pid, signal.SIGSTOP if stop else signal.SIGCONT)
        inc.stopped = stop
        return True

    def terminate_all(self, timeout_s: float = 60.0) -> None:
        incs = [*self.processors.values(), *([self.sink] if self.sink else [])]
        for inc in incs:
            self.pause(inc, False)
            inc.child.terminate()
        deadline = time.monotonic() + timeout_s
        for inc in incs:
            try:
                inc.child.wait(max(1.0, deadline - time.monotonic()))
            except TimeoutError:
                inc.child.kill()
        for slot, inc in list(self.processors.items()):
            self._record("processor", slot, inc)
        if self.sink is not None:
            self._record("sink", 0, self.sink)
        self.processors.clear()
        self.sink = None

    def all_logs(self, prefix: str) -> list[dict[str, Any]]:
        out = []
        for path in sorted((self.scope.run_dir / "logs").glob(f"{prefix}*.log")):
            out.extend(log_events(path))
        return out
