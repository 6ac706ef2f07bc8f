"""Fixed-capacity per-stream history of frames, in numpy, with sequence bookkeeping.

Each appended frame stores (sequence, source time, arrival time, values, flags). Storage
is written twice (rows ``i`` and ``i + capacity``), so the last T rows are always one
contiguous slice: ``last(T)`` returns views, never copies, and append stays O(1). The
views alias the storage: copy what must outlive the next ``capacity`` appends.

Sequence bookkeeping against the newest sequence number seen: a jump forward counts the
frames in between as missing (a gap); a number seen before within ``lag_window`` is a
duplicate and is not stored; an unseen older number within the window is stored and
flagged OUT_OF_ORDER (it fills part of a gap); anything older than the window is LATE and
not stored. Rows are kept in arrival order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from gateway.snapshot import Flag


@dataclass(frozen=True, slots=True)
class Arrival:
    """What :meth:`RingBuffer.append` made of one frame."""

    flag: Flag  # GOOD, OUT_OF_ORDER (stored), DUPLICATE or LATE (both dropped)
    gap: int  # frames missing between the previous newest and this one (0 if none)

    @property
    def stored(self) -> bool:
        return self.flag in (Flag.GOOD, Flag.OUT_OF_ORDER)


class Window(NamedTuple):
    """Views of the last rows, oldest first."""

    seq: np.ndarray
    source_time: np.ndarray
    arrival: np.ndarray
    values: np.ndarray
    flags: np.ndarray


class RingBuffer:
    """History of one stream: ``capacity`` frames of ``n_channels`` values each."""

    def __init__(self, capacity: int, n_channels: int, *, lag_window: int = 64) -> None:
        if capacity < 1 or n_channels < 0 or lag_window < 1:
            raise ValueError("capacity and lag_window must be >= 1, n_channels >= 0")
        self.capacity = capacity
        self.n_channels = n_channels
        self.lag_window = lag_window
        rows = 2 * capacity
        self._seq = np.zeros(rows, np.int64)
        self._src = np.zeros(rows, np.float64)
        self._arr = np.zeros(rows, np.float64)
        self._values = np.zeros((rows, n_channels), np.float64)
        self._flags = np.zeros((rows, n_channels), np.uint32)
        self._seen = np.full(lag_window, -1, np.int64)
        self._head = 0
        self.size = 0
        self.last_seq: int | None = None
        # counters
        self.appended = 0
        self.overwritten = 0
        self.missing = 0  # frames in gaps not (yet) filled by late arrivals
        self.gaps = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.late = 0

    def append(self, seq: int, source_time: float, arrival: float,
               values: np.ndarray, flags: np.ndarray | None = None) -> Arrival:
        """Store one frame (O(1)); returns how its sequence number was classified."""
        gap = 0
        flag = Flag.GOOD
        last = self.last_seq
        w = self.lag_window
        if last is None or seq > last:
            if last is not None and seq > last + 1:
                gap = seq - last - 1
                self.missing += gap
                self.gaps += 1
            self.last_seq = seq
        elif self._seen[seq % w] == seq:
            self.duplicates += 1
            return Arrival(Flag.DUPLICATE, 0)
        elif seq <= last - w:
            self.late += 1
            return Arrival(Flag.LATE, 0)
        else:
            flag = Flag.OUT_OF_ORDER
            self.out_of_order += 1
            self.missing -= 1
        self._seen[seq % w] = seq
        h = self._head
        c = self.capacity
        for i in (h, h + c):
            self._seq[i] = seq
            self._src[i] = source_time
            self._arr[i] = arrival
            self._values[i] = values
            if flags is None:
                self._flags[i] = flag
            else:
                self._flags[i] = flags
                if flag:
                    self._flags[i] |= np.uint32(flag)
        self._head = (h + 1) % c
        if self.size == c:
            self.overwritten += 1
        else:
            self.size += 1
        self.appended += 1
        return Arrival(flag, gap)

    def last(self, t: int | None = None) -> Window:
        """Views of the last ``t`` stored frames (all when None), oldest first."""
        t = self.size if t is None else max(0, min(t, self.size))
        end = self._head + self.capacity
        s = slice(end - t, end)
        return Window(self._seq[s], self._src[s], self._arr[s], self._values[s],
                      self._flags[s])

    def channel(self, index: int, t: int | None = None) -> np.ndarray:
        """The last ``t`` values of one channel (a view)."""
        return self.last(t).values[:, index]
