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
