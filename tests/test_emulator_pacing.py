"""The emulator's adaptive spin margin, driven with made-up overshoots (no sleeping, no
clock: the figures the margin reaches on a real machine are in ``gridtwin bench``)."""

from __future__ import annotations

import pytest

from hil.emulator import SPIN_S, EmulatorError, SpinMargin, spin_ceiling

US = 1e-6


def feed(sm: SpinMargin, overshoots_s: list[float]) -> float:
    """Record the samples, reading the margin after each one as the pacer does."""
    for x in overshoots_s:
        sm.margin()
        sm.record(x)
    return sm.margin()


def test_starts_at_the_ceiling_and_holds_until_enough_samples() -> None:
    sm = SpinMargin(500 * US, floor_s=30 * US, safety_s=10 * US, window=256, update_every=64)
    assert sm.margin() == 500 * US
    assert feed(sm, [5 * US] * 63) == 500 * US
    assert feed(sm, [5 * US]) == 30 * US


def test_small_overshoots_bring_it_to_the_floor() -> None:
    sm = SpinMargin(500 * US, floor_s=30 * US, safety_s=10 * US, window=256, update_every=32)
    assert feed(sm, [2 * US] * 300) == 30 * US


def test_follows_the_quantile_plus_safety() -> None:
    sm = SpinMargin(500 * US, floor_s=20 * US, safety_s=10 * US, quantile=0.99, window=100,
                    update_every=100)
    # 0..99 µs: the 0.99 quantile ("higher": index ceil(0.99 * 99) = 99) is 99 µs
    assert feed(sm, [i * US for i in range(100)]) == pytest.approx(109 * US)


def test_a_lone_outlier_does_not_move_it_but_a_burst_raises_it() -> None:
    sm = SpinMargin(500 * US, floor_s=30 * US, safety_s=10 * US, window=256, update_every=32)
    feed(sm, [5 * US] * 256)
    assert sm.margin() == 30 * US
    assert feed(sm, [5 * US] * 31 + [400 * US]) == 30 * US  # 1 in 256: below p99
    raised = feed(sm, [150 * US] * 32)
    assert raised == pytest.approx(160 * US)
    # and back down once the burst has left the window
    assert feed(sm, [5 * US] * 256) == 30 * US


def test_never_above_the_ceiling_nor_below_the_floor() -> None:
    sm = SpinMargin(200 * US, floor_s=40 * US, safety_s=10 * US, window=64, update_every=8)
    for x in [10_000 * US] * 64 + [-50 * US] * 64 + [1 * US, 900 * US] * 64:
        sm.record(x)
        assert 40 * US <= sm.margin() <= 200 * US
    assert feed(sm, [10_000 * US] * 64) == 200 * US
    assert feed(sm, [-50 * US] * 64) == 40 * US


def test_fixed_and_zero_spin() -> None:
    fixed = SpinMargin(SPIN_S, adaptive=False, update_every=1)
    assert feed(fixed, [1 * US] * 1000) == SPIN_S
    none = SpinMargin(0.0, update_every=1)  # spin_s=0: always sleep to the slot
    assert feed(none, [300 * US] * 10) == 0.0


def test_bad_parameters() -> None:
    with pytest.raises(EmulatorError):
        SpinMargin(-1 * US)
    with pytest.raises(EmulatorError):
        SpinMargin(quantile=0.0)
    with pytest.raises(EmulatorError):
        SpinMargin(window=16, update_every=32)


def test_the_spin_takes_at_most_a_tenth_of_a_period() -> None:
    """At 1 kHz the full ceiling was half of every period: spun under SCHED_FIFO on the
    gateway's CPU, it took that CPU's real-time tasks past the kernel's budget."""
    assert spin_ceiling(SPIN_S, 1e-3) == pytest.approx(100 * US)
    assert spin_ceiling(SPIN_S, 1 / 50) == SPIN_S  # 50 Hz: the full ceiling
    assert spin_ceiling(0.0, 1e-3) == 0.0  # no spin stays no spin
