"""Temporal-correlation bad-data detector (the DT paper's contribution, sec. 3/5.2).

numpy and the quality bits of :class:`gateway.snapshot.Flag`: the quality stage
(:mod:`gateway.quality.stage`) runs this per snapshot next to one batched ONNX Runtime call
of the measurement predictor, which is why it lives on the gateway side and not in
``models`` (whose run-time part imports nothing of the gateway).

The statistic
-------------
For channel j at step t, with the predictor's value x̂_j(t) computed from the previous
T-1 = 9 *cleaned* values of the same channel::

    d_j(t) = x_j(t) - x̂_j(t)                              # innovation, channel units
    σ_j(t) = max( min(sqrt(pi/2) m_j(t-1), 7 σ_meas,j), σ_meas,j )   # robust running spread
    z_j(t) = |d_j(t)| / σ_j(t)                             # the test statistic
    BAD  <=>  z_j(t) > k

``m_j`` is an exponentially weighted mean of |d| over values accepted as good, each
clipped at 3 σ before it enters (winsorised, Huber-style), so one undetected outlier
moves it by at most 3 α σ; ``sqrt(pi/2) m`` is the standard deviation for Gaussian
innovations (E|d| = σ sqrt(2/π)). ``α = 0.15`` (memory ~7 steps) and the cap at
7 σ_meas keep a cloud ramp's large innovations from inflating σ for long (with
α = 0.02 and no cap, gross errors right after a ramp were missed: 3.6 % missed at 15 %
bad data on a 700 s June trace; α and the cap were chosen on three 15 % traces —
1990-06-01 seed 7, 1990-09-10 seed 77, 1990-07-20 seed 78 — none of them the evaluation
trace). ``σ_meas`` is the channel's measurement standard deviation from the config's
accuracy class, so the statistic never falls below what the meter itself promises.

The threshold ``k`` is chosen on held-out *clean* data: the statistic is run over a
held-out calibration trace and ``k = max(4, 8 s_z)`` with ``s_z = median(z_clean) / 0.6745``
the robust (MAD) scale of the statistic (see :func:`choose_threshold`; the value and
``s_z`` are stored in the predictor's model card). If the spread is well calibrated
s_z ≈ 1 and k ≈ 8. Why not a tail quantile: the clean distribution is Gaussian in its
bulk (q_0.9 ≈ 1.7) but heavy-tailed from cloud ramps (q_0.999 ≈ 50 on the calibration
trace), so any high quantile measures the ramps, not the noise. On that trace k = 6, 8,
10 gave missed 0.14 / 0.18 / 0.93 % and false 0.83 / 0.52 / 0.36 % at 10 % bad data.
A gross error (20-50 % of the reading in the paper's setting) sits tens to thousands of
σ away.

Warm-up, missing values, level shifts
-------------------------------------
* Until a channel has T-1 values, the prediction is the mode of what it has (the mean
  of the largest group of values within 10 σ_meas of each other; unlike the median it
  survives a majority of gross errors) and the spread is that group's std (floored by
  σ_meas); nothing is flagged before 5 values. When the ring first fills, its values
  more than 10 σ_meas from the mode are replaced by it, so gross errors in the first
  seconds cannot poison the history.
* A missing value (NaN or MISSING on input) is filled with the prediction: MISSING|CORRECTED.
* A flagged value is replaced by the prediction: BAD|CORRECTED; the ring stores the
  replacement, never the bad value.
* If R = 2 consecutive values are flagged and, with the raw value before them, they form
  a smooth trajectory (second difference |r0 - 2 r1 + r2| within 6 σ: a step or a fast
  PV-cloud ramp, not independent gross errors), the grid itself moved: the newest value
  is accepted and the ring restarts on that trajectory, so the detector cannot lock onto
  a stale level.
* A new regime (:meth:`TemporalDetector.rebase`: the feeder was switched, so every flow
  may jump at once and stay there): the next snapshot is not tested; each channel's
  history is moved by that snapshot's innovation onto its new level (its shape kept), so
  the predictions continue from the new flows. Waiting for the level-shift rule instead
  replaced the jumped flows by predictions of the old ones on two snapshots, and both
  estimates were about 1 % off in |V|. The price: a gross error arriving on the very
  snapshot of the switching is accepted (and restarts its channel's history).
* A channel back after a gap longer than its predictions can follow (the quality stage
  counts the gap): the same re-basing for that channel alone, on its first value back.

Optional confirmation by the estimator (:func:`confirm_with_residuals`): values in a grey
zone ``k_low < z <= k`` are marked SUSPECT and promoted to BAD when the estimator's
normalized residual of that measurement also exceeds its threshold (3 by default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from gateway.snapshot import Flag

# the snapshot's quality bits as plain ints (IntFlag arithmetic is slow on the steady path)
BAD = int(Flag.BAD)
SUSPECT = int(Flag.SUSPECT)
CORRECTED = int(Flag.CORRECTED)
MISSING = int(Flag.MISSING)

SQRT_PI_2 = float(np.sqrt(np.pi / 2.0))


def compiled_kernels() -> ModuleType | None:
    """:mod:`gateway.quality.kernels`, or None (the NumPy paths: same numbers, slower)
    when ``GRIDTWIN_JIT`` is ``0``/``off``/``no``/``false`` or numba is not installed.

    Why: numba's compiled code lives in a writable+executable mapping, which a process
    hardened with systemd's ``MemoryDenyWriteExecute=yes`` may not create; the shipped
    units set ``GRIDTWIN_JIT=0`` (as for the estimator's kernels)."""
    if os.environ.get("GRIDTWIN_JIT", "1").strip().lower() in ("0", "off", "no", "false"):
        return None
    try:
        import gateway.quality.kernels as kernels  # the module, not the package
    except ImportError:
        return None
    return kernels


def choose_threshold(z_clean: np.ndarray, *, c: float = 8.0, k_min: float = 4.0
                     ) -> tuple[float, float]:
    """k = max(k_min, c * robust sigma of z on clean data); returns (k, robust sigma).

    The robust sigma of the (absolute) statistic is median(z) / 0.6745 (the MAD rule for
    |N(0, s)|); c = 8 puts the threshold far beyond the Gaussian bulk (two-sided tail
    probability ~1e-15), so what still crosses it on clean data is a genuine fast
    transient (a cloud ramp), which the ramp rule accepts after two steps.
    """
    z = np.asarray(z_clean, dtype=np.float64)
    z = z[np.isfinite(z)]
    if z.size == 0:
        return k_min, float("nan")
    s = float(np.median(z)) / 0.6745
    return max(k_min, c * s), s


@dataclass
class DetectorParams:
    threshold: float = 8.0
    alpha: float = 0.15
    clip: float = 3.0
    run_length: int = 2
    run_agree: float = 6.0
    min_warm: int = 5
    kappa: float = 0.0  # weight of the window's own spread in the sigma floor
    gross: float = 10.0  # warm-up: values this many sigma_meas apart are not one group
    cap: float = 7.0  # the running spread is capped at cap * sigma_meas


@dataclass
class StepResult:
    values: np.ndarray  # cleaned values
    flags: np.ndarray  # uint32 BAD/CORRECTED/MISSING bits
    z: np.ndarray  # statistic (NaN where not computed)
    pred: np.ndarray  # prediction used


@dataclass
class TemporalDetector:
    """Per-channel state: ring of the last T-1 cleaned values, spread, run counters."""

    n: int
    hist_len: int
    params: DetectorParams = field(default_factory=DetectorParams)

    def __post_init__(self) -> None:
        h = self.hist_len
        self.ring = np.zeros((self.n, h))  # chronological: column h-1 is the newest
        self.count = np.zeros(self.n, np.int64)
        self.m_abs = np.zeros(self.n)  # EW mean |d| of accepted innovations
        self.run = np.zeros(self.n, np.int64)
        self.recent = np.full((self.n, 3), np.nan)  # the last 3 raw values
        self._tick = 0
        self._shift_slope = np.zeros(0)
        self._all_ready = False  # latched: counts never decrease
        self._rebase = False  # the next step starts a new regime (rebase())
        #: the compiled kernels (None: the NumPy paths below, see compiled_kernels)
        self._kernels = compiled_kernels()
        n = self.n
        self._ad = np.empty(n)  # scratch of the NumPy steady-state path (no allocation)
        self._sig = np.empty(n)
        self._tmp = np.empty(n)
        self._bad = np.empty(n, bool)

    @property
    def ready(self) -> np.ndarray:
        return self.count >= self.hist_len

    def windows(self) -> np.ndarray:
        """(n, T-1) chronological windows (valid where ``ready``)."""
        return self.ring

    def _warm_prediction(self, sigma_meas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Robust centre and spread of the values so far (channels still warming up)."""
        h = self.hist_len
        cnt = np.minimum(self.count, h)
        mask = np.arange(h)[None, :] >= (h - cnt)[:, None]
        return self._mode(np.where(mask, self.ring, np.nan), self.params.gross * sigma_meas,
                          sigma_meas)

    def _mode(self, vals: np.ndarray, tol: np.ndarray, floor: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`_mode`, compiled where the kernels sum as NumPy does (same numbers)."""
        k = self._kernels
        if k is None or not k.sums_match(vals.shape[1]):
            return _mode(vals, tol, floor)
        centre, spread = np.empty(len(vals)), np.empty(len(vals))
        k.mode(np.ascontiguousarray(vals, np.float64), np.ascontiguousarray(tol, np.float64),
               np.ascontiguousarray(floor, np.float64), centre, spread, np.empty(vals.shape))
        return centre, spread

    def rebase(self) -> None:
        """The next snapshot starts a new regime (the feeder's topology changed): it is
        not tested, and every channel's history is re-based onto its value (see the
        module docstring)."""
        self._rebase = True

    def step(self, x: np.ndarray, missing: np.ndarray, pred_ready: np.ndarray,
             sigma_meas: np.ndarray, scale: np.ndarray | None = None,
             returning: np.ndarray | None = None) -> StepResult:
        """One snapshot. ``pred_ready`` is the network's prediction (used where ready).

        ``returning``: rows back after a gap longer than their predictions can follow
        (the caller counts it); each is re-based alone (:meth:`_rebase_rows`)."""
        if returning is not None and returning.size:
            returning = returning[self.count[returning] >= self.hist_len]  # warm: tested
            if returning.size:
                return self._rebase_rows(returning, x, missing, pred_ready, sigma_meas,
                                         scale)
        return self._step(x, missing, pred_ready, sigma_meas, scale)

    def _rebase_rows(self, rows: np.ndarray, x: np.ndarray, missing: np.ndarray,
                     pred: np.ndarray, sigma_meas: np.ndarray, scale: np.ndarray | None
                     ) -> StepResult:
        """:meth:`step`, except for ``rows``: a channel whose history is only its own
        fills, back on a level it was never measured at. Its first value back is taken
        (not tested) and its history moved onto it by the innovation, shape and running
        spread kept: what :meth:`rebase` does for every channel, for these alone.
        Testing it instead flagged a load that moved during a dropout for three
        snapshots (the ramp rule needs three raw values in a row)."""
        ring, m_abs = self.ring[rows].copy(), self.m_abs[rows].copy()
        res = self._step(x, missing, pred, sigma_meas, scale)
        back = x[rows]
        d = back - pred[rows]
        moved = np.isfinite(d)
        rows, back, d, ring, m_abs = rows[moved], back[moved], d[moved], ring[moved], m_abs[moved]
        self.ring[rows, :-1] = ring[:, 1:] + d[:, None]
        self.ring[rows, -1] = back
        self.m_abs[rows] = m_abs
        self.run[rows] = 0
        res.values[rows] = back
        res.flags[rows] = 0
        res.z[rows] = np.nan
        return res

    def _step(self, x: np.ndarray, missing: np.ndarray, pred_ready: np.ndarray,
              sigma_meas: np.ndarray, scale: np.ndarray | None) -> StepResult:
        """One snapshot, every channel tested (see :meth:`step`)."""
        if self._rebase:
            self._rebase = False
            return self._step_rebase(x, missing, pred_ready, sigma_meas)
        if not self._all_ready:
            self._all_ready = bool(self.ready.all())
        if self._all_ready:
            if self._kernels is not None:
                return self._step_ready(x, missing, pred_ready, sigma_meas, scale)
            if not missing.any():
                return self._step_steady(x, pred_ready, sigma_meas, scale)
        p = self.params
        ready = self.ready
        all_ready = bool(ready.all())
        floor = (sigma_meas if scale is None or p.kappa == 0.0
                 else np.maximum(sigma_meas, p.kappa * scale))
        spread = SQRT_PI_2 * self.m_abs
        if p.cap != np.inf:
            spread = np.minimum(spread, p.cap * sigma_meas)
        if all_ready:
            pred = pred_ready
            sigma = np.maximum(spread, floor)
            can_test = ready
        else:
            warm_pred, warm_spread = self._warm_prediction(sigma_meas)
            pred = np.where(ready, pred_ready, warm_pred)
            sigma = np.where(ready, np.maximum(spread, floor), warm_spread)
            can_test = ready | (self.count >= p.min_warm)
        d = x - pred
        with np.errstate(invalid="ignore"):
            z = np.abs(d) / sigma
            bad = z > p.threshold  # NaN (missing) compares False
        any_missing = bool(missing.any())
        if any_missing:
            bad &= ~missing
        if not all_ready:
            bad &= can_test

        shift_rows = self._level_shift(x, bad, missing, any_missing, sigma)
        out, flags = self._correct(x, pred, bad, missing, any_missing)
        # spread update on accepted values: m <- (1 - a) m + a min(|d|, clip sigma)
        acc = ~bad
        if any_missing:
            acc &= ~missing
        if not all_ready:
            acc &= ready
        with np.errstate(invalid="ignore"):
            upd = (1 - p.alpha) * self.m_abs + p.alpha * np.minimum(np.abs(d), p.clip * sigma)
        self.m_abs = np.where(acc, upd, self.m_abs)
        self._store(out, shift_rows, sigma_meas, all_ready=all_ready, any_missing=any_missing)
        if any_missing or not all_ready:
            z = np.where(~missing & can_test, z, np.nan)
        return StepResult(out, flags, z, pred)

    def _step_ready(self, x: np.ndarray, missing: np.ndarray, pred: np.ndarray,
                    sigma_meas: np.ndarray, scale: np.ndarray | None) -> StepResult:
        """:meth:`step` once every channel is ready (every snapshot after warm-up, with or
        without missing values): the same maths, operation for operation, in one compiled
        pass over the channels (:func:`gateway.quality.kernels.step_ready`)."""
        p = self.params
        n = self.n
        out = np.empty(n)
        flags = np.empty(n, np.uint32)
        z = np.empty(n)
        self._tick = tick = (self._tick + 1) % 3
        kappa = 0.0 if scale is None else p.kappa
        assert self._kernels is not None
        self._kernels.step_ready(
            x, missing, bool(np.logical_or.reduce(missing)), pred, sigma_meas,
            sigma_meas if scale is None else scale, kappa, p.cap, p.threshold,
            p.run_length, p.run_agree, p.clip, p.alpha, self.m_abs, self.run, self.recent,
            tick, self.ring, out, flags, z)
        return StepResult(out, flags, z, pred)

    def _step_rebase(self, x: np.ndarray, missing: np.ndarray, pred_ready: np.ndarray,
                     sigma_meas: np.ndarray) -> StepResult:
        """:meth:`step` on the first snapshot of a new regime: nothing is flagged (missing
        values are filled as usual), and each channel's history is moved by the
        snapshot's innovation ``x - x̂`` so that it ends on the new value with the shape
        it had; the running spread is kept (the jump is not noise)."""
        ready = self.ready
        all_ready = bool(ready.all())
        if all_ready:
            pred = pred_ready
        else:
            warm_pred, _ = self._warm_prediction(sigma_meas)
            pred = np.where(ready, pred_ready, warm_pred)
        any_missing = bool(missing.any())
        out, flags = self._correct(x, pred, np.zeros(self.n, bool), missing, any_missing)
        self._tick = (self._tick + 1) % 3
        self.recent[:, self._tick] = x
        self.run[:] = 0
        with np.errstate(invalid="ignore"):
            d = x - pred
        move = np.flatnonzero(~missing & np.isfinite(d) & (self.count > 0))
        self._store(out, np.zeros(0, np.int64), sigma_meas, all_ready=all_ready,
                    any_missing=any_missing)
        self.ring[move, :-1] += d[move, None]
        return StepResult(out, flags, np.full(self.n, np.nan), pred)

    def _level_shift(self, x: np.ndarray, bad: np.ndarray, missing: np.ndarray,
                     any_missing: bool, sigma: np.ndarray) -> np.ndarray:
        """R consecutive flags whose raw values agree: the grid moved. Clears their
        ``bad`` (in place) and returns the rows whose history restarts."""
        p = self.params
        self._tick = (self._tick + 1) % 3
        self.recent[:, self._tick] = x
        if any_missing:
            run = np.where(bad, self.run + 1, np.where(missing, self.run, 0))
        else:
            run = (self.run + 1) * bad
        cand = np.flatnonzero(run >= p.run_length)
        shift_rows = cand
        if cand.size:
            # the last 3 raw values, oldest -> newest (the run's R = 2 flagged values and
            # the accepted one before them): a smooth trajectory has a small second
            # difference |r0 - 2 r1 + r2|; independent gross errors do not
            order = (self._tick + 1 + np.arange(3)) % 3
            rec = self.recent[cand][:, order]
            curv = np.abs(rec[:, 0] - 2.0 * rec[:, 1] + rec[:, 2])
            with np.errstate(invalid="ignore"):
                ok = curv <= p.run_agree * sigma[cand]  # NaN (a gap among them) -> False
            shift_rows = cand[ok]
            bad[shift_rows] = False
            run[shift_rows] = 0
            self._shift_slope = (rec[ok, 2] - rec[ok, 0]) / 2.0
        self.run = run
        return shift_rows

    def _correct(self, x: np.ndarray, pred: np.ndarray, bad: np.ndarray,
                 missing: np.ndarray, any_missing: bool) -> tuple[np.ndarray, np.ndarray]:
        """Cleaned values and flags: BAD values replaced by the prediction, missing ones
        filled where a prediction exists."""
        out = x.copy()
        flags = np.zeros(self.n, np.uint32)
        if bad.any():
            out[bad] = pred[bad]
            flags[bad] = BAD | CORRECTED
        if any_missing:
            fill = missing & np.isfinite(pred)
            out[missing] = np.nan
            out[fill] = pred[fill]
            flags[missing] = MISSING
            flags[fill] = MISSING | CORRECTED
        return out, flags

    def _store(self, out: np.ndarray, shift_rows: np.ndarray, sigma_meas: np.ndarray, *,
               all_ready: bool, any_missing: bool) -> None:
        """Shift the cleaned values into the rings (channels with nothing to store keep
        theirs); restart the history of level-shifted channels on their trajectory."""
        h = self.hist_len
        if all_ready and not any_missing:
            self.ring[:, :-1] = self.ring[:, 1:]
            self.ring[:, -1] = out
        else:
            store = np.isfinite(out)
            newring = np.concatenate([self.ring[:, 1:], out[:, None]], axis=1)
            self.ring = np.where(store[:, None], newring, self.ring)
            before = self.count
            self.count = np.where(store, np.minimum(self.count + 1, h), self.count)
            if not all_ready:
                just_full = store & (before == h - 1)
                if just_full.any():
                    self._clean_ring(np.flatnonzero(just_full), sigma_meas)
        if shift_rows.size:
            # restart the history on the new trajectory: x_{t-k} = x_t - k * slope
            back = np.arange(h - 1, -1, -1)[None, :]
            self.ring[shift_rows] = (out[shift_rows, None]
                                     - back * self._shift_slope[:, None])

    def _step_steady(self, x: np.ndarray, pred: np.ndarray, sigma_meas: np.ndarray,
                     scale: np.ndarray | None) -> StepResult:
        """:meth:`step` when every channel is ready and none is missing (every snapshot
        after warm-up on a healthy feed): the same maths, operation for operation, on
        preallocated scratch arrays and with no masks for missing or warming channels."""
        p = self.params
        sig = self._sig
        ad = self._ad
        tmp = self._tmp
        bad = self._bad
        # sigma = max(min(sqrt(pi/2) m, cap sigma_meas), floor)
        np.multiply(self.m_abs, SQRT_PI_2, out=sig)
        if p.cap != np.inf:
            np.multiply(sigma_meas, p.cap, out=tmp)
            np.minimum(sig, tmp, out=sig)
        if scale is None or p.kappa == 0.0:
            np.maximum(sig, sigma_meas, out=sig)
        else:
            np.multiply(scale, p.kappa, out=tmp)
            np.maximum(tmp, sigma_meas, out=tmp)
            np.maximum(sig, tmp, out=sig)
        # d = x - x̂;  z = |d| / sigma;  BAD <=> z > k
        d = x - pred
        np.abs(d, out=ad)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = ad / sig
        np.greater(z, p.threshold, out=bad)
        any_bad = bool(bad.any())

        self._tick = (self._tick + 1) % 3
        self.recent[:, self._tick] = x
        # run = (run + 1) * bad
        run = self.run
        np.add(run, 1, out=run)
        np.multiply(run, bad, out=run)
        out = x.copy()
        flags = np.zeros(self.n, np.uint32)
        shift_rows: np.ndarray | None = None
        if any_bad:
            cand = np.flatnonzero(run >= p.run_length)
            if cand.size:  # the ramp rule, as in step()
                order = (self._tick + 1 + np.arange(3)) % 3
                rec = self.recent[cand][:, order]
                curv = np.abs(rec[:, 0] - 2.0 * rec[:, 1] + rec[:, 2])
                with np.errstate(invalid="ignore"):
                    ok = curv <= p.run_agree * sig[cand]
                shift_rows = cand[ok]
                bad[shift_rows] = False
                run[shift_rows] = 0
                self._shift_slope = (rec[ok, 2] - rec[ok, 0]) / 2.0
            np.copyto(out, pred, where=bad)
            flags[bad] = BAD | CORRECTED
        # m <- (1 - a) m + a min(|d|, clip sigma) on accepted values
        np.multiply(sig, p.clip, out=tmp)
        np.minimum(ad, tmp, out=tmp)
        tmp *= p.alpha
        upd = (1 - p.alpha) * self.m_abs
        upd += tmp
        if any_bad:
            np.logical_not(bad, out=bad)
            np.copyto(self.m_abs, upd, where=bad)
        else:
            self.m_abs = upd
        ring = self.ring
        ring[:, :-1] = ring[:, 1:]
        ring[:, -1] = out
        if shift_rows is not None and shift_rows.size:
            back = np.arange(self.hist_len - 1, -1, -1)[None, :]
            ring[shift_rows] = out[shift_rows, None] - back * self._shift_slope[:, None]
        return StepResult(out, flags, z, pred)

    def _clean_ring(self, rows: np.ndarray, sigma_meas: np.ndarray) -> None:
        """First fill: values more than ``gross`` sigma from the ring's mode (see
        :func:`_mode`) are replaced by it; the spread starts at the ring's robust noise
        level (MAD of first differences)."""
        r = self.ring[rows]
        tol = self.params.gross * sigma_meas[rows]
        centre, _ = self._mode(r, tol, sigma_meas[rows])
        self.ring[rows] = np.where(np.abs(r - centre[:, None]) > tol[:, None],
                                   centre[:, None], r)
        diffs = np.diff(self.ring[rows], axis=1)
        noise = 1.4826 * np.median(np.abs(diffs - np.median(diffs, axis=1)[:, None]), axis=1)
        # E|d| of an innovation with std noise/sqrt(2) per sample difference
        self.m_abs[rows] = np.maximum(noise / np.sqrt(2.0), sigma_meas[rows]) / SQRT_PI_2


def _mode(vals: np.ndarray, tol: np.ndarray, floor: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """Robust centre of each row: the mean of the largest group of values within ``tol``
    of one of them (a mode; unlike the median it survives a majority of gross errors as
    long as the clean values agree with each other), and that group's spread (>= floor).
    NaN entries are ignored."""
    near = np.abs(vals[:, :, None] - vals[:, None, :]) <= tol[:, None, None]
    best = near.sum(axis=2).argmax(axis=1)
    group = near[np.arange(vals.shape[0]), best]
    n = np.maximum(group.sum(axis=1), 1)
    v0 = np.where(group, vals, 0.0)
    centre = v0.sum(axis=1) / n
    var = np.where(group, (vals - centre[:, None]) ** 2, 0.0).sum(axis=1) / n
    centre = np.where(group.any(axis=1), centre, np.nan)
    return centre, np.maximum(np.sqrt(var), floor)


def confirm_with_residuals(flags: np.ndarray, z: np.ndarray, rn: np.ndarray, *,
                           k_low: float, rn_threshold: float = 3.0) -> np.ndarray:
    """Grey-zone confirmation by the estimator's normalized residuals ``rn``.

    ``k_low < z <= k`` (not already BAD) -> SUSPECT; SUSPECT and |rn| > rn_threshold -> BAD.
    Returns new flags (the caller re-runs the estimator without the newly BAD values).
    """
    out = flags.astype(np.uint32).copy()
    grey = (z > k_low) & ((out & BAD) == 0)
    out[grey] |= SUSPECT
    confirm = grey & (np.abs(rn) > rn_threshold)
    out[confirm] |= BAD
    return out
