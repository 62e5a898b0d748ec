"""The seeded fault schedule of a chaos run. Pure: no I/O, no clock.

The same seed and the same plan give the same schedule, fault for fault: planned times,
targets, and the settings of every process incarnation (which checkpoint step a
processor incarnation dies in, which block size and insert mode a sink incarnation
uses). Whether a planned fault lands on the same record in two runs depends on timing;
the report says what each one actually hit.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final

# Crash points of a checkpoint, in commit order (app/processor, app/ledger): before the DLQ
# is acknowledged, before the Postgres transaction, inside it (COMMIT not sent), after it,
# and the two sides of the LevelDB <-> ledger reconciliation.
PROCESSOR_CRASH_POINTS: Final = (
    "checkpoint.before_dlq_flush",
    "checkpoint.before_commit",
    "state.after_local_before_commit",
    "checkpoint.inside_commit",
    "checkpoint.after_commit",
    "state.after_commit_before_local",
)
# Sink: a group recorded but nothing sent; sent, not acknowledged.
SINK_CRASH_POINTS: Final = ("sink.before_insert", "sink.after_insert")
INSERT_FAULT_MODES: Final = ("before", "after", "mid")
BLOCK_ROWS_CHOICES: Final = (2_000, 10_000, 50_000, 200_000)

FAULT_KINDS: Final = (
    "processor_kill",     # SIGKILL at a random instant
    "sink_kill",          # SIGKILL at a random instant (an insert is often in flight)
    "sink_stall",         # SIGSTOP the sink (and the embedded ClickHouse in it), then SIGCONT
    "join_leave",         # an extra processor instance joins, later leaves (two rebalances)
    "fence",              # SIGSTOP a processor past its session timeout, then SIGCONT
    "broker_restart",     # kill a broker, start it again (3-broker mode)
    "hostile_burst",      # a burst of hostile records in the input
)


@dataclass(frozen=True, slots=True)
class Fault:
    at_s: float            # seconds after the generator started
    kind: str
    target: int = 0        # processor slot, broker number (0 = the DLQ partition's leader), ...
    duration_s: float = 0.0
    note: str = ""
    attempt: int = 0       # times it was put off because its target was not there yet


@dataclass(frozen=True, slots=True)
class ProcessorIncarnation:
    """How one start of a processor slot is armed: it SIGKILLs itself at the nth time it
    reaches crash_point (None: unarmed)."""

    crash_point: str | None
    nth: int = 0

    @property
    def crash_spec(self) -> str | None:
        return None if self.crash_point is None else f"{self.crash_point}:{self.nth}"


@dataclass(frozen=True, slots=True)
class SinkIncarnation:
    crash_point: str | None
    nth: int
    insert_block_rows: int
    async_insert: bool
    fail_probability: float
    fail_mode: str
    fail_seed: int

    @property
    def crash_spec(self) -> str | None:
        return None if self.crash_point is None else f"{self.crash_point}:{self.nth}"


@dataclass(frozen=True, slots=True)
class ChaosPlan:
    """What the operator asked for: counts of each fault over the run."""

    duration_s: float
    processors: int
    brokers: int
    processor_kills: int = 20
    sink_kills: int = 8
    sink_stalls: int = 2
    join_leaves: int = 2
    fences: int = 1
    broker_restarts: int = 1
    hostile_bursts: int = 4
    stall_s: float = 12.0
    fence_s: float = 14.0          # > the processors' session timeout
    broker_down_s: float = 10.0
    join_s: float = 20.0
    processor_checkpoints: tuple[int, int] = (8, 40)   # an armed incarnation dies at the nth step
    sink_inserts: tuple[int, int] = (3, 12)
    insert_fail_probability: float = 0.08
    warmup_s: float = 3.0


@dataclass(frozen=True, slots=True)
class Schedule:
    seed: int
    plan: ChaosPlan
    faults: tuple[Fault, ...]
    processor_incarnations: tuple[tuple[ProcessorIncarnation, ...], ...]  # per slot, in start order
    sink_incarnations: tuple[SinkIncarnation, ...]
    hostile_seeds: tuple[int, ...] = field(default=())

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in FAULT_KINDS}
        for f in self.faults:
            out[f.kind] += 1
        return out


def build_schedule(seed: int, plan: ChaosPlan, *, incarnations: int = 400) -> Schedule:
    """Fault times uniform over [warmup, duration - tail], where the tail leaves room for
    the fault's own duration; one broker restart (if any) targets the DLQ partition's
    leader. Incarnation settings are drawn far beyond what a run uses, in a fixed order."""
    rng = random.Random(seed)
    d = max(plan.duration_s, plan.warmup_s + 1.0)
    faults: list[Fault] = []

    def times(n: int, tail_s: float = 0.0) -> list[float]:
        hi = max(plan.warmup_s + 0.5, d - tail_s)
        return [round(rng.uniform(plan.warmup_s, hi), 3) for _ in range(n)]

    for t in times(plan.processor_kills):
        faults.append(Fault(t, "processor_kill", rng.randrange(plan.processors)))
    for t in times(plan.sink_kills):
        faults.append(Fault(t, "sink_kill"))
    for t in times(plan.sink_stalls, plan.stall_s):
        faults.append(Fault(t, "sink_stall", duration_s=plan.stall_s))
    for t in times(plan.join_leaves, plan.join_s):
        faults.append(Fault(t, "join_leave", duration_s=plan.join_s))
    for t in times(plan.fences, plan.fence_s):
        faults.append(Fault(t, "fence", rng.randrange(plan.processors), duration_s=plan.fence_s))
    if plan.brokers >= 3:
        for i, t in enumerate(times(plan.broker_restarts, plan.broker_down_s)):
            # the first restart takes the DLQ partition's leader (resolved at run time)
            target = 0 if i == 0 else rng.randrange(1, plan.brokers + 1)
            faults.append(Fault(t, "broker_restart", target, duration_s=plan.broker_down_s,
                                note="dlq_leader" if target == 0 else ""))
    hostile_seeds = []
    for t in times(plan.hostile_bursts):
        s = rng.randrange(1 << 30)
        hostile_seeds.append(s)
        faults.append(Fault(t, "hostile_burst", s))
    faults.sort(key=lambda f: (f.at_s, f.kind, f.target))

    lo, hi = plan.processor_checkpoints
    slots = []
    for _slot in range(plan.processors + 1):  # + the joining instance
        slots.append(tuple(ProcessorIncarnation(rng.choice(PROCESSOR_CRASH_POINTS), rng.randint(lo, hi))
                           for _ in range(incarnations)))
    slo, shi = plan.sink_inserts
    sinks = tuple(SinkIncarnation(rng.choice(SINK_CRASH_POINTS), rng.randint(slo, shi),
                                  rng.choice(BLOCK_ROWS_CHOICES), rng.random() < 0.5,
                                  plan.insert_fail_probability, rng.choice(INSERT_FAULT_MODES),
                                  rng.randrange(1 << 30))
                  for _ in range(incarnations))
    return Schedule(seed, plan, tuple(faults), tuple(slots), sinks, tuple(hostile_seeds))
