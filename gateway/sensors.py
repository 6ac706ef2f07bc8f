"""The sensor board, sans-IO: the latest value of every sensor channel, aged into snapshots.

Edge sensors report when they like (report-by-exception, 1-60 s), late, out of order,
sometimes twice; the estimator wants one value per channel per snapshot. The board keeps
the latest reading of each sensor channel and, when the pipeline publishes a snapshot,
writes it into the snapshot's sensor channels (:meth:`SensorBoard.fill`) with what its
age means:

* **Age** is measured on the gateway's clock, from the reading's reception to the
  snapshot's arrival time: devices' clocks are skewed (seconds to minutes), so their
  timestamps only *order* readings (an older reading arriving late never replaces a newer
  one) and give each device's clock offset (reception minus device time), which the
  device registry shows.
* **Sigma grows with age**: between reports the true value wanders. Modelled as a random
  walk with diffusion ``D`` (unit²/s), the error of a value ``a`` seconds old has variance
  ``σ0² + D·a``, i.e. ``σ(a) = σ0·sqrt(1 + a/τ)`` with ``τ = σ0²/D``: ``σ0`` is the
  channel's stated accuracy at that value and ``D`` is estimated from the channel's own
  successive readings, ``E[(Δv)²] = D·Δt + 2σ0²``, smoothed exponentially (weight
  :data:`ALPHA`), starting from ``D = σ0²/period`` (the value is assumed to move by about
  one sigma per reporting period until the data says otherwise).
* **STALE** past the sensor's ``stale_s``, or once its device announced its death
  (Sparkplug NDEATH/DDEATH: :meth:`SensorBoard.offline`) until it reports again: the
  value is used, flagged STALE.
* **Left out** past ``max_age_s`` (or never reported): NaN and MISSING, so neither the
  quality stage nor the estimator uses it.

:meth:`SensorBoard.sigmas` gives every channel's sigma at a given time (``GET /devices``
and the evaluation read it; the fill itself, on the pipeline's hot path, only writes
values and flags, vectorised). The estimator weighs a value by its channel's configured
accuracy, a STALE one with its sigma times ``STALE_SIGMA_FACTOR``
(:mod:`gateway.estimator_worker`), and leaves out what is past the hard limit: the age
reaches the estimate in these steps, which keep the constant-gain estimator's
factorizations few.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from gateway.sensors_config import SensorSpec
from gateway.snapshot import Flag

ALPHA = 0.1  # weight of a new increment in the diffusion estimate
_STALE = np.uint32(Flag.STALE)
_MISSING = np.uint32(Flag.MISSING)
_KEEP = np.uint32(~(Flag.STALE | Flag.MISSING) & 0xFFFFFFFF)
_ZERO = np.uint32(0)


@dataclass(slots=True)
class ChannelState:
    """One sensor channel: its latest reading and what is known of its variability."""

    index: int
    sensor: str
    metric: str
    stale_s: float
    max_age_s: float
    sigma_at: Callable[[float], float]
    diffusion: float = math.nan  # D, unit²/s (NaN until the first reading)
    value: float = math.nan
    device_time: float = -math.inf  # the device's timestamp of ``value``
    received: float = -math.inf  # the gateway's clock when ``value`` arrived
    updates: int = 0
    older: int = 0  # readings older than the one held (out of order), not used
    period_s: float = 60.0
    device: str = ""
    dead: bool = False  # the device announced its death; cleared by its next reading
    k: int = 0  # position in the board's arrays

    def sigma(self, age: float) -> float:
        """σ(age) = sqrt(σ0² + D·age) (see the module docstring)."""
        s0 = self.sigma_at(self.value)
        d = self.diffusion if math.isfinite(self.diffusion) else s0 * s0 / self.period_s
        return math.sqrt(s0 * s0 + d * max(age, 0.0))

    @property
    def tau(self) -> float:
        """τ = σ0²/D: the age at which sigma has grown by sqrt(2)."""
        s0 = self.sigma_at(self.value)
        return s0 * s0 / self.diffusion if self.diffusion > 0 else math.inf


@dataclass(slots=True)
class FillStats:
    filled: int = 0
    stale: int = 0
    missing: int = 0


class SensorBoard:
    """Latest values of the sensor channels; :meth:`fill` puts them into a snapshot."""

    def __init__(self) -> None:
        self.channels: dict[tuple[str, str], ChannelState] = {}
        self.last_fill = FillStats()
        self._arrays(0)

    def _arrays(self, n: int) -> None:
        """The hot-path mirror of the channel states (what :meth:`fill` reads)."""
        self._idx = np.zeros(n, np.intp)
        self._val = np.full(n, np.nan)
        self._recv = np.full(n, -np.inf)
        self._stale_s = np.zeros(n)
        self._max_age_s = np.zeros(n)
        self._dead = np.zeros(n, bool)

    @classmethod
    def build(cls, specs: Iterable[SensorSpec], channel_index: dict[str, int],
              sigma_at: dict[int, Callable[[float], float]]) -> SensorBoard:
        """A board for ``specs``; ``sigma_at[i]``: channel ``i``'s accuracy at a value."""
        b = cls()
        for s in specs:
            for metric, ch in s.channels.items():
                i = channel_index[ch]
                b.channels[(s.device, metric)] = ChannelState(
                    i, s.id, metric, s.stale_s, s.max_age_s, sigma_at[i], period_s=s.period_s,
                    device=s.device, k=len(b.channels))
        b._arrays(len(b.channels))
        for c in b.channels.values():
            b._idx[c.k], b._stale_s[c.k], b._max_age_s[c.k] = c.index, c.stale_s, c.max_age_s
        return b

    def update(self, device: str, metric: str, value: float, device_time: float,
               received: float) -> str:
        """One reading; ``"new"``, ``"older"`` (out of order: not used), ``"same"``
        (same timestamp again: a duplicate) or ``"unmapped"`` (no channel for it)."""
        ch = self.channels.get((device, metric))
        if ch is None:
            return "unmapped"
        if device_time < ch.device_time:
            ch.older += 1
            return "older"
        if device_time == ch.device_time:
            return "same"
        if ch.updates:
            self._learn(ch, value, device_time)
        ch.value, ch.device_time, ch.received = value, device_time, received
        ch.updates += 1
        ch.dead = False
        k = ch.k
        self._val[k], self._recv[k], self._dead[k] = value, received, False
        return "new"

    def offline(self, device: str) -> int:
        """``device`` (and, for an edge node, its devices) died: its values are STALE
        from now until it reports again. How many channels that concerns."""
        n = 0
        for ch in self.channels.values():
            if ch.device == device or ch.device.startswith(device + "/"):
                ch.dead = True
                self._dead[ch.k] = True
                n += 1
        return n

    @staticmethod
    def _learn(ch: ChannelState, value: float, device_time: float) -> None:
        """Update the diffusion estimate from one increment (E[Δv²] = D·Δt + 2σ0²)."""
        dt = device_time - ch.device_time
        if not (dt > 0 and math.isfinite(ch.value)):
            return
        s0 = ch.sigma_at(value)
        d = max((value - ch.value) ** 2 - 2 * s0 * s0, 0.0) / dt
        prior = ch.diffusion if math.isfinite(ch.diffusion) else s0 * s0 / ch.period_s
        ch.diffusion = (1 - ALPHA) * prior + ALPHA * d

    def fill(self, values: np.ndarray, flags: np.ndarray, now: float) -> FillStats:
        """Write every sensor channel into a snapshot arriving at ``now`` (in place)."""
        idx = self._idx
        age = now - self._recv
        missing = ~np.isfinite(self._val) | (age > self._max_age_s)
        stale = ~missing & ((age > self._stale_s) | self._dead)
        values[idx] = np.where(missing, np.nan, self._val)
        flags[idx] = ((flags[idx] & _KEEP) | np.where(missing, _MISSING, _ZERO)
                      | np.where(stale, _STALE, _ZERO))
        n_miss, n_stale = int(missing.sum()), int(stale.sum())
        st = FillStats(idx.size - n_miss, n_stale, n_miss)
        self.last_fill = st
        return st

    def sigmas(self, now: float) -> np.ndarray:
        """σ(age) of every channel at ``now``, in board order (NaN: left out)."""
        out = np.full(len(self.channels), np.nan)
        for ch in self.channels.values():
            age = now - ch.received
            if math.isfinite(ch.value) and age <= ch.max_age_s:
                out[ch.k] = ch.sigma(age)
        return out

    def ages(self, now: float) -> dict[str, float]:
        """Age (s) of each sensor's newest channel value at ``now`` (inf: never)."""
        out: dict[str, float] = {}
        for ch in self.channels.values():
            a = now - ch.received
            out[ch.sensor] = min(out.get(ch.sensor, math.inf), a)
        return out

    def channel_info(self, now: float) -> list[dict[str, object]]:
        """Per channel: sensor, metric, value, age, sigma now, tau (for ``/devices``)."""
        out: list[dict[str, object]] = []
        for ch in self.channels.values():
            age = now - ch.received
            live = math.isfinite(ch.value) and age <= ch.max_age_s
            out.append({"sensor": ch.sensor, "metric": ch.metric, "channel": ch.index,
                        "value": ch.value if live else None,
                        "age_s": age if math.isfinite(age) else None,
                        "sigma": ch.sigma(age) if live else None,
                        "tau_s": ch.tau if math.isfinite(ch.tau) else None,
                        "stale": bool(live and (age > ch.stale_s or ch.dead)),
                        "updates": ch.updates,
                        "out_of_order": ch.older})
        return out
