"""Window arithmetic and the lateness rule of contract §3, at its edges."""

import pytest

from app.processor.windows import KINDS, LatenessPolicy, WindowKind, window_start_ms

POLICY = LatenessPolicy(max_out_of_orderness_ms=5_000, allowed_lateness_minute_ms=60_000,
                        allowed_lateness_hour_ms=60_000)


@pytest.mark.parametrize("t, minute, hour", [
    (0, 0, 0),
    (59_999, 0, 0),
    (60_000, 60_000, 0),
    (3_599_999, 3_540_000, 0),
    (3_600_000, 3_600_000, 3_600_000),
    (4_102_444_799_999, 4_102_444_740_000, 4_102_441_200_000),
])
def test_window_start_is_epoch_aligned_half_open(t: int, minute: int, hour: int) -> None:
    assert window_start_ms(t, WindowKind.MINUTE) == minute
    assert window_start_ms(t, WindowKind.HOUR) == hour
    for kind in KINDS:
        start = window_start_ms(t, kind)
        assert start <= t < start + kind.size_ms


def test_no_watermark_means_nothing_is_late() -> None:
    assert POLICY.watermark_ms(None) is None
    assert not POLICY.is_too_late(WindowKind.MINUTE, 0, None)


def test_too_late_exactly_when_end_plus_lateness_reaches_watermark() -> None:
    start = 600_000  # window [600000, 660000)
    boundary = start + 60_000 + 60_000
    assert not POLICY.is_too_late(WindowKind.MINUTE, start, boundary - 1)
    assert POLICY.is_too_late(WindowKind.MINUTE, start, boundary)
    assert POLICY.is_final(WindowKind.MINUTE, start, boundary)


def test_minute_can_be_late_while_hour_is_not() -> None:
    wm = 3_600_000 + 10 * 60_000  # watermark 10 minutes into hour 1
    t = 3_600_000 + 60_000         # event in minute 1 of hour 1
    assert POLICY.is_too_late(WindowKind.MINUTE, window_start_ms(t, WindowKind.MINUTE), wm)
    assert not POLICY.is_too_late(WindowKind.HOUR, window_start_ms(t, WindowKind.HOUR), wm)


def test_lateness_per_kind() -> None:
    policy = LatenessPolicy(5_000, allowed_lateness_minute_ms=0, allowed_lateness_hour_ms=600_000)
    assert policy.is_too_late(WindowKind.MINUTE, 0, 60_000)
    assert not policy.is_too_late(WindowKind.HOUR, 0, 3_600_000 + 599_999)
    assert policy.is_too_late(WindowKind.HOUR, 0, 3_600_000 + 600_000)


def test_watermark_is_max_minus_out_of_orderness() -> None:
    assert POLICY.watermark_ms(100_000) == 95_000


def test_oldest_open_start_matches_is_final() -> None:
    for kind in KINDS:
        wm = 7_654_321
        oldest = POLICY.oldest_open_start_ms(kind, wm)
        assert oldest is not None
        start = window_start_ms(oldest, kind)
        # every window starting at or after `oldest` is open, the one before is final
        assert not POLICY.is_final(kind, oldest, wm)
        assert POLICY.is_final(kind, oldest - 1, wm)
        assert start <= oldest
