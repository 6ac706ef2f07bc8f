"""Compiled per-snapshot kernels of the linear SE (numba), with the arithmetic of the
NumPy code they replace.

Why: on IEEE33 a solve is a few hundred floating-point operations spread over about a
hundred NumPy calls, so the interpreter and NumPy's per-call overhead (about 1 µs each)
were most of its time. Each kernel here runs one of those sequences in one call. The
matrices are the NumPy path's own (built by the same code), the small PV solve is
LAPACK ``dgesv``, the order of every elementwise step is the NumPy code's, and the
matrix-vector products differ from BLAS's only in the order of their sums, so the
answers are those of the NumPy path to rounding (``tests/test_linear_fast.py`` holds them
to a frozen copy of the estimator before these kernels).

Compiled once per machine (``cache=True``: the machine code is kept beside this module
and loaded in milliseconds afterwards); imported only when a dense factorization is
first solved, so nothing here slows the import of :mod:`estimator.linear`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, fastmath={"reassoc", "contract"})
def matvec(a, x):  # type: ignore[no-untyped-def]
    """``a @ x`` (dense, C order), vectorised by the compiler: reordering a dot product's
    sum only moves the last bit, and at these sizes (tens to a few hundred) a BLAS call
    costs more in its set-up and, on a busy machine, in its threads' hand-offs (SciPy's
    OpenBLAS, which numba's ``np.dot`` calls, is threaded) than in arithmetic."""
    out = np.empty(a.shape[0], x.dtype)
    for i in range(a.shape[0]):
        acc = x.dtype.type(0)
        for j in range(a.shape[1]):
            acc += a[i, j] * x[j]
        out[i] = acc
    return out


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
    return matvec(opb, zph)


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
    x -= matvec(er, d)


@njit(cache=True)
def solve_small(s, t):  # type: ignore[no-untyped-def]
    """``t := s^-1 t`` in place (``s`` overwritten): Gaussian elimination with partial
    pivoting, as LAPACK ``dgesv`` does it, without its call and copies (a few PV nodes:
    the system is 4 x 4 on IEEE33, solved per row and iteration)."""
    p = t.size
    for c in range(p):
        piv = c
        big = abs(s[c, c])
        for i in range(c + 1, p):
            if abs(s[i, c]) > big:
                big = abs(s[i, c])
                piv = i
        if piv != c:
            for j in range(p):
                s[c, j], s[piv, j] = s[piv, j], s[c, j]
            t[c], t[piv] = t[piv], t[c]
        inv = 1.0 / s[c, c]
        for i in range(c + 1, p):
            f = s[i, c] * inv
            if f != 0.0:
                for j in range(c + 1, p):
                    s[i, j] -= f * s[c, j]
                t[i] -= f * t[c]
    for c in range(p - 1, -1, -1):
        acc = t[c]
        for j in range(c + 1, p):
            acc -= s[c, j] * t[j]
        t[c] = acc / s[c, c]


@njit(cache=True)
def pv_correct_row(xr, yr, n2, pv, m1, m2, er_t, u, t, s, d):  # type: ignore[no-untyped-def]
    """:func:`pv_correct` for one row of the batch: ``xr`` the previous iterate
    (interleaved), ``yr = [x; R0 x]`` before the correction (its first ``n2`` entries
    corrected in place); ``er_t = (E R0^T)^T`` (C order); ``u, t, s, d`` work space."""
    p = pv.size
    for j in range(p):
        ur, ui = xr[2 * pv[j]], xr[2 * pv[j] + 1]
        a = 1.0 / math.sqrt(ur * ur + ui * ui)
        u[j] = complex(ur * a, ui * a)
    for j in range(p):
        ubj = u[j].conjugate()
        t[j] = (ubj * complex(yr[n2 + 2 * j], yr[n2 + 2 * j + 1])).imag
        for col in range(p):
            s[j, col] = (ubj * (m2[j, col] * u[col] - m1[j, col] * u[col].conjugate())).real
    solve_small(s, t)
    for j in range(p):
        c = 2j * u[j] * t[j]
        d[2 * j] = c.real
        d[2 * j + 1] = c.imag
    # yr -= E R0^T d, column by column of er_t = (E R0^T)^T (contiguous inner loops)
    for j in range(2 * p):
        dj = d[j]
        for i in range(n2):
            yr[i] -= er_t[j, i] * dj


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
        y = matvec(opw, w)
        y += b
        x = y[:n2]
        if npv:
            for j in range(npv):
                yp[j] = complex(y[n2 + 2 * j], y[n2 + 2 * j + 1])
            pv_correct(vprev, yp, x, pv, m1, m2, er)
        x -= w[k:]
        step = matvec(newton, x)
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
    x = matvec(a, v)
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


