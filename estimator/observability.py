"""Numerical observability of the linear (rectangular) measurement model.

Standard numerical method (Monticelli & Wu 1985, applied to the rectangular current-based
model): the feeder is observable when the measured directions together with the exact
equality constraints determine every real and imaginary bus voltage, i.e. the matrix
``O = [D H; C]`` has full column rank ``2 n``. ``D`` keeps, per measured component, only
the direction it constrains in its slot (a magnitude alone constrains the radial
direction, a P alone the in-phase current, ...), so a SCADA |V| does not count as a
phasor. Unobservable buses are the ones touched by the null space of ``O``; they are
grouped into islands over the in-service branches.
"""

from __future__ import annotations

import weakref

import numpy as np
import scipy.sparse as sp
from scipy.linalg.lapack import dpotrf as potrf
from scipy.linalg.lapack import dtrtri as trtri
from scipy.sparse.csgraph import connected_components

from estimator.errors import NotObservableError
from estimator.measurement import SLOT_I, SLOT_V, MeasurementModel

__all__ = ["check_observable", "observability_matrix", "unobservable_buses"]

DENSE_LIMIT = 1200  # states up to which the null space is computed densely (eigh)
#: per model: (pv_constraints, the nominal values the rows were built at) -> every
#: measurement's row and the constraint rows. A bad-data search checks one new
#: measurement set per removal; rebuilding these sparse rows each time was half of the
#: check's time
_ROWS: weakref.WeakKeyDictionary[MeasurementModel, tuple[bool, bytes, sp.csr_matrix,
                                                         sp.csr_matrix]] = \
    weakref.WeakKeyDictionary()
#: per model: the same rows dense (``(pv_constraints, angles, measured rows, constraint
#: rows, dense H)``) for the dense check; keyed on the nominal angles of the phasor slots, the only
#: nominal values a row depends on (a re-weighting moves every nominal value)
_DENSE: weakref.WeakKeyDictionary[MeasurementModel, tuple[bool, bytes, np.ndarray,
                                                          np.ndarray, np.ndarray]] = \
    weakref.WeakKeyDictionary()


def constraint_rows(model: MeasurementModel, *, pv_constraints: bool = True) -> sp.csr_matrix:
    """Exact equality rows at a flat voltage profile: zero injection (Re and Im of
    ``Ybus[k] V``) and zero reactive power at PV plant nodes (``Im(Ybus[k] V)``)."""
    net = model.net
    n = net.n_bus
    ybus = model.ybus
    blocks = []
    zi = model.zero_injection
    if zi.size:
        y = ybus[zi]
        blocks.append(sp.hstack([y.real, -y.imag]))
        blocks.append(sp.hstack([y.imag, y.real]))
    if pv_constraints and model.pv_nodes.size:
        y = ybus[model.pv_nodes]
        blocks.append(sp.hstack([y.imag, y.real]))
    if not blocks:
        return sp.csr_matrix((0, 2 * n))
    return sp.csr_matrix(sp.vstack(blocks))


def observability_matrix(model: MeasurementModel, active: np.ndarray, *,
                         pv_constraints: bool = True) -> sp.csr_matrix:
    """``O``: one row per active measured component (its direction in its slot) plus the
    exact constraint rows; angles taken from the model's nominal values (0 if unknown).
    The rows of all measurements are built once per model and nominal values (each row
    depends only on its own measurement): a set's ``O`` takes its rows from them."""
    nominal = np.nan_to_num(model.nominal).tobytes()
    hit = _ROWS.get(model)
    if hit is None or hit[0] != pv_constraints or hit[1] != nominal:
        every = np.ones(model.m, bool)
        hit = (pv_constraints, nominal, _measured_rows(model, every),
               constraint_rows(model, pv_constraints=pv_constraints))
        _ROWS[model] = hit
    rows = hit[2][np.flatnonzero(active)]
    return sp.csr_matrix(sp.vstack([rows, hit[3]]))


