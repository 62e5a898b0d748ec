"""Which stored rows a backfill's pin covers (issue 9, item 5): the diff leaves rows written
after the pin alone, and a pin stored by an older release covers nothing."""

from __future__ import annotations

from app.backfill.clickhouse import StoredRange
from app.backfill.compare import diff_table
from app.ledger.backfill_runs import Pin, PinnedPartition
from app.ledger.rows import WindowRow
from app.processor.windows import WindowKind

H0 = 1_763_596_800
PIN = Pin((PinnedPartition(0, 390, 1_000, 995, {("late", "minute"): 2}), PinnedPartition(1, 0, None, None, {})),
          covers_below=50)


def row(account: int, count: int, amount: int) -> WindowRow:
    return WindowRow(int(WindowKind.HOUR), 0, H0, account, "DE", count, amount)


def test_a_pin_round_trips_through_its_json_and_a_legacy_pin_covers_nothing() -> None:
    assert Pin.from_json(PIN.to_json()) == PIN
    assert PIN.covers(49) and not PIN.covers(50) and not PIN.covers(51)
    legacy = Pin.from_json(PIN.to_json()["partitions"])  # the bare list an older release stored
    assert legacy.partitions == PIN.partitions and legacy.covers_below is None
    assert not legacy.covers(1)


def test_rows_written_after_the_pin_are_neither_extra_nor_compared() -> None:
    truth = [row(1, 3, 30), row(2, 4, 40), row(3, 5, 50)]
    stored = StoredRange("rollup_hour", H0, H0 + 3600, {
        (H0, 1, "DE"): (3, 30, 10),     # equal
        (H0, 2, "DE"): (9, 99, 49),     # different, covered: replaced
        (H0, 3, "DE"): (6, 60, 51),     # written after the pin (key split): left alone
        (H0, 7, "DE"): (1, 5, 20),      # extra, covered: deleted
        (H0, 8, "FR"): (1, 777, 60),    # extra but after the pin (an idle partition): left alone
    }, 60)
    d = diff_table("rollup_hour", truth, stored, extras=True, version=50)
    assert (d.equal, d.different, d.missing, d.extra, d.after_pin) == (1, 1, 0, ((H0, 7, "DE"),), 2)
    # without a known version (legacy pin) every stored key is compared; the caller deletes nothing
    legacy = diff_table("rollup_hour", truth, stored, extras=True, version=None)
    assert (legacy.different, legacy.after_pin, len(legacy.extra)) == (2, 0, 2)
    # an offset request reports no extras, and counts only its own keys as after the pin
    offsets = diff_table("rollup_hour", truth, stored, extras=False, version=50)
    assert (offsets.extra, offsets.after_pin) == ((), 1)
