"""Ring buffer: views of the last T frames, overwrite counting, sequence bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.ringbuffer import RingBuffer
from gateway.snapshot import Flag


def _fill(rb: RingBuffer, seqs: list[int]) -> list[Flag]:
    return [rb.append(s, 100.0 + s, 200.0 + s, np.full(rb.n_channels, float(s))).flag
            for s in seqs]


def test_last_is_a_contiguous_view_in_order() -> None:
    rb = RingBuffer(4, 3)
    assert rb.last(10).values.shape == (0, 3)
    _fill(rb, [0, 1, 2])
    w = rb.last(2)
    assert w.seq.tolist() == [1, 2]
    assert w.source_time.tolist() == [101.0, 102.0]
    assert w.arrival.tolist() == [201.0, 202.0]
    assert w.values[:, 0].tolist() == [1.0, 2.0]
    assert np.shares_memory(w.values, rb._values)  # a view, not a copy
    assert rb.channel(2, 5).tolist() == [0.0, 1.0, 2.0]


def test_wraparound_overwrites_oldest_and_counts() -> None:
    rb = RingBuffer(4, 2)
    _fill(rb, list(range(10)))
    assert rb.size == 4 and rb.overwritten == 6 and rb.appended == 10
    assert rb.last().seq.tolist() == [6, 7, 8, 9]
    assert rb.last(3).values[:, 1].tolist() == [7.0, 8.0, 9.0]
    for t in range(0, 5):  # every window is one slice whatever the head position
        _fill(rb, [10 + t])
        assert rb.last(4).seq.tolist() == list(range(7 + t, 11 + t))


def test_gaps_duplicates_reordering_and_late() -> None:
    rb = RingBuffer(16, 1, lag_window=4)
    assert _fill(rb, [0, 1, 2]) == [Flag.GOOD] * 3
    a = rb.append(6, 0.0, 0.0, np.zeros(1))  # 3, 4, 5 missing
    assert (a.flag, a.gap, a.stored) == (Flag.GOOD, 3, True)
    assert (rb.missing, rb.gaps) == (3, 1)
    assert _fill(rb, [4]) == [Flag.OUT_OF_ORDER]  # fills part of the gap
    assert rb.missing == 2 and rb.out_of_order == 1
    assert rb.last(1).flags.tolist() == [[int(Flag.OUT_OF_ORDER)]]
    assert _fill(rb, [4, 6]) == [Flag.DUPLICATE, Flag.DUPLICATE]
    assert rb.duplicates == 2
    assert _fill(rb, [2]) == [Flag.LATE]  # 6 - 2 >= lag window of 4
    assert rb.late == 1
    assert rb.last().seq.tolist() == [0, 1, 2, 6, 4]  # arrival order, dropped not stored
    assert _fill(rb, [7]) == [Flag.GOOD]


def test_flags_are_stored_per_value() -> None:
    rb = RingBuffer(2, 3)
    rb.append(0, 0.0, 0.0, np.array([1.0, np.nan, 3.0]),
              np.array([0, Flag.MISSING, Flag.BAD], np.uint32))
    assert rb.last().flags.tolist() == [[0, 8, 1]]
    rb.append(2, 0.0, 0.0, np.zeros(3), np.array([0, 0, Flag.BAD], np.uint32))
    rb.append(1, 0.0, 0.0, np.zeros(3), np.array([0, 0, Flag.BAD], np.uint32))
    assert rb.last(1).flags.tolist() == [[128, 128, 129]]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        RingBuffer(0, 1)
    with pytest.raises(ValueError):
        RingBuffer(1, 1, lag_window=0)