def _measured_rows(model: MeasurementModel, active: np.ndarray) -> sp.csr_matrix:
    """The rows of ``O`` of the active measured components, in measurement order."""
    act = np.flatnonzero(active)
    slot = model.slot[act]
    comp = model.comp[act]
    stype = model.slot_type[slot]
    phasor = np.isin(stype, [SLOT_V, SLOT_I])
    # nominal angle of the slot's phasor (measured angle if known, else 0)
    ang_member = model.members[slot, 1]
    a0 = np.where(phasor & (ang_member >= 0),
                  model.nominal[np.maximum(ang_member, 0)], 0.0)
    a0 = np.nan_to_num(a0)
    # phasor slots: magnitude -> (cos a, sin a); angle -> (-sin a, cos a)
    # power slots at a flat voltage: I = P - jQ, so P -> (1, 0) and Q -> (0, -1)
    d_re = np.where(phasor, np.where(comp == 0, np.cos(a0), -np.sin(a0)),
                    np.where(comp == 0, 1.0, 0.0))
    d_im = np.where(phasor, np.where(comp == 0, np.sin(a0), np.cos(a0)),
                    np.where(comp == 0, 0.0, -1.0))
    h = model.H
    return sp.csr_matrix(sp.diags(d_re) @ h[2 * slot] + sp.diags(d_im) @ h[2 * slot + 1])


def _slot_angles(model: MeasurementModel) -> np.ndarray:
    """Nominal angle of every slot's phasor (its measured angle if known, else 0)."""
    ang = model.members[:, 1]
    st = model.slot_type
    a0 = np.where(((st == SLOT_V) | (st == SLOT_I)) & (ang >= 0),
                  model.nominal[np.maximum(ang, 0)], 0.0)
    return np.nan_to_num(a0)


def _dense_rows(model: MeasurementModel, pv_constraints: bool
                ) -> tuple[np.ndarray, np.ndarray]:
    """Every measurement's row of ``O`` and the constraint rows, dense (cached per model,
    constraint choice and nominal angles): the same numbers as the sparse rows."""
    a0 = _slot_angles(model)
    angles = a0.tobytes()
    hit = _DENSE.get(model)
    if hit is None or hit[0] != pv_constraints:
        hd = model.H.toarray()
        cons = constraint_rows(model, pv_constraints=pv_constraints).toarray()
        hit = (pv_constraints, angles, _dense_measured_rows(model, hd, a0), cons, hd)
        _DENSE[model] = hit
    elif hit[1] != angles:  # a re-base moved the angles: the constraint rows stay
        hit = (pv_constraints, angles, _dense_measured_rows(model, hit[4], a0), hit[3],
               hit[4])
        _DENSE[model] = hit
    return hit[2], hit[3]


def _dense_measured_rows(model: MeasurementModel, hd: np.ndarray, a0: np.ndarray
                         ) -> np.ndarray:
    """:func:`_measured_rows` of every measurement, dense, from the dense ``H`` and the
    slots' nominal angles ``a0`` (the same products, so the same numbers)."""
    slot, comp = model.slot, model.comp
    stype = model.slot_type[slot]
    phasor = (stype == SLOT_V) | (stype == SLOT_I)
    a = a0[slot]
    d_re = np.where(phasor, np.where(comp == 0, np.cos(a), -np.sin(a)),
                    np.where(comp == 0, 1.0, 0.0))
    d_im = np.where(phasor, np.where(comp == 0, np.sin(a), np.cos(a)),
                    np.where(comp == 0, 0.0, -1.0))
    return d_re[:, None] * hd[2 * slot] + d_im[:, None] * hd[2 * slot + 1]


def _surely_full_rank(gram: np.ndarray, tol_factor: float) -> bool:
    """True when the (column-scaled) normal matrix ``gram`` certainly has no eigenvalue
    at or below ``tol_factor * lambda_max`` (the null-space test of
    :func:`unobservable_buses`), proven without its eigen-decomposition.

    Why: the bad-data search checks one new measurement set per removal, and the
    eigen-decomposition was most of that check (0.5 ms on IEEE33; a Cholesky factor and
    its triangular inverse cost a fraction). ``lambda_min >= 1 / tr(G^-1)`` and
    ``lambda_max <= tr(G)``: when the first bound is above twice the threshold taken at
    the second (far above the eigen-solver's own error, a few ``n eps lambda_max``), the
    decomposition would find no small eigenvalue either. Otherwise (near-singular,
    Cholesky fails) the caller decomposes as before, so the verdict never changes.
    """
    lfac, info = potrf(gram, lower=1, clean=1)
    if info != 0:
        return False
    linv, info = trtri(lfac, lower=1)
    if info != 0:
        return False
    tr_inv = float(np.square(linv).sum())  # tr(G^-1) = |L^-1|_F^2
    if not np.isfinite(tr_inv) or tr_inv <= 0.0:
        return False
    return 1.0 / tr_inv > 2.0 * tol_factor * float(np.trace(gram))


