"""Time alignment of several streams into one snapshot, sans-IO (openPDC's concentrator).

Each frame belongs to the time slot ``k = round(ts * rate)`` of its source timestamp (the
VILLASnode header or the C37.118 SOC/FRACSEC); streams without a timestamp fall back to
their header sequence number, then to the arrival time. A slot is published

* **early**, the moment every expected stream has delivered its frame (wait-for-all), or
* when its **lag window** expires: ``lag_s`` after the slot's first frame arrived
  (:meth:`Aligner.tick`, driven by the caller's timer; :meth:`next_deadline` says when).

Slots are published in time order; publishing a slot first publishes any older pending
slot. Values of a stream that did not make it into its slot are NaN and flagged MISSING,
plus LATE when that stream is alive (it delivered something within ``alive_s``): the
frame is expected but late. A frame that arrives for an already published slot is not
merged: it is counted late for its stream (:attr:`late`) and dropped. Non-finite values
on the wire are flagged MISSING. Duplicate frames for a pending slot are ignored.

``now`` is always passed in; nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gateway.snapshot import Flag, Snapshot

MISSING = np.uint32(Flag.MISSING)
MISSING_LATE = np.uint32(Flag.MISSING | Flag.LATE)


@dataclass(frozen=True)
class StreamLayout:
    """Where a stream's decoded points land in the snapshot vector."""

    name: str
    points: np.ndarray  # indices into the decoded point vector
    channels: np.ndarray  # channel index for each of those points
    scale: np.ndarray  # engineering value = wire value * scale
    # fast path, derived: contiguous runs become slices (views), unit scale skips the multiply
    point_sel: slice | np.ndarray = field(init=False, repr=False, compare=False)
    chan_sel: slice | np.ndarray = field(init=False, repr=False, compare=False)
    unit: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "point_sel", _as_slice(self.points))
        object.__setattr__(self, "chan_sel", _as_slice(self.channels))
        object.__setattr__(self, "unit", bool(np.all(self.scale == 1.0)))

    @classmethod
    def of(cls, name: str, point_channels: Sequence[int | None],
           scales: Sequence[float] | None = None) -> StreamLayout:
        sel = [i for i, c in enumerate(point_channels) if c is not None]
        sc = [1.0] * len(point_channels) if scales is None else list(scales)
        return cls(name, np.array(sel, np.intp),
                   np.array([point_channels[i] for i in sel], np.intp),
                   np.array([sc[i] for i in sel], np.float64))


def _as_slice(idx: np.ndarray) -> slice | np.ndarray:
    if idx.size and np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
        return slice(int(idx[0]), int(idx[0]) + int(idx.size))
    return idx


@dataclass
class _Slot:
    key: int
    source_time: float
    first_arrival: float
    values: np.ndarray
    flags: np.ndarray
    got: int = 0  # bitmask of streams received


@dataclass
class AlignerStats:
    published: int = 0
    early: int = 0  # published because every stream had arrived
    expired: int = 0  # published by the lag window
    incomplete: int = 0  # published with at least one stream missing
    late_frames: int = 0
    duplicate_frames: int = 0
    late_by_stream: dict[str, int] = field(default_factory=dict)


