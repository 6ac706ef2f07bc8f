"""Compiled per-snapshot kernels of the linear SE (numba), with the arithmetic of the
NumPy code they replace.

Why: on IEEE33 a solve is a few hundred floating-point operations spread over about a
hundred NumPy calls, so the interpreter and NumPy's per-call overhead (about 1 µs each)
were most of its time. Each kernel here runs one of those sequences in one call. The
products stay BLAS ``dgemv`` calls (``np.dot``), the small PV solve LAPACK ``dgesv``,
and the order of every elementwise step is the NumPy code's, so the answers are those
of the NumPy path to rounding (``tests/test_linear_fast.py`` holds them to a frozen copy
of the estimator before these kernels).

Compiled once per machine (``cache=True``: the machine code is kept beside this module
and loaded in milliseconds afterwards); imported only when a dense factorization is
first solved, so nothing here slows the import of :mod:`estimator.linear`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True)
def converged(dv: float, dv_prev: float, tol: float) -> bool:
    """:func:`estimator.linear._converged` (see there)."""
    return dv < tol or (2.0 * dv < dv_prev and dv * dv < tol * (dv_prev - dv))


@njit(cache=True)
def snapshot(z, ph01, pw01, sign, opb, s_conj):  # type: ignore[no-untyped-def]
    """``b = opb @ z_ph`` (``z_ph = m e^{ja}`` of the phasor slots, interleaved) and the
    power slots' ``conj(S)`` into ``s_conj`` (interleaved real view)."""
    nph = ph01.size // 2
    zph = np.empty(2 * nph)
    for i in range(nph):
        m = z[ph01[2 * i]]
        a = z[ph01[2 * i + 1]]
        zph[2 * i] = m * math.cos(a)
        zph[2 * i + 1] = m * math.sin(a)
    for i in range(pw01.size):
        s_conj[i] = z[pw01[i]] * sign[i]
    return np.dot(opb, zph)


@njit(cache=True)
def pv_correct(v, yp, x, pv, m1, m2, er):  # type: ignore[no-untyped-def]
    """:meth:`estimator.linear._DenseStep._pv`: ``Q = 0`` at the PV nodes (``x`` in
    place); ``v`` complex previous iterate, ``yp`` complex ``R0 x``."""
    p = pv.size
    u = np.empty(p, np.complex128)
    for j in range(p):
        uj = v[pv[j]]
        u[j] = uj / abs(uj)
    t = np.empty(p)
    s = np.empty((p, p))
    for j in range(p):
        ubj = u[j].conjugate()
        t[j] = (ubj * yp[j]).imag
        for col in range(p):
            s[j, col] = (ubj * (m2[j, col] * u[col] - m1[j, col] * u[col].conjugate())).real
    mu = np.linalg.solve(s, t)
    d = np.empty(2 * p)
    for j in range(p):
        c = 2j * u[j] * mu[j]
        d[2 * j] = c.real
        d[2 * j + 1] = c.imag
    x -= np.dot(er, d)