def unobservable_buses(model: MeasurementModel, active: np.ndarray, *,
                       pv_constraints: bool = True) -> tuple[list[int], int]:
    """Internal indices of the buses the measurements do not determine, and the rank
    deficiency (``([], 0)`` when observable)."""
    n2 = 2 * model.n_bus
    if n2 <= DENSE_LIMIT:
        rows, cons = _dense_rows(model, pv_constraints)
        dense = np.vstack([rows[np.flatnonzero(active)], cons])
        # column scaling keeps admittance rows and selector rows comparable
        scale = np.linalg.norm(dense, axis=0)
        scale[scale == 0] = 1.0
        dense = dense / scale
        gram = dense.T @ dense
        tol_factor = max(dense.shape) * np.finfo(float).eps * 1e3
        if _surely_full_rank(gram, tol_factor):
            return [], 0
        # eigen-decomposition of the (small) normal matrix O^T O: null space = the
        # eigenvectors of (numerically) zero eigenvalues
        lam, vec = np.linalg.eigh(gram)
        tol = tol_factor * max(float(lam[-1]), 1e-300)
        small = lam <= tol
        rank = n2 - int(np.count_nonzero(small))
        if rank == n2:
            return [], 0
        null = vec[:, small]  # 2n x d
        weight = np.abs(null).max(axis=1)
        n = model.n_bus
        bus_w = np.maximum(weight[:n], weight[n:])
        buses = [int(b) for b in np.flatnonzero(bus_w > 1e-8)]
        return buses, n2 - rank
    # large systems: factorize O^T O; a structurally or numerically zero pivot means
    # unobservable (buses named by the columns without any measurement entry)
    import scipy.sparse.linalg as spla

    o = observability_matrix(model, active, pv_constraints=pv_constraints)
    # unit rows: the rank is unchanged and O^T O better scaled
    norms = np.sqrt(np.asarray(o.multiply(o).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    o = sp.csr_matrix(sp.diags(1.0 / norms) @ o)
    g = sp.csc_matrix(o.T @ o)
    try:
        lu = spla.splu(g)
        diag = np.abs(lu.U.diagonal())
        if diag.min() > 1e-12 * diag.max():
            return [], 0
    except RuntimeError:
        pass
    counts = np.diff(sp.csc_matrix(o).indptr)
    n = model.n_bus
    empty = (counts[:n] == 0) | (counts[n:] == 0)
    return [int(b) for b in np.flatnonzero(empty)], max(1, int(np.count_nonzero(empty)))


def check_observable(model: MeasurementModel, active: np.ndarray, *,
                     pv_constraints: bool = True) -> None:
    """Raise :class:`NotObservableError` naming the unobservable buses and islands."""
    buses, deficiency = unobservable_buses(model, active, pv_constraints=pv_constraints)
    if deficiency == 0:
        return
    net = model.net
    ids = [int(net.bus_ids[b]) for b in buses]
    islands = _islands(model, buses)
    desc = "; ".join("[" + ", ".join(str(int(net.bus_ids[b])) for b in isl) + "]"
                     for isl in islands)
    raise NotObservableError(
        f"{net.name}: not observable (rank deficiency {deficiency}): buses {ids} are not "
        f"determined by the measurements; unobservable island(s): {desc or '(none named)'}. "
        "Add a voltage/current phasor, a power flow or an injection measurement there.",
        buses=ids)


def _islands(model: MeasurementModel, buses: list[int]) -> list[list[int]]:
    if not buses:
        return []
    net = model.net
    br = net.branches
    sel = np.zeros(net.n_bus, bool)
    sel[buses] = True
    on = br.in_service & sel[br.from_idx] & sel[br.to_idx]
    adj = sp.csr_matrix((np.ones(int(on.sum())), (br.from_idx[on], br.to_idx[on])),
                        shape=(net.n_bus, net.n_bus))
    _, labels = connected_components(adj, directed=False)
    groups: dict[int, list[int]] = {}
    for b in buses:
        groups.setdefault(int(labels[b]), []).append(b)
    return list(groups.values())