@njit(cache=True)
def dense_rows(x, z, opw_t, opb_t, ph01, pw01, sign, vb, k, n2, newton_t, pv, m1, m2,
               er_t, tol, itmax):  # type: ignore[no-untyped-def]
    """:meth:`estimator.linear._DenseStep.run_rows`: :func:`dense_run` on every row of
    ``x`` (interleaved start states, overwritten by the answers) for the rows of ``z``,
    the rows still iterating stacked so that each iteration's two products are one
    matrix-matrix product each (``W opw^T``, ``D T^T``; ``opw_t``, ``opb_t``,
    ``newton_t`` the transposed operators, C order) instead of one matrix-vector product
    per row: the operators are read once per iteration for all rows, and BLAS-3 runs
    at several times the speed of a matrix-vector loop. Per row the arithmetic is
    :func:`dense_run`'s (the sums' order aside). Returns ``(iterations, converged)``."""
    nb = x.shape[0]
    nph = ph01.size // 2
    npw = k // 2
    npv = pv.size
    zph = np.empty((nb, 2 * nph))
    sc = np.empty((nb, npw), np.complex128)
    for r in range(nb):
        for i in range(nph):
            m = z[r, ph01[2 * i]]
            a = z[r, ph01[2 * i + 1]]
            zph[r, 2 * i] = m * math.cos(a)
            zph[r, 2 * i + 1] = m * math.sin(a)
        for i in range(npw):
            sc[r, i] = complex(z[r, pw01[2 * i]] * sign[2 * i],
                               z[r, pw01[2 * i + 1]] * sign[2 * i + 1])
    bm = np.dot(zph, opb_t)  # the phasor slots' part, fixed per row
    iters = np.zeros(nb, np.int64)
    conv = np.zeros(nb, np.bool_)
    dv_prev = np.zeros(nb)
    live = np.arange(nb)
    nl = nb
    wm = np.empty((nb, k + n2))  # [z_pw; x] of the live rows
    dm = np.empty((nb, n2))  # F(x) - x of the live rows
    u = np.empty(npv, np.complex128)  # the PV correction's work space
    tq = np.empty(npv)
    sq = np.empty((npv, npv))
    dq = np.empty(2 * npv)
    for it in range(1, itmax + 1):
        for j in range(nl):
            r = live[j]
            for i in range(npw):
                c = sc[r, i] / complex(x[r, 2 * vb[i]], -x[r, 2 * vb[i] + 1])
                wm[j, 2 * i] = c.real
                wm[j, 2 * i + 1] = c.imag
            for i in range(n2):
                wm[j, k + i] = x[r, i]
        y = np.dot(wm[:nl], opw_t)
        for j in range(nl):
            r = live[j]
            yr = y[j]
            yr += bm[r]
            xr = yr[:n2]
            if npv:
                pv_correct_row(x[r], yr, n2, pv, m1, m2, er_t, u, tq, sq, dq)
            for i in range(n2):
                dm[j, i] = xr[i] - x[r, i]
        step = np.dot(dm[:nl], newton_t)
        nl = _rows_settle(x, live, nl, step, it, tol, iters, conv, dv_prev)
        if nl == 0:
            break
    return iters, conv


@njit(cache=True)
def slot_cov(h0, h1, v0, v1, s0, s1, st, slot_v, slot_i, slot_pv,
             unmeasured):  # type: ignore[no-untyped-def]
    """One slot of :meth:`estimator.linear.LinearStateEstimator._slot_cov`:
    ``(r11, r12, r22)`` from its members' presence, values and sigmas."""
    s0 = s0 if h0 else unmeasured
    s1 = s1 if h1 else unmeasured
    v0 = v0 if h0 else 0.0
    v1 = v1 if h1 else 0.0
    m0 = abs(v0) if h0 else (1.0 if st == slot_v else 0.0)
    a0 = v1 if h1 else 0.0
    c, s = math.cos(a0), math.sin(a0)
    var_d = s0**2
    var_p = max(m0**2 * s1**2, (0.1 * s0) ** 2)
    if st <= slot_i:
        return (var_d * c * c + var_p * s * s, (var_d - var_p) * c * s,
                var_d * s * s + var_p * c * c)
    return var_d, 0.0, (var_d if st == slot_pv else s1**2)


@njit(cache=True)
def drift_row(z, sig, act, has0, has1, idx0, idx1, st, is_pv, nominal_set, wb, tol_hi,
              consts, out):  # type: ignore[no-untyped-def]
    """Rule (b)'s per-slot drift of one row into ``out``, as in :meth:`estimator.linear.
    LinearStateEstimator._rows_drift`; ``consts``: SLOT_V, SLOT_I, SLOT_PV, the unmeasured
    sigma."""
    slot_v, slot_i, slot_pv, unmeasured = int(consts[0]), int(consts[1]), int(consts[2]), \
        consts[3]
    for j in range(idx0.size):
        out[j] = False
        h0 = has0[j] and act[idx0[j]]
        h1 = has1[j] and act[idx1[j]]
        if not (h0 and (h1 or is_pv[j]) and nominal_set[idx0[j]]):
            continue
        r11, r12, r22 = slot_cov(h0, h1, z[idx0[j]], z[idx1[j]], sig[idx0[j]],
                                 sig[idx1[j]], st[j], slot_v, slot_i, slot_pv, unmeasured)
        w11, w12, w22 = wb[j, 0], wb[j, 1], wb[j, 2]
        tr = w11 * r11 + 2.0 * w12 * r12 + w22 * r22
        det = (w11 * w22 - w12 * w12) * (r11 * r22 - r12 * r12)
        disc = math.sqrt(max(0.25 * tr * tr - det, 0.0))
        out[j] = ((0.5 * tr + disc) > tol_hi) or ((0.5 * tr - disc) * tol_hi < 1.0)


