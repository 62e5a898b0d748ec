"""verify's DLQ-topic check and split-account check on hand-made data (no services):
the DLQ topic must hold exactly the truth's distinct (source_partition, source_offset,
reason, window_kind) identities; an account in two partitions is a distinct error."""

from __future__ import annotations

import json

import numpy as np

from app.verify.compare import TableSnapshot, diff
from app.verify.dlq_topic import FOREIGN, UNREADABLE, DlqTopicSnapshot, identity
from app.verify.truth import Rules, TruthBuilder

T0 = 1_764_115_200_000


def ev(t: int, account: int = 1) -> bytes:
    return json.dumps({"event_id": "e", "account_id": account, "country": "DE", "event_time": t, "amount": 1,
                       "kind": "k"}).encode()


def _truth():  # type: ignore[no-untyped-def]
    b = TruthBuilder(Rules())
    # p0: offsets 0..4 = on time, far future, late for both kinds, invalid, on time
    b.feed(0, [ev(T0), ev(T0 + 3 * 3_600_000), ev(T0), b"nope", ev(T0 + 3 * 3_600_000)],
           [b"1"] * 5, [0, 1, 2, 3, 4])
    b.feed(1, [ev(T0, 2)], [b"2"], [7])
    return b.build()


def _empty_tables() -> dict[str, TableSnapshot]:
    return {"minute": TableSnapshot("rollup_minute", {}), "hour": TableSnapshot("rollup_hour", {})}


def _snapshot(offsets: dict[tuple[int, str, str], list[int]], **kw: int) -> DlqTopicSnapshot:
    return DlqTopicSnapshot("dlq", True, sum(map(len, offsets.values())),
                            {k: np.unique(np.array(v, dtype=np.int64)) for k, v in offsets.items()}, **kw)


def test_truth_lists_the_dlq_offsets() -> None:
    truth = _truth()
    assert {k: list(v) for k, v in truth.dlq_offsets.items()} == {
        (0, "invalid", ""): [3], (0, "late", "minute"): [2], (0, "late", "hour"): [2]}


def test_topic_equal_missing_extra_and_unreadable() -> None:
    truth = _truth()
    exact = {(0, "invalid", ""): [3], (0, "late", "minute"): [2, 2], (0, "late", "hour"): [2]}
    report = diff(truth, _empty_tables(), {}, dlq_topic=_snapshot(exact))
    assert report.dlq_topic is not None and report.dlq_topic.equal
    # the ledger counts are not the question here; the topic is
    report = diff(truth, _empty_tables(), {}, dlq_topic=_snapshot(
        {(0, "invalid", ""): [3], (0, "late", "minute"): [2, 4]}))
    t = report.dlq_topic
    assert t is not None and not t.equal and t.missing == 1 and t.extra == 1
    lines = {(line.partition, line.reason, line.window_kind): line for line in t.lines}
    assert lines[(0, "late", "hour")].missing == (2,)
    assert lines[(0, "late", "minute")].extra == (4,)
    assert not report.exact and any("dlq topic dlq" in m for m in report.mismatches())
    report = diff(truth, _empty_tables(), {}, dlq_topic=_snapshot(exact, unreadable=1))
    assert report.dlq_topic is not None and not report.dlq_topic.equal


def test_identity_decoding() -> None:
    def rec(**over: object) -> bytes:
        d = {"reason": "late", "window_kind": "hour", "source_topic": "events", "source_partition": 3,
             "source_offset": 9, "error": "x", "event": None, "raw": "r", **over}
        return json.dumps(d).encode()
    assert identity(rec(), "events") == ((3, "late", "hour"), 9)
    assert identity(rec(reason="invalid", window_kind=None), "events") == ((3, "invalid", ""), 9)
    assert identity(rec(source_topic="other"), "events") == FOREIGN
    for bad in (rec(reason="invalid"), rec(window_kind=None), rec(source_offset="9"), rec(source_partition=True),
                rec(reason=["late"]), b"not json", b"[]", None):
        assert identity(bad, "events") == UNREADABLE, bad


def test_account_in_two_partitions_is_an_error() -> None:
    b = TruthBuilder(Rules())
    b.feed(0, [ev(T0, 5), ev(T0, 6)], [b"5", b"6"], [0, 1])
    b.feed(2, [ev(T0, 5)], [b"5"], [0])
    b.feed(1, [ev(T0, 5), b"x"], [b"5", b"5"], [0, 1])
    truth = b.build()
    assert truth.split_accounts == {5: (0, 1, 2)}
    report = diff(truth, _empty_tables(), {})
    assert report.split_accounts == {5: (0, 1, 2)} and not report.exact
    assert "1 accounts in more than one partition" in report.mismatches()
