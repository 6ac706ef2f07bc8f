"""The DT paper's estimator: constant-gain linear SE in rectangular coordinates.

Method: constant-gain linear state estimation in rectangular coordinates with equivalent
current measurements (Baran & Kelley 1995; Lu, Teng & Liu 1995), equality constraints by
Lagrange multipliers in the augmented (Hachtel) matrix form. Section 4 of the paper.

State ``x = [Vr; Vi]`` (real and imaginary voltage of every bus). Every measurement slot
(see :mod:`estimator.measurement`) is turned into a rectangular phasor ``z_t`` that is
linear in ``x``: ``z_t = H x + e`` where ``H`` holds only admittances (and ones for
voltages), so the gain matrix never changes while topology and measurement set stay the
same. The equivalent currents ``conj(S / V_k)`` depend on the voltage estimate; the
estimator iterates them (a fixed point) until ``max |dV| < tolerance``.

Fused covariance (first-order error propagation, per slot, 2x2):

* phasor ``m e^{ja}``:  ``d = (cos a, sin a)``, ``p = (-sin a, cos a)``,
  ``R = s_m^2 d d^T + m^2 s_a^2 p p^T``;
* power ``(P, Q) -> I = (P - jQ) c``, ``c = 1 / conj(V_k)``: ``J = [[Re c, Im c],
  [Im c, -Re c]]``, ``R = J diag(s_P^2, s_Q^2) J^T``;
* PV pseudo ``(P, 0)``: isotropic ``R = (s_P |c|)^2 I`` (the quadrature part is the exact
  constraint ``Q = 0``, so the isotropic weight only acts on the in-phase current);
* an unmeasured component (|V| alone, P alone, ...) gets ``s = 1`` (no information).

The covariance is evaluated at the nominal values (below), so the weights ``W = R^-1`` --
and with them the gain -- are constant between re-weightings: the usual constant-gain
approximation. With noise-free measurements the fixed point is the exact power-flow state
whatever the weights. The power slots' transform is taken at a flat voltage (``c = 1``):
on IEEE33 (|V| down to 0.91 pu) taking it at the true voltage instead changes the chi-square
failure rate by 0.05 points (measured), well inside its sampling error. The full
derivation, and the simulation that checks it, is in ``docs/se-statistics.md``.

Standard deviations: ``sigma_i = max(rel_i |z_i|, floor_i)`` from the measurement model,
unless the caller passes its own (``solve(..., sigma=...)``: the PV forecaster's sigma for a
pseudo-measurement, the predictor's error for a value it corrected). J(x), the normalized
residuals and the re-weighting rule all use the sigmas of the snapshot being solved.

Nominal values (the rule; :meth:`LinearStateEstimator.solve` applies it, so every caller
that feeds the same measurement vectors gets the same weights):

* a measurement's nominal value (and sigma) is its value in the first solved snapshot that
  carries it (finite and active);
* **re-weighting**: the nominal values of every active measurement are set to the current
  snapshot's and the factorizations rebuilt (a) when the standard deviations at the
  current values differ from those at the nominal values by more than a factor
  ``reweight_ratio`` (default 2; ``0`` disables re-weighting) *in the median* (of the
  log-ratios over the magnitudes, powers and injections whose sigma is above its floor
  at either value): the load moved; or (b) when some slot's 2x2 covariance at the current
  values departs from the one in the gain by more than ``weight_tolerance`` (default 0.5:
  an eigenvalue of ``W_gain R_now`` outside ``[1/(1+tol), 1+tol]``) in two consecutive
  snapshots: a current phasor turned (its covariance is strongly anisotropic: 0.017 %
  in magnitude against 1.7 mrad in angle, so a turn of a few degrees doubles the
  variance along the magnitude), a flow moved off its floor, the PV forecaster changed
  its confidence. Without (b) about 10 % of healthy IEEE33 estimates fail the 99 %
  chi-square test as the PV plants swing the branch currents. The median in (a) and
  the persistence in (b) keep isolated gross errors from re-basing anything, and values
  at their floor never count in (a), so the cache is not thrashed;
* :meth:`LinearStateEstimator.forget_weights` drops them (a warm-up solve on a synthetic
  snapshot must not weigh the real ones).

Constraints ``C x = 0``: zero-injection buses (``Ybus[k] V = 0``, two real rows each,
constant). Small networks (dense mode): the factorized KKT matrix
``K0 = [[H^T W H, C^T], [C, 0]]``. Large networks (sparse mode): the null-space method
(Gill, Murray & Wright 1981; for state estimation e.g. Gomez-Exposito & Abur 2004,
ch. 6): with the buses split into zero-injection ``Z`` and others ``O``,
``Y_ZZ V_Z + Y_ZO V_O = 0`` gives ``V_Z = -Y_ZZ^-1 Y_ZO V_O``, i.e. ``x = N x_O`` with a
sparse ``N`` (built once per topology, component by component of the ``Z`` subgraph), and
the reduced gain ``G_r = N^T H^T W H N`` is symmetric positive definite: factorized once
by a sparse LDL^T (``qdldl``; SciPy ``splu`` when it is not installed). Same minimizer as
the KKT form (``range(N)`` is the null space of ``C``). Zero reactive power at PV plant
nodes, ``Im(conj(u_k) Ybus[k] V) = 0`` with ``u_k`` the unit phasor of the node voltage at
the previous iterate, as a rank-p correction (Schur complement) using ``E = K0^-1[x, x]``
(``N G_r^-1 N^T`` in sparse mode) applied once to the fixed rows
``[Re Ybus[k]; Im Ybus[k]]``, so nothing is refactorized per iteration.

Normalized residuals (bad-data tests) use the residual covariance of this estimator's own
fixed point, not the textbook WLS one: see :func:`linear_sensitivity`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.linalg.lapack import dgesv as gesv
from scipy.linalg.lapack import dgetrf as getrf
from scipy.linalg.lapack import dgetri as getri
from scipy.linalg.lapack import dpotrf as potrf
from scipy.linalg.lapack import dpotri as potri
from scipy.sparse.csgraph import connected_components

from estimator.badata import largest_normalized_residual
from estimator.blas import single_threaded
from estimator.errors import DidNotConverge, EstimatorError
from estimator.measurement import (
    SLOT_I,
    SLOT_PV,
    SLOT_V,
    UNMEASURED_SIGMA,
    MeasurementModel,
)
from estimator.observability import check_observable, constraint_rows
from estimator.state import BatchStates, State

try:  # the C kernel behind ``csr @ vector``, without its per-call checks and allocation
    from scipy.sparse._sparsetools import csr_matvec as _csr_matvec
except ImportError:  # pragma: no cover - private SciPy module moved
    _csr_matvec = None

try:  # sparse LDL^T of the reduced gain (manylinux wheel, no system libraries)
    import qdldl as _qdldl
except ImportError:  # pragma: no cover - exercised by forcing sparse_solver="splu"
    _qdldl = None

__all__ = ["LinearStateEstimator", "chi2_quantile", "j_quantile", "linear_sensitivity"]

DENSE_LIMIT = 700  # KKT size up to which the solution operator is stored densely
#: re-base the nominal values when a sigma moves by more than this factor (module docstring)
REWEIGHT_RATIO = 2.0
#: re-weight when a slot's covariance departs this much from the gain's twice in a row
WEIGHT_TOLERANCE = 0.5
RESIDUAL_LIMIT = 4000  # states up to which normalized residuals are computed (dense E)
SEGMENT_CHUNK = 256  # rows a batch examines at a time for the re-weighting rule


def _pv_rows(ybus: sp.csr_matrix, pv: np.ndarray, il: np.ndarray) -> sp.csr_matrix:
    """R0: the rows of the PV nodes' injected current I = Y V, real and imaginary parts
    interleaved per node, in the interleaved state order ``il``."""
    y = ybus[pv]
    re_rows = sp.hstack([y.real, -y.imag])
    im_rows = sp.hstack([y.imag, y.real])
    perm = np.empty(2 * pv.size, np.int64)
    perm[0::2] = np.arange(pv.size)
    perm[1::2] = pv.size + np.arange(pv.size)
    return sp.csr_matrix(sp.csr_matrix(sp.vstack([re_rows, im_rows]))[perm][:, il])


def _interleave(n: int) -> np.ndarray:
    """Permutation from ``[Vr; Vi]`` to ``[Vr_0, Vi_0, Vr_1, Vi_1, ...]``."""
    il = np.empty(2 * n, np.int64)
    il[0::2] = np.arange(n)
    il[1::2] = n + np.arange(n)
    return il


def _pair(idx: np.ndarray) -> np.ndarray:
    """Real columns ``2k, 2k + 1`` of the complex entries ``idx`` (interleaved)."""
    out = np.empty(2 * idx.size, np.int64)
    out[0::2] = 2 * idx
    out[1::2] = 2 * idx + 1
    return out


def chi2_quantile(dof: int, confidence: float = 0.99) -> float:
    """Chi-square quantile for the J(x) test (NaN without redundancy)."""
    if dof <= 0:
        return float("nan")
    from scipy.special import chdtri

    # chi2.ppf(confidence, dof) = chdtri(dof, 1 - confidence)
    return float(chdtri(dof, 1.0 - confidence))


def j_quantile(tr1: float, tr2: float, confidence: float = 0.99) -> float:
    """Quantile of J(x) = sum (r_i / sigma_i)^2 for this estimator (NaN if undefined).

    The constant-gain fixed point is not the raw-space WLS minimizer, so its residuals
    ``r = (I - T) e`` make J a weighted sum of chi-square(1) variables, ``J = |B u|^2``
    with eigenvalues of ``B^T B`` near 0 and 1 but not exactly (IEEE33: mean J = 58.8 for
    58 degrees of freedom, measured). Two-moment (Satterthwaite-Welch) fit ``J ~ c
    chi2(nu)``: ``c = tr((B^T B)^2) / tr(B^T B)``, ``nu = tr(B^T B)^2 / tr((B^T B)^2)``;
    for the WLS estimator it is exactly chi2(m - n).
    """
    if not (tr1 > 0 and tr2 > 0):
        return float("nan")
    from scipy.special import chdtri

    c, nu = tr2 / tr1, tr1 * tr1 / tr2
    return float(c * chdtri(nu, 1.0 - confidence))


def _spmv(a: sp.csr_matrix, x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = a @ x`` into a preallocated ``out`` (CSR, float64, contiguous ``x``)."""
    if _csr_matvec is None:  # pragma: no cover
        out[:] = a @ x
        return out
    out.fill(0.0)
    _csr_matvec(a.shape[0], a.shape[1], a.indptr, a.indices, a.data, x, out)
    return out


def _null_space(ybus: sp.csr_matrix, zi: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(N, o)``: ``x = N x_O`` for every interleaved state ``x`` with zero injection at
    the buses ``zi``; ``o`` are the other buses (the columns of ``N``, interleaved).

    ``Y_ZZ V_Z + Y_ZO V_O = 0``  =>  ``V_Z = -Y_ZZ^-1 Y_ZO V_O``; ``Y_ZZ`` is block diagonal
    over the connected components of the zero-injection buses (mostly single junctions on
    a feeder), so each block is solved on its own (dense, small).
    """
    n = ybus.shape[0]
    isz = np.zeros(n, bool)
    isz[zi] = True
    o = np.flatnonzero(~isz)
    yz = sp.csr_matrix(ybus[zi])
    yzz = sp.csr_matrix(yz[:, zi])
    yzo = sp.csr_matrix(yz[:, o])
    # groups of adjacent junctions (on the pattern: a purely reactive coupling counts)
    pattern = sp.csr_matrix((np.ones(yzz.nnz), yzz.indices, yzz.indptr), shape=yzz.shape)
    ncomp, lab = connected_components(pattern, directed=False)
    size = np.bincount(lab, minlength=ncomp)
    # O buses: identity rows
    rows = [o]
    cols = [np.arange(o.size)]
    vals: list[np.ndarray] = [np.ones(o.size, complex)]
    # single junctions: V_z = -(Y_zO / Y_zz) V_O
    si = np.flatnonzero(size[lab] == 1)
    diag = yzz.diagonal()[si]
    if np.any(diag == 0):
        raise EstimatorError("a zero-injection bus has no admittance to the network")
    sub = sp.coo_matrix(yzo[si])
    rows.append(zi[si][sub.row])
    cols.append(sub.col)
    vals.append(-sub.data / diag[sub.row])
    # groups of adjacent junctions: N_g = -Y_gg^-1 Y_gO on the columns it touches
    order = np.argsort(lab, kind="stable")
    starts = np.searchsorted(lab[order], np.arange(ncomp + 1))
    for comp in np.flatnonzero(size > 1):
        idx = order[starts[comp]:starts[comp + 1]]
        b = yzo[idx]
        nzc = np.unique(b.indices)
        try:
            blk = -np.linalg.solve(yzz[idx][:, idx].toarray(), b[:, nzc].toarray())
        except np.linalg.LinAlgError as exc:
            raise EstimatorError(f"zero-injection buses {zi[idx].tolist()} form a singular "
                                 "group") from exc
        rr, cc = np.indices(blk.shape)
        rows.append(zi[idx][rr.ravel()])
        cols.append(nzc[cc.ravel()])
        vals.append(blk.ravel())
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    a = np.concatenate(vals)
    # complex entry a + jb as the real 2x2 block [[a, -b], [b, a]] (interleaved state)
    nr = sp.csr_matrix((np.r_[a.real, -a.imag, a.imag, a.real],
                        (np.r_[2 * r, 2 * r, 2 * r + 1, 2 * r + 1],
                         np.r_[2 * c, 2 * c + 1, 2 * c, 2 * c + 1])),
                       shape=(2 * n, 2 * o.size))
    nr.eliminate_zeros()
    nr.sort_indices()
    return nr, _pair(o)


class _Reduced:
    """The reduced normal equations of sparse mode, factorized once (see module docstring).

    ``step(r_t) = N G_r^-1 N^T H^T W r_t``, ``G_r = (H N)^T W (H N)``; without
    zero-injection buses ``N = I``.
    """

    def __init__(self, h: sp.csr_matrix, w: sp.csr_matrix, nmat: sp.csr_matrix | None,
                 opos: np.ndarray | None, *, solver: str) -> None:
        self.n = nmat
        self.opos = opos
        hn = h if nmat is None else sp.csr_matrix(h @ nmat)
        # M = N^T H^T W (the reduced right-hand side operator)
        self.m = sp.csr_matrix(hn.T @ w)
        self.m.sort_indices()
        # G_r = M H N
        gain = sp.csc_matrix(self.m @ hn)
        gain.sort_indices()
        self.size = gain.shape[0]
        self.work = np.empty(self.size)  # N^T H^T W r_t
        self.solver = solver
        if solver == "qdldl":
            assert _qdldl is not None
            self.solve = _qdldl.Solver(gain).solve
        else:
            # SPD: no pivoting needed, symmetric ordering
            lu = spla.splu(gain, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                           options={"SymmetricMode": True})
            self.solve = lu.solve

    def step(self, rt: np.ndarray) -> np.ndarray:
        # dx = N G_r^-1 N^T H^T W r_t
        y = self.solve(_spmv(self.m, rt, self.work))
        return y if self.n is None else _spmv(self.n, y, np.empty(self.n.shape[0]))

    def project(self, x: np.ndarray) -> np.ndarray:
        """``N x_O``: ``x`` with the zero-injection buses' voltages implied by the others."""
        if self.n is None or self.opos is None:
            return x
        return _spmv(self.n, np.ascontiguousarray(x[self.opos]), np.empty(self.n.shape[0]))

    def inverse_times(self, b: np.ndarray) -> np.ndarray:
        """``N G_r^-1 N^T b`` for the columns of dense ``b`` (2n x k)."""
        bt = b if self.n is None else np.asarray(self.n.T @ b)
        y = np.column_stack([self.solve(np.ascontiguousarray(bt[:, j]))
                             for j in range(bt.shape[1])])
        return y if self.n is None else np.asarray(self.n @ y)



def _groups(act: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Rows of ``act`` (``B x m`` bool) grouped by equal rows: ``(first row, mask)`` per
    group, in order of first appearance (a batch has few distinct measurement sets)."""
    left = np.ones(act.shape[0], bool)
    out = []
    while left.any():
        k = int(np.argmax(left))
        sel = left & (act == act[k]).all(axis=1)
        out.append((k, sel))
        left &= ~sel
    return out


def _block_diag(w11: np.ndarray, w12: np.ndarray, w22: np.ndarray) -> sp.csr_matrix:
    """The block-diagonal matrix of symmetric 2x2 blocks ``[[w11, w12], [w12, w22]]``."""
    g = w11.size
    i0 = 2 * np.arange(g)
    rows = np.r_[i0, i0 + 1, i0, i0 + 1]
    cols = np.r_[i0, i0 + 1, i0 + 1, i0]
    return sp.csr_matrix((np.r_[w11, w22, w12, w12], (rows, cols)), shape=(2 * g, 2 * g))


def _step_key(fac: _Factor) -> bytes:
    """The measurement structure a dense fast path (and its Newton matrix) belongs to."""
    return fac.slots.tobytes() + fac.has0.tobytes() + fac.has1.tobytes()


def _spd_inverse(g: np.ndarray) -> np.ndarray | None:
    """``g^-1`` of a symmetric positive definite ``g`` by its Cholesky factor (LAPACK
    ``potrf``, ``potri``), or None when ``g`` is not numerically positive definite."""
    c, info = potrf(g, lower=1)
    if info != 0:
        return None
    e, info = potri(c, lower=1)
    if info != 0:
        return None
    # potri fills the lower triangle (the factor's zeros above): mirror it
    kern = _kernels()
    if kern is not None:
        kern.mirror_lower(e)
    else:  # (the diagonal counted once: doubling then halving is exact)
        e += e.T
        e[np.diag_indices_from(e)] *= 0.5
    return np.asarray(e)


def _rows_args(zb: np.ndarray, sig: np.ndarray, act: np.ndarray, shared: np.ndarray
               ) -> tuple[np.ndarray, ...]:
    """What a batch's compiled kernels read, made once per batch: ``(zb, zb, sigma,
    active)`` (the last three in C order), the rows with every value active, and for each
    row the end of the run of shared rows it is in."""
    nb = zb.shape[0]
    runs = np.where(shared, nb, np.arange(nb))
    return (zb, np.ascontiguousarray(zb), np.ascontiguousarray(sig),
            np.ascontiguousarray(act), np.asarray(act.all(axis=1)),
            np.minimum.accumulate(runs[::-1])[::-1])


def _converged(dv: float, dv_prev: float, tol: float) -> bool:
    """Stopping test of the fixed point: ``max |dV| < tol``, or the distance to the fixed
    point bounded from the observed contraction ``rho = dv / dv_prev`` below ``tol``.

    A-posteriori bound of a contraction (Ortega & Rheinboldt 1970, 12.1): ``|x_k - x*| <=
    rho / (1 - rho) |x_k - x_{k-1}|``; used only when ``rho < 1/2`` (a clear contraction;
    ``dv_prev = 0`` on the first iteration), where it ends the iteration one step before
    the plain test without loosening what ``tol`` means.
    """
    # dv < tol  or  dv rho / (1 - rho) = dv^2 / (dv_prev - dv) < tol with 2 dv < dv_prev
    return dv < tol or (2.0 * dv < dv_prev and dv * dv < tol * (dv_prev - dv))


def _not_converged(itmax: int, dv: float, v: np.ndarray) -> DidNotConverge:
    return DidNotConverge(f"linear SE did not converge in {itmax} iterations "
                          f"(max |dV| = {dv:.3e} pu)", mismatch=dv, iterations=itmax, last=v)


@dataclass
class _Factor:
    """Everything fixed for one measurement set (active mask) and topology."""

    slots: np.ndarray  # active slot indices
    a: sp.csr_matrix  # A rows of the active slots
    vbus: np.ndarray
    is_phasor: np.ndarray
    is_pv_slot: np.ndarray
    idx0: np.ndarray
    idx1: np.ndarray
    has0: np.ndarray
    has1: np.ndarray
    n_state: int
    dense: bool
    op: np.ndarray | None  # dense: x0 = op @ z_t (2n x 2g)
    red: _Reduced | None  # sparse: the reduced normal equations, factorized
    e: np.ndarray | None  # covariance of x (top-left block of K0^-1), dense mode
    pv: np.ndarray  # PV node indices
    er: np.ndarray | None  # E R0^T (2n x 2p)
    s0: np.ndarray | None  # R0 E R0^T (2p x 2p)
    opc: np.ndarray | None  # dense: constraint part of the correction (2n x c)
    h: sp.csr_matrix  # rectangular rows of the active slots (2g x 2n)
    c: sp.csr_matrix  # zero-injection constraint rows (unscaled)
    alpha: float
    hd: np.ndarray | None  # dense H (dense mode)
    ypv: np.ndarray | None  # Ybus rows of the PV nodes (dense complex, p x n)
    s0r: np.ndarray | None  # S0 as (p, 2, p, 2)
    r0: sp.csr_matrix | None
    dof: int
    chi2: float
    n_active: int
    phasor_pos: np.ndarray
    power_pos: np.ndarray
    complete: bool
    w: sp.csr_matrix | None = None  # slot weights W (2g x 2g); None: only as blocks (wb)
    wb: np.ndarray | None = None  # the same per slot: columns w11, w12, w22
    fast: _Fast | None = None
    # A^T, H^T, op^T (contiguous) for batches (LinearStateEstimator._batch_ops)
    batch: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    plan: tuple[Any, ...] | None = None  # what the re-weighting check reads (_plan)
    step: _DenseStep | None = None  # dense fast path (LinearStateEstimator._dense_step)
    #: dense H, (W H)^T of the residual sensitivities (_sens_plan), keyed on ``wb``
    sens_plan: tuple[Any, ...] | None = None
    #: the compiled fill iteration's arguments (_iterate_compiled), keyed on ``op``
    fill_args: tuple[Any, ...] | None = None
    rows: _RowsOp | None = None  # the batch's compiled path (LinearStateEstimator._rows_op)
    r0d: np.ndarray | None = None  # R0 dense (made on first use)
    op_t: np.ndarray | None = None  # op^T in C order (when a re-weighting made it so)
    opx_t: np.ndarray | None = None  # [op; R0 op]^T, C order (the same)
    slot_type: np.ndarray | None = None  # the slots' types (model.slot_type[slots])


@dataclass
class _Fast:
    """Operators of the fast path (every slot of the set complete), state interleaved:
    phasor slots fixed per snapshot, power slots give the equivalent currents per
    iteration; the PV constraint's terms stacked under the state's products (dense)."""

    ph0: np.ndarray  # measurement index of |.| and angle of every phasor slot
    ph1: np.ndarray
    pw0: np.ndarray  # measurement index of P and Q of every power slot
    pw1: np.ndarray
    pw_pv: np.ndarray  # power slot is a PV pseudo (Q = 0 exactly)
    vb: np.ndarray  # converting bus of every power slot
    ph: np.ndarray  # positions of the phasor / power slots among the active slots
    pw: np.ndarray | slice  # a slice when contiguous (the usual order: PMUs first)
    opx: np.ndarray | sp.csr_matrix  # dense: [op; R0 op]; sparse: H^T W
    hx: np.ndarray | sp.csr_matrix  # dense: [H; R0]; sparse: H
    opc: np.ndarray | None  # dense: K0^-1[x, c] alpha (zero-injection correction)
    m1: np.ndarray | None  # PV: Pc E Pc^T (complex p x p), Pc = rows of Ybus[pv]
    m2: np.ndarray | None  # PV: Pc E Pc^H
    er: np.ndarray | None  # PV: E R0^T (2n x 2p), interleaved


@dataclass
class _RowsOp:
    """The compiled batch path's operators of one factorization (dense, every slot
    complete; :func:`estimator.kernels.rows_correction`): ``[H; R0]^T``, ``[op; R0 op]^T``
    and ``T^T`` (C order), and the gathers that read a snapshot."""

    hx_t: np.ndarray
    opx_t: np.ndarray
    newton_t: np.ndarray
    ph01: np.ndarray
    pw01: np.ndarray
    sign: np.ndarray
    ph_pos: np.ndarray
    pw_pos: np.ndarray
    vb: np.ndarray
    m1: np.ndarray
    m2: np.ndarray
    er_t: np.ndarray  # (E R0^T)^T, C order


_KERNELS: Any = None
#: the slot codes and the unmeasured sigma, as the kernels take them
_SLOT_CONSTS = np.array([SLOT_V, SLOT_I, SLOT_PV, UNMEASURED_SIGMA], float)


def _kernels() -> Any:
    """The compiled kernels (:mod:`estimator.kernels`), or None without numba (then the
    NumPy code paths run: same answers, slower). Imported on first use, not with this
    module: numba's import and the kernels' cache load cost about 0.5 s once."""
    global _KERNELS
    if _KERNELS is None:
        if not jit_enabled():
            _KERNELS = False
            return None
        try:
            from estimator import kernels
        except ImportError:  # pragma: no cover - numba missing
            kernels = False  # type: ignore[assignment]
        _KERNELS = kernels
    return _KERNELS or None


def jit_enabled() -> bool:
    """False when ``GRIDTWIN_JIT`` is ``0``/``off``/``no``/``false``.

    Why: numba's compiled code lives in a writable+executable mapping, which a process
    hardened with systemd's ``MemoryDenyWriteExecute=yes`` may not create; the shipped
    units set ``GRIDTWIN_JIT=0`` and run the NumPy paths (same answers, slower)."""
    return os.environ.get("GRIDTWIN_JIT", "1").strip().lower() not in (
        "0", "off", "no", "false")


def _pv_metric(fac: _Factor) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(M1, M2)`` of the PV correction: ``M1 = Pc E Pc^T``, ``M2 = Pc E Pc^H`` with
    ``Pc = R0_re + j R0_im`` (None without PV nodes)."""
    if not fac.pv.size:
        return None, None
    s0 = fac.s0
    assert s0 is not None
    kern = _kernels()
    if kern is not None:
        m: tuple[np.ndarray, np.ndarray] = kern.pv_metric(np.ascontiguousarray(s0))
        return m
    srr, sri = s0[0::2, 0::2], s0[0::2, 1::2]
    sir, sii = s0[1::2, 0::2], s0[1::2, 1::2]
    return (srr - sii) + 1j * (sri + sir), (srr + sii) + 1j * (sir - sri)


