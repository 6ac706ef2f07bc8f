"""Flow control (gateway.flow) with a fake clock: newest wins, stale, deadline misses
counted once per snapshot whose deadline passed without an answer."""

from __future__ import annotations

from gateway.flow import FlowControl

DEADLINE = 0.02
STALE = 0.2


def flow() -> FlowControl:
    return FlowControl(DEADLINE, STALE)


def test_answered_in_time_is_no_miss() -> None:
    f = flow()
    f.submit(1, 0.0, "one", now=0.0)
    t = f.take(0.001, estimator_up=True)
    assert t is not None and t.item == "one" and f.pending is None
    f.sent(t, 0.001)
    assert f.take(0.002, True) is None  # one in flight at a time
    assert f.next_deadline() == DEADLINE
    ans = f.answered(1, 0.015, ok=True)
    assert ans is not None and ans.met and not ans.newly_missed
    assert f.tick(1.0) == [] and f.next_deadline() is None
    assert (f.stats.sent, f.stats.states, f.stats.deadline_misses) == (1, 1, 0)
    assert f.answered(1, 0.016, ok=True) is None  # nothing in flight any more


def test_newest_wins_and_superseded_snapshots_miss_at_their_deadline() -> None:
    f = flow()
    f.submit(1, 0.0, None, now=0.0)
    f.sent(f.take(0.0, True), 0.0)  # type: ignore[arg-type]
    f.submit(2, 0.005, None, now=0.005)
    f.submit(3, 0.010, None, now=0.010)  # replaces 2
    assert f.stats.superseded == 1 and f.pending is not None and f.pending.seq == 3
    # nothing is due before the first deadline; then 1 (in flight), 2 (superseded) and
    # 3 (waiting) miss, each at its own deadline
    assert f.tick(0.019) == []
    assert [t.seq for t in f.tick(0.021)] == [1]
    assert f.next_deadline() == 0.005 + DEADLINE
    assert [t.seq for t in f.tick(0.026)] == [2]
    assert [t.seq for t in f.tick(0.031)] == [3]
    assert f.stats.deadline_misses == 3
    # 1 answered late: already counted, not again; 3 is then sent all the same
    ans = f.answered(1, 0.040, ok=True)
    assert ans is not None and not ans.met and not ans.newly_missed
    t3 = f.take(0.040, True)
    assert t3 is not None and t3.seq == 3
    f.sent(t3, 0.040)
    ans = f.answered(3, 0.045, ok=False)
    assert ans is not None and not ans.met
    assert f.tick(10.0) == []
    assert (f.stats.deadline_misses, f.stats.states, f.stats.failures) == (3, 1, 1)


def test_a_late_answer_without_a_tick_is_counted_on_the_answer() -> None:
    f = flow()
    f.submit(1, 0.0, None, now=0.0)
    f.sent(f.take(0.0, True), 0.0)  # type: ignore[arg-type]
    ans = f.answered(1, 0.5, ok=True)
    assert ans is not None and ans.newly_missed and not ans.met
    assert f.tick(1.0) == [] and f.stats.deadline_misses == 1


def test_a_stall_counts_every_snapshot_that_got_no_state_in_time() -> None:
    """The estimator stalls 2.2 s at 50 snapshots/s: every snapshot of the stall misses
    its deadline (the finding was 1 miss and 110 "superseded")."""
    f = flow()
    f.submit(0, 0.0, None, now=0.0)
    f.sent(f.take(0.0, True), 0.0)  # type: ignore[arg-type]
    n = 110
    for k in range(1, n + 1):
        now = k * 0.02
        f.submit(k, now, None, now=now)
        f.tick(now)
    assert f.stats.superseded == n - 1
    f.answered(0, 2.2, ok=True)  # the stall ends
    last = f.take(2.2, True)
    assert last is not None and last.seq == n  # the newest, not stale yet: estimated
    f.sent(last, 2.2)
    f.tick(3.0)  # ... and the estimator stalls again on it
    assert f.stats.deadline_misses == n + 1 == f.stats.submitted
    assert f.stats.states == 1


def test_stale_and_no_estimator_drops_are_misses_once() -> None:
    f = flow()
    f.submit(1, 0.0, None, now=0.0)
    assert f.take(0.01, estimator_up=False) is None and f.pending is not None  # keeps it
    assert f.take(0.03, estimator_up=False) is None and f.pending is None  # past deadline
    assert f.stats.no_estimator == 1
    assert [t.seq for t in f.tick(0.03)] == [1]
    f.submit(2, 1.0, None, now=1.0)
    assert [t.seq for t in f.tick(1.1)] == [2]  # waiting past its deadline
    assert f.take(1.3, estimator_up=True) is None  # older than STALE: dropped
    assert f.stats.stale == 1 and f.tick(2.0) == []
    assert f.stats.deadline_misses == 2
    # the estimator dies with a snapshot in flight: dropped, a miss at its deadline
    f.submit(3, 5.0, None, now=5.0)
    t3 = f.take(5.0, True)
    assert t3 is not None
    f.sent(t3, 5.0)
    assert f.lost() is t3 and f.inflight is None and f.stats.no_estimator == 2
    assert f.tick(5.01) == [] and f.next_deadline() == 5.0 + DEADLINE
    assert [t.seq for t in f.tick(5.03)] == [3]
    # a failed send is a drop too
    f.submit(4, 6.0, None, now=6.0)
    t4 = f.take(6.0, True)
    assert t4 is not None
    f.unsent(t4)
    assert f.stats.no_estimator == 3 and f.stats.sent == 1
    assert [t.seq for t in f.tick(6.5)] == [4]
    assert f.stats.deadline_misses == 4


def test_hung_estimator() -> None:
    f = flow()
    f.submit(1, 0.0, None, now=0.0)
    t = f.take(0.0, True)
    assert t is not None
    f.sent(t, 0.0)
    assert f.hung(1.0, timeout_s=2.0) is None
    assert f.hung(2.5, timeout_s=2.0) is t