class Aligner:
    def __init__(self, n_channels: int, streams: Sequence[StreamLayout], *, rate_hz: float,
                 lag_s: float, alive_s: float = 1.0, max_pending: int = 64) -> None:
        if not streams:
            raise ValueError("an aligner needs at least one stream")
        if len(streams) > 62:
            raise ValueError("at most 62 streams per aligner")
        self.n = n_channels
        self.streams = list(streams)
        self.index = {s.name: i for i, s in enumerate(self.streams)}
        self.rate = float(rate_hz)
        self.lag = float(lag_s)
        self.alive_s = alive_s
        self.max_pending = max_pending
        self.all_mask = (1 << len(self.streams)) - 1
        self._pending: dict[int, _Slot] = {}
        self._last_key: int | None = None  # newest published slot
        self._last_seen = [-math.inf] * len(self.streams)
        self._template_flags = np.full(n_channels, MISSING, np.uint32)
        self._template_vals = np.full(n_channels, np.nan)
        self.stats = AlignerStats(late_by_stream={s.name: 0 for s in self.streams})

    # -- slot key ----------------------------------------------------------------------
    def key_of(self, ts: float | None, seq: int | None, now: float) -> tuple[int, float]:
        if ts is not None and ts > 0:
            return round(ts * self.rate), ts
        if seq is not None:
            return int(seq), now
        return round(now * self.rate), now

    # -- feeding -------------------------------------------------------------------------
    def feed(self, stream: str, values: np.ndarray, now: float, *, ts: float | None = None,
             seq: int | None = None, flags: np.ndarray | None = None) -> list[Snapshot]:
        """Add one decoded frame (point order); return the snapshots now complete.

        ``flags``: quality bits per point from the source (e.g. a C37.118 STAT word),
        OR-ed into the channels' flags; None when the source reports nothing."""
        i = self.index[stream]
        self._last_seen[i] = now
        key, src_time = self.key_of(ts, seq, now)
        if self._last_key is not None and key <= self._last_key:
            self.stats.late_frames += 1
            self.stats.late_by_stream[stream] += 1
            return []
        slot = self._pending.get(key)
        if slot is None:
            slot = _Slot(key, key / self.rate if ts is not None and ts > 0 else src_time,
                         now, self._template_vals.copy(), self._template_flags.copy())
            self._pending[key] = slot
        bit = 1 << i
        if slot.got & bit:
            self.stats.duplicate_frames += 1
            return []
        slot.got |= bit
        lay = self.streams[i]
        v = values[lay.point_sel]
        if not lay.unit:
            v = v * lay.scale
        cs = lay.chan_sel
        slot.values[cs] = v
        if math.isfinite(v.sum()):  # one reduction: NaN or inf anywhere makes it non-finite
            slot.flags[cs] = 0
        else:
            slot.flags[cs] = np.where(np.isfinite(v), np.uint32(0), MISSING)
        if flags is not None:
            slot.flags[cs] |= flags[lay.point_sel].astype(np.uint32, copy=False)
        out: list[Snapshot] = []
        if slot.got == self.all_mask:
            out = self._publish_through(key, now, early=True)
        elif len(self._pending) > self.max_pending:
            out = self._publish_through(min(self._pending), now, early=False)
        return out

    def tick(self, now: float) -> list[Snapshot]:
        """Publish the slots whose lag window has expired at ``now``."""
        out: list[Snapshot] = []
        while self._pending:
            k = min(self._pending)
            if self._pending[k].first_arrival + self.lag > now:
                break
            out += self._publish_through(k, now, early=False)
        return out

    def next_deadline(self) -> float | None:
        """When the oldest pending slot's lag window expires (None when nothing pends)."""
        if not self._pending:
            return None
        return self._pending[min(self._pending)].first_arrival + self.lag

    def flush(self, now: float) -> list[Snapshot]:
        """Publish everything pending (shutdown)."""
        if not self._pending:
            return []
        return self._publish_through(max(self._pending), now, early=False)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- publishing ---------------------------------------------------------------------
    def _publish_through(self, key: int, now: float, *, early: bool) -> list[Snapshot]:
        out = []
        for k in sorted(k for k in self._pending if k <= key):
            slot = self._pending.pop(k)
            out.append(self._finish(slot, now, early=early and k == key))
        self._last_key = key if self._last_key is None else max(self._last_key, key)
        return out

    def _finish(self, slot: _Slot, now: float, *, early: bool) -> Snapshot:
        st = self.stats
        st.published += 1
        if early:
            st.early += 1
        else:
            st.expired += 1
        if slot.got != self.all_mask:
            st.incomplete += 1
            for i, lay in enumerate(self.streams):
                if not slot.got & (1 << i) and now - self._last_seen[i] <= self.alive_s:
                    slot.flags[lay.channels] = MISSING_LATE
        return Snapshot(slot.key, slot.source_time, slot.first_arrival, slot.values,
                        slot.flags, now)
