"""The chaos run's fault schedule is a pure function of the seed and the plan."""

from __future__ import annotations

from experiments.chaos.schedule import PROCESSOR_CRASH_POINTS, ChaosPlan, build_schedule

PLAN = ChaosPlan(duration_s=300, processors=2, brokers=3, processor_kills=30, sink_kills=10, sink_stalls=2,
                 join_leaves=3, fences=2, broker_restarts=2, hostile_bursts=4)


def test_same_seed_same_schedule_other_seed_other_schedule() -> None:
    a, b, c = build_schedule(7, PLAN), build_schedule(7, PLAN), build_schedule(8, PLAN)
    assert a == b
    assert a.faults != c.faults
    assert a.processor_incarnations != c.processor_incarnations


def test_the_plan_is_honoured() -> None:
    s = build_schedule(7, PLAN)
    assert s.counts() == {"processor_kill": 30, "sink_kill": 10, "sink_stall": 2, "join_leave": 3, "fence": 2,
                          "broker_restart": 2, "hostile_burst": 4}
    assert [f.at_s for f in s.faults] == sorted(f.at_s for f in s.faults)
    for f in s.faults:
        assert PLAN.warmup_s <= f.at_s and f.at_s + f.duration_s <= PLAN.duration_s + 1e-6, f
    brokers = [f for f in s.faults if f.kind == "broker_restart"]
    assert brokers[0].target == 0 and brokers[0].note == "dlq_leader"  # the DLQ partition's leader first
    assert all(f.target in (0, 1, 2, 3) for f in brokers)


def test_incarnations_cover_every_checkpoint_step_and_vary_the_sink_layout() -> None:
    s = build_schedule(7, PLAN)
    points = {i.crash_point for slot in s.processor_incarnations for i in slot[:60]}
    assert points == set(PROCESSOR_CRASH_POINTS)
    layouts = {(i.insert_block_rows, i.async_insert) for i in s.sink_incarnations[:20]}
    assert len(layouts) >= 4
    assert all(PLAN.processor_checkpoints[0] <= i.nth <= PLAN.processor_checkpoints[1]
               for slot in s.processor_incarnations for i in slot)


def test_no_broker_faults_with_one_broker() -> None:
    one = ChaosPlan(duration_s=60, processors=2, brokers=1, broker_restarts=3)
    assert build_schedule(1, one).counts()["broker_restart"] == 0
