"""Batch identity is deterministic; window rows survive the ledger payload exactly."""

from app.ledger.identity import batch_id, dedup_token
from app.ledger.rows import WindowRow, decode, encode, iter_rows, rows_to_table


def test_batch_id_depends_only_on_what_the_batch_covers() -> None:
    a = batch_id("p", "live", "events", "rollup_minute", {0: (0, 10), 1: (5, 7)})
    assert a == batch_id("p", "live", "events", "rollup_minute", {1: (5, 7), 0: (0, 10)})
    assert 0 <= a < 2**63
    others = {
        batch_id("p", "live", "events", "rollup_hour", {0: (0, 10), 1: (5, 7)}),
        batch_id("p", "live", "events", "rollup_minute", {0: (0, 11), 1: (5, 7)}),
        batch_id("q", "live", "events", "rollup_minute", {0: (0, 10), 1: (5, 7)}),
        batch_id("p", "backfill", "events", "rollup_minute", {0: (0, 10), 1: (5, 7)}),
        batch_id("p", "live", "events", "rollup_minute", {0: (0, 10), 1: (5, 7)}, scope="x"),
    }
    assert a not in others and len(others) == 5
    assert dedup_token("p", a) == dedup_token("p", a) != dedup_token("p", a + 1)


def test_rows_round_trip_extremes() -> None:
    rows = [
        WindowRow(0, 3, 1_764_115_200, 2**64 - 1, "DE", 2**40, 2**100),
        WindowRow(1, 0, 0, 0, "ZZ", 1, -(2**63) * 5),
        WindowRow(0, 7, 4_102_444_740, 123, "FR", 3, 0),
    ]
    assert list(iter_rows(decode(encode(rows_to_table(rows))))) == rows