@njit(cache=True)
def shift_row(z, act, check, rel, floor, s_nom, log_ratio, lr):  # type: ignore[no-untyped-def]
    """Rule (a) for one row (see :func:`rows_shift`); ``lr`` work space (``m``)."""
    # the ratios s_now / s_nom first, their logarithms only when the median is needed:
    # counted against the ratio's bounds widened by 1e-12, so that a count is never
    # below the count of log-ratios beyond +-log_ratio (the early exit stays exact)
    big = math.exp(log_ratio) * (1.0 - 1e-12)
    small = math.exp(-log_ratio) * (1.0 + 1e-12)
    n = n_hi = n_lo = 0
    for i in range(z.size):
        if not (check[i] and act[i]):
            continue
        s_now = rel[i] * abs(z[i])
        if not s_now >= floor[i]:  # fmax: the floor for a NaN value too
            s_now = floor[i]
        if s_now > floor[i] or s_nom[i] > floor[i]:
            q = s_now / s_nom[i]
            lr[n] = q
            n += 1
            if q > big:
                n_hi += 1
            elif q < small:
                n_lo += 1
    if n == 0:
        return False
    # the median lies between the lower and upper middle values: when too few values
    # lie beyond +-log_ratio for either middle to, |median| <= log_ratio (no sort)
    if n_hi < n - n // 2 and n_lo < (n - 1) // 2 + 1:
        return False
    for i in range(n):
        lr[i] = math.log(lr[i])
    srt = np.sort(lr[:n])
    shift = 0.5 * (srt[(n - 1) // 2] + srt[n // 2])
    return abs(shift) > log_ratio


@njit(cache=True)
def rows_shift(zb, act, check, rel, floor, s_nom, log_ratio):  # type: ignore[no-untyped-def]
    """Rule (a) for every row (:meth:`estimator.linear.LinearStateEstimator.
    _drifted_rows`): the median log-ratio of the sigmas beyond ``log_ratio``."""
    nb, m = zb.shape
    out = np.zeros(nb, np.bool_)
    lr = np.empty(m)
    for r in range(nb):
        out[r] = shift_row(zb[r], act[r], check, rel, floor, s_nom, log_ratio, lr)
    return out


@njit(cache=True)
def first_fire(zb, sig, act, start, stop, prev, has0, has1, idx0, idx1, st, is_pv,
               nominal_set, wb, tol_hi, consts, rule_a, check, rel, floor, s_nom,
               log_ratio):  # type: ignore[no-untyped-def]
    """Rules (b) and (a) row after row from ``start`` (:meth:`estimator.linear.
    LinearStateEstimator._segment_end`), stopping at the first row where one fires (so a
    segment's rows are examined once, however long it is): ``(row, fired, rule a
    fired)``, ``row = stop`` when none did; ``prev`` (the slots drifted in the row before
    ``start``) is left holding those of the row before ``row``. Rule (a) is not
    applied to row 0 (the batch's first factorization checked it) nor when ``rule_a``
    is False (no nominal values yet)."""
    g = idx0.size
    cur = np.empty(g, np.bool_)
    lr = np.empty(zb.shape[1])
    for r in range(start, stop):
        drift_row(zb[r], sig[r], act[r], has0, has1, idx0, idx1, st, is_pv, nominal_set, wb,
                  tol_hi, consts, cur)
        fire_b = False
        for j in range(g):
            if cur[j] and prev[j]:
                fire_b = True
                break
        fire_a = rule_a and r > 0 and shift_row(zb[r], act[r], check, rel, floor, s_nom,
                                                log_ratio, lr)
        if fire_a or fire_b:
            return r, True, fire_a
        prev[:] = cur
    return stop, False, False


@njit(cache=True)
def rows_residual(z, v, a_t, slot_mag, g_mag, slot_ang, g_ang, pvbus, pslots, pq_pick,
                  g_pow):  # type: ignore[no-untyped-def]
    """:func:`residual` for every row of ``z`` and ``v``, the slots' phasors ``X = V
    A^T`` of all rows in one matrix-matrix product (``a_t = A^T``, C order)."""
    x = np.dot(v, a_t)
    out = np.empty(z.shape)
    s = np.empty(2 * pslots.size)
    for r in range(z.shape[0]):
        zr = z[r]
        o = out[r]
        for i in range(g_mag.size):
            # |x| as sqrt(re^2 + im^2): hypot's care for overflow is not needed at
            # per-unit sizes and costs several times more (one rounding apart)
            xm = x[r, slot_mag[i]]
            o[g_mag[i]] = zr[g_mag[i]] - math.sqrt(xm.real * xm.real + xm.imag * xm.imag)
        for i in range(g_ang.size):
            xa = x[r, slot_ang[i]]
            o[g_ang[i]] = zr[g_ang[i]] - math.atan2(xa.imag, xa.real)
        for i in range(pslots.size):
            c = v[r, pvbus[i]] * x[r, pslots[i]].conjugate()
            s[2 * i] = c.real
            s[2 * i + 1] = c.imag
        for i in range(g_pow.size):
            o[g_pow[i]] = zr[g_pow[i]] - s[pq_pick[i]]
    return out


@njit(cache=True)
def rows_weighted(r, act, sig, ang):  # type: ignore[no-untyped-def]
    """A segment's residuals finished as :meth:`estimator.linear.LinearStateEstimator.
    _batch_statistics` does (in place: angles wrapped as ``angle(exp(j r))``, NaN where
    inactive); returns ``(r / sigma, J(x) per row)``."""
    nb, m = r.shape
    w = np.empty((nb, m))
    obj = np.zeros(nb)
    for b in range(nb):
        for i in range(ang.size):
            a = r[b, ang[i]]
            if abs(a) > math.pi:  # (else the wrapping moves it by a rounding at most)
                r[b, ang[i]] = math.atan2(math.sin(a), math.cos(a))
        acc = 0.0
        for i in range(m):
            if act[b, i]:
                wi = r[b, i] / sig[b, i]
                acc += wi * wi
            else:
                r[b, i] = np.nan
                wi = np.nan
            w[b, i] = wi
        obj[b] = acc
    return w, obj


@njit(cache=True)
def weight_blocks(has0, has1, nom, sig, idx0, idx1, st, consts):  # type: ignore[no-untyped-def]
    """:meth:`estimator.linear.LinearStateEstimator._slot_weight_blocks`: ``W = R^-1`` per
    slot, ``(w11, w12, w22)``, with the NumPy code's operations in its order (the gain
    built from them must come out bit for bit)."""
    g = idx0.size
    slot_v, slot_i, slot_pv, unmeasured = int(consts[0]), int(consts[1]), int(consts[2]), \
        consts[3]
    w11, w12, w22 = np.empty(g), np.empty(g), np.empty(g)
    for j in range(g):
        r11, r12, r22 = slot_cov(has0[j], has1[j], nom[idx0[j]], nom[idx1[j]], sig[idx0[j]],
                                 sig[idx1[j]], st[j], slot_v, slot_i, slot_pv, unmeasured)
        det = r11 * r22 - r12 * r12
        w11[j] = r22 / det
        w12[j] = -r12 / det
        w22[j] = r11 / det
    return w11, w12, w22


@njit(cache=True)
def csr_matvec(ptr, idx, val, x):  # type: ignore[no-untyped-def]
    """``A @ x`` for a CSR matrix given by its arrays, each row summed in storage order
    (SciPy's own order, so the result is SciPy's bit for bit)."""
    out = np.empty(ptr.size - 1, x.dtype)  # (val has the dtype of x at both uses)
    for i in range(ptr.size - 1):
        acc = x.dtype.type(0)
        for p in range(ptr[i], ptr[i + 1]):
            acc += val[p] * x[idx[p]]
        out[i] = acc
    return out


@njit(cache=True)
def fill_slots(v, xm, vbus, has0, has1, z0, z1, phasor, pvs, zr):  # type: ignore[no-untyped-def]
    """The slots' rectangular values ``z_t`` into ``zr`` (interleaved), a missing member
    taken from the model value ``xm = A v`` (see ``_iterate``)."""
    for k in range(vbus.size):
        xs = xm[k]
        if phasor[k]:
            mag = z0[k] if has0[k] else abs(xs)
            ang = z1[k] if has1[k] else math.atan2(xs.imag, xs.real)
            zr[2 * k] = mag * math.cos(ang)
            zr[2 * k + 1] = mag * math.sin(ang)
        else:
            vk = v[vbus[k]]
            sh = vk * xs.conjugate()
            p = z0[k] if has0[k] else sh.real
            q = z1[k] if has1[k] else (0.0 if pvs[k] else sh.imag)
            zt = (complex(p, q) / vk).conjugate()
            zr[2 * k] = zt.real
            zr[2 * k + 1] = zt.imag


@njit(cache=True)
def fill_pv(v, x, pv, ypv, s0r, er):  # type: ignore[no-untyped-def]
    """``Q = 0`` at the PV nodes as ``_iterate`` takes it (``u`` from the previous iterate
    ``v``): ``mu = S^-1 t``, ``x - E R0^T D mu`` returned."""
    n, npv = v.size, pv.size
    u = np.empty(npv, np.complex128)
    t = np.empty(npv)
    s = np.empty((npv, npv))
    d = np.empty(2 * npv)
    for j in range(npv):
        uj = v[pv[j]]
        u[j] = uj / abs(uj)
    for j in range(npv):
        acc = 0j
        for col in range(n):
            acc += ypv[j, col] * complex(x[2 * col], x[2 * col + 1])
        t[j] = (u[j].conjugate() * acc).imag
    for j in range(npv):
        dj = (-u[j].imag, u[j].real)
        for col in range(npv):
            dl = (-u[col].imag, u[col].real)
            acc2 = 0.0
            for a in range(2):
                for b in range(2):
                    acc2 += dj[a] * s0r[j, a, col, b] * dl[b]
            s[j, col] = acc2
    mu = np.linalg.solve(s, t)
    for j in range(npv):
        d[2 * j] = -u[j].imag * mu[j]
        d[2 * j + 1] = u[j].real * mu[j]
    return x - matvec(er, d)


@njit(cache=True)
def fill_run(v, a_ptr, a_idx, a_val, vbus, has0, has1, z0, z1, phasor, pvs, hd, op, opc,
             c_ptr, c_idx, c_val, pv, ypv, s0r, er, tol,
             itmax):  # type: ignore[no-untyped-def]
    """:meth:`estimator.linear.LinearStateEstimator._iterate`'s loop on a dense
    factorization: a slot's missing member taken from the estimate every iteration (the
    search for bad data solves every trial set this way). ``v`` complex start (not
    modified). Returns ``(v, iterations, dv, converged)``."""
    n = v.size
    n2 = 2 * n
    nc = c_ptr.size - 1
    v = v.copy()
    xv = np.empty(n2)
    for i in range(n):
        xv[2 * i] = v[i].real
        xv[2 * i + 1] = v[i].imag
    zr = np.empty(2 * vbus.size)
    dv = np.inf
    dv_prev = 0.0
    for it in range(1, itmax + 1):
        fill_slots(v, csr_matvec(a_ptr, a_idx, a_val, v), vbus, has0, has1, z0, z1, phasor,
                   pvs, zr)
        # correction form: dx = op (z_t - H x) - K0^-1[x, c] alpha C x
        rt = zr - matvec(hd, xv)
        x = xv + matvec(op, rt) if nc == 0 else \
            xv + (matvec(op, rt) - matvec(opc, csr_matvec(c_ptr, c_idx, c_val, xv)))
        if pv.size:
            x = fill_pv(v, x, pv, ypv, s0r, er)
        dv = 0.0
        for i in range(n2):
            a = abs(x[i] - xv[i])
            if a > dv:
                dv = a
        xv = x
        for i in range(n):
            v[i] = complex(xv[2 * i], xv[2 * i + 1])
        if converged(dv, dv_prev, tol):
            return v, it, dv, True
        dv_prev = dv
    return v, itmax, dv, False


@njit(cache=True)
def sens_jacobians(v, xs, vbus, has0, has1, phasor, pvs, hd, idx, sp_i, comp, m,
                   htw):  # type: ignore[no-untyped-def]
    """``(J_x, H^T W J_z)`` dense of :func:`estimator.linear._transform_jacobians` (the
    equivalent-current transform's derivatives; ``xs = A v`` per slot, ``has0/has1`` the
    members active in this set, ``idx`` the active measurements, ``sp_i`` their slots'
    positions, ``comp`` their members), with the NumPy code's arithmetic per entry;
    ``J_z`` has one 2-vector per column, so ``H^T W J_z`` is two terms per entry."""
    g = vbus.size
    n2 = hd.shape[1]
    jx = np.zeros((2 * g, n2))
    for p in range(g):
        x = xs[p]
        vk = v[vbus[p]]
        safe = x if abs(x) > 1e-12 else complex(1e-12, 0.0)
        if phasor[p]:
            m_only = has0[p] and not has1[p]
            a_only = has1[p] and not has0[p]
            alpha = 0.5 if (m_only or a_only) else 0.0
            ratio = safe / (2.0 * safe.conjugate())
            beta = -ratio if m_only else (ratio if a_only else 0j)
            gamma = 0j
            delta = 0j
        else:
            p_miss = not has0[p]
            q_miss = (not has1[p]) and (not pvs[p])
            k1 = 1.0 if (p_miss and q_miss) else (0.5 if (p_miss or q_miss) else 0.0)
            k2 = 0.0 if (p_miss and q_miss) else (0.5 if p_miss else
                                                 (-0.5 if q_miss else 0.0))
            cvk = vk.conjugate()
            alpha = k1
            beta = k2 * vk / cvk
            gamma = k2 * x.conjugate() / cvk
            delta = (k1 - 1.0) * x / cvk
        if alpha != 0.0 or beta != 0j:
            s = alpha + beta
            d = alpha - beta
            rr, ri, ir, ii = s.real, -d.imag, s.imag, d.real
            for col in range(n2):
                h0 = hd[2 * p, col]
                h1 = hd[2 * p + 1, col]
                jx[2 * p, col] = rr * h0 + ri * h1
                jx[2 * p + 1, col] = ir * h0 + ii * h1
        s = gamma + delta
        d = gamma - delta
        c2 = 2 * vbus[p]
        jx[2 * p, c2] += s.real
        jx[2 * p, c2 + 1] += -d.imag
        jx[2 * p + 1, c2] += s.imag
        jx[2 * p + 1, c2 + 1] += d.real
    bz = np.zeros((n2, m))
    for q in range(idx.size):
        p = sp_i[q]
        x = xs[p]
        if phasor[p]:
            if comp[q] == 0:
                safe = x if abs(x) > 1e-12 else complex(1e-12, 0.0)
                dq = safe / abs(safe)
            else:
                dq = 1j * x
        else:
            dq = (complex(1.0, 0.0) if comp[q] == 0 else -1j) / v[vbus[p]].conjugate()
        col = idx[q]
        for r in range(n2):
            bz[r, col] = htw[r, 2 * p] * dq.real + htw[r, 2 * p + 1] * dq.imag
    return jx, bz


@njit(cache=True)
def sens_raw_jacobian(x_all, v_slot, ja_row, ja_slot, ja_val, code, je_row, slot, jac_pos,
                      dest, size):  # type: ignore[no-untyped-def]
    """The raw Jacobian ``d h / d x`` dense (flat, ``dest`` the position of each pattern
    entry: interleaved columns) with
    :meth:`estimator.measurement.MeasurementModel.jacobian_data`'s arithmetic and its
    sums in the same order (``np.bincount`` over the same terms)."""
    out = np.zeros(size)
    n_e = ja_row.size
    for e in range(n_e):  # d/dVr of the A terms
        r, s, a = ja_row[e], ja_slot[e], ja_val[e]
        xs = x_all[s]
        cr = code[r]
        absx = abs(xs)
        safe = absx if absx > 1e-12 else 1e-12
        u = xs.conjugate() / safe if cr == 0 else -1j * xs.conjugate() / safe ** 2
        ua = u * a
        t = v_slot[s] * a.conjugate()
        out[dest[jac_pos[e]]] += t.real if cr == 2 else (t.imag if cr == 3 else ua.real)
    for e in range(n_e):  # d/dVi
        r, s, a = ja_row[e], ja_slot[e], ja_val[e]
        xs = x_all[s]
        cr = code[r]
        absx = abs(xs)
        safe = absx if absx > 1e-12 else 1e-12
        u = xs.conjugate() / safe if cr == 0 else -1j * xs.conjugate() / safe ** 2
        ua = u * a
        t = v_slot[s] * a.conjugate()
        out[dest[jac_pos[n_e + e]]] += t.imag if cr == 2 else (-t.real if cr == 3
                                                              else -ua.imag)
    n_q = je_row.size
    for q in range(n_q):  # the converting bus of the power terms
        er = je_row[q]
        cx = x_all[slot[er]].conjugate()
        out[dest[jac_pos[2 * n_e + q]]] += cx.real if code[er] == 2 else cx.imag
    for q in range(n_q):
        er = je_row[q]
        cx = x_all[slot[er]].conjugate()
        out[dest[jac_pos[2 * n_e + n_q + q]]] += -cx.imag if code[er] == 2 else cx.real
    return out


@njit(cache=True)
def _rows_snapshot(z, ph01, pw01, sign, ph_pos, g2, npw):  # type: ignore[no-untyped-def]
    """Per row of ``z``: the slots' rectangular values with the phasor slots' filled in
    (fixed per row; the power slots' are filled per iteration) and the power slots'
    ``conj(S)``."""
    nb = z.shape[0]
    zt = np.empty((nb, g2))
    sc = np.empty((nb, npw), np.complex128)
    for r in range(nb):
        for i in range(ph_pos.size):
            m = z[r, ph01[2 * i]]
            a = z[r, ph01[2 * i + 1]]
            zt[r, 2 * ph_pos[i]] = m * math.cos(a)
            zt[r, 2 * ph_pos[i] + 1] = m * math.sin(a)
        for i in range(npw):
            sc[r, i] = complex(z[r, pw01[2 * i]] * sign[2 * i],
                               z[r, pw01[2 * i + 1]] * sign[2 * i + 1])
    return zt, sc


@njit(cache=True)
def _rows_hx(x, live, nl, same, hx_t, xm):  # type: ignore[no-untyped-def]
    """``[H x; R0 x]`` of the live rows: one product for all of them, or one
    matrix-vector product when they all are at the same state (a segment's start)."""
    if same:
        h0 = np.dot(x[live[0]], hx_t)
        hx = np.empty((nl, h0.size))
        for j in range(nl):
            hx[j] = h0
        return hx
    for j in range(nl):
        xm[j] = x[live[j]]
    return np.dot(xm[:nl], hx_t)


@njit(cache=True)
def _rows_residual_t(x, live, nl, zt, sc, hx, vb, pw_pos, rm):  # type: ignore[no-untyped-def]
    """``r_t = z_t - H x`` of the live rows into ``rm``, the power slots' equivalent
    currents ``I = conj(S) / conj(V_k) = conj(S) V_k / |V_k|^2`` at the current state."""
    g2 = zt.shape[1]
    for j in range(nl):
        r = live[j]
        for i in range(g2):
            rm[j, i] = zt[r, i] - hx[j, i]
        for i in range(pw_pos.size):
            vr = x[r, 2 * vb[i]]
            vi = x[r, 2 * vb[i] + 1]
            d = 1.0 / (vr * vr + vi * vi)
            a, b = sc[r, i].real, sc[r, i].imag
            rm[j, 2 * pw_pos[i]] = (a * vr - b * vi) * d - hx[j, 2 * pw_pos[i]]
            rm[j, 2 * pw_pos[i] + 1] = (a * vi + b * vr) * d - hx[j, 2 * pw_pos[i] + 1]


@njit(cache=True)
def _rows_settle(x, live, nl, step, it, tol, iters, conv, dv_prev):  # type: ignore[no-untyped-def]
    """``x += step`` for the live rows, each row's stopping test (:func:`converged`);
    the rows still iterating are compacted to the front of ``live``: their count."""
    n2 = x.shape[1]
    nl2 = 0
    for j in range(nl):
        r = live[j]
        dv = 0.0  # the largest component's change
        for i in range(n2):
            a = abs(step[j, i])
            if a > dv:
                dv = a
            x[r, i] += step[j, i]
        iters[r] = it
        if converged(dv, dv_prev[r], tol):
            conv[r] = True
        else:
            dv_prev[r] = dv
            live[nl2] = r
            nl2 += 1
    return nl2


@njit(cache=True)
def rows_correction(x, z, hx_t, opx_t, newton_t, ph01, pw01, sign, ph_pos, pw_pos, vb,
                    pv, m1, m2, er, tol, itmax):  # type: ignore[no-untyped-def]
    """The fixed point of every row of ``x`` (interleaved start states, overwritten by
    the answers) for the rows of ``z``, in the correction form of
    :meth:`estimator.linear.LinearStateEstimator._iterate_fast` (``r_t = z_t - H x``,
    ``[dx; R0 dx] = [op; R0 op] r_t``, the PV correction) with the Newton-type step of
    :func:`dense_run` (``x += T (F(x) - x)``). The rows still iterating are stacked, so
    each iteration is three matrix-matrix products (``X [H; R0]^T``, ``R_t [op; R0
    op]^T``, ``D T^T``; the ``*_t`` operators transposed, C order) for all of them.

    Why the correction form: its fixed point solves the normal equations whatever the
    rounding of ``op`` (an error in ``op`` scales the step, not where it ends), so ``op``
    is taken from a Cholesky inverse of the gain without refinement, and the direct
    form's iteration matrix ``I - op H`` (which compensates ``op``'s error there) is not
    needed. Returns ``(iterations, converged)``."""
    nb, n2 = x.shape
    npv = pv.size
    g2 = hx_t.shape[1] - 2 * npv
    zt, sc = _rows_snapshot(z, ph01, pw01, sign, ph_pos, g2, pw_pos.size)
    iters = np.zeros(nb, np.int64)
    conv = np.zeros(nb, np.bool_)
    dv_prev = np.zeros(nb)
    live = np.arange(nb)
    nl = nb
    xm = np.empty((nb, n2))  # the live rows' iterates
    rm = np.empty((nb, g2))  # their residuals r_t
    dm = np.empty((nb, n2))  # F(x) - x
    yr = np.empty(n2 + 2 * npv)
    u = np.empty(npv, np.complex128)  # the PV correction's work space
    tq = np.empty(npv)
    sq = np.empty((npv, npv))
    dq = np.empty(2 * npv)
    # the rows of a segment all start from the same state
    same = nb > 1
    for r in range(1, nb):
        for i in range(n2):
            if x[r, i] != x[0, i]:
                same = False
                break
    for it in range(1, itmax + 1):
        hx = _rows_hx(x, live, nl, same and it == 1, hx_t, xm)
        _rows_residual_t(x, live, nl, zt, sc, hx, vb, pw_pos, rm)
        y = np.dot(rm[:nl], opx_t)  # [dx; R0 dx]
        for j in range(nl):
            r = live[j]
            for i in range(n2):
                yr[i] = x[r, i] + y[j, i]
            for i in range(2 * npv):
                yr[n2 + i] = hx[j, g2 + i] + y[j, n2 + i]
            if npv:
                pv_correct_row(x[r], yr, n2, pv, m1, m2, er, u, tq, sq, dq)
            for i in range(n2):
                dm[j, i] = yr[i] - x[r, i]
        step = np.dot(dm[:nl], newton_t)
        nl = _rows_settle(x, live, nl, step, it, tol, iters, conv, dv_prev)
        if nl == 0:
            break
    return iters, conv


@njit(cache=True)
def sparse_gain(hd, w11, w12, w22, ptr, cols):  # type: ignore[no-untyped-def]
    """``G = H^T W H`` slot by slot from the columns where each slot's two rows of ``H``
    are not zero (``cols[ptr[s]:ptr[s + 1]]``): a slot adds its 2x2 weighted outer
    product on those columns only (IEEE33: H is 5 % full, so this is 2 % of the dense
    product's arithmetic; the sums' order differs from it only in rounding)."""
    n = hd.shape[1]
    g = np.zeros((n, n))
    k = 0
    for s in range(w11.size):
        k = max(k, ptr[s + 1] - ptr[s])
    h0 = np.empty(k)
    h1 = np.empty(k)
    q0 = np.empty(k)
    q1 = np.empty(k)
    for s in range(w11.size):
        a, b, c = w11[s], w12[s], w22[s]
        m = ptr[s + 1] - ptr[s]
        for i in range(m):
            col = cols[ptr[s] + i]
            h0[i] = hd[2 * s, col]
            h1[i] = hd[2 * s + 1, col]
            q0[i] = a * h0[i] + b * h1[i]  # (W H) of the slot's two rows
            q1[i] = b * h0[i] + c * h1[i]
        for i in range(m):
            ci = cols[ptr[s] + i]
            for j in range(m):
                g[ci, cols[ptr[s] + j]] += h0[i] * q0[j] + h1[i] * q1[j]
    return g


@njit(cache=True)
def sparse_operator_t(hd, w11, w12, w22, ptr, cols, e, er):  # type: ignore[no-untyped-def]
    """``[op^T, op^T R0^T] = (W H) [E, E R0^T]`` (``E`` symmetric, ``er = E R0^T``) from
    the slots' non-zero columns (see :func:`sparse_gain`), in C order: the first ``n``
    columns are ``op^T``, the others the PV rows' part of the batch's ``[op; R0 op]^T``."""
    g2, n = hd.shape
    p2 = er.shape[1]
    out = np.zeros((g2, n + p2))
    for s in range(w11.size):
        a, b, c = w11[s], w12[s], w22[s]
        for i in range(ptr[s], ptr[s + 1]):
            col = cols[i]
            h0 = hd[2 * s, col]
            h1 = hd[2 * s + 1, col]
            q0 = a * h0 + b * h1
            q1 = b * h0 + c * h1
            for j in range(n):
                ej = e[col, j]
                out[2 * s, j] += q0 * ej
                out[2 * s + 1, j] += q1 * ej
            for j in range(p2):
                ej = er[col, j]
                out[2 * s, n + j] += q0 * ej
                out[2 * s + 1, n + j] += q1 * ej
    return out


@njit(cache=True)
def mirror_lower(e):  # type: ignore[no-untyped-def]
    """The upper triangle of ``e`` := its lower triangle (a symmetric matrix from
    LAPACK ``potri``'s half)."""
    n = e.shape[0]
    for j in range(n):
        for i in range(j + 1, n):
            e[j, i] = e[i, j]


@njit(cache=True)
def pv_metric(s0):  # type: ignore[no-untyped-def]
    """``(M1, M2)`` of :func:`estimator.linear._pv_metric` from ``S0 = R0 E R0^T``
    (interleaved 2p x 2p)."""
    p = s0.shape[0] // 2
    m1 = np.empty((p, p), np.complex128)
    m2 = np.empty((p, p), np.complex128)
    for i in range(p):
        for j in range(p):
            srr, sri = s0[2 * i, 2 * j], s0[2 * i, 2 * j + 1]
            sir, sii = s0[2 * i + 1, 2 * j], s0[2 * i + 1, 2 * j + 1]
            m1[i, j] = complex(srr - sii, sri + sir)
            m2[i, j] = complex(srr + sii, sir - sri)
    return m1, m2


@njit(cache=True)
def rows_stats(z, v, a_t, slot_mag, g_mag, slot_ang, g_ang, pvbus, pslots, pq_pick, g_pow,
               act, sig, ang):  # type: ignore[no-untyped-def]
    """:func:`rows_residual` then :func:`rows_weighted` in one call: ``(r, r / sigma,
    J(x) per row)``."""
    r = rows_residual(z, v, a_t, slot_mag, g_mag, slot_ang, g_ang, pvbus, pslots, pq_pick,
                      g_pow)
    w, obj = rows_weighted(r, act, sig, ang)
    return r, w, obj
