"""Hostile input as a property (issue 10): streams mixing valid events with every invalid
class of contract §2 and adversarial-but-valid ones (window edges, amounts whose sums need
Int128, account ids near 2^64, unicode kinds, repeated event ids, values at the size
limit, wrong keys), fed through the processor's own decoding and windowing
(`app.processor.windows.fold_run`, in arbitrary runs as consume() would hand them out) and
checked against the independent model in app/verify (`TruthBuilder`, which shares no code
with the processor). No crash; every record accounted for: invalid, or per window kind
either folded or too late; windows, DLQ counts and DLQ offsets equal the model's."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.gen.invalid import INVALID_CLASSES
from app.processor.windows import KINDS, FoldRules, LatenessPolicy, Position, WindowKey, WindowKind, fold_run
from app.verify.truth import Rules, TruthBuilder

T0 = 1_763_596_800_000           # 2025-11-20T00:00:00Z, an hour edge
MAX_BYTES = 600                  # a small --max-record-bytes, so values at the limit are cheap
EVENT_TIME_END = 4_102_444_800_000
POLICY = LatenessPolicy(5_000, 60_000, 120_000)   # the kinds' lateness differ on purpose
RULES = FoldRules(POLICY, MAX_BYTES)
MODEL = Rules(5_000, 60_000, 120_000, MAX_BYTES)

accounts = st.one_of(st.integers(0, 40), st.integers(2**64 - 4, 2**64 - 1))
countries = st.sampled_from(["DE", "FR", "US"])
amounts = st.one_of(st.integers(-10_000, 10_000), st.sampled_from([2**63 - 1, -(2**63), 2**62]))
# Around an hour edge. Most times sit on a 5 s grid (= the out-of-orderness) in two narrow
# clusters, the first minutes of an hour and the minutes after the next hour's lateness
# ends, so that the watermark of one record and the window end + allowed lateness of
# another meet exactly, for both kinds: the boundary of the rule is where an off-by-one
# would hide. Also +-1 ms off the grid, a long tail of late events, and rare far past /
# far future (but valid) times.
offsets_ms = st.one_of(
    st.integers(0, 40).map(lambda k: k * 5_000),
    st.integers(0, 40).map(lambda k: 3_600_000 + k * 5_000),
    st.tuples(st.integers(0, 40), st.sampled_from([-1, 1])).map(lambda t: t[0] * 5_000 + t[1]),
    st.integers(-200_000, 200_000),
    st.sampled_from([-1, 0, 59_999, 60_000, -60_000, -65_000, -125_000, -3_600_000, 3_599_999, 3_725_000]),
    st.integers(-4 * 3_600_000, 0),
)
event_times = st.one_of(offsets_ms.map(lambda d: T0 + d), st.sampled_from([0, 1, EVENT_TIME_END - 1]))
kinds = st.text(min_size=1, max_size=32)  # unicode, at most 32 characters
event_ids = st.one_of(st.sampled_from(["e-1", "e-1", "dup"]), st.integers(-5, 5),
                      st.text(min_size=1, max_size=128))


@st.composite
def valid_events(draw: Any) -> dict[str, Any]:
    return {"event_id": draw(event_ids), "account_id": draw(accounts), "country": draw(countries),
            "event_time": draw(event_times), "amount": draw(amounts), "kind": draw(kinds)}


def _key(ev: dict[str, Any]) -> bytes:
    return str(ev["account_id"]).encode()


@st.composite
def records(draw: Any) -> tuple[bytes | None, bytes | None]:
    """One (key, value): mostly valid, else one of many hostile shapes."""
    ev = draw(valid_events())
    shape = draw(st.integers(0, 9))
    if shape <= 4:
        return _key(ev), orjson.dumps(ev)
    if shape == 5:  # every invalid class of the generator, every variant
        idx = draw(st.integers(0, len(INVALID_CLASSES) - 1))
        return _key(ev), INVALID_CLASSES[idx][1](ev, draw(st.integers(0, 11)))
    if shape == 6:  # a value at the size limit: one byte under, at, one over
        base = orjson.dumps({**ev, "pad": ""})
        size = MAX_BYTES + draw(st.sampled_from([-1, 0, 1]))
        return _key(ev), orjson.dumps({**ev, "pad": "x" * max(0, size - len(base))})
    if shape == 7:  # a key that is not the account id in ASCII decimal
        key = draw(st.sampled_from([None, b"", b"0" + _key(ev), _key(ev) + b" ", b"+" + _key(ev),
                                    str(ev["account_id"] + 1).encode()]))
        return key, orjson.dumps(ev)
    if shape == 8:  # arbitrary bytes, or null
        return _key(ev), draw(st.one_of(st.none(), st.binary(max_size=40)))
    # a valid event with an extra field repeated or nested contract names (ignored)
    return _key(ev), orjson.dumps({**ev, "extra": {"account_id": "x", "amount": 1.5}})


class _Rejects:
    def __init__(self) -> None:
        self.invalid: list[int] = []
        self.late: dict[WindowKind, list[int]] = {k: [] for k in KINDS}

    def on_invalid(self, offset: int, key: bytes | None, value: bytes | None, error: str) -> None:
        assert error
        self.invalid.append(offset)

    def on_late(self, offset: int, key: bytes | None, value: bytes | None, kind: WindowKind, error: str) -> None:
        assert error
        self.late[kind].append(offset)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(partitions=st.lists(st.lists(records(), min_size=10, max_size=120), min_size=1, max_size=3),
       data=st.data())
def test_the_processor_classifies_and_folds_exactly_like_the_independent_model(
        partitions: list[list[tuple[bytes | None, bytes | None]]], data: st.DataObject) -> None:
    model = TruthBuilder(MODEL)
    for p, recs in enumerate(partitions):
        model.feed(p, [v for _k, v in recs], [k for k, _v in recs])
    truth = model.build()
    folded: dict[WindowKey, list[int]] = {}
    for p, recs in enumerate(partitions):
        # consume() hands a partition's records out in runs of any length: fold them so
        cuts = sorted(data.draw(st.sets(st.integers(0, len(recs)), max_size=4), label=f"cuts{p}"))
        at = Position(0, None, None)
        rejects = _Rejects()
        deltas: dict[WindowKey, list[int]] = {}
        numbered = [(off, k, v) for off, (k, v) in enumerate(recs)]
        for a, b in zip([0, *cuts], [*cuts, len(recs)]):
            at = fold_run(numbered[a:b], at, RULES, deltas, rejects)
        assert at.next_offset == len(recs)
        # every record accounted for: invalid, or per kind folded or too late
        valid = len(recs) - len(rejects.invalid)
        for k in KINDS:
            assert sum(c for (kind, *_), (c, _s) in deltas.items() if kind == k) + len(rejects.late[k]) == valid
        stats = truth.partitions.get(p)
        if stats is not None:
            assert (stats.invalid, stats.late_minute, stats.late_hour) == (
                len(rejects.invalid), len(rejects.late[WindowKind.MINUTE]), len(rejects.late[WindowKind.HOUR]))
            assert stats.max_event_time_ms == at.max_event_time_ms
        assert list(truth.dlq_offsets.get((p, "invalid", ""), [])) == rejects.invalid
        assert list(truth.dlq_offsets.get((p, "late", "minute"), [])) == rejects.late[WindowKind.MINUTE]
        assert list(truth.dlq_offsets.get((p, "late", "hour"), [])) == rejects.late[WindowKind.HOUR]
        for wkey, (c, s) in deltas.items():
            acc = folded.setdefault(wkey, [0, 0])
            acc[0] += c
            acc[1] += s
    got = {kind.label: {(start // 1000, account, country): (c, s)
                        for (k, start, account, country), (c, s) in folded.items() if k == kind}
           for kind in KINDS}
    assert got == {k: dict(v) for k, v in truth.rollups.items()}