@njit(cache=True)
def dense_run(opw, b, s_conj, vb, w, k, n2, newton, pv, m1, m2, er,
              tol, itmax):  # type: ignore[no-untyped-def]
    """:meth:`estimator.linear._DenseStep.run`'s loop: ``w = [z_pw; x]`` (float, the
    state interleaved in ``w[k:]``, updated in place). Returns ``(iterations, dv,
    converged)``."""
    npw = k // 2
    npv = pv.size
    dv = np.inf
    dv_prev = 0.0
    yp = np.empty(npv, np.complex128)
    vprev = np.empty(n2 // 2, np.complex128)
    for it in range(1, itmax + 1):
        for i in range(n2 // 2):
            vprev[i] = complex(w[k + 2 * i], w[k + 2 * i + 1])
        for i in range(npw):
            c = s_conj[i] / vprev[vb[i]].conjugate()
            w[2 * i] = c.real
            w[2 * i + 1] = c.imag
        y = np.dot(opw, w)
        y += b
        x = y[:n2]
        if npv:
            for j in range(npv):
                yp[j] = complex(y[n2 + 2 * j], y[n2 + 2 * j + 1])
            pv_correct(vprev, yp, x, pv, m1, m2, er)
        x -= w[k:]
        step = np.dot(newton, x)
        dv = 0.0  # the largest component's change (np.abs(step).max())
        for i in range(n2):
            a = abs(step[i])
            if a > dv:
                dv = a
        w[k:] += step
        if converged(dv, dv_prev, tol):
            return it, dv, True
        dv_prev = dv
    return itmax, dv, False


@njit(cache=True)
def slot_drift(sig, z, act, pm, inv_nom, nom_pm, i0, i1, cw, wa, wdet, nom_ph, tol,
               tol_sum, masked):  # type: ignore[no-untyped-def]
    """The per-slot test of rule (b) (:meth:`estimator.linear.LinearStateEstimator.
    _slots_drifted`): ``(bad, hit, any)``, the power members and the phasor slots whose
    covariance at ``z`` is off the gain's; ``masked``: only active members with nominal
    values count."""
    bad = np.empty(pm.size, np.bool_)
    found = False
    for i in range(pm.size):
        r = sig[pm[i]] * inv_nom[i]
        r *= r
        b = (r + 1.0 / r) > tol_sum
        if masked:
            b = b and act[pm[i]] and nom_pm[i]
        bad[i] = b
        found = found or b
    nph = i0.size
    hit = np.empty(nph, np.bool_)
    for i in range(nph):
        sm = sig[i0[i]]
        vd = sm * sm
        vp = z[i0[i]] * sig[i1[i]]
        vp *= vp
        vp = max(vp, 0.01 * vd)
        a = -2.0 * z[i1[i]]
        k = cw[i].real * math.cos(a) - cw[i].imag * math.sin(a)
        tr = vd * (wa[i] + k) + vp * (wa[i] - k)
        half = 0.5 * tr
        disc = math.sqrt(max(half * half - wdet[i] * vd * vp, 0.0))
        h = ((half + disc) > tol) or ((half - disc) * tol < 1.0)
        if masked:
            h = h and act[i0[i]] and act[i1[i]] and nom_ph[i]
        hit[i] = h
        found = found or h
    return bad, hit, found


@njit(cache=True)
def drift_shift(z, idx, rel, floor, inv_nom, nom_above):  # type: ignore[no-untyped-def]
    """Rule (a)'s median log-ratio of the sigmas at ``z`` to those at the nominal values
    (:meth:`estimator.linear.LinearStateEstimator._drifted`); ``(shift, any used)``."""
    lr = np.empty(idx.size)
    n = 0
    for i in range(idx.size):
        s_now = max(rel[i] * abs(z[idx[i]]), floor[i])
        if np.isnan(s_now):
            s_now = floor[i]
        if nom_above[i] or s_now > floor[i]:
            lr[n] = math.log(s_now * inv_nom[i])
            n += 1
    if n == 0:
        return 0.0, False
    srt = np.sort(lr[:n])
    k = n // 2
    if n % 2 == 0:
        return 0.5 * (srt[k - 1] + srt[k]), True
    return srt[k], True


@njit(cache=True)
def residual(z, v, a, slot_mag, g_mag, slot_ang, g_ang, pvbus, pslots, pq_pick,
             g_pow):  # type: ignore[no-untyped-def]
    """``z - h(v)`` (:meth:`estimator.measurement.MeasurementModel.residual` without the
    angle re-wrapping, which the caller does when needed) for a dense ``A``."""
    x = np.dot(a, v)
    out = np.empty(z.size)
    for i in range(g_mag.size):
        out[g_mag[i]] = z[g_mag[i]] - abs(x[slot_mag[i]])
    for i in range(g_ang.size):
        xa = x[slot_ang[i]]
        out[g_ang[i]] = z[g_ang[i]] - math.atan2(xa.imag, xa.real)
    s = np.empty(2 * pslots.size)
    for i in range(pslots.size):
        c = v[pvbus[i]] * x[pslots[i]].conjugate()
        s[2 * i] = c.real
        s[2 * i + 1] = c.imag
    for i in range(g_pow.size):
        out[g_pow[i]] = z[g_pow[i]] - s[pq_pick[i]]
    return out
