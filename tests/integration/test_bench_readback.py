"""The benchmarks' read-back of record timestamps (experiments/benchkit/scope.py), which
the e2e latency split of `make bench` and `experiments.sustained` is computed from: all
records of a short run; a uniform every-k-th-offset sample, bounded in size, of a long one."""

from __future__ import annotations

from confluent_kafka import Consumer, TopicPartition

from experiments.benchkit.scope import record_timestamps, sample_stride
from tests.conftest import Pipeline


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-readback"})
    try:
        return {q: c.get_watermark_offsets(TopicPartition(topic, q), timeout=10)[1] for q in range(partitions)}
    finally:
        c.close()


def every_record(bootstrap: str, topic: str, ends: dict[int, int]) -> dict[int, dict[int, int]]:
    """Offset -> CreateTime of each record, read on its own (the reference)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-readback", "enable.auto.commit": False})
    out: dict[int, dict[int, int]] = {p: {} for p in ends}
    try:
        c.assign([TopicPartition(topic, p, 0) for p in ends])
        while sum(map(len, out.values())) < sum(ends.values()):
            for m in c.consume(1000, timeout=1):
                if m.error() is None:
                    out[m.partition()][m.offset()] = m.timestamp()[1]
    finally:
        c.close()
    return out


def test_sample_stride_keeps_at_most_the_bound() -> None:
    assert [sample_stride(1000, b) for b in (None, 1000, 5000, 100, 99, 1)] == [1, 1, 1, 10, 11, 1000]
    for total, bound in ((250_000_000, 5_000_000), (12_345, 1000), (7, 2)):
        assert -(-total // sample_stride(total, bound)) <= bound


def test_a_long_run_is_read_back_as_a_bounded_uniform_sample(pipeline: Pipeline) -> None:
    p = pipeline
    p.gen("--seed", "3", "--events", "3000", "--partitions", "3")
    ends = end_offsets(p.bootstrap, p.topic, 3)
    assert sum(ends.values()) == 3000
    truth = every_record(p.bootstrap, p.topic, ends)

    full = record_timestamps(p.bootstrap, p.topic, ends, at_most=None)
    assert {q: dict(zip(*full[q], strict=True)) for q in ends} == truth

    sampled = record_timestamps(p.bootstrap, p.topic, ends, at_most=300)
    assert sum(len(offs) for offs, _ in sampled.values()) <= 300 + len(ends)  # offset 0 of each partition
    for q, (offs, stamps) in sampled.items():
        assert offs == [o for o in sorted(truth[q]) if o % 10 == 0]  # every 10th offset, none missed
        assert stamps == [truth[q][o] for o in offs]
