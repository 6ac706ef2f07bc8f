"""Flow control between the pipeline and the estimator: newest wins, deadline, stale.

A sans-IO object: the supervisor (its I/O runner) tells it what happened -- a snapshot
was submitted, sent, answered, lost -- always with ``now``, and asks it what to send and
when to look again (:meth:`FlowControl.next_deadline` / :meth:`FlowControl.tick`). It
reads no clock, starts no timer and touches no socket, so it is tested with a fake clock.

Rules:

* **Newest wins**: at most one snapshot is in flight and one waits in a single pending
  slot; a newer snapshot replaces the waiting one (``superseded``). Every queue is bounded
  and a slow estimator sheds load instead of falling behind.
* The waiting snapshot is sent when the estimator frees up, even past its deadline (it is
  the newest there is), unless it is older than ``stale_after_s``: then it is dropped
  (``stale``). Without a running estimator a waiting snapshot past its deadline is dropped
  (``no_estimator``), as is one whose send fails or whose estimator dies in flight.
* **Deadline misses**: a snapshot's deadline is ``published_time + deadline_s``. Every
  snapshot whose deadline passes without an answer from the estimator (its state, or a
  FAIL saying why there is none) is one deadline miss, counted once, at its deadline --
  whatever became of it: still in flight, waiting, superseded, stale or dropped. An
  answer after the deadline is a miss too (counted at the deadline, or on the answer if no
  tick came between). So an estimator that stalls for 2.2 s at 50 snapshots/s counts about
  110 misses, not one.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FlowStats:
    """Counters of what became of the submitted snapshots."""

    submitted: int = 0
    sent: int = 0
    superseded: int = 0
    stale: int = 0
    no_estimator: int = 0
    states: int = 0
    failures: int = 0
    deadline_misses: int = 0

    @property
    def skipped(self) -> int:
        return self.superseded + self.stale + self.no_estimator


@dataclass(eq=False)
class Ticket:
    """One submitted snapshot on its way: ``item`` is the runner's payload."""

    seq: int
    published_time: float
    deadline_at: float
    item: Any = None
    sent_at: float | None = None
    missed: bool = False
    answered: bool = False


@dataclass
class Answer:
    """What :meth:`FlowControl.answered` found: the ticket, whether the deadline was met
    and whether this answer is what made it a miss (count it now)."""

    ticket: Ticket
    met: bool
    newly_missed: bool


@dataclass
class FlowControl:
    deadline_s: float
    #: a waiting snapshot older than this is dropped instead of estimated
    stale_after_s: float
    stats: FlowStats = field(default_factory=FlowStats)
    pending: Ticket | None = None
    inflight: Ticket | None = None
    #: (deadline, order, ticket) of dropped snapshots whose deadline has not come yet
    _dropped: list[tuple[float, int, Ticket]] = field(default_factory=list)
    _order: int = 0

    # ------------------------------------------------------------------ inputs
    def submit(self, seq: int, published_time: float, item: Any, now: float) -> None:
        """A new snapshot; it replaces a waiting one (newest wins)."""
        self.stats.submitted += 1
        if self.pending is not None:
            self.stats.superseded += 1
            self._drop(self.pending)
        self.pending = Ticket(seq, published_time, published_time + self.deadline_s, item)

    def take(self, now: float, estimator_up: bool) -> Ticket | None:
        """The waiting snapshot to send now, or None (nothing waits, one is in flight,
        no estimator, or it went stale). Call :meth:`sent` or :meth:`unsent` after."""
        t = self.pending
        if t is None or self.inflight is not None:
            return None
        if not estimator_up:
            if now > t.deadline_at:
                self.pending = None
                self.stats.no_estimator += 1
                self._drop(t)
            return None
        self.pending = None
        if now > t.published_time + self.stale_after_s:
            self.stats.stale += 1  # far too old to be worth estimating (e.g. a restart)
            self._drop(t)
            return None
        return t

    def sent(self, t: Ticket, now: float) -> None:
        """``t`` (from :meth:`take`) is with the estimator."""
        t.sent_at = now
        self.inflight = t
        self.stats.sent += 1

    def unsent(self, t: Ticket) -> None:
        """``t`` (from :meth:`take`) could not be sent: dropped."""
        self.stats.no_estimator += 1
        self._drop(t)

    def answered(self, seq: int, now: float, ok: bool) -> Answer | None:
        """The estimator answered ``seq`` with a state (``ok``) or a failure; None when it
        is not the snapshot in flight (one given up on)."""
        t = self.inflight
        if t is None or t.seq != seq:
            return None
        self.inflight = None
        t.answered = True
        if ok:
            self.stats.states += 1
        else:
            self.stats.failures += 1
        met = now <= t.deadline_at and not t.missed
        newly = not met and not t.missed
        if newly:
            self._miss(t)
        return Answer(t, met, newly)

    def lost(self) -> Ticket | None:
        """The estimator died: the snapshot in flight (if any) is dropped and returned."""
        t = self.inflight
        if t is None:
            return None
        self.inflight = None
        self.stats.no_estimator += 1
        self._drop(t)
        return t

    # ------------------------------------------------------------------ timers
    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to count (None: nothing pending)."""
        times = [t.deadline_at for t in (self.inflight, self.pending)
                 if t is not None and not t.missed]
        if self._dropped:
            times.append(self._dropped[0][0])
        return min(times) if times else None

    def tick(self, now: float) -> list[Ticket]:
        """Count the snapshots whose deadline has passed without an answer; returns them
        (each once, in deadline order)."""
        out: list[Ticket] = []
        while self._dropped and self._dropped[0][0] < now:
            out.append(heapq.heappop(self._dropped)[2])
        for t in (self.inflight, self.pending):
            if t is not None and not t.missed and t.deadline_at < now:
                out.append(t)
        out.sort(key=lambda t: t.deadline_at)
        for t in out:
            self._miss(t)
        return out

    def hung(self, now: float, timeout_s: float) -> Ticket | None:
        """The snapshot in flight if the estimator has had it longer than ``timeout_s``."""
        t = self.inflight
        if t is not None and t.sent_at is not None and now - t.sent_at > timeout_s:
            return t
        return None

    # ------------------------------------------------------------------ internals
    def _drop(self, t: Ticket) -> None:
        """``t`` will get no answer: its deadline will pass unanswered (a miss then)."""
        if t.missed:
            return
        self._order += 1
        heapq.heappush(self._dropped, (t.deadline_at, self._order, t))

    def _miss(self, t: Ticket) -> None:
        t.missed = True
        self.stats.deadline_misses += 1