class _DenseStep:
    """The dense fast path of one factorization (every slot complete), built once: the
    fixed point as one matrix-vector product per iteration plus the PV correction.

    Direct form of the correction step of :meth:`LinearStateEstimator._iterate_fast`:
    ``x' = x + op (z_t - H x) - K0^-1[x, c] alpha C x = op_ph z_ph + op_pw z_pw + M x``
    with ``M = I - op H - K0^-1[x, c] alpha C`` (the batch path's iteration matrix),
    ``z_ph`` the phasor slots' rectangular values (fixed per snapshot: their product
    ``b`` is taken once) and ``z_pw`` the power slots' equivalent currents (per
    iteration). With ``w = [z_pw; x]`` kept in one preallocated vector, an iteration is
    ``[x'; R0 x'] = [b; R0 b] + [[op_pw, M]; [R0 op_pw, R0 M]] w``: the PV rows ``R0 x'``
    come out of the same product. Per snapshot the measurement vector is read through two
    precomputed gathers (phasor members, power members with the sign of ``conj(S)`` and
    ``Q = 0`` at PV slots), so nothing is validated or allocated per call beyond the
    products' results.
    """

    ph_cols: np.ndarray
    pw_cols: np.ndarray
    r0d: np.ndarray | None
    ph01: np.ndarray
    pw01: np.ndarray
    sign: np.ndarray
    vb: np.ndarray
    k: int

    def __init__(self, fac: _Factor, like: _DenseStep | None = None) -> None:
        """``like``: a step of the same measurement structure (a previous weighting),
        whose gathers and dense ``R0`` are taken instead of being made again."""
        assert fac.op is not None and fac.hd is not None
        n2 = fac.n_state
        if like is None:
            self._structure(fac)
        else:
            self.ph_cols, self.pw_cols, self.r0d = like.ph_cols, like.pw_cols, like.r0d
            self.ph01, self.pw01, self.sign = like.ph01, like.pw01, like.sign
            self.vb, self.k = like.vb, like.k
        op = fac.op
        mat = np.eye(n2) - op @ fac.hd
        if fac.c.shape[0]:
            assert fac.opc is not None
            mat -= fac.opc @ fac.c.toarray()
        opb = op[:, self.ph_cols]
        opw = np.hstack([op[:, self.pw_cols], mat])
        if self.r0d is not None:
            r0 = self.r0d
            opb = np.vstack([opb, r0 @ opb])
            opw = np.vstack([opw, r0 @ opw])
        self.n2 = n2
        self.opb = np.ascontiguousarray(opb)
        self.opw = np.ascontiguousarray(opw)
        self.w = np.empty(self.k + n2)  # [z_pw (interleaved); x]
        self.pv = fac.pv
        self.m1, self.m2 = _pv_metric(fac)
        self.er = None if fac.er is None else np.ascontiguousarray(fac.er)
        self.newton: np.ndarray | None = None  # T (see _newton), at the first solve
        self._trans: tuple[np.ndarray, ...] | None = None  # (T, opw^T, opb^T, T^T)
        # the compiled kernels' arguments (typed, never None: empty without PV nodes)
        p = self.pv.size
        self.s_buf = np.empty(self.k)
        self.m1c = self.m1 if self.m1 is not None else np.zeros((p, p), complex)
        self.m2c = self.m2 if self.m2 is not None else np.zeros((p, p), complex)
        self.erc = self.er if self.er is not None else np.zeros((n2, 0))

    def _structure(self, fac: _Factor) -> None:
        """What depends on the measurement structure only: the columns of the phasor
        and power slots, the dense ``R0``, the gathers that read a snapshot."""
        ph, pw = fac.phasor_pos, fac.power_pos
        self.ph_cols, self.pw_cols = _pair(ph), _pair(pw)
        self.r0d = None if fac.r0 is None else fac.r0.toarray()
        # phasor members: [|.|_0, angle_0, |.|_1, ...]
        self.ph01 = np.ravel(np.column_stack([fac.idx0[ph], fac.idx1[ph]]))
        # power members: [P_0, Q_0, P_1, ...] (a PV slot reads its P twice, weighted 0) and
        # the sign that makes them conj(S) = P - jQ
        pv = fac.is_pv_slot[pw]
        self.pw01 = np.ravel(np.column_stack([fac.idx0[pw],
                                              np.where(pv, fac.idx0[pw], fac.idx1[pw])]))
        self.sign = np.ravel(np.column_stack([np.ones(pw.size), np.where(pv, 0.0, -1.0)]))
        self.vb = fac.vbus[pw]
        self.k = 2 * pw.size

    def run(self, v: np.ndarray, z: np.ndarray, tol: float,
            itmax: int) -> tuple[np.ndarray, int, float]:
        """The fixed point from ``v`` for measurement vector ``z`` (see the class):
        Newton-type steps ``x += T (F(x) - x)`` on the plain iteration ``F``."""
        k, n2 = self.k, self.n2
        w = self.w
        zc = w[:k].view(complex)  # the power slots' equivalent currents
        xv = w[k:]
        v_prev = xv.view(complex)
        v_prev[:] = v
        kern = _kernels()
        if kern is not None and self.newton is not None:
            return self._run_compiled(kern, z, tol, itmax)
        b, s_conj = self._snapshot(z)
        if self.newton is None:
            self.newton = self._newton(v_prev, b, s_conj)
        npv = self.pv.size
        dv = np.inf
        dv_prev = 0.0
        for it in range(1, itmax + 1):
            # equivalent currents I = conj(S) / conj(V_k)
            np.divide(s_conj, np.conj(v_prev[self.vb]), out=zc)
            y = self.opw @ w
            y += b
            x = y[:n2]
            if npv:
                x = self._pv(v_prev, y[n2:].view(complex), x)
            x -= xv
            step = self.newton @ x
            dv = float(np.abs(step).max())
            xv += step
            if _converged(dv, dv_prev, tol):
                return v_prev.copy(), it, dv
            dv_prev = dv
        raise _not_converged(itmax, dv, v_prev.copy())

    def _run_compiled(self, kern: Any, z: np.ndarray, tol: float, itmax: int
                      ) -> tuple[np.ndarray, int, float]:
        """:meth:`run` (start already in ``self.w``) in one compiled call."""
        b = kern.snapshot(z, self.ph01, self.pw01, self.sign, self.opb, self.s_buf)
        it, dv, ok = kern.dense_run(self.opw, b, self.s_buf.view(complex), self.vb, self.w, self.k,
                                    self.n2, self.newton, self.pv, self.m1c, self.m2c,
                                    self.erc, tol, itmax)
        v = self.w[self.k:].view(complex).copy()
        if not ok:
            raise _not_converged(itmax, dv, v)
        return v, it, dv

    def run_rows(self, x: np.ndarray, z: np.ndarray, tol: float, itmax: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`run` on ``B`` complete rows at once (``x``: ``B x 2n`` interleaved
        start states, ``z``: ``B x m``): one product for the rows' phasor slots, then per
        iteration one product with ``[op_pw, M]`` and one with ``T`` for the rows still
        iterating (each stops at its own convergence). Returns ``(x, iterations,
        converged)``."""
        kern = _kernels()
        if kern is not None and self.newton is not None:
            x = np.ascontiguousarray(x)
            opw_t, opb_t, t_t, er_t = self._transposed()
            it, ok = kern.dense_rows(x, np.ascontiguousarray(z), opw_t, opb_t,
                                     self.ph01, self.pw01, self.sign, self.vb, self.k,
                                     self.n2, t_t, self.pv, self.m1c, self.m2c,
                                     er_t, tol, itmax)
            return x, it, ok
        nb = x.shape[0]
        zz = z[:, self.ph01]
        zph = np.ascontiguousarray(zz[:, 0::2] * np.exp(1j * zz[:, 1::2]))
        b = zph.view(np.float64) @ self.opb.T
        sc = np.ascontiguousarray(z[:, self.pw01] * self.sign)
        s_conj = sc.view(complex)
        t_t = np.ascontiguousarray(self.newton.T)  # type: ignore[union-attr]
        iters = np.zeros(nb, np.int64)
        conv = np.zeros(nb, bool)
        dv_prev = np.zeros(nb)
        live = np.arange(nb)
        for it in range(1, itmax + 1):
            xl = x[live]
            step = (self._f_rows(xl, b[live], s_conj[live]) - xl) @ t_t
            dv = np.abs(step).max(axis=1)
            x[live] = xl + step
            iters[live] = it
            dp = dv_prev[live]
            done = (dv < tol) | ((2.0 * dv < dp) & (dv * dv < tol * (dp - dv)))
            dv_prev[live] = dv
            conv[live[done]] = True
            live = live[~done]
            if live.size == 0:
                break
        return x, iters, conv

    def _transposed(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(opw^T, opb^T, T^T, (E R0^T)^T)`` in C order (made once: the rows' kernel
        multiplies row-stacked iterates from the left)."""
        t = self.newton
        assert t is not None
        if self._trans is None or self._trans[0] is not t:
            self._trans = (t, np.ascontiguousarray(self.opw.T),
                           np.ascontiguousarray(self.opb.T), np.ascontiguousarray(t.T),
                           np.ascontiguousarray(self.erc.T))
        return self._trans[1], self._trans[2], self._trans[3], self._trans[4]

    def _snapshot(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``([b; R0 b], conj(S))`` of measurement vector ``z``: the phasor slots'
        product, ``b = op_ph z_ph`` with ``z_ph = m e^{ja}``, and the power slots' values."""
        zz = z[self.ph01]
        b = self.opb @ (zz[0::2] * np.exp(1j * zz[1::2])).view(np.float64)
        sc = z[self.pw01]
        sc *= self.sign
        return b, sc.view(complex)

    def newton_at(self, v: np.ndarray, z: np.ndarray) -> np.ndarray:
        """``T`` (:meth:`_newton`) at voltages ``v`` for measurement vector ``z``."""
        b, s_conj = self._snapshot(z)
        return self._newton(np.ascontiguousarray(v, complex), b, s_conj)

    def _newton(self, v: np.ndarray, b: np.ndarray, s_conj: np.ndarray) -> np.ndarray:
        """``T = I + J_F ~ (I - J_F)^-1`` (``|J_F|`` is about 0.01: the neglected ``J_F^2``
        is below the iteration's own error), ``J_F`` the derivative of one plain iteration
        ``F`` at ``v`` for the snapshot ``(b, s_conj)``, by forward differences over all
        the state's components in one vectorised evaluation (the PV correction's
        direction moves with the voltage, so ``J_F`` is not worth writing out). Taken
        once per factorization: any ``T`` near ``(I - J_F)^-1`` leaves the fixed point
        where it is (``F(x) = x``) and contracts by ``|I - T (I - J_F)|`` per step instead
        of ``|J_F|`` (IEEE33: two iterations instead of three)."""
        n2 = self.n2
        h = 1e-7
        x0 = v.view(np.float64)
        xs = np.vstack([x0[None, :], x0 + h * np.eye(n2)])
        fx = self._f_rows(xs, b, s_conj)
        t = ((fx[1:] - fx[0]) / h).T
        t[np.diag_indices(n2)] += 1.0
        return np.ascontiguousarray(t)

    def _f_rows(self, xs: np.ndarray, b: np.ndarray, s_conj: np.ndarray) -> np.ndarray:
        """One plain iteration ``F`` (as :meth:`run` takes it) for every row of ``xs``."""
        n2 = self.n2
        v = xs.view(complex)
        zc = s_conj / np.conj(v[:, self.vb])
        y = np.hstack([np.ascontiguousarray(zc).view(np.float64), xs]) @ self.opw.T + b
        x = y[:, :n2]
        if self.pv.size:
            yp = np.ascontiguousarray(y[:, n2:]).view(complex)
            u = v[:, self.pv]
            u = u / np.abs(u)
            ub = u.conj()
            t = (ub * yp).imag
            s = (ub[:, :, None] * (self.m2[None] * u[:, None, :]  # type: ignore[index]
                                   - self.m1[None] * ub[:, None, :])).real  # type: ignore[index]
            mu = np.linalg.solve(s, t[..., None])[..., 0]
            x = x - (2j * u * mu).view(np.float64) @ self.er.T  # type: ignore[union-attr]
        return x

    def _pv(self, v: np.ndarray, yp: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``Q = 0`` at the PV nodes: ``Im(conj(u_j) Ybus[j] V) = 0``, ``u_j`` the unit voltage
        phasor at the previous iterate ``v``; ``yp = R0 x`` before the correction."""
        u = v[self.pv]
        u /= np.abs(u)
        ub = u.conj()
        t = (ub * yp).imag
        # S = D^T (R0 E R0^T) D = Re(conj(u) u^T o M2 - conj(u) conj(u)^T o M1) / 2
        s = (ub[:, None] * (self.m2 * u - self.m1 * ub)).real  # type: ignore[operator]
        mu = gesv(s, t)[2]
        # x = x0 - E R0^T D mu ; D mu interleaved = j u mu (mu from 2 S)
        x -= self.er @ (2j * u * mu).view(np.float64)  # type: ignore[operator]
        return x


class LinearStateEstimator:
    """Constant-gain linear SE (see module docstring); one instance per measurement model.

    Keyword-only options: ``tolerance`` (max |dV| in pu), ``max_iterations``,
    ``constraints`` (zero-injection and PV ``Q = 0`` equality constraints),
    ``normalized_residuals`` (None = when the network has at most 2000 buses),
    ``cache_size`` (factorizations kept, one per measurement set), ``fill_fraction``
    (up to this fraction of the measurements may be missing or dropped without a new
    factorization: they are filled from the estimate instead), ``dense_limit`` (KKT size
    up to which the dense solution operator is used; above it the sparse reduced form),
    ``sparse_solver`` (``"auto"``: ``qdldl`` when installed, else ``"splu"``),
    ``reweight_ratio`` and ``weight_tolerance`` (when the nominal values are re-based: see
    the module docstring).
    """

    method = "linear"

    def __init__(self, model: MeasurementModel, *, tolerance: float = 1e-7,
                 max_iterations: int = 20, constraints: bool = True,
                 normalized_residuals: bool | None = None, cache_size: int = 16,
                 fill_fraction: float = 0.1, dense_limit: int = DENSE_LIMIT,
                 sparse_solver: str = "auto", reweight_ratio: float = REWEIGHT_RATIO,
                 weight_tolerance: float = WEIGHT_TOLERANCE) -> None:
        self.model = model
        self.net = model.net
        self.tolerance = float(tolerance)
        self.max_iterations = int(max_iterations)
        self.constraints = bool(constraints)
        n2 = 2 * model.n_bus
        self.normalized_residuals = (n2 <= RESIDUAL_LIMIT if normalized_residuals is None
                                     else bool(normalized_residuals))
        self.cache_size = int(cache_size)
        self.fill_fraction = float(fill_fraction)
        self.dense_limit = int(dense_limit)
        if sparse_solver == "auto":
            sparse_solver = "qdldl" if _qdldl is not None else "splu"
        if sparse_solver not in ("qdldl", "splu"):
            raise EstimatorError(f"sparse_solver must be 'auto', 'qdldl' or 'splu', not "
                                 f"{sparse_solver!r}")
        if sparse_solver == "qdldl" and _qdldl is None:
            raise EstimatorError("sparse_solver='qdldl' needs the qdldl package "
                                 "(pip install qdldl)")
        self.sparse_solver = sparse_solver
        self._init_rules(reweight_ratio, weight_tolerance)
        self._nspace: tuple[sp.csr_matrix, np.ndarray] | None = None
        # per measurement set: (1 / sqrt(s_i), computed at a chi-square-clean state)
        self._sens: OrderedDict[bytes, tuple[np.ndarray, bool, float]] = OrderedDict()
        #: inside :meth:`solve_clean` (see :attr:`lazy_failing_leverages`)
        self._searching = False
        self._all = np.ones(model.m, bool)
        self._obs_ok: OrderedDict[bytes, bool] = OrderedDict()
        self._chi2_cache: dict[int, float] = {}
        self._cache: OrderedDict[bytes, _Factor] = OrderedDict()
        #: the latest Newton matrix of the dense fast path per measurement structure
        self._newton: dict[bytes, np.ndarray] = {}
        #: and its latest fast path (whose structure a new weighting reuses)
        self._steps: dict[bytes, _DenseStep] = {}
        #: per measurement structure: (H, T, [H; R0]^T, T^T) of the batch's compiled path
        self._rows_like: dict[bytes, tuple[Any, ...]] = {}
        self._slot_cols: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}  # _slot_columns
        self._nominal_set = np.zeros(model.m, bool)
        self._nom_version = 0  # bumped whenever nominal values or sigmas change
        self._drift_plan: tuple[Any, ...] | None = None  # rule (a)'s constants (_drifted)
        self._rows_plan: tuple[Any, ...] | None = None  # the same for _drifted_rows
        #: a batch's rows in C order for the kernels (the batch array, then the copies)
        self._rows_args: tuple[np.ndarray, ...] | None = None
        #: whether rule (a) fired where the last compiled scan stopped (None: unknown)
        self._fire_load: bool | None = None
        #: the sigma of every measurement at its nominal value (what the gain weighs; 1
        #: where no nominal value is set yet)
        self.nominal_sigma = np.ones(model.m)
        self._drift_prev = np.zeros(model.g, bool)  # slots drifted in the previous solve
        self._drift_any = False  # any of them (so the usual solve skips the bookkeeping)
        self._stale: set[bytes] = set()  # cached factorizations whose weights moved
        self._last_v: np.ndarray | None = None
        self._prev_v: np.ndarray | None = None  # the solve's before the last (hold)
        self.last_factor: _Factor | None = None
        #: per-measurement sigma factors of the current solve (None: all 1); part of the
        #: factorization's cache key, so a pattern of aged measurements is factorized once
        self._scale: np.ndarray | None = None
        self._flat = np.full(model.n_bus, self.net.vm_slack * np.exp(1j * self.net.va_slack))
        self._res_args: tuple[np.ndarray, ...] | None = None  # the residual kernel's
        self._angles = np.flatnonzero(model.is_angle)
        self._a_t: np.ndarray | None = None  # A^T (dense, C order) for rows_residual
        self._c_rows = (constraint_rows(model, pv_constraints=False) if self.constraints
                        else sp.csr_matrix((0, n2)))

    def _init_rules(self, reweight_ratio: float, weight_tolerance: float) -> None:
        """The re-weighting rules' settings and state (see the module docstring)."""
        model = self.model
        if reweight_ratio != 0 and not reweight_ratio > 1:
            raise EstimatorError(f"reweight_ratio must be > 1 (or 0: never), not "
                                 f"{reweight_ratio!r}")
        self.reweight_ratio = float(reweight_ratio)
        self._log_ratio = math.log(self.reweight_ratio) if self.reweight_ratio else math.inf
        self._rel_meas = ~model.is_angle & (model.rel > 0)
        self._floor_pos = np.maximum(model.floor, 1e-12)
        if not weight_tolerance > 0:
            raise EstimatorError(f"weight_tolerance must be > 0, not {weight_tolerance!r}")
        self.weight_tolerance = float(weight_tolerance)
        self._tol_hi = 1.0 + self.weight_tolerance
        self._tol_sum = self._tol_hi + 1.0 / self._tol_hi  # r + 1/r at the tolerance
        #: how many times the nominal values were re-based on a snapshot (see the rule)
        self.reweights = 0
        #: a re-weighting the rules decide is made after the snapshot that decided it
        #: (:meth:`idle`), not before its solve (see :meth:`solve`)
        self.defer_reweight = False
        #: > 0: a state whose J(x) is above this many times its chi-square quantile,
        #: outside :meth:`solve_clean`, does not take its own leverages (see
        #: :meth:`_sens_hit`); 0: every state takes them until its set has clean ones
        self.lazy_failing_leverages = 0.0
        self._pending: tuple[np.ndarray, np.ndarray, np.ndarray, bool] | None = None
        #: a re-weighted set whose fast path is still to build, and one built on the
        #: Newton matrix of the weights before (see idle())
        self._ready: tuple[_Factor, np.ndarray, np.ndarray, bool] | None = None
        self._refresh: tuple[_Factor, np.ndarray] | None = None

    # ------------------------------------------------------------------ factorization
    def factor(self, active: np.ndarray, z: np.ndarray | None = None,
               sig: np.ndarray | None = None) -> _Factor:
        """The (cached) factorization for measurement set ``active``; checks observability
        first and raises :class:`~estimator.errors.NotObservableError`."""
        key = self._key(active)
        hit = self._cache.get(key)
        if hit is not None and key not in self._stale:
            self._cache.move_to_end(key)
            return hit
        model = self.model
        if z is not None:
            fresh = active & ~self._nominal_set & np.isfinite(z)
            model.nominal[fresh] = z[fresh]
            self.nominal_sigma[fresh] = (model.sigma(z) if sig is None else sig)[fresh]
            self._nominal_set |= fresh
            self._nom_version += 1
        if hit is not None:
            # re-weighted (rule b) or weights forgotten (rule a, forget_weights): same
            # structure, new weights
            self._cache.move_to_end(key)
            self._stale.discard(key)
            with single_threaded():
                hit = self._reweighted(hit, active) if hit.dense else self._build(active)
            self._cache[key] = hit
            return hit
        self._observable(active)  # structural: cached per measurement set
        with single_threaded():
            fac = self._derived(active) or self._build(active)
        self._cache[key] = fac
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return fac

    def _derived(self, active: np.ndarray) -> _Factor | None:
        """The factorization of ``active`` from the cached one of the full set when both
        have the same slots (a subset that leaves no slot empty: the bad-data search's
        trial sets, a few values missing), or None (then :meth:`_build`).

        Why: :meth:`_build` assembles the rows, weights and constraint terms as sparse
        matrices (2.5-4 ms on IEEE33), and the search factorizes each trial set whose
        fill iteration stalls. With the same slots only the weights of the slots that
        lost a member differ (the rows, the constraint and PV rows are the full set's), so
        the dense re-weighting of the full set's structure (:meth:`_reweighted`, about
        0.3 ms) gives the same gain, KKT inverse and solution operator, to rounding; the
        per-slot masks and the test's degrees of freedom are then those of ``active``.
        """
        # (a stale base serves as well: only its structure is read, the weights are the
        # current nominal values', as _build would take them)
        base = self._cache.get(self._key(self._all))
        if base is None or not base.dense:
            return None
        model = self.model
        slot_active = np.zeros(model.g, bool)
        slot_active[model.slot[active]] = True
        if not np.array_equal(np.flatnonzero(slot_active), base.slots):
            return None
        mem = model.members[base.slots]
        has = (mem >= 0) & active[np.maximum(mem, 0)]
        fac = self._reweighted(base, active, has=has)
        n_active = int(np.count_nonzero(active))
        n_con = fac.c.shape[0] + fac.pv.size
        angle_ref = bool(np.any(active & model.is_angle))
        dof = n_active + n_con - fac.n_state + (0 if angle_ref else 1)
        # the masks in C order: a strided column reaches the compiled kernels (weight
        # blocks when this set is re-weighted) as another layout, and numba loads a
        # second machine-code version for it on a live deadline (~9 ms from its cache)
        return replace(fac, has0=np.ascontiguousarray(has[:, 0]),
                       has1=np.ascontiguousarray(has[:, 1]), n_active=n_active, dof=dof,
                       chi2=chi2_quantile(dof),
                       complete=bool(np.all(has[:, 0])
                                     and np.all(has[:, 1] | fac.is_pv_slot)))

    def _key(self, active: np.ndarray) -> bytes:
        """Cache key of a measurement set under the current sigma factors."""
        key = active.tobytes()
        return key if self._scale is None else key + self._scale.tobytes()

    def _null_space(self) -> tuple[sp.csr_matrix, np.ndarray]:
        """``(N, o)`` of the zero-injection buses (once per estimator: fixed topology)."""
        if self._nspace is None:
            self._nspace = _null_space(sp.csr_matrix(self.model.ybus),
                                       self.model.zero_injection)
        return self._nspace

    def _slot_cov(self, slots: np.ndarray, has: np.ndarray, vals: np.ndarray,
                  sig: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Covariance ``(r11, r12, r22)`` of the rectangular value of every slot in ``slots``
        at measured values ``vals`` with standard deviations ``sig`` (both per
        measurement); ``has`` (``len(slots) x 2``) marks the members used.

        First-order propagation of independent meter errors (``docs/se-statistics.md``):

        * phasor ``m e^{ja}``: ``d = (cos a, sin a)``, ``p = (-sin a, cos a)``,
          ``R = s_m^2 d d^T + m^2 s_a^2 p p^T`` (the correlation of the two rectangular
          components is the off-diagonal ``(s_m^2 - m^2 s_a^2) cos a sin a``);
        * power ``(P, Q) -> conj(S) c``, ``c = 1/conj(V_k) ~ 1``: ``R = diag(s_P^2, s_Q^2)``;
        * PV pseudo ``(P, 0)``: ``s_P^2 I`` (its quadrature part is the exact ``Q = 0``).
        """
        model = self.model
        mem = model.members[slots]
        i0, i1 = np.maximum(mem[:, 0], 0), np.maximum(mem[:, 1], 0)
        # (works on one snapshot, or on a batch: vals, sig (B, m), has (B, slots, 2))
        h0, h1 = has[..., 0], has[..., 1]
        s0 = np.where(h0, sig[..., i0], UNMEASURED_SIGMA)
        s1 = np.where(h1, sig[..., i1], UNMEASURED_SIGMA)
        v0 = np.where(h0, vals[..., i0], 0.0)
        v1 = np.where(h1, vals[..., i1], 0.0)
        st = model.slot_type[slots]
        phasor = st <= SLOT_I  # SLOT_V, SLOT_I
        pv = st == SLOT_PV
        # phasor: m = |magnitude| (1 pu for an unmeasured voltage), a = angle (0 if unknown)
        m0 = np.where(h0, np.abs(v0), np.where(st == SLOT_V, 1.0, 0.0))
        a0 = np.where(h1, v1, 0.0)
        c, s = np.cos(a0), np.sin(a0)
        # R = s_m^2 d d^T + max(m^2 s_a^2, (0.1 s_m)^2) p p^T ; d = (c, s), p = (-s, c)
        var_d = s0**2
        var_p = np.maximum(m0**2 * s1**2, (0.1 * s0) ** 2)
        r11 = np.where(phasor, var_d * c * c + var_p * s * s, var_d)
        # power at a flat voltage (c = 1): R = diag(s_P^2, s_Q^2); PV pseudo: s_P^2 I
        r22 = np.where(phasor, var_d * s * s + var_p * c * c, np.where(pv, var_d, s1**2))
        r12 = np.where(phasor, (var_d - var_p) * c * s, 0.0)
        return r11, r12, r22

    def _slot_weights(self, slots: np.ndarray, active: np.ndarray) -> sp.csr_matrix:
        """``W = R^-1`` per slot at the nominal values and sigmas (block diagonal)."""
        return _block_diag(*self._slot_weight_blocks(slots, active))

    def _slot_weight_blocks(self, slots: np.ndarray, active: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(w11, w12, w22)``: the 2x2 blocks of :meth:`_slot_weights`."""
        model = self.model
        nom = np.nan_to_num(model.nominal)
        sig = np.where(self._nominal_set, self.nominal_sigma, model.sigma(nom))
        if self._scale is not None:  # this solve's sigma factors (part of the cache key)
            sig = sig * self._scale
        mem = model.members[slots]
        has = (mem >= 0) & active[np.maximum(mem, 0)]
        kern = _kernels()
        if kern is not None:
            w: tuple[np.ndarray, np.ndarray, np.ndarray] = kern.weight_blocks(
                has[:, 0].copy(), has[:, 1].copy(), nom, sig, np.maximum(mem[:, 0], 0),
                np.maximum(mem[:, 1], 0), model.slot_type[slots], _SLOT_CONSTS)
            return w
        r11, r12, r22 = self._slot_cov(slots, has, nom, sig)
        # W = R^-1 per 2x2 block
        det = r11 * r22 - r12 * r12
        return r22 / det, -r12 / det, r11 / det

    def _reweighted(self, fac: _Factor, active: np.ndarray, *, has: np.ndarray | None = None
                    ) -> _Factor:
        """``fac`` with new weights (dense mode): ``G = H^T W H``, the KKT inverse, the
        solution operator and the PV terms recomputed from the cached structure.

        Without zero-injection constraints the KKT matrix is the gain itself, symmetric
        positive definite: ``E = G^-1`` from its Cholesky factor (LAPACK ``potrf`` and
        ``potri``, about a third of ``getrf`` + ``getri``) and ``op = E H^T W`` without the
        refinement step. The fixed point does not depend on ``op``'s rounding (the direct
        form's ``M = I - op H`` and the batch's correction form both make up for it); the
        answers move by about 1e-12 pu against the refined LU operator (IEEE33, gain
        condition number ~5e8), well inside the 1e-10 pu the tests hold them to.
        ``has`` (slots x 2): the members of ``active`` present when it is not ``fac``'s
        own set (:meth:`_derived`: a trial set on the full set's structure).
        """
        assert fac.hd is not None
        w11, w12, w22 = self._fac_weight_blocks(fac, active, has)
        hd = fac.hd
        # W H by 2x2 blocks; G = H^T (W H); H^T W = (W H)^T (W symmetric)
        kern = _kernels()
        nc = fac.c.shape[0]
        if fac.r0 is not None and fac.r0d is None:
            fac.r0d = fac.r0.toarray()
        r0d = fac.r0d
        opx_t: np.ndarray | None = None
        e = er_k = None
        if kern is not None and nc == 0:
            # H is sparse (5 % on IEEE33): G and op^T slot by slot on its non-zeros, with
            # the PV rows' part of the batch's operator, (W H) E R0^T
            ptr, cols = self._slot_columns(fac)
            e = _spd_inverse(kern.sparse_gain(hd, w11, w12, w22, ptr, cols))
            if e is not None:
                er_k = e @ r0d.T if r0d is not None else np.zeros((fac.n_state, 0))
                # (E symmetric: its C-order view E^T reads rows contiguously)
                opx_t = kern.sparse_operator_t(hd, w11, w12, w22, ptr, cols, e.T, er_k)
        if e is not None and opx_t is not None:
            op_t: np.ndarray | None = opx_t[:, :fac.n_state]
            op, opc, alpha = opx_t[:, :fac.n_state].T, None, 1.0
        else:
            wh = np.empty_like(hd)
            wh[0::2] = w11[:, None] * hd[0::2] + w12[:, None] * hd[1::2]
            wh[1::2] = w12[:, None] * hd[0::2] + w22[:, None] * hd[1::2]
            gain = hd.T @ wh
            e = _spd_inverse(gain) if nc == 0 else None
            if e is not None:
                # op^T = (W H) E (E symmetric), in C order: the batch reads op^T
                op_t = wh @ e
                op, opc, alpha = op_t.T, None, 1.0
            else:
                op, e, opc, alpha = self._kkt_operator(fac, gain, wh)
                op_t = None
        er = s0 = None
        if r0d is not None:
            er = er_k if opx_t is not None else e @ r0d.T  # E R0^T (E symmetric)
            s0 = r0d @ er
        # a copy of the record with the new operators (dataclasses.replace re-runs
        # __init__ and copy.copy goes through __reduce_ex__: 10 us against 1)
        new = object.__new__(_Factor)
        new.__dict__.update(fac.__dict__)
        new.op, new.e, new.opc, new.alpha, new.er, new.s0 = op, e, opc, alpha, er, s0
        new.s0r = (s0.reshape(fac.pv.size, 2, fac.pv.size, 2) if s0 is not None else None)
        wb = np.empty((w11.size, 3))
        wb[:, 0], wb[:, 1], wb[:, 2] = w11, w12, w22
        new.w, new.wb = None, wb
        new.fast = new.batch = new.plan = new.step = new.rows = None
        new.op_t, new.opx_t = op_t, opx_t
        return new

    def _slot_columns(self, fac: _Factor) -> tuple[np.ndarray, np.ndarray]:
        """``(ptr, cols)``: the columns where slot ``s``'s two rows of ``H`` are not zero,
        ``cols[ptr[s]:ptr[s + 1]]`` (per measurement structure, cached)."""
        key = fac.slots.tobytes()
        hit = self._slot_cols.get(key)
        if hit is None:
            assert fac.hd is not None
            nz = (fac.hd[0::2] != 0) | (fac.hd[1::2] != 0)
            ptr = np.zeros(nz.shape[0] + 1, np.int64)
            np.cumsum(nz.sum(axis=1), out=ptr[1:])
            hit = self._slot_cols[key] = (ptr, np.nonzero(nz)[1].astype(np.int64))
        return hit

    def _fac_weight_blocks(self, fac: _Factor, active: np.ndarray,
                           has: np.ndarray | None = None
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_slot_weight_blocks` of ``fac``'s own measurement set, taking the slots'
        members and their presence from ``fac`` (the same arrays, made at its build; or
        ``has`` for another set on the same slots) and the nominal sigmas as they are
        when every value has one (the usual case)."""
        kern = _kernels()
        if kern is None or not self._nominal_set.all() or self._scale is not None:
            return self._slot_weight_blocks(fac.slots, active)
        model = self.model
        nom = model.nominal
        if np.isnan(nom).any():
            nom = np.nan_to_num(nom)
        has0, has1 = (fac.has0, fac.has1) if has is None else (
            np.ascontiguousarray(has[:, 0]), np.ascontiguousarray(has[:, 1]))
        w: tuple[np.ndarray, np.ndarray, np.ndarray] = kern.weight_blocks(
            has0, has1, nom, self.nominal_sigma, fac.idx0, fac.idx1, fac.slot_type,
            _SLOT_CONSTS)
        return w

    @staticmethod
    def _kkt_operator(fac: _Factor, gain: np.ndarray, wh: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float]:
        """``(op, E, opc, alpha)`` of the KKT matrix with the zero-injection rows: its
        inverse from the LU factors (LAPACK getri: cheaper than solving for the
        identity), then the solution operator as products with it, refined once."""
        n2 = fac.n_state
        cd = fac.c.toarray()
        nc = cd.shape[0]
        alpha = float(np.abs(np.diag(gain)).max() / max(np.abs(cd).max(), 1e-300)) if nc \
            else 1.0
        kd = np.zeros((n2 + nc, n2 + nc))
        kd[:n2, :n2] = gain
        kd[:n2, n2:] = alpha * cd.T
        kd[n2:, :n2] = alpha * cd
        lu, piv, info = getrf(kd)
        if info == 0:
            kinv, info = getri(lu, piv)
        if info != 0:
            raise EstimatorError(f"gain matrix is singular after re-weighting (LAPACK info "
                                 f"{info})")
        b = np.zeros((n2 + nc, wh.shape[0]))
        b[:n2] = wh.T
        sol = kinv[:, :n2] @ b[:n2]
        # one step of iterative refinement
        sol += kinv @ (b - kd @ sol)
        return sol[:n2], kinv[:n2, :n2], kinv[:n2, n2:] * alpha if nc else None, alpha


    def _build(self, active: np.ndarray) -> _Factor:
        """Factorize the estimator for the measurement set ``active`` (see the class
        docstring): the linear model's rows, the weights, the gain with its equality
        constraints, the PV sensitivities and the test's degrees of freedom."""
        model = self.model
        n2 = 2 * model.n_bus
        slot_active = np.zeros(model.g, bool)
        slot_active[model.slot[active]] = True
        slots = np.flatnonzero(slot_active)
        rows2 = np.empty(2 * slots.size, np.int64)
        rows2[0::2] = 2 * slots
        rows2[1::2] = 2 * slots + 1
        # state order interleaved per bus, x = [Vr_0, Vi_0, Vr_1, ...], so that
        # x.view(complex) is V itself (no gather per iteration)
        il = _interleave(model.n_bus)
        h = sp.csr_matrix(model.H[rows2][:, il])
        w = self._slot_weights(slots, active)
        htw = sp.csr_matrix(h.T @ w)
        # G = H^T W H ; K0 = [[G, C^T], [C, 0]]
        gain = htw @ h
        c = sp.csr_matrix(self._c_rows[:, il])
        # scale the constraint rows to the size of the gain entries (better pivoting);
        # the multipliers absorb the factor
        alpha = 1.0
        if c.shape[0]:
            alpha = float(np.abs(gain.diagonal()).max() / max(abs(c).max(), 1e-300))
        pv = model.pv_nodes if self.constraints else np.zeros(0, np.int64)
        r0 = _pv_rows(model.ybus, pv, il) if pv.size else None
        dense = n2 + c.shape[0] <= self.dense_limit
        op, opc, red, e = self._factorize(h, w, htw, gain, c, alpha, dense)
        er = s0 = None
        if r0 is not None:
            if dense:
                assert e is not None
                er = np.asarray(r0 @ e).T  # E symmetric: E R0^T = (R0 E)^T
            else:
                assert red is not None
                # E R0^T = N G_r^-1 N^T R0^T
                er = red.inverse_times(r0.T.toarray())
            s0 = np.asarray(r0 @ er)
        return self._factor(slots, active, h, w, c, alpha, pv, r0, dense,
                            op=op, opc=opc, red=red, e=e, er=er, s0=s0)

    def _factorize(self, h: sp.csr_matrix, w: sp.csr_matrix, htw: sp.csr_matrix,
                   gain: sp.csr_matrix, c: sp.csr_matrix, alpha: float, dense: bool
                   ) -> tuple[Any, Any, Any, Any]:
        """(op, opc, reduced solver, E) of the constrained gain: dense LU with the
        solution operator stored once, or the sparse null-space reduction."""
        n2 = h.shape[1]
        nk = n2 + c.shape[0]
        try:
            if not dense:
                nmat = opos = None
                if c.shape[0]:
                    nmat, opos = self._null_space()
                return None, None, _Reduced(h, w, nmat, opos, solver=self.sparse_solver), None
            cs = sp.csr_matrix(c * alpha)
            kd = sp.bmat([[gain, cs.T], [cs, None]]).toarray()
            lu_piv = sla.lu_factor(kd)
            kinv = sla.lu_solve(lu_piv, np.eye(nk))
            # x0 = E H^T W z_t (the solution operator, stored once): K0 [op; .] =
            # [H^T W; 0], solved with one step of iterative refinement so that the
            # direct form x = op z_t is as exact as the correction form
            b = np.zeros((nk, htw.shape[1]))
            b[:n2] = htw.toarray()
            sol = sla.lu_solve(lu_piv, b)
            sol += sla.lu_solve(lu_piv, b - kd @ sol)
            opc = kinv[:n2, n2:] * alpha if c.shape[0] else None
            return sol[:n2], opc, None, kinv[:n2, :n2]
        except (np.linalg.LinAlgError, RuntimeError, ValueError) as exc:
            raise EstimatorError(f"gain matrix is singular although the observability check "
                                 f"passed: {exc}") from exc

    def _factor(self, slots: np.ndarray, active: np.ndarray, h: sp.csr_matrix,
                w: sp.csr_matrix, c: sp.csr_matrix, alpha: float, pv: np.ndarray,
                r0: sp.csr_matrix | None, dense: bool, **ops: Any) -> _Factor:
        """The :class:`_Factor` record: operators plus what each solve reads per slot."""
        model = self.model
        n2 = 2 * model.n_bus
        mem = model.members[slots]
        has = (mem >= 0) & active[np.maximum(mem, 0)]
        st = model.slot_type[slots]
        n_active = int(np.count_nonzero(active))
        n_con = c.shape[0] + pv.size
        angle_ref = bool(np.any(active & model.is_angle))
        # degrees of freedom: measurements + equality constraints - states (+1 without an
        # angle measurement: the reference angle is then fixed, not estimated)
        dof = n_active + n_con - n2 + (0 if angle_ref else 1)
        phasor = np.isin(st, [SLOT_V, SLOT_I])
        s0 = ops["s0"]
        k = np.arange(slots.size)
        return _Factor(
            slots=slots, a=sp.csr_matrix(model.A[slots]), vbus=model.vbus[slots],
            is_phasor=phasor, is_pv_slot=st == SLOT_PV,
            idx0=np.maximum(mem[:, 0], 0), idx1=np.maximum(mem[:, 1], 0),
            has0=np.ascontiguousarray(has[:, 0]), has1=np.ascontiguousarray(has[:, 1]),
            n_state=n2, dense=dense, pv=pv, slot_type=st,
            h=sp.csr_matrix(h), c=c, alpha=alpha,
            hd=h.toarray() if dense else None,
            ypv=model.ybus[pv].toarray() if pv.size else None,
            s0r=s0.reshape(pv.size, 2, pv.size, 2) if s0 is not None else None,
            r0=r0, dof=dof, chi2=chi2_quantile(dof), n_active=n_active,
            phasor_pos=np.flatnonzero(phasor), power_pos=np.flatnonzero(~phasor),
            complete=bool(np.all(has[:, 0]) and np.all(has[:, 1] | (st == SLOT_PV))),
            w=w,
            wb=np.column_stack([w.diagonal()[0::2], np.asarray(w[2 * k, 2 * k + 1]).ravel(),
                                w.diagonal()[1::2]]),
            **ops,
        )

    def _fast(self, fac: _Factor) -> _Fast:
        """Build (once per factorization) the fast-path operators."""
        if fac.fast is not None:
            return fac.fast
        ph, pw = fac.phasor_pos, fac.power_pos
        m1, m2 = _pv_metric(fac)
        if fac.dense:
            assert fac.op is not None and fac.hd is not None
            r0 = None if fac.r0 is None else fac.r0.toarray()
            # y = [op; R0 op] r_t and [H; R0] x in one product each
            opx: np.ndarray | sp.csr_matrix = np.ascontiguousarray(
                fac.op if r0 is None else np.vstack([fac.op, r0 @ fac.op]))
            hx: np.ndarray | sp.csr_matrix = np.ascontiguousarray(
                fac.hd if r0 is None else np.vstack([fac.hd, r0]))
            opc = fac.opc
        else:
            assert fac.red is not None
            opx = fac.red.m
            hx = fac.h
            opc = None
        fac.fast = _Fast(
            ph0=fac.idx0[ph], ph1=fac.idx1[ph], pw0=fac.idx0[pw], pw1=fac.idx1[pw],
            pw_pv=fac.is_pv_slot[pw], vb=fac.vbus[pw], ph=ph,
            pw=(slice(int(pw[0]), int(pw[-1]) + 1) if pw.size and np.all(np.diff(pw) == 1)
                else pw),
            opx=opx, hx=hx,
            opc=opc, m1=m1, m2=m2,
            er=None if fac.er is None else np.ascontiguousarray(fac.er))
        return fac.fast

    def _iterate_fast(self, fac: _Factor, v: np.ndarray, z: np.ndarray, tol: float,
                      itmax: int) -> tuple[np.ndarray, int, float]:
        """The fixed point when every slot is complete (phasors fixed per snapshot).

        Correction form (iterative refinement built in): ``r_t = z_t - H x``,
        ``dx = E H^T W r_t - K0^-1[x, c] alpha C x`` (dense) or ``dx = N G_r^-1 N^T H^T W
        r_t`` from ``x = N x_O`` (sparse); exact to rounding at the fixed point however
        ill-conditioned the gain.
        """
        f = self._fast(fac)
        n2 = fac.n_state
        g2 = 2 * fac.slots.size
        dense = fac.dense
        zt = np.empty(fac.slots.size, complex)
        # z_t = m e^{ja} (PMU phasors): fixed for the snapshot
        zt[f.ph] = z[f.ph0] * np.exp(1j * z[f.ph1])
        # conj(S) = P - jQ, with Q = 0 at PV slots
        q = z[f.pw1]
        q[f.pw_pv] = 0.0
        s_conj = z[f.pw0] - 1j * q
        zr = zt.view(np.float64)
        npv = fac.pv.size
        pv = fac.pv
        red = fac.red
        opx, hx, opc = f.opx, f.hx, f.opc
        hbuf = np.empty(g2)
        has_c = fac.c.shape[0] > 0
        v = np.ascontiguousarray(v, complex)
        if red is not None:
            # start on the constraint manifold: x = N x_O (then every step stays on it)
            v = red.project(v.view(np.float64)).view(complex)
        dv = np.inf
        dv_prev = 0.0
        for it in range(1, itmax + 1):
            xv = v.view(np.float64)
            # equivalent currents: I = conj(S / V_k) = conj(S) / conj(V_k)
            vk = v[f.vb]
            np.conjugate(vk, out=vk)
            zt[f.pw] = s_conj / vk
            # [H x; R0 x]
            hxv = hx @ xv if dense else _spmv(hx, xv, hbuf)  # type: ignore[arg-type]
            # r_t = z_t - H x
            rt = zr - hxv[:g2]
            if dense:
                # [dx; R0 dx] = [op; R0 op] r_t  (- K0^-1[x, c] alpha C x)
                y = opx @ rt
                x = y[:n2]
                x += xv
                if has_c:
                    x -= opc @ (fac.c @ xv)  # type: ignore[operator]
            else:
                # dx = N G_r^-1 (N^T H^T W) r_t
                assert red is not None
                x = red.step(rt)
                x += xv
            if npv:
                # Q = 0 at PV nodes: Im(conj(u_j) Ybus[j] V) = 0, u_j the unit voltage
                # phasor at the previous iterate; B^T x0 = Im(conj(u) (R0 x0))
                if dense and not has_c:
                    yp = (hxv[g2:] + y[n2:]).view(complex)
                else:
                    yp = (fac.r0 @ x).view(complex)  # type: ignore[operator]
                u = v[pv]
                u /= np.abs(u)
                ub = u.conj()
                t = (ub * yp).imag
                # S = D^T (R0 E R0^T) D = Re(conj(u) u^T o M2 - conj(u) conj(u)^T o M1) / 2
                s = (ub[:, None] * (f.m2 * u - f.m1 * ub)).real  # type: ignore[operator]
                mu = gesv(s, t)[2]
                # x = x0 - E R0^T D mu ; D mu interleaved = j u mu (mu from 2 S)
                x = x - f.er @ (2j * u * mu).view(np.float64)  # type: ignore[operator]
            # the state change of this iteration: dv = max |dV|
            dv = float(np.abs(x - xv).max())
            v = x.view(complex)
            if _converged(dv, dv_prev, tol):
                return v, it, dv
            dv_prev = dv
        raise _not_converged(itmax, dv, v)

    # ------------------------------------------------------------------ solve
    def solve(self, z: np.ndarray, *, active: np.ndarray | None = None,
              warm_start: bool | np.ndarray = True, tolerance: float | None = None,
              max_iterations: int | None = None, now: float = 0.0,
              sigma: np.ndarray | None = None,
              sigma_scale: np.ndarray | None = None) -> State:
        """Estimate the state from measurement vector ``z`` (pu, model order).

        ``active``: measurements to use (default: the finite ones). ``warm_start``: True
        starts from the previous solution, an array from those voltages, False from flat.
        ``sigma``: standard deviations (pu) replacing the model's where finite (a PV
        forecast's own sigma, a corrected value's predictor error); they reach the gain
        through the re-weighting rule. ``sigma_scale``: a factor on each measurement's
        sigma for this solve (aged values weigh less); each distinct pattern is factorized
        once and cached like an active set, so it should change rarely.
        Raises :class:`NotObservableError` or :class:`DidNotConverge`.

        With :attr:`defer_reweight` a re-weighting the rules decide on this snapshot is
        made after it (:meth:`idle`, or at the start of the next solve): this
        snapshot is estimated on the weights in force. Why: a re-weighting (the gain,
        its inverse, the solution operator and the Newton matrix again, ~0.5 ms on
        IEEE33) made a snapshot at 1 kHz miss its deadline about once a second, while
        the weights it brings differ from those in force by the factor the rule allows;
        the estimator worker makes it in the time between two snapshots instead.
        """
        if self._pending is not None:
            self.reweight_pending()
        self._scale = None if sigma_scale is None else np.asarray(sigma_scale, float)
        t0 = time.perf_counter()
        model = self.model
        z = np.ascontiguousarray(z, float)  # (the kernels take C order: one signature)
        finite = np.isfinite(z)
        act = finite if active is None else (np.asarray(active, bool) & finite)
        sig = model.sigma(z)
        if sigma is not None:
            sigma = np.asarray(sigma, float)
            sig = np.where(np.isfinite(sigma) & (sigma > 0), sigma, sig)
        fac, has0, has1, complete, dof, chi2 = self._weighed(z, sig, act)
        tol = self.tolerance if tolerance is None else float(tolerance)
        itmax = self.max_iterations if max_iterations is None else int(max_iterations)
        if isinstance(warm_start, np.ndarray):
            v = warm_start.astype(complex)
        elif warm_start and self._last_v is not None:
            v = self._last_v
        else:
            v = self._flat
        t1 = time.perf_counter()
        # SuperLU's supernodes call BLAS on tiny blocks, where OpenBLAS threads only add
        # hand-offs (measured 2x slower on a loaded 2-core machine); qdldl and the dense
        # products need no limit (entering the context costs about 60 us)
        ctx = (single_threaded() if fac.red is not None and fac.red.solver == "splu"
               else contextlib.nullcontext())
        try:
            with ctx:
                v, it, dv = self._run(fac, v, z, finite, has0, has1, complete, tol, itmax)
        except DidNotConverge:
            if fac is not self._cache.get(self._key(self._all)) or act.all():
                raise
            # filling from the estimate converged too slowly: factorize this set itself
            fac = self.factor(act, z, sig)
            dof, chi2 = fac.dof, fac.chi2
            v, it, dv = self._run(fac, v, z, finite, fac.has0, fac.has1, fac.complete, tol,
                                  itmax)
        t2 = time.perf_counter()
        self._prev_v = self._last_v  # (what hold() goes back to)
        self._last_v = v
        #: the factorization the last solve used (its ``e``: the state covariance)
        self.last_factor = fac
        if self._scale is not None:  # J(x) and the residuals with the scaled sigmas
            sig = sig * self._scale
        state = self._finish(fac, v, z, sig, act, it, dv, now, chi2)
        state.dof = dof
        t3 = time.perf_counter()
        state.timings = {"prepare_s": t1 - t0, "iterate_s": t2 - t1,
                         "residuals_s": t3 - t2, "total_s": t3 - t0}
        return state

    def _weighed(self, z: np.ndarray, sig: np.ndarray, act: np.ndarray
                 ) -> tuple[_Factor, np.ndarray, np.ndarray, bool, int, float]:
        """:meth:`_select` after the re-weighting rules (a) and (b) had their say on this
        snapshot (made now, or left for :meth:`idle` with :attr:`defer_reweight`)."""
        full = bool(act.all())
        if self.reweight_ratio and self._drifted(z, act, full):
            if self.defer_reweight:
                self._pending = (z.copy(), sig.copy(), act.copy(), True)
            else:
                self._rebase(z, sig, act)
        got = self._select(z, sig, act)
        if self.reweight_ratio and self._slots_drifted(got[0], z, sig, act, full):
            if not self.defer_reweight:
                self._rebase(z, sig, act, full=False)
                got = self._select(z, sig, act)
            elif self._pending is None:  # (a full re-basing pending includes it)
                self._pending = (z.copy(), sig.copy(), act.copy(), False)
        return got

    def solve_clean(self, z: np.ndarray, *, active: np.ndarray | None = None,
                    warm_start: bool | np.ndarray = True, now: float = 0.0,
                    sigma: np.ndarray | None = None) -> State:
        """:meth:`solve` with the largest-normalized-residual search
        (:func:`estimator.badata.largest_normalized_residual`): gross errors removed and the
        snapshot re-estimated; ``State.removed`` lists them."""
        est = self

        class _WithSigma:
            model = est.model

            @staticmethod
            def solve(zz: np.ndarray, **kw: Any) -> State:
                return est.solve(zz, sigma=sigma, **kw)

        # one BLAS-thread limit around the whole search: each trial set's observability
        # check, sensitivities and factorization enter it anyway, and entering costs
        # tens of microseconds each time (nested uses are free)
        self._searching = True
        try:
            with single_threaded():
                return largest_normalized_residual(_WithSigma, z, active=active, now=now,
                                                   warm_start=warm_start)
        finally:
            self._searching = False

    def hold(self) -> np.ndarray | None:
        """The LAST snapshot's solve taken back as far as the next snapshot can tell: the
        warm start and the state returned are those of the solve before it, and rule (b)
        forgets the slots drifted so far (:meth:`forget_drift`). None when there was no
        solve before it. (Re-basings the rules made on the snapshot stay: a full rule (a)
        one re-bases on the whole snapshot, which its median keeps gross errors from
        triggering.)

        Why: the estimator worker answers a snapshot with gross errors this way when a
        bad-data search does not fit in the snapshot period (1 kHz: a search costs 2-6 ms
        and delayed the next several snapshots); the previous estimate, one period old,
        is the random-walk prediction of this one (what
        :meth:`estimator.kalman.KalmanStateEstimator.hold` keeps too).
        """
        prev = self._prev_v
        if prev is None:
            return None
        self.discard()
        return prev.copy()

    def discard(self) -> None:
        """The LAST snapshot's solve taken back, with nothing put in its place: the warm
        start is the solve's before (none after the first), rule (b) forgets its drift
        and a re-weighting it decided is not made (:meth:`hold` answers with that state;
        the estimator worker discards a gross snapshot it has no estimate to hold for)."""
        self._last_v = self._prev_v
        self.forget_drift()
        self._pending = None  # a snapshot judged gross sets no weights

    def idle(self) -> bool:
        """One piece of what a deferred re-weighting leaves (:attr:`defer_reweight`), for
        the time between two snapshots, each 0.1-0.45 ms on IEEE33: (1) the re-weighting
        itself (:meth:`reweight_pending`); (2) that set's fast path, on the Newton
        matrix of the weights before, and the rules' constants at the new nominal
        values (a solve before it builds them itself); (3) after the next snapshot, the
        set's own Newton matrix (the reused one costs a solve about one iteration).
        False when nothing was left. The estimator worker calls it while no snapshot
        waits, once per gap: a piece that overruns the gap delays the next snapshot."""
        if self._pending is not None:
            return self.reweight_pending()
        if self._ready is not None:
            fac, z, act, complete = self._ready
            self._ready = None
            self._prepare(fac, z, act, complete)
            return True
        r, self._refresh = self._refresh, None
        if r is None:
            return False
        fac, z = r
        step = fac.step
        if step is None or self._last_v is None or fac is not self.last_factor:
            return False  # re-weighted, or another set solved, meanwhile
        with single_threaded():
            step.newton = step.newton_at(self._last_v, z)
        self._newton[_step_key(fac)] = step.newton
        return True

    def reweight_pending(self) -> bool:
        """Make the re-weighting the last solve decided (:attr:`defer_reweight`): the
        nominal values re-based on its snapshot and its measurement set factorized on
        them (the rest, :meth:`idle`'s later pieces, is built by the next solve when it
        comes first). False when none was pending."""
        p, self._pending = self._pending, None
        if p is None:
            return False
        z, sig, act, full = p
        self._rebase(z, sig, act, full=full)
        fac, _, _, complete, _, _ = self._select(z, sig, act)
        self._ready = (fac, z, act, complete)
        return True

    def _prepare(self, fac: _Factor, z: np.ndarray, act: np.ndarray, complete: bool
                 ) -> None:
        """The fast path of a freshly re-weighted ``fac`` on the Newton matrix of the
        weights before (a re-weighting moves J_F a little: a fraction of an iteration,
        never the fixed point; its own comes in :meth:`idle`'s next piece), and the
        rules' constants at the new nominal values (else made by the next solve:
        0.05-0.1 ms, more on a cold cache)."""
        if complete and fac.dense:
            self._step_before(fac, z)
        self._drifted(z, act, bool(act.all()))
        if fac.wb is not None:
            self._plan(fac)

    def forget_drift(self) -> None:
        """Rule (b) forgets which slots drifted so far: the last snapshot's values were
        judged gross as a whole (the worker held the previous estimate instead of
        searching them, :meth:`hold`), so their departures are no evidence of a moved
        operating point. A real move then fires one snapshot later."""
        self._drift_prev[:] = False
        self._drift_any = False

    def _select(self, z: np.ndarray, sig: np.ndarray, act: np.ndarray
                ) -> tuple[_Factor, np.ndarray, np.ndarray, bool, int, float]:
        """``(factor, has0, has1, complete, dof, chi2)`` for the active set ``act``."""
        model = self.model
        n_off = model.m - int(np.count_nonzero(act))
        if 0 < n_off <= self.fill_fraction * model.m:
            # a few values missing or dropped: keep the full set's factorization and fill
            # them from the estimate each iteration (their residual is then zero, so the
            # fixed point solves the reduced problem); observability still checked first
            self._observable(act)
            fac = self.factor(self._all, z, sig)
            has0 = fac.has0 & act[fac.idx0]
            has1 = fac.has1 & act[fac.idx1]
            dof = fac.dof - n_off
            return fac, has0, has1, False, dof, self._chi2(dof)
        fac = self.factor(act, z, sig)
        return fac, fac.has0, fac.has1, fac.complete, fac.dof, fac.chi2

    def _slots_drifted(self, fac: _Factor, z: np.ndarray, sig: np.ndarray,
                       act: np.ndarray, full: bool = False) -> bool:
        """Rule (b) of the module docstring: some complete slot's covariance at the current
        values is off the gain's by more than ``weight_tolerance`` now and in the previous
        solve. Power and PV slots (diagonal or isotropic covariance): each member's
        ``r = (sigma_now / sigma_gain)^2`` outside ``[1/tol, tol]``, i.e. ``r + 1/r >
        tol + 1/tol``; phasor slots: the eigenvalues of ``W_gain R_now`` (2x2),
        ``tr/2 +- sqrt(tr^2/4 - det)``. Everything that does not depend on the snapshot
        is in the plan (:meth:`_plan`); ``full``: every measurement active (no masks)."""
        (_, pm, pm_slot, inv_nom, nom_pm, ph, i0, i1, i01, cw, wa, wdet, nom_ph,
         all_nom) = self._plan(fac)
        tol = self._tol_hi
        kern = _kernels()
        if kern is not None:
            bad, hit, found = kern.slot_drift(sig, z, act, pm, inv_nom, nom_pm, i0, i1, cw,
                                              wa, wdet, nom_ph, tol, self._tol_sum,
                                              not (full and all_nom))
            if not (self._drift_any or found):
                return False
            return self._drift_fire(pm_slot[bad], ph[hit])
        r = sig[pm] * inv_nom
        r *= r
        bad = (r + 1.0 / r) > self._tol_sum
        # phasor slots: R = s_m^2 d d^T + max(m^2 s_a^2, .01 s_m^2) p p^T, d = (cos a,
        # sin a); tr(W R) = vd (A + K) + vp (A - K) with A = (w11 + w22) / 2,
        # K = (w11 - w22) / 2 cos 2a + w12 sin 2a = Re(c e^{-2ja}), c = (w11 - w22) / 2
        # + j w12; det(W R) = det(W) vd vp
        nph = i0.size
        ss = sig[i01]  # [s_m; s_a]
        zz = z[i01]  # [m; a]
        vd = ss[:nph] * ss[:nph]
        vp = zz[:nph] * ss[nph:]
        vp *= vp
        np.maximum(vp, 0.01 * vd, out=vp)
        k = (cw * np.exp(-2j * zz[nph:])).real
        tr = vd * (wa + k) + vp * (wa - k)
        half = 0.5 * tr
        disc = np.sqrt(np.maximum(half * half - wdet * vd * vp, 0.0))
        hit = ((half + disc) > tol) | ((half - disc) * tol < 1.0)
        if not (full and all_nom):
            bad &= act[pm] & nom_pm
            hit &= act[i0] & act[i1] & nom_ph
        if not (self._drift_any or bad.any() or hit.any()):
            return False  # nothing drifted, now or in the previous solve (the usual case)
        return self._drift_fire(pm_slot[bad], ph[hit])

    def _drift_fire(self, power_slots: np.ndarray, phasor_slots: np.ndarray) -> bool:
        """Rule (b)'s persistence: the slots that drifted now (power and phasor) against
        those of the previous solve; True when one drifted in both."""
        drift = np.zeros(self.model.g, bool)
        drift[power_slots] = True
        drift[phasor_slots] = True
        fire = bool((drift & self._drift_prev).any())
        self._drift_prev = drift
        self._drift_any = bool(drift.any())
        return fire

    def _plan(self, fac: _Factor) -> tuple[Any, ...]:
        """Per factorization and nominal values (cached): what :meth:`_slots_drifted`
        reads: the members of the power and PV slots with their slots and the inverse of
        their sigmas in the gain, the phasor slots, their magnitude and angle members and
        the gain's weights of those slots as the constants of the eigenvalue test."""
        if fac.plan is None or fac.plan[0] != self._nom_version:
            assert fac.wb is not None
            phm = fac.is_phasor & fac.has0 & fac.has1
            pw = ~fac.is_phasor
            pm = np.sort(np.r_[fac.idx0[pw & fac.has0],
                               fac.idx1[pw & fac.has1 & ~fac.is_pv_slot]])
            w11, w12, w22 = (np.ascontiguousarray(c) for c in fac.wb[phm].T)
            i0, i1 = fac.idx0[phm], fac.idx1[phm]
            nom_pm, nom_ph = self._nominal_set[pm], self._nominal_set[i0]
            fac.plan = (self._nom_version, pm, self.model.slot[pm],
                        1.0 / self.nominal_sigma[pm], nom_pm, fac.slots[phm], i0, i1,
                        np.r_[i0, i1], 0.5 * (w11 - w22) + 1j * w12, 0.5 * (w11 + w22),
                        w11 * w22 - w12 * w12, nom_ph, bool(nom_pm.all() and nom_ph.all()))
        return fac.plan

    def _run(self, fac: _Factor, v: np.ndarray, z: np.ndarray, finite: np.ndarray,
             has0: np.ndarray, has1: np.ndarray, complete: bool, tol: float,
             itmax: int) -> tuple[np.ndarray, int, float]:
        if complete:
            # every member of every slot active (and so finite)
            if fac.dense:
                return self._step_for(fac, v, z).run(v, z, tol, itmax)
            return self._iterate_fast(fac, v, z, tol, itmax)
        zc = np.where(finite, z, 0.0)
        z0 = np.where(has0, zc[fac.idx0], 0.0)
        z1 = np.where(has1, zc[fac.idx1], 0.0)
        return self._iterate(fac, v, z0, z1, has0, has1, tol, itmax)

    def _step_for(self, fac: _Factor, v: np.ndarray, z: np.ndarray) -> _DenseStep:
        """The dense fast path for this solve. A set re-weighted by :meth:`idle`'s first
        piece whose fast path the second has not built yet (a snapshot came first) gets
        it as that piece would build it, on the Newton matrix of the weights before, and
        its own Newton matrix is left to :meth:`idle`. Why: the solve that built both
        took 0.7-0.9 ms instead of 0.1 on IEEE33, a missed deadline at 1 kHz after
        every deferred re-weighting."""
        ready = self._ready
        if ready is not None and ready[0] is fac:
            self._step_before(fac, z)
        return self._dense_step(fac, v, z)

    def _step_before(self, fac: _Factor, z: np.ndarray) -> None:
        """Build the dense fast path of a freshly re-weighted ``fac`` (when not built yet)
        on the Newton matrix of the weights before, and leave its own to :meth:`idle`
        (:attr:`_refresh`)."""
        if fac.op is not None and self._last_v is not None and fac.step is None:
            self._dense_step(fac, self._last_v, z, reuse=True)
            self._refresh = (fac, z)

    def _dense_step(self, fac: _Factor, v: np.ndarray, z: np.ndarray, *,
                    reuse: bool = False) -> _DenseStep:
        """The dense fast path of ``fac``, built on its first use with its Newton matrix
        ``T`` at this snapshot (about 0.1 ms on IEEE33 against 0.3 ms for the
        re-weighting that made ``fac``); ``reuse``: take the ``T`` of the previous
        factorization of the same measurement structure instead (a batch: new weights
        move ``J_F`` a little, which costs a fraction of an iteration per row, never the
        fixed point)."""
        if fac.step is None:
            key = _step_key(fac)
            with single_threaded():
                step = _DenseStep(fac, like=self._steps.get(key))
                step.newton = self._newton.get(key) if reuse else None
                if step.newton is None:
                    step.newton = step.newton_at(v, z)
            if len(self._newton) > 4 * self.cache_size:
                self._newton.clear()
                self._steps.clear()
            self._newton[key] = step.newton
            self._steps[key] = step
            fac.step = step
        return fac.step

    def _iterate(self, fac: _Factor, v: np.ndarray, z0: np.ndarray, z1: np.ndarray,
                 has0: np.ndarray, has1: np.ndarray, tol: float,
                 itmax: int) -> tuple[np.ndarray, int, float]:
        """The fixed point with incomplete slots: a missing member of a slot is taken from
        the estimate each iteration."""
        kern = _kernels()
        if kern is not None and fac.dense:
            return self._iterate_compiled(kern, fac, v, z0, z1, has0, has1, tol, itmax)
        v = np.ascontiguousarray(v, complex)
        if fac.red is not None:
            # start on the zero-injection manifold: x = N x_O
            v = fac.red.project(v.view(np.float64)).view(complex)
        phasor, pvs = fac.is_phasor, fac.is_pv_slot
        a, vbus = fac.a, fac.vbus
        pv = fac.pv
        dv = np.inf
        dv_prev = 0.0
        npv = pv.size
        for it in range(1, itmax + 1):
            x_model = a @ v
            vk = v[vbus]
            # phasor slots: z_t = m e^{ja}, a missing part taken from the estimate
            mag = np.where(has0, z0, np.abs(x_model))
            ang = np.where(has1, z1, np.angle(x_model))
            # power slots: S_hat = V_k conj(X); z_t = conj((P + jQ) / V_k); PV: Q = 0
            s_hat = vk * np.conj(x_model)
            p = np.where(has0, z0, s_hat.real)
            q = np.where(has1, z1, np.where(pvs, 0.0, s_hat.imag))
            zt = np.where(phasor, mag * np.exp(1j * ang), np.conj((p + 1j * q) / vk))
            zr = zt.view(np.float64)  # [Re z_0, Im z_0, Re z_1, ...]
            # correction form (built-in iterative refinement): r_t = z_t - H x
            xv = v.view(np.float64)  # interleaved [Vr_0, Vi_0, ...]
            rt = zr - (fac.hd @ xv if fac.dense else fac.h @ xv)  # type: ignore[operator]
            has_c = fac.c.shape[0] > 0
            if fac.dense:
                # dx = E H^T W r_t - K0^-1[x, c] alpha C x
                dx = fac.op @ rt  # type: ignore[operator]
                if has_c:
                    dx -= fac.opc @ (fac.c @ xv)  # type: ignore[operator]
            else:
                # dx = N G_r^-1 N^T H^T W r_t (x stays on the zero-injection manifold)
                dx = fac.red.step(rt)  # type: ignore[union-attr]
            x = xv + dx
            if npv:
                # Q = 0 at PV nodes: Im(conj(u_j) Ybus[j] V) = 0, u_j the unit voltage
                # phasor of the node at the previous iterate (row c_j = D_j^T R0_j)
                u = v[pv]
                u = u / np.abs(u)
                dd = np.stack((-u.imag, u.real), axis=1)  # D_j = (-u_i, u_r)
                # B^T x0 = Im(conj(u) Ybus[pv] V0)
                t = (np.conj(u) * (fac.ypv @ x.view(complex))).imag  # type: ignore[operator]
                # S = D^T (R0 E R0^T) D ; mu = S^-1 B^T x0 ; x = x0 - E R0^T D mu
                s = np.einsum("ja,jalb,lb->jl", dd, fac.s0r, dd)  # type: ignore[arg-type]
                mu = gesv(s, t)[2]
                x = x - fac.er @ (dd * mu[:, None]).ravel()  # type: ignore[operator]
            # the state change of this iteration: dv = max |dV|
            dv = float(np.abs(x - xv).max())
            v = x.view(complex)
            if _converged(dv, dv_prev, tol):
                return v, it, dv
            dv_prev = dv
        raise _not_converged(itmax, dv, v)

    @staticmethod
    def _iterate_compiled(kern: Any, fac: _Factor, v: np.ndarray, z0: np.ndarray,
                          z1: np.ndarray, has0: np.ndarray, has1: np.ndarray, tol: float,
                          itmax: int) -> tuple[np.ndarray, int, float]:
        """:meth:`_iterate` (dense factorization) in one compiled call
        (``kernels.fill_run``): the bad-data search solves every trial set this way, at
        about 60 us per iteration in NumPy calls on IEEE33."""
        args = fac.fill_args
        if args is None or args[0] is not fac.op:
            assert fac.op is not None and fac.hd is not None
            n2 = fac.n_state
            a, c = fac.a, fac.c
            opc = fac.opc if fac.opc is not None else np.zeros((n2, 0))
            args = (fac.op, a.indptr, a.indices, np.asarray(a.data, complex), fac.vbus,
                    fac.is_phasor, fac.is_pv_slot, np.ascontiguousarray(fac.hd),
                    np.ascontiguousarray(fac.op), np.ascontiguousarray(opc), c.indptr,
                    c.indices, np.asarray(c.data, float), fac.pv,
                    fac.ypv if fac.ypv is not None else np.zeros((0, n2 // 2), complex),
                    np.ascontiguousarray(fac.s0r) if fac.s0r is not None
                    else np.zeros((0, 2, 0, 2)),
                    np.ascontiguousarray(fac.er) if fac.er is not None
                    else np.zeros((n2, 0)))
            fac.fill_args = args
        (_, a_ptr, a_idx, a_val, vbus, phasor, pvs, hd, op, opc, c_ptr, c_idx, c_val, pv,
         ypv, s0r, er) = args
        # C order, always: a derived trial set's masks are columns of one 2-D array
        # (:meth:`_derived`), and numba compiles one machine-code version per layout;
        # the warm-up's full set has C-order masks, so the first live search with a
        # derived set loaded a second version (27 ms from numba's cache, about 1 s to
        # compile in a fresh checkout) on a deadline
        has0, has1 = np.ascontiguousarray(has0), np.ascontiguousarray(has1)
        v, it, dv, ok = kern.fill_run(np.ascontiguousarray(v, complex), a_ptr, a_idx, a_val,
                                      vbus, has0, has1, z0, z1, phasor, pvs, hd, op, opc,
                                      c_ptr, c_idx, c_val, pv, ypv, s0r, er, tol, itmax)
        if not ok:
            raise _not_converged(itmax, dv, v)
        return v, it, dv

    def _finish(self, fac: _Factor, v: np.ndarray, z: np.ndarray, sig: np.ndarray,
                act: np.ndarray, it: int, dv: float, now: float, chi2: float) -> State:
        model = self.model
        full = bool(act.all())
        if full:
            r = self._residual(z, v)
            w = r / sig
        else:
            r = np.full(model.m, np.nan)
            ra = model.residual(np.where(act, z, 0.0), v)
            r[act] = ra[act]
            w = r[act] / sig[act]
        # J(x) = sum_i (r_i / sigma_i)^2 (not w @ w: a long BLAS ddot wakes OpenBLAS's
        # threads, which then spin next to the estimator)
        obj = float(np.square(w).sum())
        if self.normalized_residuals:
            hit = self._sens_hit(fac, v, sig, act, obj)
            inv_sqrt_sens = hit[0]
            if math.isfinite(hit[2]):
                chi2 = hit[2]
            # r_N = r / sqrt(Omega_ii), Omega_ii = sigma_i^2 * s_i (s_i frozen per set)
            if full:
                rn = w * inv_sqrt_sens
            else:
                rn = np.full(model.m, np.nan)
                rn[act] = w * inv_sqrt_sens[act]
        else:
            rn = np.full(model.m, np.nan)
        return State(method=self.method, v=v, time=now, iterations=it, mismatch=dv,
                     residual=r, normalized_residual=rn, active=act, objective=obj,
                     dof=fac.dof, chi2_threshold=chi2)

    def _residual(self, z: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``model.residual(z, v)``, by the compiled kernel where ``A`` is dense."""
        model = self.model
        kern = _kernels()
        if kern is None or model._a_dense is None:
            return model.residual(z, v)
        if self._res_args is None:
            g = model._by_code
            self._res_args = (np.ascontiguousarray(model._a_dense), model._slot_mag, g[0],
                              model._slot_ang, g[1], model._pvbus, model._pslots,
                              model._pq_pick, g[4])
        r: np.ndarray = kern.residual(z, np.ascontiguousarray(v, complex), *self._res_args)
        ang = model._by_code[1]
        ra = r[ang]
        if (np.abs(ra) > np.pi).any():  # a wrapped difference (rare): rewrap
            r[ang] = np.angle(np.exp(1j * ra))
        return r

    def _sens_hit(self, fac: _Factor, v: np.ndarray, sig: np.ndarray, act: np.ndarray,
                  obj: float) -> tuple[np.ndarray, bool, float]:
        """``(1 / sqrt(s_i), clean, J quantile)`` of measurement set ``act`` (cached).

        Per measurement set, computed at a state that passes the chi-square test, then
        frozen: a state distorted by gross errors distorts the leverages too; until then
        every failing state takes its own. With :attr:`lazy_failing_leverages` a state
        that fails it grossly (J(x) above that many times the quantile) outside the
        bad-data search (:meth:`solve_clean`) keeps those its set last had, or, with
        none yet, gets none (normalized residuals NaN, the quantile by the degrees of
        freedom): the estimator worker uses only its J(x) and the test's quantile (it
        answers such a snapshot with a hold or a FAIL, or searches it, and the search
        takes them afresh at its own state). Why: computing them (~0.5 ms on IEEE33)
        made each of the first gross snapshots of a 1 kHz run, answered with a FAIL,
        miss its deadline. A state just above the quantile (1 % of healthy ones) takes
        them as before: its reported quantile is the calibrated one."""
        key = self._key(act)
        hit = self._sens.get(key)
        if hit is not None and hit[1]:  # frozen (the usual case)
            self._sens.move_to_end(key)
            return hit
        # chi-square test with this set's redundancy (fewer values than fac's set
        # when a few are filled from the estimate)
        dof = fac.dof - (fac.n_active - int(np.count_nonzero(act)))
        quantile = self._chi2(dof)
        lazy = self.lazy_failing_leverages
        if lazy > 0 and not self._searching and obj > lazy * quantile:
            if hit is None:  # gross, nothing to keep: the test's quantile by its dof
                return self._no_leverages()
            self._sens.move_to_end(key)
            return hit
        with single_threaded():
            sens, tr1, tr2 = linear_sensitivity(self.model, fac, v, sig, act,
                                                constraints=self.constraints, moments=True)
        hit = (1.0 / np.sqrt(sens), bool(obj <= quantile), j_quantile(tr1, tr2))
        self._sens[key] = hit
        if len(self._sens) > 4 * self.cache_size:
            self._sens.popitem(last=False)
        return hit

    def _no_leverages(self) -> tuple[np.ndarray, bool, float]:
        """A grossly failing state's leverages when its set has none (see
        :meth:`_sens_hit`): NaN, not clean, no moment-based quantile."""
        return np.full(self.model.m, np.nan), False, math.nan

    def _observable(self, act: np.ndarray) -> None:
        key = act.tobytes()
        if key in self._obs_ok:
            self._obs_ok.move_to_end(key)
            return
        with single_threaded():
            check_observable(self.model, act, pv_constraints=self.constraints)
        self._obs_ok[key] = True
        if len(self._obs_ok) > 256:
            self._obs_ok.popitem(last=False)

    def _chi2(self, dof: int) -> float:
        if dof not in self._chi2_cache:
            self._chi2_cache[dof] = chi2_quantile(dof)
        return self._chi2_cache[dof]

    def reset(self) -> None:
        """Forget the warm start (the factorizations stay cached)."""
        self._last_v = self._prev_v = None

    def forget_weights(self) -> None:
        """Forget the nominal values and everything built on them (the factorizations'
        weights, residual sensitivities): the next snapshot sets them afresh. The
        observability results, the zero-injection null space and the factorizations'
        structure stay cached."""
        self.model.nominal[:] = 0.0
        self.nominal_sigma[:] = 1.0
        self._pending = self._ready = self._refresh = None
        self._nominal_set[:] = False
        self._nom_version += 1
        self._drift_prev[:] = False
        self._drift_any = False
        # the factorizations keep their structure and are re-weighted on their next use
        # (~0.3 ms on IEEE33 against 2.5-4 ms to build one: the estimator worker's first
        # snapshot, after its warm-up forgot the warm-up's weights, took 4-7 ms)
        self._stale = set(self._cache.keys())
        self._sens.clear()

    def _drifted(self, z: np.ndarray, act: np.ndarray, full: bool = False) -> bool:
        """True when the active measurements' sigmas have moved, as a whole, more than
        ``reweight_ratio`` away from their sigmas at the nominal values (the re-weighting
        rule): the median log-ratio over the measurements whose sigma is relative (above
        its floor at either value), so a minority of gross errors cannot trigger it.
        ``full`` (every measurement active): what depends on the nominal values alone is
        taken from a cache kept per nominal values."""
        if full:
            plan = self._drift_plan
            if plan is None or plan[0] != self._nom_version:
                plan = self._drift_plan = (self._nom_version,
                                           *self._drift_terms(self._nominal_set))
            _, idx, rel, floor, inv_nom, nom_above = plan
        else:
            idx, rel, floor, inv_nom, nom_above = self._drift_terms(act & self._nominal_set)
        if idx.size == 0:
            return False
        kern = _kernels()
        if kern is not None:
            shift, used = kern.drift_shift(z, idx, rel, floor, inv_nom, nom_above)
            return used and abs(shift) > self._log_ratio
        s_now = np.fmax(rel * np.abs(z[idx]), floor)
        use = nom_above | (s_now > floor)
        lr = np.log(s_now[use] * inv_nom[use])
        n = lr.size
        if n == 0:
            return False
        # the median by partition (np.median's own overhead is most of this check)
        k = n // 2
        part = np.partition(lr, (k - 1, k) if n % 2 == 0 else k)
        shift = 0.5 * (part[k - 1] + part[k]) if n % 2 == 0 else part[k]
        return bool(abs(shift) > self._log_ratio)

    def _drift_terms(self, sel: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(idx, rel, floor, 1 / sigma_nominal, sigma_nominal above its floor)`` of the
        measurements ``sel`` with a relative sigma (rule a's constants)."""
        model = self.model
        idx = np.flatnonzero(sel & self._rel_meas)
        rel, floor = model.rel[idx], self._floor_pos[idx]
        s_nom = np.fmax(rel * np.abs(model.nominal[idx]), floor)
        return idx, rel, floor, 1.0 / s_nom, s_nom > floor

    def _rebase(self, z: np.ndarray, sig: np.ndarray, act: np.ndarray, *,
                full: bool = True) -> None:
        """Nominal values := this snapshot's active values; rebuild what they weighed.

        ``full`` (rule a, the load moved): everything is forgotten and rebuilt. Otherwise
        (rule b, a few slots' covariances moved): the cached factorizations are marked
        stale and re-weighted on their next use (dense mode: the gain, its inverse and
        the solution operator from the cached structure, ~0.3 ms on IEEE33 against ~10 ms
        for a full build), and the residual sensitivities of the measurement sets are
        kept: they move with the weights only to second order, and recomputing them
        (~6 ms) on every re-weighting would cost more than the solves.
        """
        if full:
            self.forget_weights()
        else:
            self._stale = set(self._cache.keys())
            self._drift_prev[:] = False
            self._drift_any = False
        np.copyto(self.model.nominal, z, where=act)
        np.copyto(self.nominal_sigma, sig, where=act)
        self._nominal_set |= act
        self._nom_version += 1
        self.reweights += 1

    # ------------------------------------------------------------------ batch
    def solve_batch(self, z: np.ndarray, *, active: np.ndarray | None = None,
                    sigma: np.ndarray | None = None, warm_start: bool | np.ndarray = True,
                    now: np.ndarray | None = None) -> BatchStates:
        """Estimate every row of ``z`` (``B x m``, pu) at once: the same answers as calling
        :meth:`solve` row after row (same weights, re-weighting rule and statistics, to
        the iteration tolerance), vectorised across the snapshots.

        Between re-weightings the gain is shared, so each fixed-point iteration is one
        multi-right-hand-side product with the stored solution operator for the whole
        batch (``dX = R_t op^T``, ``R_t`` the ``B x 2g`` rectangular residuals) and the
        PV constraint one batched ``p x p`` solve; columns leave the iteration as they
        converge. The re-weighting rule is evaluated for all rows at once and splits the
        batch into segments at the rows where it fires. Rows with more values missing than
        ``fill_fraction`` (their own factorization) and sparse-mode networks go through
        :meth:`solve` one by one. A row that fails (not observable, no convergence) is
        NaN with ``converged`` False and its error in ``errors``.
        """
        if self._pending is not None:  # a deferred re-weighting (defer_reweight) first
            self.reweight_pending()
        model = self.model
        self._scale = None  # sigma factors are a solve() option
        zb = np.atleast_2d(np.asarray(z, float))
        nb = zb.shape[0]
        finite = np.isfinite(zb)
        act = finite if active is None else (np.atleast_2d(np.asarray(active, bool)) & finite)
        sig = model.sigma(zb)
        if sigma is not None:
            sg = np.atleast_2d(np.asarray(sigma, float))
            sig = np.where(np.isfinite(sg) & (sg > 0), sg, sig)
        out = BatchStates.empty(nb, model.m, model.n_bus, self.method)
        n_off = model.m - np.count_nonzero(act, axis=1)
        shared = n_off <= self.fill_fraction * model.m
        if isinstance(warm_start, np.ndarray):
            v0 = warm_start.astype(complex)
        elif warm_start and self._last_v is not None:
            v0 = self._last_v
        else:
            v0 = self._flat
        self._rows_args = _rows_args(zb, sig, act, shared)
        try:
            with single_threaded():  # once for the batch: its factorizations, products
                self._batch_rows(out, zb, sig, act, shared, now, v0)
        finally:
            self._rows_args = None
        return out

    def _batch_rows(self, out: BatchStates, zb: np.ndarray, sig: np.ndarray,
                    act: np.ndarray, shared: np.ndarray, now: np.ndarray | None,
                    v0: np.ndarray) -> None:
        """:meth:`solve_batch`'s walk over the rows: segments sharing a factorization,
        split where the re-weighting rule fires; rows with their own measurement set one
        by one."""
        nb = zb.shape[0]
        start = 0
        rebased = False  # the nominal values were set from row ``start``
        while start < nb:
            if not shared[start]:
                self._batch_one(out, start, zb, sig, act, now)
                start += 1
                rebased = False
                continue
            try:
                fac = self._batch_factor(zb[start], sig[start], act[start], rebased=rebased)
            except EstimatorError as exc:
                out.fail(start, exc)
                start += 1
                rebased = False
                continue
            end, fired = self._segment_end(fac, zb, sig, act, shared, start)
            if end == start:  # the rule fires on this very row: re-base on it first
                self._rebase(zb[start], sig[start], act[start], full=False)
                fac = self.factor(self._all, zb[start], sig[start])
                end, fired = self._segment_end(fac, zb, sig, act, shared, start)
            ra = self._rows_args
            if ra is not None and ra[4][start:end].all():
                rows = np.arange(start, end)  # the full set: checked by _batch_factor
            else:
                rows = self._observable_rows(np.arange(start, end), act, out)
            if fac.dense and rows.size:
                v0 = self._batch_segment(fac, out, rows, zb, sig, act, v0)
                # filling many gaps from the estimate can converge slowly: those rows get
                # their own factorization, as in solve()
                for k in rows[~out.converged[rows]]:
                    out.errors.pop(int(k), None)
                    self._batch_one(out, int(k), zb, sig, act, now, own=True)
            else:
                for k in rows:
                    self._batch_one(out, int(k), zb, sig, act, now)
            start = end
            if fired:
                full = self._fire_load
                if full is None:
                    full = bool(self._drifted_rows(zb[start:start + 1],
                                                   act[start:start + 1])[0])
                self._rebase(zb[start], sig[start], act[start], full=full)
            rebased = fired

    def _batch_one(self, out: BatchStates, k: int, zb: np.ndarray, sig: np.ndarray,
                   act: np.ndarray, now: np.ndarray | None, *, own: bool = False) -> None:
        """Row ``k`` through :meth:`solve` (the batch's fallback); ``own``: with the
        factorization of its own measurement set (no filling from the estimate)."""
        fill = self.fill_fraction
        if own:
            self.fill_fraction = 0.0
        try:
            st = self.solve(zb[k], active=act[k], sigma=sig[k],
                            now=0.0 if now is None else float(now[k]))
        except EstimatorError as exc:
            out.fail(k, exc)
            return
        finally:
            self.fill_fraction = fill
        out.put(k, st)

    def _observable_rows(self, rows: np.ndarray, act: np.ndarray, out: BatchStates
                         ) -> np.ndarray:
        """The rows whose measurement set is observable (the others fail in ``out``)."""
        keep = np.ones(rows.size, bool)
        for k, sel in _groups(act[rows]):
            try:
                self._observable(act[rows[k]])
            except EstimatorError as exc:
                keep[sel] = False
                for r in rows[sel]:
                    out.fail(int(r), exc)
        return rows[keep]

    def _batch_factor(self, z: np.ndarray, sig: np.ndarray, act: np.ndarray, *,
                      rebased: bool = False) -> _Factor:
        """The shared (full-set) factorization, observability of ``act`` checked;
        ``rebased``: the nominal values were just set from this row (its sigmas are then
        theirs: rule (a) cannot fire, so it is not evaluated)."""
        self._observable(act)
        if self.reweight_ratio and not rebased and self._drifted(z, act, bool(act.all())):
            self._rebase(z, sig, act)
        return self.factor(self._all, z, sig)

    def _segment_end(self, fac: _Factor, zb: np.ndarray, sig: np.ndarray, act: np.ndarray,
                     shared: np.ndarray, start: int) -> tuple[int, bool]:
        """``(end, fired)``: the first row from ``start`` on where the re-weighting rule
        fires against ``fac`` (``fired``), or the end of the rows sharing the
        factorization; leaves ``_drift_prev`` as :meth:`solve` would. Examines the rows in
        chunks that double from 16, or 64 with the compiled kernels (a segment is
        typically tens of rows long)."""
        nb = zb.shape[0]
        self._fire_load = None
        kern = _kernels()
        if kern is not None and self.reweight_ratio and fac.wb is not None:
            return self._segment_scan(kern, fac, zb, sig, act, shared, start)
        chunk = 16
        pos = start
        while True:
            stop = pos
            while stop < nb and shared[stop] and stop - pos < chunk:
                stop += 1
            if stop == pos:
                return pos, False
            if not self.reweight_ratio or fac.wb is None:
                return stop, False
            hit = self._fires(fac, zb, sig, act, pos, stop)
            if hit >= 0:
                return pos + hit, True
            pos = stop
            chunk = min(2 * chunk, SEGMENT_CHUNK)

    def _segment_scan(self, kern: Any, fac: _Factor, zb: np.ndarray, sig: np.ndarray,
                      act: np.ndarray, shared: np.ndarray, start: int) -> tuple[int, bool]:
        """:meth:`_segment_end` in one compiled scan (:func:`estimator.kernels.
        first_fire`) that stops at the first row where a rule fires: every row is examined
        once (the chunks of the NumPy path look up to twice as far as the segment
        reaches). Also records whether rule (a) fired there (``_fire_load``)."""
        ra = self._rows_args
        if ra is None or ra[0] is not zb:  # (solve_batch sets them; a direct call)
            ra = _rows_args(zb, sig, act, shared)
        stop = int(ra[5][start])
        if stop == start:
            return start, False
        plan = self._rows_shift_plan()
        prev = self._drift_prev[fac.slots]
        row, fired, load = kern.first_fire(
            ra[1], ra[2], ra[3], start, stop, prev, fac.has0, fac.has1, fac.idx0, fac.idx1,
            fac.slot_type, fac.is_pv_slot, self._nominal_set, fac.wb, self._tol_hi,
            _SLOT_CONSTS, bool(self._nominal_set.any()), plan[1], self.model.rel, plan[2],
            plan[3], self._log_ratio)
        self._drift_prev[:] = False
        if row > start:
            self._drift_prev[fac.slots] = prev
        self._drift_any = bool(self._drift_prev.any())
        self._fire_load = bool(load)
        return int(row), bool(fired)

    def _rows_shift_plan(self) -> tuple[Any, ...]:
        """Rule (a)'s constants for the row kernels, per nominal values (cached)."""
        model = self.model
        plan = self._rows_plan
        if plan is None or plan[0] != self._nom_version:
            floor = self._floor_pos  # max(floor, 1e-12)
            plan = self._rows_plan = (
                self._nom_version, self._nominal_set & self._rel_meas, floor,
                np.fmax(model.rel * np.abs(model.nominal), floor))
        return plan

    def _fires(self, fac: _Factor, zb: np.ndarray, sig: np.ndarray, act: np.ndarray,
               start: int, stop: int) -> int:
        """Rules (a) and (b) for rows ``start:stop`` against ``fac``: the offset of the
        first row where one fires (-1: none); ``_drift_prev`` follows the rows."""
        rows = slice(start, stop)
        a = act[rows]
        drift = self._rows_drift(fac, zb[rows], sig[rows], a)
        prev = np.vstack([self._drift_prev[fac.slots][None, :], drift[:-1]])
        fire = np.any(drift & prev, axis=1)
        if start > 0:
            fire |= self._drifted_rows(zb[rows], a)
        else:
            fire[1:] |= self._drifted_rows(zb[start + 1:stop], a[1:])  # row 0: _batch_factor
        hit = np.flatnonzero(fire)
        k = int(hit[0]) if hit.size else stop - start
        self._drift_prev[:] = False
        if k > 0:
            self._drift_prev[fac.slots] = drift[k - 1]
        self._drift_any = bool(self._drift_prev.any())
        return int(hit[0]) if hit.size else -1

    def _rows_drift(self, fac: _Factor, zb: np.ndarray, sig: np.ndarray, a: np.ndarray
                    ) -> np.ndarray:
        """Rule (b)'s per-slot test for every row (``B x g``): the slot's covariance at
        the row's values is off the gain's by more than ``weight_tolerance``."""
        assert fac.wb is not None
        # (NumPy: with the compiled kernels _segment_scan tests the rows one at a time)
        has = np.stack([fac.has0 & a[:, fac.idx0], fac.has1 & a[:, fac.idx1]], axis=-1)
        full = has[..., 0] & (has[..., 1] | fac.is_pv_slot) & self._nominal_set[fac.idx0]
        r11, r12, r22 = self._slot_cov(fac.slots, has, zb, sig)
        w11, w12, w22 = fac.wb.T
        tr = w11 * r11 + 2.0 * w12 * r12 + w22 * r22
        det = (w11 * w22 - w12 * w12) * (r11 * r22 - r12 * r12)
        disc = np.sqrt(np.maximum(0.25 * tr * tr - det, 0.0))
        drift: np.ndarray = full & (((0.5 * tr + disc) > self._tol_hi)
                                    | ((0.5 * tr - disc) * self._tol_hi < 1.0))
        return drift

    def _drifted_rows(self, zb: np.ndarray, act: np.ndarray) -> np.ndarray:
        """Rule (a) (:meth:`_drifted`) for every row of ``zb``."""
        model = self.model
        if not self._nominal_set.any():
            return np.zeros(zb.shape[0], bool)
        kern = _kernels()
        if kern is not None:
            plan = self._rows_shift_plan()
            out: np.ndarray = kern.rows_shift(
                np.ascontiguousarray(zb), np.ascontiguousarray(act), plan[1], model.rel,
                plan[2], plan[3], self._log_ratio)
            return out
        check = self._nominal_set & ~model.is_angle & (model.rel > 0)
        floor = np.maximum(model.floor, 1e-12)
        check = act & check
        s_now = np.fmax(model.rel * np.abs(zb), floor)
        s_nom = np.fmax(model.rel * np.abs(model.nominal), floor)
        use = check & ((s_now > floor) | (s_nom > floor))
        # per-row median of the log-ratios over the used entries: sort with the unused
        # ones last (+inf), pick the middle of the k used
        lr = np.sort(np.where(use, np.log(s_now / s_nom), np.inf), axis=1)
        k = np.count_nonzero(use, axis=1)
        ok = k > 0
        lo = np.take_along_axis(lr, np.maximum((k - 1) // 2, 0)[:, None], axis=1)[:, 0]
        hi = np.take_along_axis(lr, np.maximum(k // 2, 0)[:, None], axis=1)[:, 0]
        shift = np.where(ok, 0.5 * (lo + hi), 0.0)
        return ok & (np.abs(shift) > math.log(self.reweight_ratio))

    def _batch_segment(self, fac: _Factor, out: BatchStates, rows: np.ndarray,
                       zb: np.ndarray, sig: np.ndarray, act: np.ndarray,
                       v0: np.ndarray) -> np.ndarray:
        """Rows ``rows`` sharing ``fac`` (dense mode): the fixed point for all of them at
        once, then their statistics; returns the last row's voltages (next warm start)."""
        kern = _kernels()
        ra = self._rows_args
        if (kern is not None and ra is not None and fac.complete and fac.c.shape[0] == 0
                and rows[-1] - rows[0] == rows.size - 1 and ra[4][rows[0]:rows[-1] + 1].all()):
            return self._batch_whole(kern, fac, out, slice(int(rows[0]), int(rows[-1]) + 1),
                                     v0)
        tol, itmax = self.tolerance, self.max_iterations
        z, a = zb[rows], act[rows]
        has0 = fac.has0 & a[:, fac.idx0]
        has1 = fac.has1 & a[:, fac.idx1]
        n = self.model.n_bus
        x = np.empty((rows.size, 2 * n))
        x.view(complex)[:] = v0
        with single_threaded():  # small products: BLAS threads would only hand off
            gap = ~(has0.all(axis=1) & (has1 | fac.is_pv_slot).all(axis=1))
            it = np.zeros(rows.size, np.int64)
            conv = np.zeros(rows.size, bool)
            full = np.flatnonzero(~gap)
            if full.size and kern is not None and fac.c.shape[0] == 0:
                ro = self._rows_op(fac, x[full[0]].view(complex), z[full[0]])
                xf = x if full.size == rows.size else np.ascontiguousarray(x[full])
                it[full], conv[full] = kern.rows_correction(
                    xf, np.ascontiguousarray(z[full]), ro.hx_t, ro.opx_t, ro.newton_t,
                    ro.ph01, ro.pw01, ro.sign, ro.ph_pos, ro.pw_pos, ro.vb, fac.pv, ro.m1,
                    ro.m2, ro.er_t, tol, itmax)
                if xf is not x:
                    x[full] = xf
            elif full.size:
                step = self._dense_step(fac, x[full[0]].view(complex), z[full[0]],
                                        reuse=True)
                x[full], it[full], conv[full] = step.run_rows(x[full], z[full], tol, itmax)
            # a row filled from the estimate contracts slowly along the filled directions
            # and stops near its start: start it, as solve() would from the previous
            # snapshot, from the latest complete row's answer (v0 before the first)
            last = np.maximum.accumulate(np.where(~gap, np.arange(gap.size), -1))
            redo = np.flatnonzero(gap)
            if redo.size:
                zc = np.where(a[redo], z[redo], 0.0)
                z0 = np.where(has0[redo], zc[:, fac.idx0], 0.0)
                z1 = np.where(has1[redo], zc[:, fac.idx1], 0.0)
                start = x[redo].copy()
                has_prev = last[redo] >= 0
                start[has_prev] = x[last[redo][has_prev]]
                x[redo], it[redo], conv[redo] = self._batch_iterate(
                    fac, start, z0, z1, has0[redo], has1[redo], tol, itmax)
            v = x.view(complex)
            self._batch_statistics(fac, out, rows, v, z, sig[rows], a, it, conv)
        self._last_v = v[-1].copy()
        self.last_factor = fac
        return self._last_v

    def _batch_whole(self, kern: Any, fac: _Factor, out: BatchStates, rows: slice,
                     v0: np.ndarray) -> np.ndarray:
        """:meth:`_batch_segment` for consecutive rows with every value active (the usual
        batch) and a complete factorization without zero-injection rows: the compiled
        fixed point (:func:`estimator.kernels.rows_correction`) and the statistics, with
        nothing per row left to mask, fill or group."""
        zc, sigc, actc = self._rows_args[1:4]  # type: ignore[index]
        z, sig, a = zc[rows], sigc[rows], actc[rows]
        # the iterates are the output rows themselves (C order: a float view of them)
        v = out.v[rows]
        v[:] = v0
        ro = self._rows_op(fac, v0, z[0])
        it, conv = kern.rows_correction(v.view(np.float64), z, ro.hx_t, ro.opx_t,
                                        ro.newton_t, ro.ph01, ro.pw01, ro.sign, ro.ph_pos,
                                        ro.pw_pos, ro.vb, fac.pv, ro.m1, ro.m2, ro.er_t,
                                        self.tolerance, self.max_iterations)
        if self._res_args is None or self._a_t is None:
            self._rows_residual(z[:1], v[:1])  # the kernel's arguments, made once
        assert self._res_args is not None
        r, w, obj = kern.rows_stats(z, v, self._a_t, *self._res_args[1:], a, sig,
                                    self._angles)
        thr = fac.chi2
        if self.normalized_residuals:
            hit = self._sens_hit(fac, v[0], sig[0], a[0], float(obj[0]))
            np.multiply(w, hit[0], out=out.normalized_residual[rows])
            if math.isfinite(hit[2]):
                thr = hit[2]
        out.iterations[rows] = it
        out.converged[rows] = conv
        out.residual[rows] = r
        out.objective[rows] = obj
        out.dof[rows] = fac.dof
        out.chi2_threshold[rows] = thr
        if not conv.all():
            for k in np.arange(rows.start, rows.stop)[~conv]:
                out.errors[int(k)] = "DidNotConverge: batch iteration limit reached"
        self._last_v = v[-1].copy()
        self.last_factor = fac
        return self._last_v

    def _rows_op(self, fac: _Factor, v: np.ndarray, z: np.ndarray) -> _RowsOp:
        """The compiled batch path's operators of ``fac`` (made once per factorization):
        the Newton matrix and the gathers of the latest dense fast path of the same
        measurement structure (as :meth:`_dense_step` with ``reuse``; one is built, with
        its ``T`` at ``(v, z)``, when there is none yet)."""
        if fac.rows is not None:
            return fac.rows
        assert fac.op is not None and fac.hd is not None
        key = fac.slots.tobytes() + fac.has0.tobytes() + fac.has1.tobytes()
        like, t = self._steps.get(key), self._newton.get(key)
        if like is None or t is None:
            like = self._dense_step(fac, v, z, reuse=True)
            t = like.newton
            assert t is not None
        prev = self._rows_like.get(key)
        if prev is not None and prev[0] is fac.hd and prev[1] is t:
            hx_t, newton_t = prev[2], prev[3]
        else:
            hx = fac.hd if like.r0d is None else np.vstack([fac.hd, like.r0d])
            hx_t, newton_t = np.ascontiguousarray(hx.T), np.ascontiguousarray(t.T)
            if len(self._rows_like) > 4 * self.cache_size:
                self._rows_like.clear()
            self._rows_like[key] = (fac.hd, t, hx_t, newton_t)
        p = fac.pv.size
        opx_t = fac.opx_t
        if opx_t is None:
            op_t = fac.op_t if fac.op_t is not None else fac.op.T
            g2, n2 = op_t.shape
            # [op; R0 op]^T = [op^T, op^T R0^T]
            opx_t = np.empty((g2, n2 + 2 * p))
            opx_t[:, :n2] = op_t
            if p:
                assert like.r0d is not None
                np.matmul(op_t, like.r0d.T, out=opx_t[:, n2:])
        m1, m2 = _pv_metric(fac)
        fac.rows = _RowsOp(
            hx_t=hx_t, opx_t=opx_t, newton_t=newton_t, ph01=like.ph01, pw01=like.pw01,
            sign=like.sign, ph_pos=fac.phasor_pos, pw_pos=fac.power_pos, vb=like.vb,
            m1=m1 if m1 is not None else np.zeros((p, p), complex),
            m2=m2 if m2 is not None else np.zeros((p, p), complex),
            er_t=(np.ascontiguousarray(fac.er.T) if fac.er is not None
                  else np.zeros((0, fac.n_state))))
        return fac.rows

    @staticmethod
    def _batch_ops(fac: _Factor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(A^T, H^T, op^T)`` dense, made once per factorization for the batch
        iterations of rows with gaps (row-vector form: ``X = V A^T``,
        ``x' = x + (z_t - x H^T) op^T``)."""
        assert fac.op is not None and fac.hd is not None
        if fac.batch is None:
            fac.batch = (np.ascontiguousarray(fac.a.toarray().T),
                         np.ascontiguousarray(fac.hd.T), np.ascontiguousarray(fac.op.T))
        return fac.batch

    def _batch_iterate(self, fac: _Factor, x: np.ndarray, z0: np.ndarray, z1: np.ndarray,
                       has0: np.ndarray, has1: np.ndarray, tol: float, itmax: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`_iterate` on ``B`` columns at once (rows of ``x``, interleaved states);
        a column stops at its own convergence. Returns ``(x, iterations, converged)``."""
        ad, hd_t, op_t = self._batch_ops(fac)
        phasor, pvs, vbus = fac.is_phasor, fac.is_pv_slot, fac.vbus
        nb = x.shape[0]
        if nb == 0:
            return x, np.zeros(0, np.int64), np.zeros(0, bool)
        iters = np.zeros(nb, np.int64)
        conv = np.zeros(nb, bool)
        dv_prev = np.zeros(nb)
        live = np.arange(nb)
        for it in range(1, itmax + 1):
            xv = x[live]
            v = xv.view(complex)
            xm = v @ ad
            vk = v[:, vbus]
            h0, h1 = has0[live], has1[live]
            # phasor slots: z_t = m e^{ja}; power slots: conj((P + jQ) / V_k) (PV: Q = 0);
            # a missing member taken from the estimate
            mag = np.where(h0, z0[live], np.abs(xm))
            ang = np.where(h1, z1[live], np.angle(xm))
            s_hat = vk * np.conj(xm)
            p = np.where(h0, z0[live], s_hat.real)
            q = np.where(h1, z1[live], np.where(pvs, 0.0, s_hat.imag))
            zt = np.where(phasor, mag * np.exp(1j * ang), np.conj((p + 1j * q) / vk))
            # r_t = z_t - H x ; dX = r_t op^T (one multi-right-hand-side product)
            rt = zt.view(np.float64) - xv @ hd_t
            x1 = xv + rt @ op_t
            live = self._batch_settle(fac, v, xv, x1, x, live, it, tol, iters, conv, dv_prev)
            if live.size == 0:
                break
        return x, iters, conv

    def _batch_settle(self, fac: _Factor, v: np.ndarray, xv: np.ndarray, x1: np.ndarray,
                      x: np.ndarray, live: np.ndarray, it: int, tol: float,
                      iters: np.ndarray, conv: np.ndarray, dv_prev: np.ndarray
                      ) -> np.ndarray:
        """End of one batch iteration: the equality constraints' and the PV nodes'
        corrections, the new iterates stored, each column's convergence test (as in
        :meth:`_converged`); the columns still iterating."""
        if fac.c.shape[0]:
            x1 -= (fac.c @ xv.T).T @ fac.opc.T  # type: ignore[union-attr]
        if fac.pv.size:
            x1 = self._batch_pv(fac, v, x1)
        dv = np.abs(x1 - xv).max(axis=1)
        x[live] = x1
        iters[live] = it
        done = (dv < tol) | ((2.0 * dv < dv_prev[live]) & (dv * dv < tol * (dv_prev[live]
                                                                           - dv)))
        dv_prev[live] = dv
        conv[live[done]] = True
        return live[~done]

    @staticmethod
    def _batch_pv(fac: _Factor, v: np.ndarray, x1: np.ndarray) -> np.ndarray:
        """The PV nodes' ``Q = 0`` correction of :meth:`_iterate` for every column."""
        assert fac.ypv is not None and fac.s0r is not None and fac.er is not None
        u = v[:, fac.pv]
        u = u / np.abs(u)
        dd = np.stack((-u.imag, u.real), axis=-1)  # B x p x 2
        t = (np.conj(u) * (x1.view(complex) @ fac.ypv.T)).imag
        # S_b = D_b^T (R0 E R0^T) D_b ; mu_b = S_b^-1 t_b ; x = x0 - E R0^T D_b mu_b
        s = np.einsum("bja,jalc,blc->bjl", dd, fac.s0r, dd)
        mu = np.linalg.solve(s, t[..., None])[..., 0]
        return x1 - (dd * mu[..., None]).reshape(x1.shape[0], -1) @ fac.er.T

    def _batch_statistics(self, fac: _Factor, out: BatchStates, rows: np.ndarray,
                          v: np.ndarray, z: np.ndarray, sig: np.ndarray, act: np.ndarray,
                          it: np.ndarray, conv: np.ndarray) -> None:
        """Residuals, J(x), thresholds and normalized residuals of :meth:`_finish`, for
        every row (per measurement set: the cached sensitivities)."""
        model = self.model
        r = self._rows_residual(z, v)
        kern = _kernels()
        if kern is not None:
            w, obj = kern.rows_weighted(r, np.ascontiguousarray(act),
                                        np.ascontiguousarray(sig), np.flatnonzero(model.is_angle))
        else:
            ang = model.is_angle
            r[:, ang] = np.angle(np.exp(1j * r[:, ang]))
            r = np.where(act, r, np.nan)
            w = r / sig
            obj = np.where(act, w * w, 0.0).sum(axis=1)
        n_off = model.m - np.count_nonzero(act, axis=1)
        dof = fac.dof - n_off
        thr = np.array([self._chi2(int(d)) for d in dof])
        rn = np.full(w.shape, np.nan)
        if self.normalized_residuals:
            for k, sel in _groups(act):
                hit = self._sens_hit(fac, v[k], sig[k], act[k], float(obj[k]))
                rn[sel] = w[sel] * hit[0]
                if math.isfinite(hit[2]):
                    thr[sel] = hit[2]
        out.set_rows(rows, v, it, conv, r, rn, obj, dof, thr)

    def _rows_residual(self, z: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``z - h(v)`` for every row (angles not yet wrapped)."""
        kern = _kernels()
        if kern is None or self.model._a_dense is None:
            return z - self._h_rows(v)
        if self._res_args is None:
            self._residual(z[0], v[0])  # the kernel's arguments, made once
        assert self._res_args is not None
        if self._a_t is None:
            self._a_t = np.ascontiguousarray(self._res_args[0].T)
        out: np.ndarray = kern.rows_residual(np.ascontiguousarray(z),
                                             np.ascontiguousarray(v, complex), self._a_t,
                                             *self._res_args[1:])
        return out

    def _h_rows(self, v: np.ndarray) -> np.ndarray:
        """:meth:`MeasurementModel.h` for every row of ``v`` (``B x n``)."""
        model = self.model
        x = v @ model.A.toarray().T if model._a_dense is None else v @ model._a_dense.T
        out = np.empty((v.shape[0], model.m))
        g = model._by_code
        out[:, g[0]] = np.abs(x[:, model._slot_mag])
        out[:, g[1]] = np.angle(x[:, model._slot_ang])
        s = np.ascontiguousarray(v[:, model._pvbus] * np.conj(x[:, model._pslots]))
        out[:, g[4]] = s.view(np.float64)[:, model._pq_pick]
        return out



def sensitivity(model: MeasurementModel, v: np.ndarray, sig: np.ndarray, act: np.ndarray,
                *, constraints: bool = True) -> np.ndarray:
    """Residual sensitivity ``s_i = Omega_ii / sigma_i^2`` of every measurement.

    Classical WLS residual covariance (Handschin et al. 1975) in raw measurement space at
    the estimate ``v``: ``Omega = R - H_r E H_r^T`` with ``E`` the top-left block of the
    inverse of the KKT matrix ``[[H_r^T R^-1 H_r, C^T], [C, 0]]``; ``C`` holds the exact
    rows (zero injection, dQ/dx at PV nodes, and a reference angle when no angle is
    measured). Computed once per measurement set (first solve that uses it) and reused:
    ``r_N,i = r_i / (sigma_i sqrt(s_i))``. Floored at 1e-6 (critical measurements).
    """
    n = model.n_bus
    hr = model.jacobian(v).toarray()
    ha = hr[act]
    winv = 1.0 / sig[act] ** 2
    gain = ha.T @ (winv[:, None] * ha)
    rows = []
    if constraints:
        c0 = constraint_rows(model, pv_constraints=False).toarray()
        if c0.size:
            rows.append(c0)
        if model.pv_nodes.size:
            ybus = model.ybus
            for k in model.pv_nodes:
                yk = ybus[k].toarray().ravel()
                ik = yk @ v
                # dS_k/dVr = conj(I_k) e_k + V_k conj(Y_k)
                # dS_k/dVi = j conj(I_k) e_k - j V_k conj(Y_k)
                d_vr = v[k] * np.conj(yk)
                d_vr[k] += np.conj(ik)
                d_vi = -1j * v[k] * np.conj(yk)
                d_vi[k] += 1j * np.conj(ik)
                rows.append(np.r_[d_vr.imag, d_vi.imag][None, :])
    if not np.any(act & model.is_angle):
        ref = np.zeros((1, 2 * n))
        ref[0, n + model.net.slack] = 1.0
        rows.append(ref)
    c = np.vstack(rows) if rows else np.zeros((0, 2 * n))
    k = np.block([[gain, c.T], [c, np.zeros((c.shape[0], c.shape[0]))]])
    try:
        e = np.linalg.inv(k)[: 2 * n, : 2 * n]
    except np.linalg.LinAlgError:
        e = np.linalg.pinv(k)[: 2 * n, : 2 * n]
    # diag(H_r E H_r^T)
    lev = np.sum((hr @ e) * hr, axis=1)
    return np.clip(1.0 - lev / sig**2, 1e-6, 1.0)


def _block(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
    """Real 2x2 blocks of ``df = a dw + b conj(dw)`` (per entry): ``(d_rr, d_ri, d_ir, d_ii)``.

    ``dw = du + j dv``: ``Re df = Re(a + b) du - Im(a - b) dv``,
    ``Im df = Im(a + b) du + Re(a - b) dv``.
    """
    s, d = a + b, a - b
    return s.real, -d.imag, s.imag, d.real


def linear_sensitivity(model: MeasurementModel, fac: _Factor, v: np.ndarray,
                       sig: np.ndarray, act: np.ndarray, *,
                       constraints: bool = True, moments: bool = False) -> Any:
    """Residual sensitivity ``s_i = Omega_ii / sigma_i^2`` of the linear estimator itself;
    with ``moments=True`` also ``(tr B^T B, tr (B^T B)^2)`` of the J(x) statistic (see
    :func:`j_quantile`).

    The estimator's answer is the fixed point ``x(z)`` of ``F(x, z) = 0``, not the WLS
    minimizer in raw measurement space, so the textbook ``Omega = R - H_r E H_r^T``
    misjudges its residuals (and the largest-normalized-residual test then removes good
    measurements). First-order error propagation through the fixed point instead
    (implicit function theorem; Schweppe & Wildes 1970 for the residual covariance of a
    linear estimator): with ``z_t(z, x)`` the equivalent-current transform of the slots,

    ``H^T W (z_t(z, x) - H x) - Ct^T lambda = 0``,  ``Cb x = 0``  (at the fixed point)

    ``=> [[H^T W (H - J_x), Ct^T], [Cb, 0]] [dx; dlambda] = [H^T W J_z dz; 0]``,
    ``S = dx/dz``, ``dr = (I - H_r S) dz``, ``Omega = (I - H_r S) R (I - H_r S)^T``.

    ``J_x``, ``J_z`` are the derivatives of ``z_t`` (power slots: ``conj(S / V_k)``;
    partial slots: the missing component from the estimate), evaluated at the estimate's
    own slot values (``z_t = X = A V``) so that residuals do not enter the leverages;
    ``Ct`` holds the zero-injection rows and the PV rows the iteration uses
    (``Im(conj(u) Ybus[k] V)``, ``u`` frozen), ``Cb`` the zero-injection rows and the full
    ``dQ_k/dx`` (what the fixed point keeps at zero); a reference angle row when no angle
    is measured. Floored at 1e-6 (critical measurements).

    Dense for a dense factorization (IEEE33 and the like): the bad-data search evaluates
    it once per trial set, so every matrix is built by vectorised dense products (and
    compiled kernels) from the factorization's dense ``H`` and weight blocks (cached per
    factorization, :func:`_sens_plan`), never as sparse matrices (their construction was
    most of the former 3-6 ms per call on IEEE33). Sparse products for the sparse mode's
    sizes (:func:`_linear_sensitivity_sparse`), where dense ones cost more (1000 buses:
    1.3 s against 1.65 s).
    """
    if not fac.dense:  # large networks: sparse products are cheaper
        return _linear_sensitivity_sparse(model, fac, v, sig, act, constraints=constraints,
                                          moments=moments)
    n2 = 2 * model.n_bus
    hd, htw, inv_il, _ = _sens_plan(model, fac)
    jx, bz, hr = _sens_jacobians(model, fac, v, act, hd, htw, inv_il)
    # top-left H^T W (H - J_x); right-hand side H^T W J_z (one 2-vector per active member)
    k11 = htw @ (hd - jx)
    ct, cb = _fixed_point_rows(model, fac, v, act, constraints=constraints)
    if ct.shape[0]:
        # constraint rows scaled to the gain's size (pivoting)
        scale = np.abs(np.diag(k11)).max() / max(np.abs(ct).max(), np.abs(cb).max())
        nc = ct.shape[0]
        kk = np.zeros((n2 + nc, n2 + nc))
        kk[:n2, :n2] = k11
        kk[:n2, n2:] = scale * ct.T
        kk[n2:, :n2] = scale * cb
    else:
        kk = k11
    # S = dx/dz: K [S; .] = [H^T W J_z; 0], J_z dense (one 2-vector per active member at
    # its slot's rows). An LU solve, not the explicit inverse: near-critical members'
    # Omega_ii is a difference of nearly equal terms, and the inverse's larger rounding
    # moved such a member's r_N by 1e-6 relative, enough to reorder a near-tie of the
    # largest-normalized-residual search
    rhs = np.zeros((kk.shape[0], model.m))
    rhs[:n2] = bz
    _, _, sol, info = gesv(kk, rhs)
    if info != 0:  # singular (a critical set at a degenerate state): least squares
        sol = np.linalg.lstsq(kk, rhs, rcond=None)[0]
    sens = sol[:n2]
    # T = H_r S (raw Jacobian, interleaved columns); Omega_ii = sum_j (I - T)_ij^2 s_j^2
    t = -(hr @ sens)
    t[np.arange(model.m), np.arange(model.m)] += 1.0
    var = np.where(act, sig, 0.0) ** 2
    omega = (t * t) @ var
    sens = np.where(act, np.maximum(omega / sig**2, 1e-6), 1.0)
    if not moments:
        return sens
    # J = |B u|^2, u ~ N(0, I), B = diag(1/sigma) (I - H_r S) diag(sigma) (active part)
    # (inactive rows and columns zeroed rather than cut out: the same sums, no gather)
    s_act = np.where(act, sig, 0.0)
    b = t * s_act[None, :]
    b *= np.where(act, 1.0 / sig, 0.0)[:, None]
    bbt = b @ b.T
    return sens, float(np.trace(bbt)), float(np.square(bbt).sum())


def _sens_plan(model: MeasurementModel, fac: _Factor
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(H, (W H)^T, inverse interleave, C)`` dense, cached on the factorization: the parts of
    :func:`linear_sensitivity` that depend only on the measurement set and its weights.
    Keyed on the identity of the weight blocks (a re-weighting replaces them)."""
    plan = fac.sens_plan
    if plan is not None and plan[0] is fac.wb:
        return plan[1:]
    assert fac.wb is not None
    hd = fac.hd if fac.hd is not None else fac.h.toarray()
    w11, w12, w22 = fac.wb.T
    # W H by 2x2 blocks (W symmetric): H^T W = (W H)^T
    wh = np.empty_like(hd)
    wh[0::2] = w11[:, None] * hd[0::2] + w12[:, None] * hd[1::2]
    wh[1::2] = w12[:, None] * hd[0::2] + w22[:, None] * hd[1::2]
    htw = np.ascontiguousarray(wh.T)
    inv_il = np.empty(fac.n_state, np.int64)
    inv_il[_interleave(model.n_bus)] = np.arange(fac.n_state)
    fac.sens_plan = (fac.wb, hd, htw, inv_il, fac.c.toarray())
    return hd, htw, inv_il, fac.sens_plan[4]


def _sens_jacobians(model: MeasurementModel, fac: _Factor, v: np.ndarray, act: np.ndarray,
                    hd: np.ndarray, htw: np.ndarray, inv_il: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(J_x, H^T W J_z, H_r)`` dense for :func:`linear_sensitivity`: by two compiled kernels
    (``kernels.sens_jacobians``, ``kernels.sens_raw_jacobian``: about 60 small NumPy
    calls each otherwise), or by the NumPy code (``GRIDTWIN_JIT=0``); the same
    arithmetic per entry."""
    kern = _kernels()
    idx = np.flatnonzero(act)
    slot_pos = np.full(model.g, -1)
    slot_pos[fac.slots] = np.arange(fac.slots.size)
    sp_i = slot_pos[model.slot[idx]]
    if kern is None:
        jx, d = _transform_jacobians(model, fac, v, act, hd, sp_i, idx)
        jz = np.zeros((hd.shape[0], model.m))
        jz[2 * sp_i, idx] = d.real
        jz[2 * sp_i + 1, idx] = d.imag
        hr = np.zeros((model.m, fac.n_state))
        hr[model._jac_rows, inv_il[model._jac_cols]] = model.jacobian_data(v)
        return jx, htw @ jz, hr
    v = np.ascontiguousarray(v, complex)
    jx, bz = kern.sens_jacobians(v, fac.a @ v, fac.vbus, fac.has0 & act[fac.idx0],
                                 fac.has1 & act[fac.idx1], fac.is_phasor, fac.is_pv_slot,
                                 hd, idx, sp_i, model.comp[idx], model.m, htw)
    x_all, v_slot = model.slot_values(v)
    dest = model._jac_rows * fac.n_state + inv_il[model._jac_cols]
    hr = kern.sens_raw_jacobian(np.ascontiguousarray(x_all), np.ascontiguousarray(v_slot),
                                model._ja_row, model._ja_slot, model._ja_val, model.eval_code,
                                model._je_row, model.slot, model._jac_pos, dest,
                                model.m * fac.n_state)
    return jx, bz, hr.reshape(model.m, fac.n_state)


def _transform_coefficients(fac: _Factor, v: np.ndarray, act: np.ndarray
                            ) -> tuple[np.ndarray, ...]:
    """``(X, X floored, conj(V_k), alpha, beta, gamma, delta)`` per slot: the equivalent-
    current transform's derivative ``dz_t = alpha dX + beta conj(dX) + gamma dV_k +
    delta conj(dV_k)`` at the estimate ``v`` with the members ``act`` (what the dense and
    the sparse :func:`linear_sensitivity` both build ``J_x`` and ``J_z`` from)."""
    g = fac.slots.size
    has0 = fac.has0 & act[fac.idx0]
    has1 = fac.has1 & act[fac.idx1]
    ph, pvs = fac.is_phasor, fac.is_pv_slot
    x = fac.a @ v  # X = A V per slot
    vk = v[fac.vbus]
    zero = np.zeros(g, complex)
    safe = np.where(np.abs(x) > 1e-12, x, 1e-12)
    # phasor slots: |.| measured, angle from X: dz_t = dX / 2 - X / (2 conj X) conj(dX);
    # angle measured, |.| from X: dz_t = dX / 2 + X / (2 conj X) conj(dX)
    ratio = safe / (2.0 * np.conj(safe))
    m_only = ph & has0 & ~has1
    a_only = ph & ~has0 & has1
    # power slots: z_t = conj((p + jq) / V_k), a missing p / q from S = V_k conj(X):
    # dp + j dq = k1 dS + k2 conj(dS) (both missing: 1, 0; p: 1/2, 1/2; q: 1/2, -1/2)
    p_miss = ~ph & ~has0
    q_miss = ~ph & ~has1 & ~pvs
    k1 = np.where(p_miss & q_miss, 1.0, np.where(p_miss | q_miss, 0.5, 0.0))
    k2 = np.where(p_miss & q_miss, 0.0, np.where(p_miss, 0.5, np.where(q_miss, -0.5, 0.0)))
    cvk = np.conj(vk)
    # dz_t = alpha dX + beta conj(dX) + gamma dV_k + delta conj(dV_k)
    alpha = np.where(ph, np.where(m_only | a_only, 0.5, 0.0), k1)
    beta = np.where(ph, np.where(m_only, -ratio, np.where(a_only, ratio, 0.0)),
                    k2 * vk / cvk)
    gamma = np.where(ph, zero, k2 * np.conj(x) / cvk)
    delta = np.where(ph, zero, (k1 - 1.0) * x / cvk)
    return x, safe, cvk, alpha, beta, gamma, delta


def _transform_jacobians(model: MeasurementModel, fac: _Factor, v: np.ndarray,
                         act: np.ndarray, hd: np.ndarray, sp_i: np.ndarray,
                         idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(J_x, J_z values)``: the derivatives of the equivalent-current transform
    ``z_t(z, x)`` with respect to the state (dense ``J_x``) and to the raw measurements
    (``J_z``: one complex entry per active measurement ``idx``, at the rows of its slot's
    position ``sp_i``; see :func:`linear_sensitivity`)."""
    g = fac.slots.size
    ph = fac.is_phasor
    x, safe, cvk, alpha, beta, gamma, delta = _transform_coefficients(fac, v, act)
    # J_x = B(alpha, beta) H + B(gamma, delta) Sel(V_k), B(.) 2x2 real blocks per slot
    # (alpha, beta) vanish on complete slots: only the incomplete ones' rows are formed
    jx = np.zeros_like(hd)
    part = np.flatnonzero((alpha != 0) | (beta != 0))
    if part.size:
        rr, ri, ir, ii = (c[part, None] for c in _block(alpha, beta))
        h0, h1 = hd[2 * part], hd[2 * part + 1]
        jx[2 * part] = rr * h0 + ri * h1
        jx[2 * part + 1] = ir * h0 + ii * h1
    grr, gri, gir, gii = _block(gamma, delta)
    r2, c2 = 2 * np.arange(g), 2 * fac.vbus
    jx[r2, c2] += grr
    jx[r2, c2 + 1] += gri
    jx[r2 + 1, c2] += gir
    jx[r2 + 1, c2 + 1] += gii
    # J_z: per active member; phasor |.|: X/|X|, angle: jX; power P: 1/conj(V_k),
    # Q: -j/conj(V_k)
    comp = model.comp[idx]
    unit = safe / np.abs(safe)
    d = np.where(ph[sp_i], np.where(comp == 0, unit[sp_i], 1j * x[sp_i]),
                 np.where(comp == 0, 1.0, -1j) / cvk[sp_i])
    return jx, d


def _fixed_point_rows(model: MeasurementModel, fac: _Factor, v: np.ndarray, act: np.ndarray,
                      *, constraints: bool) -> tuple[np.ndarray, np.ndarray]:
    """The constraint rows of the fixed point, dense: ``Ct`` (what the iteration uses) and
    ``Cb`` (what the fixed point keeps at zero), plus a reference-angle row when no angle
    is measured (see :func:`linear_sensitivity`)."""
    n2 = 2 * model.n_bus
    top: list[np.ndarray] = []
    bottom: list[np.ndarray] = []
    if constraints:
        if fac.c.shape[0]:
            c0 = _sens_plan(model, fac)[3]
            top.append(c0)
            bottom.append(c0)
        if fac.pv.size:
            pv = fac.pv
            yk = fac.ypv if fac.ypv is not None else model.ybus[pv].toarray()
            ik = yk @ v
            vk = v[pv]
            u = vk / np.abs(vk)
            # iteration's rows: Im(conj(u) Y_k V), u frozen
            dr = np.conj(u)[:, None] * yk
            row_t = np.empty((pv.size, n2))
            row_t[:, 0::2], row_t[:, 1::2] = dr.imag, dr.real
            # dQ_k/dx: dS_k/dVr = conj(I_k) e_k + V_k conj(Y_k), dS_k/dVi = j conj(I_k)
            # e_k - j V_k conj(Y_k)
            at = np.arange(pv.size)
            d_vr = vk[:, None] * np.conj(yk)
            d_vr[at, pv] += np.conj(ik)
            d_vi = -1j * vk[:, None] * np.conj(yk)
            d_vi[at, pv] += 1j * np.conj(ik)
            row_b = np.empty((pv.size, n2))
            row_b[:, 0::2], row_b[:, 1::2] = d_vr.imag, d_vi.imag
            top.append(row_t)
            bottom.append(row_b)
    if not np.any(act & model.is_angle):
        ref = np.zeros((1, n2))
        ref[0, 2 * model.net.slack + 1] = 1.0
        top.append(ref)
        bottom.append(ref)
    if not top:
        return np.zeros((0, n2)), np.zeros((0, n2))
    return np.vstack(top), np.vstack(bottom)


def _blocks_matrix(blk: tuple[np.ndarray, ...], rows: np.ndarray, cols: np.ndarray,
                   shape: tuple[int, int]) -> sp.csr_matrix:
    """Sparse matrix of 2x2 blocks ``blk`` at block rows/columns ``rows``/``cols``."""
    rr, ri, ir, ii = blk
    r2, c2 = 2 * rows, 2 * cols
    return sp.csr_matrix((np.r_[rr, ri, ir, ii],
                          (np.r_[r2, r2, r2 + 1, r2 + 1], np.r_[c2, c2 + 1, c2, c2 + 1])),
                         shape=shape)


def _linear_sensitivity_sparse(model: MeasurementModel, fac: _Factor, v: np.ndarray,
                               sig: np.ndarray, act: np.ndarray, *,
                               constraints: bool = True, moments: bool = False) -> Any:
    """:func:`linear_sensitivity` with sparse products (the code before the dense one):
    for the sparse mode's sizes, where dense products of ``H`` and of the raw Jacobian
    cost more than the sparse ones (IEEE33 and the like take the dense path)."""
    n = model.n_bus
    n2 = 2 * n
    il = _interleave(n)
    h = fac.h  # 2g x 2n (interleaved state)
    jx, jz = _transform_jacobians_sparse(model, fac, v, act)
    w = fac.w
    if w is None:  # a re-weighted factorization keeps its weights as blocks only
        assert fac.wb is not None
        w = _block_diag(*fac.wb.T)
    htw = sp.csr_matrix((w @ h).T)
    # top-left H^T W (H - J_x); right-hand side H^T W J_z
    k11 = (htw @ (h - jx)).toarray()
    bz = (htw @ jz).toarray()
    top, bottom = _fixed_point_rows_sparse(model, fac, v, act,
                                             constraints=constraints)
    if top:
        ct, cb = np.vstack(top), np.vstack(bottom)
        # constraint rows scaled to the gain's size (pivoting)
        scale = np.abs(np.diag(k11)).max() / max(np.abs(ct).max(), np.abs(cb).max())
        nc = ct.shape[0]
        kk = np.block([[k11, scale * ct.T], [scale * cb, np.zeros((nc, nc))]])
        rhs = np.vstack([bz, np.zeros((nc, model.m))])
    else:
        kk, rhs = k11, bz
    try:
        sens = np.linalg.solve(kk, rhs)[:n2]
    except np.linalg.LinAlgError:
        sens = np.linalg.lstsq(kk, rhs, rcond=None)[0][:n2]
    # T = H_r S (raw Jacobian, interleaved columns); Omega_ii = sum_j (I - T)_ij^2 s_j^2
    hr = model.jacobian(v)[:, il]
    t = -np.asarray(hr @ sens)
    t[np.arange(model.m), np.arange(model.m)] += 1.0
    var = np.where(act, sig, 0.0) ** 2
    omega = (t * t) @ var
    sens = np.where(act, np.maximum(omega / sig**2, 1e-6), 1.0)
    if not moments:
        return sens
    # J = |B u|^2, u ~ N(0, I), B = diag(1/sigma) (I - H_r S) diag(sigma) (active part)
    ia = np.flatnonzero(act)
    b = t[np.ix_(ia, ia)] * (sig[ia][None, :] / sig[ia][:, None])
    bbt = b @ b.T
    return sens, float(np.trace(bbt)), float(np.square(bbt).sum())


def _transform_jacobians_sparse(model: MeasurementModel, fac: _Factor, v: np.ndarray,
                                act: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Sparse ``(J_x, J_z)``: the derivatives of the equivalent-current transform
    ``z_t(z, x)`` with respect to the state and to the raw measurements (see
    :func:`linear_sensitivity`)."""
    n2 = 2 * model.n_bus
    g = fac.slots.size
    ph = fac.is_phasor
    x, safe, cvk, alpha, beta, gamma, delta = _transform_coefficients(fac, v, act)
    pos = np.arange(g)
    h = fac.h  # 2g x 2n (interleaved state)
    # J_x = B(alpha, beta) H + B(gamma, delta) Sel(V_k)
    jx = (_blocks_matrix(_block(alpha, beta), pos, pos, (2 * g, 2 * g)) @ h
          + _blocks_matrix(_block(gamma, delta), pos, fac.vbus, (2 * g, n2)))
    # J_z: one column per active member; phasor |.|: X/|X|, angle: jX; power P: 1/conj(V_k),
    # Q: -j/conj(V_k)
    slot_pos = np.full(model.g, -1)
    slot_pos[fac.slots] = pos
    idx = np.flatnonzero(act)
    sp_i = slot_pos[model.slot[idx]]
    comp = model.comp[idx]
    unit = safe / np.abs(safe)
    d = np.where(ph[sp_i], np.where(comp == 0, unit[sp_i], 1j * x[sp_i]),
                 np.where(comp == 0, 1.0, -1j) / cvk[sp_i])
    jz = sp.csr_matrix((np.r_[d.real, d.imag], (np.r_[2 * sp_i, 2 * sp_i + 1],
                                                np.r_[idx, idx])), shape=(2 * g, model.m))
    return jx, jz


def _fixed_point_rows_sparse(model: MeasurementModel, fac: _Factor, v: np.ndarray,
                             act: np.ndarray, *, constraints: bool
                             ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """:func:`_fixed_point_rows` as lists of rows (for
    :func:`_linear_sensitivity_sparse`): ``Ct`` (what the iteration uses) and ``Cb`` (what
    the fixed point keeps at zero), plus a reference-angle row when no angle is measured."""
    n2 = 2 * model.n_bus
    top: list[np.ndarray] = []
    bottom: list[np.ndarray] = []
    if constraints:
        if fac.c.shape[0]:
            c0 = fac.c.toarray()
            top.append(c0)
            bottom.append(c0)
        if fac.pv.size:
            ybus = model.ybus
            for k in fac.pv:
                yk = ybus[k].toarray().ravel()
                ik = yk @ v
                u = v[k] / abs(v[k])
                # iteration's row: Im(conj(u) Y_k V), u frozen
                dr = np.conj(u) * yk
                row_t = np.empty(n2)
                row_t[0::2], row_t[1::2] = dr.imag, dr.real
                # dQ_k/dx: dS_k/dVr = conj(I_k) e_k + V_k conj(Y_k), dS_k/dVi = j conj(I_k)
                # e_k - j V_k conj(Y_k)
                d_vr = v[k] * np.conj(yk)
                d_vr[k] += np.conj(ik)
                d_vi = -1j * v[k] * np.conj(yk)
                d_vi[k] += 1j * np.conj(ik)
                row_b = np.empty(n2)
                row_b[0::2], row_b[1::2] = d_vr.imag, d_vi.imag
                top.append(row_t[None, :])
                bottom.append(row_b[None, :])
    if not np.any(act & model.is_angle):
        ref = np.zeros((1, n2))
        ref[0, 2 * model.net.slack + 1] = 1.0
        top.append(ref)
        bottom.append(ref)
    return top, bottom
