"""Per-stream statistics, VILLASnode-style (its ``stats`` hook), sans-IO.

For every frame the gateway calls :meth:`StreamStats.frame` with the header sequence
number (None without a header), the source timestamp (None without one), the arrival
time and the size. The classification follows VILLASnode:

* ``gaps``: sequence numbers skipped when the sequence jumps forward by more than one
  (each missing number counts once; a frame arriving later for it is counted
  ``reordered`` and no longer ``lost``);
* ``duplicates``: a sequence number seen before (within the last :data:`WINDOW`) with
  the same timestamp; a duplicate is dropped by the gateway and not counted in
  ``received``;
* ``reordered``: older than the newest seen but not seen before;
* ``restart``: the sequence went back by more than the reorder window (or back at all
  with a timestamp newer than any seen: a sender's short run) and the next
  frame continued from there (case restart, recompile, card reboot): the baseline is
  re-based, an event is queued (:attr:`StreamStats.events`), nothing is counted lost;
* ``outlier``: a sequence number more than ``max_jump`` ahead (or beyond the reorder
  window behind) that the next frame did not continue: it does not move the baseline,
  so one bad number cannot turn every later frame into "reordered". A jump ahead that
  the next frame continues is real (an outage): its gap is counted then;
* ``late``: set by the aligner, the frame missed its snapshot;
* one-way delay = arrival - source timestamp (meaningful when both clocks are
  synchronised, e.g. the emulator on the same host, or PTP/IRIG-B at the RTDS);
* rate: frames per second over a sliding window of :data:`RATE_WINDOW` arrivals,
  measured up to ``now`` (so it falls to 0 when the stream is silent for
  :data:`SILENT_S`);
* ``dropped``: frames the gateway did not store, by reason (``duplicate``, ``future``,
  ``outlier``: see :mod:`gateway.aligner`), added by the runner.

Sans-IO: the verdicts are returned (:class:`SeqVerdict`) and events queued as data; the
runner drains them (:meth:`StreamStats.drain_events`).

Sequence numbers are 32-bit and wrap (the VILLASnode header word is unsigned).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

WINDOW = 1024  # a power of two
RATE_WINDOW = 64
SEQ_MOD = 1 << 32
SILENT_S = 1.0  # no frame for this long: the rate is 0
REORDER = 16  # sequence numbers a frame may come late before it is a restart candidate
MAX_JUMP = 1 << 16  # sequence numbers ahead before a frame is a jump candidate


class SeqVerdict(enum.StrEnum):
    """The class of one frame's sequence number (a str: compares equal to its name)."""

    OK = "ok"
    GAP = "gap"
    DUPLICATE = "duplicate"
    REORDERED = "reordered"
    RESTART = "restart"
    OUTLIER = "outlier"  # provisional: the next frame decides (see the module docstring)


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b on the 32-bit sequence circle."""
    d = (a - b) % SEQ_MOD
    return d - SEQ_MOD if d >= SEQ_MOD // 2 else d


@dataclass
class StreamStats:
    name: str
    received: int = 0
    bytes: int = 0
    decode_errors: int = 0
    dropped_source: int = 0
    gaps: int = 0
    duplicates: int = 0
    reordered: int = 0
    late: int = 0
    owd_last: float = math.nan
    owd_sum: float = 0.0
    owd_n: int = 0
    owd_max: float = 0.0
    last_arrival: float = math.nan
    last_seq: int | None = None
    restarts: int = 0
    outliers: int = 0
    reorder: int = REORDER
    max_jump: int = MAX_JUMP
    dropped_by: dict[str, int] = field(default_factory=dict)
    events: list[tuple[str, float, dict[str, Any]]] = field(default_factory=list)
    _cand: int | None = field(default=None, repr=False)  # an unconfirmed jump
    _newest_ts: float = field(default=-math.inf, repr=False)
    # the timestamp that came with each ring entry: a repeated number with another
    # timestamp is not a duplicate
    _ring_ts: list[float] = field(default_factory=lambda: [math.nan] * WINDOW, repr=False)
    # seq -> slot seq & (WINDOW-1): a seen-before test in O(1) without a set
    _ring: list[int] = field(default_factory=lambda: [-1] * WINDOW, repr=False)
    _arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=RATE_WINDOW),
                                    repr=False)

    def frame(self, seq: int | None, ts: float | None, now: float,
              size: int = 0, *, delay: bool = True) -> SeqVerdict:
        """Account one decoded frame; return its class (a duplicate is not ``received``).
        ``delay=False`` leaves the one-way delay to a later :meth:`delay` call (the
        gateway records it only for frames the aligner did not refuse)."""
        self.last_arrival = now
        kind = SeqVerdict.OK if seq is None else self._classify(seq, ts, now)
        if kind is SeqVerdict.DUPLICATE:
            return kind
        self.received += 1
        self.bytes += size
        self._arrivals.append(now)
        if delay:
            self.delay(ts, now)
        return kind

    def run_length(self, seqs: list[int], tss: list[float]) -> int:
        """How many leading frames of a batch :meth:`take_run` may account at once: each
        the successor of the one before (the first of :attr:`last_seq`) with a
        timestamp, no jump candidate open. For those frames :meth:`frame` would answer
        OK and queue nothing; the rest go through :meth:`frame` one by one."""
        last = self.last_seq
        if last is None or self._cand is not None:
            return 0
        n = 0
        for seq, ts in zip(seqs, tss, strict=False):
            last = (last + 1) & 0xFFFFFFFF
            if seq != last or not ts > 0:
                break
            n += 1
        return n

    def take_run(self, seqs: list[int], tss: list[float], nows: list[float],
                 size: int) -> None:
        """Account frames :meth:`run_length` admitted, with their one-way delays: the
        same state as :meth:`frame` then :meth:`delay` per frame, in one call."""
        ring, ring_ts = self._ring, self._ring_ts
        newest = self._newest_ts
        owd_sum, owd_max = self.owd_sum, self.owd_max
        owd = self.owd_last
        for seq, t, now in zip(seqs, tss, nows, strict=True):
            if t > newest:
                newest = t
            slot = seq & (WINDOW - 1)
            ring[slot] = seq
            ring_ts[slot] = t
            owd = now - t
            owd_sum += owd
            if owd > owd_max:
                owd_max = owd
        n = len(seqs)
        self._newest_ts = newest
        self.last_seq = seqs[-1]
        self.last_arrival = nows[-1]
        self.received += n
        self.bytes += n * size
        self._arrivals.extend(nows)
        self.owd_last, self.owd_sum, self.owd_max = owd, owd_sum, owd_max
        self.owd_n += n

    def delay(self, ts: float | None, now: float) -> None:
        """Record the one-way delay of a frame stamped ``ts`` that arrived at ``now``."""
        if ts is not None and ts > 0:
            owd = now - ts
            self.owd_last = owd
            self.owd_sum += owd
            self.owd_n += 1
            if owd > self.owd_max:
                self.owd_max = owd

    def _classify(self, seq: int, ts: float | None, now: float) -> SeqVerdict:
        ring = self._ring
        last = self.last_seq
        kind = SeqVerdict.OK
        t = ts if ts is not None and ts > 0 else math.nan
        slot = seq & (WINDOW - 1)
        newer = t > self._newest_ts  # False for NaN
        if newer:
            self._newest_ts = t
        if last is None or seq == (last + 1) & 0xFFFFFFFF:
            self.last_seq = seq
            if self._cand is not None:  # the jump before was not continued
                self.outliers += 1
                self._cand = None
        else:
            d = seq_diff(seq, last)
            if d <= 0 and newer:
                # back in sequence but ahead in time: not a reordered frame, a restart
                kind = self._jump(seq, d, now)
            elif -self.reorder <= d <= self.max_jump:
                if self._cand is not None:  # the jump before was not continued
                    self.outliers += 1
                    self._cand = None
                if d > 0:
                    if d > 1:
                        self.gaps += d - 1
                        kind = SeqVerdict.GAP
                    self.last_seq = seq
                elif d > -WINDOW and ring[slot] == seq and (
                        math.isnan(t) or self._ring_ts[slot] == t):
                    self.duplicates += 1
                    return SeqVerdict.DUPLICATE
                else:
                    self.reordered += 1
                    kind = SeqVerdict.REORDERED
            else:
                kind = self._jump(seq, d, now)
        ring[slot] = seq
        self._ring_ts[slot] = t
        return kind

    def _jump(self, seq: int, d: int, now: float) -> SeqVerdict:
        """A sequence number beyond the window: a candidate, or the candidate confirmed."""
        cand = self._cand
        if cand is not None and 0 < seq_diff(seq, cand) <= self.reorder:
            self._cand = None
            last = self.last_seq
            assert last is not None
            if seq_diff(cand, last) < 0:
                self.restarts += 1
                self._ring = [-1] * WINDOW
                self._ring_ts = [math.nan] * WINDOW
                self._ring[cand & (WINDOW - 1)] = cand
                self.events.append(("restart", now, {"from_seq": last, "to_seq": cand}))
                self.last_seq = seq
                return SeqVerdict.RESTART
            self.gaps += seq_diff(cand, last) - 1 + seq_diff(seq, cand) - 1
            self.events.append(("seq_jump", now, {"from_seq": last, "to_seq": cand}))
            self.last_seq = seq
            return SeqVerdict.GAP
        if cand is not None:
            self.outliers += 1
        self._cand = seq
        return SeqVerdict.OUTLIER

    def drain_events(self) -> list[tuple[str, float, dict[str, Any]]]:
        """Events since the last call: (kind, time, detail)."""
        out, self.events = self.events, []
        return out

    def drop(self, reason: str, n: int = 1) -> None:
        """The runner did not store a frame (``reason``: duplicate, future, outlier ...)."""
        self.dropped_by[reason] = self.dropped_by.get(reason, 0) + n

    def decode_error(self) -> None:
        self.decode_errors += 1

    def dropped(self) -> None:
        self.dropped_source += 1

    @property
    def lost(self) -> int:
        """Sequence numbers never received (gaps not filled by a reordered frame)."""
        return max(0, self.gaps - self.reordered)

    @property
    def owd_mean(self) -> float:
        return self.owd_sum / self.owd_n if self.owd_n else math.nan

    @property
    def not_stored(self) -> int:
        """Frames that reached the gateway and were not stored: sequence numbers never
        received, duplicates, undecodable and every refused frame (late frames are stored)."""
        return self.lost + self.duplicates + self.decode_errors + sum(
            self.dropped_by.values())

    def rate(self, now: float | None = None) -> float:
        """Frames per second over the last arrivals (0 with fewer than two). With ``now``
        the window reaches up to ``now``: a silent stream's rate falls, and is 0 after
        :data:`SILENT_S` without a frame."""
        a = self._arrivals
        if len(a) < 2:
            return 0.0
        end = a[-1]
        if now is not None and now > end:
            if now - end >= SILENT_S:
                return 0.0
            if now - end > (end - a[0]) / (len(a) - 1):  # later than one mean interval
                end = now
        if end <= a[0]:
            return 0.0
        return (len(a) - 1) / (end - a[0])

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        return {
            "stream": self.name, "received": self.received, "bytes": self.bytes,
            "decode_errors": self.decode_errors, "dropped_source": self.dropped_source,
            "gaps": self.gaps, "lost": self.lost, "duplicates": self.duplicates,
            "reordered": self.reordered, "late": self.late, "restarts": self.restarts,
            "outliers": self.outliers, "dropped": dict(self.dropped_by),
            "rate_hz": round(self.rate(now), 3),
            "owd_mean_s": None if self.owd_n == 0 else self.owd_mean,
            "owd_max_s": self.owd_max,
        }
