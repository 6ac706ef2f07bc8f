"""Per-stream statistics, VILLASnode-style (its ``stats`` hook), sans-IO.

For every frame the gateway calls :meth:`StreamStats.frame` with the header sequence
number (None without a header), the source timestamp (None without one), the arrival
time and the size. The classification follows VILLASnode:

* ``gaps``: sequence numbers skipped when the sequence jumps forward by more than one
  (each missing number counts once; a frame arriving later for it is counted
  ``reordered`` and no longer ``lost``);
* ``duplicates``: a sequence number seen before (within the last :data:`WINDOW`);
* ``reordered``: older than the newest seen but not seen before;
* ``late``: set by the aligner, the frame missed its snapshot;
* one-way delay = arrival - source timestamp (meaningful when both clocks are
  synchronised, e.g. the emulator on the same host, or PTP/IRIG-B at the RTDS);
* rate: frames per second over a sliding window of :data:`RATE_WINDOW` arrivals.

Sequence numbers are 32-bit and wrap (the VILLASnode header word is unsigned).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

WINDOW = 1024  # a power of two
RATE_WINDOW = 64
SEQ_MOD = 1 << 32


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
    # seq -> slot seq & (WINDOW-1): a seen-before test in O(1) without a set
    _ring: list[int] = field(default_factory=lambda: [-1] * WINDOW, repr=False)
    _arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=RATE_WINDOW),
                                    repr=False)

    def frame(self, seq: int | None, ts: float | None, now: float, size: int = 0) -> str:
        """Account one decoded frame; return its class: ok, gap, duplicate or reordered."""
        self.received += 1
        self.bytes += size
        self.last_arrival = now
        self._arrivals.append(now)
        if ts is not None and ts > 0:
            owd = now - ts
            self.owd_last = owd
            self.owd_sum += owd
            self.owd_n += 1
            if owd > self.owd_max:
                self.owd_max = owd
        if seq is None:
            return "ok"
        kind = "ok"
        ring = self._ring
        last = self.last_seq
        if last is None or seq == (last + 1) & 0xFFFFFFFF:
            self.last_seq = seq
        else:
            d = seq_diff(seq, last)
            if d > 0:
                if d > 1:
                    self.gaps += d - 1
                    kind = "gap"
                self.last_seq = seq
            elif d > -WINDOW and ring[seq & (WINDOW - 1)] == seq:
                self.duplicates += 1
                return "duplicate"
            else:
                self.reordered += 1
                kind = "reordered"
        ring[seq & (WINDOW - 1)] = seq
        return kind

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

    def rate(self) -> float:
        """Frames per second over the last arrivals (0 with fewer than two)."""
        a = self._arrivals
        if len(a) < 2 or a[-1] <= a[0]:
            return 0.0
        return (len(a) - 1) / (a[-1] - a[0])

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "stream": self.name, "received": self.received, "bytes": self.bytes,
            "decode_errors": self.decode_errors, "dropped_source": self.dropped_source,
            "gaps": self.gaps, "lost": self.lost, "duplicates": self.duplicates,
            "reordered": self.reordered, "late": self.late, "rate_hz": round(self.rate(), 3),
            "owd_mean_s": None if self.owd_n == 0 else self.owd_mean,  # type: ignore[dict-item]
            "owd_max_s": self.owd_max,
        }
