"""The aligner (sans-IO): wait-for-all early publish, lag expiry, LATE and MISSING flags."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.aligner import Aligner, StreamLayout, Verdict
from gateway.snapshot import Flag
from gateway.stats import StreamStats, seq_diff

RATE = 50.0


def make() -> Aligner:
    # stream a -> channels 0, 1 ; stream b -> channel 2 (point 1), point 0 is a status word
    a = StreamLayout.of("a", [0, 1])
    b = StreamLayout.of("b", [None, 2], [1.0, 2.0])
    return Aligner(3, [a, b], rate_hz=RATE, lag_s=0.010)


def test_early_publish_when_all_streams_arrived() -> None:
    al = make()
    t = 1000.0
    assert al.feed("a", np.array([1.0, 2.0]), 5.0, ts=t) == []
    assert al.next_deadline() == pytest.approx(5.010)
    out = al.feed("b", np.array([7.0, 3.0]), 5.001, ts=t + 0.0004)  # same 20 ms slot
    assert len(out) == 1
    s = out[0]
    assert s.seq == round(t * RATE)
    assert s.source_time == pytest.approx(t)
    assert s.arrival_time == 5.0 and s.published_time == 5.001
    np.testing.assert_array_equal(s.values, [1.0, 2.0, 6.0])  # scale applied
    assert (s.flags == 0).all()
    assert al.stats.early == 1 and al.pending == 0


def test_lag_expiry_flags_missing_and_late() -> None:
    al = make()
    al.feed("b", np.array([0.0, 1.0]), 1.0, ts=999.98)  # slot k-1, complete later? no: only b
    assert al.tick(1.005) == []  # lag not over
    out = al.tick(1.011)
    assert len(out) == 1
    s = out[0]
    # stream a never seen: its values are MISSING (not LATE: it is not alive)
    assert s.flags[0] == Flag.MISSING and s.flags[1] == Flag.MISSING
    assert np.isnan(s.values[:2]).all()
    assert s.flags[2] == 0
    # now a is alive; next slot only b arrives -> a's values MISSING|LATE
    al.feed("a", np.array([1.0, 1.0]), 1.012, ts=1000.00)
    al.feed("b", np.array([0.0, 1.0]), 1.012, ts=1000.00)  # completes slot 1000.00
    al.feed("b", np.array([0.0, 1.0]), 1.030, ts=1000.02)
    s2 = al.tick(1.050)[0]
    assert s2.flags[0] == Flag.MISSING | Flag.LATE
    # the late frame of a for the published slot is counted and dropped
    assert al.feed("a", np.array([1.0, 1.0]), 1.051, ts=1000.02) == []
    assert al.stats.late_frames == 1 and al.stats.late_by_stream["a"] == 1
    assert al.stats.incomplete == 2


def test_publishing_a_slot_publishes_older_pending_first() -> None:
    al = make()
    al.feed("a", np.array([1.0, 1.0]), 2.0, ts=100.00)
    al.feed("a", np.array([2.0, 2.0]), 2.001, ts=100.02)
    out = al.feed("b", np.array([0.0, 5.0]), 2.002, ts=100.02)
    assert [s.seq for s in out] == [5000, 5001]
    assert out[0].flags[2] & Flag.MISSING
    assert al.stats.early == 1 and al.stats.expired == 1


def test_nonfinite_values_are_missing_and_duplicates_ignored() -> None:
    al = make()
    al.feed("a", np.array([np.nan, 2.0]), 3.0, ts=50.0)
    assert al.feed("a", np.array([9.0, 9.0]), 3.0, ts=50.0) == []
    assert al.stats.duplicate_frames == 1
    s = al.feed("b", np.array([0.0, 1.0]), 3.0, ts=50.0)[0]
    assert s.flags[0] == Flag.MISSING and s.flags[1] == 0
    assert s.values[1] == 2.0


def test_without_timestamps_slots_follow_sequence_numbers() -> None:
    al = make()
    al.feed("a", np.array([1.0, 1.0]), 4.0, seq=7)
    out = al.feed("b", np.array([0.0, 1.0]), 4.0, seq=7)
    assert out[0].seq == 7


def test_flush_publishes_everything() -> None:
    al = make()
    al.feed("a", np.array([1.0, 1.0]), 4.0, ts=10.0)
    al.feed("a", np.array([1.0, 1.0]), 4.0, ts=10.02)
    assert [s.seq for s in al.flush(4.1)] == [500, 501]


def test_bounded_pending_slots() -> None:
    a = StreamLayout.of("a", [0])
    b = StreamLayout.of("b", [1])
    al = Aligner(2, [a, b], rate_hz=RATE, lag_s=10.0, max_pending=4)
    out = []
    for k in range(10):
        out += al.feed("a", np.array([float(k)]), 1.0, ts=k / RATE + 1.0)
    assert al.pending == 4  # the oldest slot is published when a fifth would wait
    assert [s.seq for s in out] == list(range(50, 56))


def test_stream_stats_classification() -> None:
    s = StreamStats("x")
    assert s.frame(1, 10.0, 10.001) == "ok"
    assert s.frame(2, None, 10.02) == "ok"
    assert s.frame(5, None, 10.04) == "gap"
    assert s.gaps == 2
    assert s.frame(4, None, 10.05) == "reordered"
    assert s.frame(4, None, 10.06) == "duplicate"
    assert s.lost == 1 and s.duplicates == 1 and s.reordered == 1
    assert s.owd_last == pytest.approx(0.001)
    assert s.rate() > 0
    # 32-bit wrap-around is a step of one, not a gap
    w = StreamStats("w")
    w.frame(2**32 - 1, None, 0.0)
    assert w.frame(0, None, 0.02) == "ok" and w.gaps == 0
    assert seq_diff(0, 2**32 - 1) == 1


# --------------------------------------------------------------------- property (issue 23)

@settings(max_examples=200, deadline=None)
@given(st.integers(5, 60).flatmap(lambda n: st.tuples(
    st.just(n),
    st.lists(st.tuples(st.floats(0.0, 8.0), st.booleans()), min_size=2 * n,
             max_size=2 * n),
    st.lists(st.floats(0.0, 3.0), min_size=n, max_size=n))))
def test_random_arrival_orders_delays_and_losses(
        case: tuple[int, list[tuple[float, bool]], list[float]]) -> None:
    """Published sequence numbers strictly increase, nothing is published twice, every
    frame is accounted exactly once and every stale frame is counted late."""
    _n, frames, ticks = case
    al = make()
    t0 = 1000.0
    base = round(t0 * RATE)
    arrivals = []
    for j, (delay, lost) in enumerate(frames):
        if not lost:  # frame k of stream a (j even) or b (j odd), delayed by delay periods
            arrivals.append((t0 + (j // 2 + delay) / RATE, j // 2, "ab"[j % 2]))
    arrivals.sort()
    published: list[int] = []
    placed = 0

    def take(out: list) -> None:
        nonlocal placed
        for s in out:
            published.append(s.seq)
            k = s.seq - base
            if not s.flags[0] & Flag.MISSING:
                placed += 1
                assert s.values[0] == k  # stream a's frame k, in its own slot
            if not s.flags[2] & Flag.MISSING:
                placed += 1
                assert s.values[2] == 2 * k

    for now, k, stream in arrivals:
        newest = published[-1] if published else None
        take(al.feed(stream, np.array([float(k), float(k)]), now, ts=t0 + k / RATE,
                     seq=k))
        if newest is not None and base + k <= newest:
            assert al.last_verdict is Verdict.LATE  # stale: counted, never merged
        take(al.tick(now + ticks[k] / RATE))
    take(al.flush(t0 + 10.0))
    assert all(b > a for a, b in itertools.pairwise(published))
    assert len(set(published)) == len(published)
    late = al.drain_late()
    assert len(late) == al.stats.late_frames
    assert all(lf.key <= published[-1] for lf in late)
    assert placed + len(late) + sum(al.stats.dropped.values()) == len(arrivals)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["next", "next", "next", "next", "swap", "stray", "restart",
                                 "skip"]), min_size=5, max_size=150))
def test_restarts_strays_and_swaps_never_republish_or_lose_count(ops: list[str]) -> None:
    """A sender that restarts, sends stray timestamps and swaps neighbours: published
    keys still strictly increase and every frame is placed, late or counted dropped.
    (The stream's first frame is a good one: a first frame has nothing to be judged by.)"""
    ops = ["next", *ops]
    al = Aligner(1, [StreamLayout.of("a", [0])], rate_hz=RATE, lag_s=0.01)
    t0, now, k = 5000.0, 1.0e6, 0
    published: list[int] = []
    fed = strays = 0
    placed = 0

    def feed(seq: int, ts: float) -> None:
        nonlocal fed, placed
        out = al.feed("a", np.array([1.0]), now, ts=ts, seq=seq)
        fed += 1
        placed += len(out)  # one stream: a snapshot is one placed frame
        published.extend(s.seq for s in out)

    for op in ops:
        now += 1 / RATE
        if op == "restart":
            k = 0
        elif op == "skip":
            k += 3
        if op == "swap":
            feed(k + 1, t0 + (k + 1) / RATE)
            feed(k, t0 + k / RATE)
            k += 2
        elif op == "stray":
            feed(k, t0 + k / RATE + 86_400.0)
            strays += 1
            k += 1
        else:
            feed(k, t0 + k / RATE)
            k += 1
        out = al.tick(now + 0.5 / RATE)
        placed += len(out)
        published.extend(s.seq for s in out)
    out = al.flush(now + 1.0)
    placed += len(out)
    published.extend(s.seq for s in out)
    assert all(b > a for a, b in itertools.pairwise(published))
    assert al.held == 0
    late = al.drain_late()
    assert placed + len(late) + sum(al.stats.dropped.values()) == fed
    if "restart" not in ops:  # without restarts, only the strays are refused
        assert al.stats.dropped["duplicate"] == 0
        if ("stray", "stray") not in set(itertools.pairwise(ops)):
            assert al.stats.dropped["outlier"] == 0
            assert al.stats.dropped["future"] == strays
        else:
            # two in a row look exactly like a clock step: they are accepted by sequence,
            # and the return to the right time that follows is a step back whose first
            # frames may be refused as outliers; every frame is still accounted for above
            assert al.stats.dropped["future"] <= strays


@pytest.mark.parametrize("burst", [50, 400])
def test_arrival_stamped_frames_of_a_burst_are_all_kept(burst: int) -> None:
    """A stream with neither timestamp nor sequence number (GTNET-SKT without its
    header) is slotted by arrival. A sender that stalled and then sends its backlog at
    once delivers many frames within microseconds: each must keep a slot of its own
    (arrival order), also when the burst is longer than the reorder window (200 slots
    here) and after a silence longer than the jump bound. Before, the frame whose
    arrival slot fell more than the reorder window behind the stream's newest was held
    as a jump and the next one, on the same arrival slot, dropped as its duplicate."""
    al = Aligner(1, [StreamLayout.of("a", [0])], rate_hz=1000.0, lag_s=0.010)
    t, fed, published = 100.0, 0, 0
    for k in range(100):  # regular frames
        published += len(al.feed("a", np.array([float(fed)]), t + k * 1e-3))
        fed += 1
    t += 100e-3 + 3.0  # a stall longer than max_jump_s (2 s), then the backlog at once
    for k in range(burst):
        published += len(al.feed("a", np.array([float(fed)]), t + k * 2e-6))
        fed += 1
    for k in range(1, 100):  # regular again
        published += len(al.feed("a", np.array([float(fed)]), t + k * 1e-3))
        fed += 1
    published += len(al.flush(t + 1.0))
    assert sum(al.stats.dropped.values()) == 0
    assert published == fed
