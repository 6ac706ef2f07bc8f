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


def unobservable_buses(model: MeasurementModel, active: np.ndarray, *,
                       pv_constraints: bool = True) -> tuple[list[int], int]:
    """Internal indices of the buses the measurements do not determine, and the rank
    deficiency (``([], 0)`` when observable)."""
    o = observability_matrix(model, active, pv_constraints=pv_constraints)
    n2 = o.shape[1]
    if n2 <= DENSE_LIMIT:
        dense = o.toarray()
        # column scaling keeps admittance rows and selector rows comparable
        scale = np.linalg.norm(dense, axis=0)
        scale[scale == 0] = 1.0
        dense = dense / scale
        # eigen-decomposition of the (small) normal matrix O^T O: null space = the
        # eigenvectors of (numerically) zero eigenvalues
        lam, vec = np.linalg.eigh(dense.T @ dense)
        tol = max(dense.shape) * np.finfo(float).eps * 1e3 * max(float(lam[-1]), 1e-300)
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
