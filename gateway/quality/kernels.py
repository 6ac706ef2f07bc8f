"""Compiled per-snapshot kernels of the quality stage (numba), with the arithmetic of the
NumPy code they replace.

Why: for one IEEE33 snapshot the detector's step and the predictor's window preparation
are a few thousand floating-point operations spread over about sixty NumPy calls on
124-element arrays, so NumPy's per-call overhead (about 1 µs each, more when the call
comes between other work and its code is out of the caches) was most of their time.
Each kernel here runs one of those sequences as one loop over the channels.

Bit for bit: every element goes through the same IEEE operations in the same order as
in the NumPy code (no fast-math, so no fused multiply-adds or reassociation); the
minimum and maximum propagate NaN as ``np.minimum``/``np.maximum`` do. The window
preparation's two reductions (each window's sum and sum of squares: ``np.add.reduce``
and ``np.einsum``, about 25 µs of the ~30 µs it took) are summed in NumPy's orders:
pairwise for the sum, the two-lane SIMD order of NumPy's x86-64 build for the einsum.
That second order depends on how NumPy was built, so :func:`sums_match` checks both
against NumPy once per process; where they differ the stage keeps NumPy's reductions
(and :func:`normalise` for the rest). ``tests/test_quality_kernels.py`` holds the
kernels to the NumPy code they replace on traces with gross errors, gaps and ramps.

Compiled once per machine (``cache=True``: the machine code is kept beside this module);
:func:`warm` loads or compiles them, and the quality stage calls it when it is built, so
no snapshot pays a compilation.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

SQRT_PI_2 = math.sqrt(math.pi / 2.0)
BAD_CORRECTED = np.uint32(1 | 4)  # Flag.BAD | Flag.CORRECTED
MISSING = np.uint32(8)  # Flag.MISSING
MISSING_CORRECTED = np.uint32(8 | 4)  # Flag.MISSING | Flag.CORRECTED


@njit(cache=True, error_model="numpy", inline="always")
def _min(a: float, b: float) -> float:
    """``np.minimum`` of two floats (NaN if either is NaN)."""
    return a if (a != a or a <= b) else b  # a != a: a is NaN


@njit(cache=True, error_model="numpy", inline="always")
def _max(a: float, b: float) -> float:
    """``np.maximum`` of two floats (NaN if either is NaN)."""
    return a if (a != a or a >= b) else b  # a != a: a is NaN


@njit(cache=True, error_model="numpy")
def step_ready(x, missing, any_missing, pred, sigma_meas, scale, kappa,  # type: ignore[no-untyped-def]
               cap, threshold, run_length, run_agree, clip, alpha, m_abs, run, recent,
               tick, ring, out, flags, z):
    """:meth:`TemporalDetector.step` once every channel is ready (no rebase): the
    statistic, the flags, the ramp rule, the correction, the running spread and the
    rings, per channel in one pass. ``scale`` is only read when ``kappa`` is not 0;
    ``tick`` is the column of ``recent`` this snapshot's raw values go to. Writes the
    cleaned values, their flags and the statistic into ``out``, ``flags``, ``z``;
    updates ``m_abs``, ``run``, ``recent`` and ``ring`` in place. Returns whether any
    value was flagged BAD."""
    n, h = ring.shape
    use_cap = cap != np.inf
    use_kappa = kappa != 0.0
    keep = 1.0 - alpha
    any_bad = False
    for i in range(n):
        # sigma = max(min(sqrt(pi/2) m, cap sigma_meas), floor)
        sm = sigma_meas[i]
        sig = m_abs[i] * SQRT_PI_2
        if use_cap:
            sig = _min(sig, sm * cap)
        sig = _max(sig, _max(scale[i] * kappa, sm) if use_kappa else sm)
        xi = x[i]
        p = pred[i]
        d = xi - p
        ad = abs(d)
        zi = ad / sig
        miss = any_missing and missing[i]
        bad = zi > threshold and not miss  # NaN compares False
        recent[i, tick] = xi
        if bad:
            r = run[i] + 1
        elif miss:
            r = run[i]
        else:
            r = 0
        shift = False
        slope = 0.0
        if r >= run_length:
            # the ramp rule: the last 3 raw values, oldest -> newest, on a smooth trajectory
            r0 = recent[i, (tick + 1) % 3]
            r1 = recent[i, (tick + 2) % 3]
            r2 = recent[i, tick]
            curv = abs(r0 - 2.0 * r1 + r2)
            if curv <= run_agree * sig:  # NaN (a gap among them) -> False
                shift = True
                bad = False
                r = 0
                slope = (r2 - r0) / 2.0
        run[i] = r
        o = xi
        f = np.uint32(0)
        if bad:
            any_bad = True
            o = p
            f = BAD_CORRECTED
        if miss:
            if math.isfinite(p):
                o = p
                f = MISSING_CORRECTED
            else:
                o = np.nan
                f = MISSING
        out[i] = o
        flags[i] = f
        z[i] = np.nan if miss else zi
        # m <- (1 - a) m + a min(|d|, clip sigma) on accepted values
        if not bad and not miss:
            m_abs[i] = keep * m_abs[i] + alpha * _min(ad, sig * clip)
        if not any_missing or math.isfinite(o):
            for k in range(h - 1):
                ring[i, k] = ring[i, k + 1]
            ring[i, h - 1] = o
        if shift:  # restart the history on the new trajectory: x_{t-k} = x_t - k slope
            for k in range(h):
                ring[i, k] = o - float(h - 1 - k) * slope
    return any_bad


@njit(cache=True, error_model="numpy")
def normalise(dev, c, s, rel_k, abs_k, xn):  # type: ignore[no-untyped-def]
    """The rest of :meth:`QualityStage._prepare_next` once ``c`` holds the windows' means,
    ``dev`` the deviations from them and ``s`` their sums of squares:
    ``s = max(sqrt(s / n), max(rel |c|, abs) / k)``, ``xn = dev / s`` (float32)."""
    n, h = dev.shape
    inv = 1.0 / h
    for i in range(n):
        si = math.sqrt(s[i] * inv)
        fl = _max(abs(c[i]) * rel_k[i], abs_k[i])
        si = _max(si, fl)
        s[i] = si
        for k in range(h):
            xn[i, k, 0] = np.float32(dev[i, k] / si)


@njit(cache=True, error_model="numpy", inline="always")
def _row_sum(w, i):  # type: ignore[no-untyped-def]
    """``np.add.reduce`` of row ``i`` (NumPy's pairwise summation: eight running sums
    combined as a tree, the rest added one by one; fewer than 8 values in order)."""
    n = w.shape[1]
    if n < 8:
        res = 0.0
        for k in range(n):
            res += w[i, k]
        return 0.0 + res
    r0, r1, r2, r3 = w[i, 0], w[i, 1], w[i, 2], w[i, 3]
    r4, r5, r6, r7 = w[i, 4], w[i, 5], w[i, 6], w[i, 7]
    k = 8
    while k < n - n % 8:
        r0 += w[i, k]
        r1 += w[i, k + 1]
        r2 += w[i, k + 2]
        r3 += w[i, k + 3]
        r4 += w[i, k + 4]
        r5 += w[i, k + 5]
        r6 += w[i, k + 6]
        r7 += w[i, k + 7]
        k += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while k < n:
        res += w[i, k]
        k += 1
    return 0.0 + res


@njit(cache=True, error_model="numpy", inline="always")
def _row_sumsq(w, i):  # type: ignore[no-untyped-def]
    """``np.einsum("ij,ij->i", w, w)`` of row ``i`` as NumPy's x86-64 build computes it:
    two lanes (even and odd columns), blocks of eight columns accumulated from their
    last pair to their first, the rest pair by pair, then the lanes added."""
    n = w.shape[1]
    l0 = 0.0
    l1 = 0.0
    k = 0
    while n - k >= 8:
        for j in (6, 4, 2, 0):
            a, b = w[i, k + j], w[i, k + j + 1]
            l0 = a * a + l0
            l1 = b * b + l1
        k += 8
    while k < n:
        a = w[i, k]
        l0 = a * a + l0
        if k + 1 < n:
            b = w[i, k + 1]
            l1 = b * b + l1
        else:
            l1 = 0.0 + l1
        k += 2
    return 0.0 + (l0 + l1)


@njit(cache=True, error_model="numpy")
def sums(w, c, s):  # type: ignore[no-untyped-def]
    """``c = np.add.reduce(w, axis=1)``, ``s = np.einsum("ij,ij->i", w, w)`` as
    :func:`prepare` computes them (for :func:`sums_match`)."""
    for i in range(w.shape[0]):
        c[i] = _row_sum(w, i)
        s[i] = _row_sumsq(w, i)


@njit(cache=True, error_model="numpy")
def prepare(win, c, dev, s, rel_k, abs_k, xn):  # type: ignore[no-untyped-def]
    """:meth:`QualityStage._prepare_next` in one pass: ``c = mean(w)``, ``dev = w - c``,
    ``s`` its sum of squares (NumPy's summation orders, see :func:`sums_match`), then
    :func:`normalise`."""
    n, h = win.shape
    for i in range(n):
        ci = _row_sum(win, i) / h
        c[i] = ci
        for k in range(h):
            dev[i, k] = win[i, k] - ci
        s[i] = _row_sumsq(dev, i)
    normalise(dev, c, s, rel_k, abs_k, xn)


@njit(cache=True, error_model="numpy")
def mode(vals, tol, floor, centre, spread, grp):  # type: ignore[no-untyped-def]
    """:func:`gateway.quality.detector._mode` per row in one pass (the detector's warm-up:
    it had built three (n, h, h) arrays per snapshot): the first value with the most
    values within ``tol`` of it picks the group; its mean and spread (NumPy's pairwise
    sums, see :func:`sums_match`) go to ``centre`` and ``spread``. ``grp`` is (n, h)
    scratch."""
    n, h = vals.shape
    for i in range(n):
        t = tol[i]
        best, most = 0, -1
        for j in range(h):
            cnt = 0
            for k in range(h):
                if abs(vals[i, j] - vals[i, k]) <= t:  # NaN compares False
                    cnt += 1
            if cnt > most:
                best, most = j, cnt
        cnt = 0
        for k in range(h):
            if abs(vals[i, best] - vals[i, k]) <= t:
                grp[i, k] = vals[i, k]
                cnt += 1
            else:
                grp[i, k] = 0.0
        m = max(cnt, 1)
        ci = _row_sum(grp, i) / m
        for k in range(h):
            if abs(vals[i, best] - vals[i, k]) <= t:
                d = vals[i, k] - ci
                grp[i, k] = d * d
            else:
                grp[i, k] = 0.0
        var = _row_sum(grp, i) / m
        centre[i] = ci if cnt > 0 else np.nan
        spread[i] = _max(math.sqrt(var), floor[i])


_SUMS_MATCH: dict[int, bool] = {}


def sums_match(h: int) -> bool:
    """Whether :func:`prepare`'s sums are NumPy's bit for bit on this machine for windows
    of ``h`` values (checked once on 20000 random windows of mixed magnitudes). NumPy's
    einsum sums in the order of its build's SIMD width: where that is not the two-lane
    order reproduced here, the quality stage keeps NumPy's reductions."""
    if h not in _SUMS_MATCH:
        rng = np.random.default_rng(20261204)
        w = rng.normal(0.0, 1.0, (20000, h)) * 10.0 ** rng.integers(-4, 5, (20000, 1)) \
            + rng.choice([0.0, 1.0, -300.0], (20000, 1))
        c, s = np.empty(len(w)), np.empty(len(w))
        sums(w, c, s)
        _SUMS_MATCH[h] = bool(np.array_equal(c, np.add.reduce(w, axis=1))
                              and np.array_equal(s, np.einsum("ij,ij->i", w, w)))
    return _SUMS_MATCH[h]


@njit(cache=True, error_model="numpy")
def finish(s, yn, c, rel_k, abs_k, pred, sigma_meas):  # type: ignore[no-untyped-def]
    """:meth:`QualityStage._finish_next`: ``pred = s f + c`` (``yn`` float32, widened),
    ``sigma_meas = max(rel |pred|, abs) / k``."""
    for i in range(s.size):
        p = s[i] * np.float64(yn[i]) + c[i]
        pred[i] = p
        sigma_meas[i] = _max(abs(p) * rel_k[i], abs_k[i])


def warm() -> None:
    """Compile (or load from the cache) every kernel with the argument types the quality
    stage uses."""
    n, h = 2, 9
    f8 = np.ones(n)
    ring = np.ones((n, h))
    step_ready(f8.copy(), np.zeros(n, bool), False, f8.copy(), f8.copy(), f8.copy(), 0.0,
               7.0, 8.0, 2, 6.0, 3.0, 0.15, f8.copy(), np.zeros(n, np.int64),
               np.zeros((n, 3)), 0, ring, np.empty(n), np.empty(n, np.uint32),
               np.empty(n))
    normalise(ring.copy(), f8.copy(), f8.copy(), f8.copy(), f8.copy(),
              np.empty((n, h, 1), np.float32))
    prepare(ring, f8.copy(), ring.copy(), f8.copy(), f8.copy(), f8.copy(),
            np.empty((n, h, 1), np.float32))
    finish(f8.copy(), np.ones(n, np.float32), f8.copy(), f8.copy(), f8.copy(),
           np.empty(n), np.empty(n))
    mode(ring, f8.copy(), f8.copy(), np.empty(n), np.empty(n), ring.copy())
