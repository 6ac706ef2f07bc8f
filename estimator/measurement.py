"""The measurement model: what is measured where, in per unit, and its linear transform.

A :class:`MeasurementModel` is built from a :class:`~estimator.network.Network` and a list of
:class:`Spec` (kind, location, accuracy in per unit). It does not know any twin config:
an adapter outside this library maps configured channels onto specs and passes the
``channel`` index and ``scale`` arrays that turn a snapshot's engineering values into per
unit (:meth:`MeasurementModel.values_to_pu`).

Kinds (per unit; angles in rad)::

    vm, va        bus voltage magnitude / angle                  (bus)
    im, ia        branch current magnitude / angle at one end    (branch, end)
    p, q          branch power flow at one end, into the branch  (branch, end)
    pinj, qinj    net bus injection, generation - load           (bus)
    ppv           PV plant active power (pseudo-measurement: forecast) at the plant's
                  own node; the node's reactive power is exactly zero (a constraint)

Measurements are grouped into complex "slots" (the paper's section 4.2), each giving one
rectangular phasor measurement ``z = zr + j zi``:

* ``V`` slot (vm, va at a bus): ``V = vm * exp(j va)`` (PMU voltage phasor);
* ``I`` slot (im, ia at a branch end): ``I = im * exp(j ia)`` (PMU current phasor);
* ``S`` slot (p, q at a branch end): equivalent branch current ``I = conj(S / V_k)``
  at the current voltage estimate ``V_k`` of the measuring bus;
* ``J`` slot (pinj, qinj at a bus): equivalent injection current ``conj(S / V_k)``;
* ``PV`` slot (ppv at a plant node): equivalent injection current ``conj((P + j0) / V_k)``.

A slot with one component missing (SCADA |V| or |I| alone, P without Q, ...) takes the
missing component from the current estimate, with a very large variance: the fused
covariance then weighs only the measured direction.

The model function of every slot is linear in the rectangular voltages: ``X = A @ V``
with ``A`` a row of the identity (``V``), of ``Yf``/``Yt`` (``I``, ``S``) or of
``Ybus`` (``J``, ``PV``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from estimator.errors import EstimatorError
from estimator.network import Network

__all__ = ["KINDS", "MeasurementModel", "Spec"]

KINDS = ("vm", "va", "im", "ia", "p", "q", "pinj", "qinj", "ppv")
ALIASES = {"p_branch": "p", "q_branch": "q", "pv_pseudo": "ppv"}
BUS_KINDS = {"vm", "va", "pinj", "qinj", "ppv"}
BRANCH_KINDS = {"im", "ia", "p", "q"}
ANGLE_KINDS = {"va", "ia"}

# slot types
SLOT_V, SLOT_I, SLOT_S, SLOT_J, SLOT_PV = 0, 1, 2, 3, 4
SLOT_NAMES = ("V", "I", "S", "J", "PV")
# kind -> (slot type, component 0 = magnitude/P or 1 = angle/Q)
_SLOT_OF = {
    "vm": (SLOT_V, 0), "va": (SLOT_V, 1),
    "im": (SLOT_I, 0), "ia": (SLOT_I, 1),
    "p": (SLOT_S, 0), "q": (SLOT_S, 1),
    "pinj": (SLOT_J, 0), "qinj": (SLOT_J, 1),
    "ppv": (SLOT_PV, 0),
}
# kind code used in vectorised evaluation: 0 |X|, 1 angle(X), 2 Re S, 3 Im S
_EVAL = {"vm": 0, "va": 1, "im": 0, "ia": 1, "p": 2, "q": 3, "pinj": 2, "qinj": 3, "ppv": 2}

# standard deviation given to the unmeasured component of a slot (pu or rad): large
# enough to carry no information, small enough to keep the 2x2 covariance well scaled
UNMEASURED_SIGMA = 1.0
DENSE_A_LIMIT = 40_000  # slots x buses up to which X = A V is a dense product


@dataclass(frozen=True)
class Spec:
    """One measured quantity: ``sigma = max(rel * |value|, floor)`` (pu, rad for angles).

    ``bus`` is an internal bus index (bus kinds), ``branch`` a branch index and ``end``
    ``"from"``/``"to"`` (branch kinds).
    """

    kind: str
    bus: int | None = None
    branch: int | None = None
    end: str = "from"
    sigma: float = 1e-3
    rel: float = 0.0
    name: str = ""


class MeasurementModel:
    """Specs resolved against a network: slot structure, operators and raw functions.

    Attributes (arrays over specs, length ``m``): ``kind`` (str), ``eval_code``,
    ``slot`` (slot index), ``comp`` (0/1), ``floor``, ``rel``, ``channel`` (index into the
    config's channels, -1 for pseudo-measurements), ``scale`` (engineering -> pu).
    Over slots (length ``g``): ``slot_type``, ``vbus`` (bus whose voltage converts a power
    slot to a current), ``members`` (``g x 2`` spec indices, -1 where absent).
    """

    def __init__(self, net: Network, specs: Sequence[Spec], *,
                 zero_injection: Sequence[int] | None = None,
                 channel: Sequence[int] | None = None,
                 scale: Sequence[float] | None = None) -> None:
        self.net = net
        self.specs = [self._normalise(s, k) for k, s in enumerate(specs)]
        m = len(self.specs)
        if m == 0:
            raise EstimatorError("a measurement model needs at least one measurement")
        self.m = m
        self.n_bus = net.n_bus
        self.names = [s.name or self._default_name(s) for s in self.specs]
        self.kind = np.array([s.kind for s in self.specs])
        self.eval_code = np.array([_EVAL[s.kind] for s in self.specs], np.int8)
        self.is_angle = np.isin(self.kind, list(ANGLE_KINDS))
        self.floor = np.array([s.sigma for s in self.specs], float)
        self.rel = np.array([s.rel for s in self.specs], float)
        self.channel = (np.asarray(channel, np.int64) if channel is not None
                        else -np.ones(m, np.int64))
        self.scale = np.asarray(scale, float) if scale is not None else np.ones(m)
        #: the gathers of :meth:`values_to_pu` (per snapshot on the live path), made once:
        #: the specs read from a channel and those that are pseudo-measurements, in order
        self.real_idx = np.flatnonzero(self.channel >= 0)
        self.pseudo_idx = np.flatnonzero(self.channel < 0)
        self.channel_real = self.channel[self.real_idx]
        self.scale_real = self.scale[self.real_idx]
        self.scale_pseudo = self.scale[self.pseudo_idx]
        self._floored = bool(np.all(self.floor > 0))
        self._build_slots()
        code = self.eval_code
        pq = np.flatnonzero(code >= 2)
        self._by_code = [np.flatnonzero(code == c) for c in range(4)] + [pq]
        self._pq_is_p = code[pq] == 2
        # per-slot gathers of h(): the phasor slots of |.| and angle specs, the power slots
        # (unique) and, per P/Q spec, its position in the real view of S over those slots
        self._slot_mag = self.slot[self._by_code[0]]
        self._slot_ang = self.slot[self._by_code[1]]
        pslots, pos = np.unique(self.slot[pq], return_inverse=True)
        self._pslots = pslots
        self._pvbus = self.vbus[pslots]
        self._pq_pick = 2 * pos.ravel() + (code[pq] == 3)
        pv_nodes = sorted({int(s.bus) for s in self.specs if s.kind == "ppv"
                           and s.bus is not None})
        self.pv_nodes = np.asarray(pv_nodes, np.int64)
        if zero_injection is None:
            zero_injection = self.default_zero_injection(net, pv_nodes)
        self.zero_injection = np.asarray(sorted(set(int(b) for b in zero_injection)), np.int64)
        bad = [b for b in self.zero_injection if not 0 <= b < net.n_bus]
        if bad:
            raise EstimatorError(f"zero-injection bus index {bad[0]} is not a bus")
        self.nominal = np.zeros(m)

    # ------------------------------------------------------------------ construction
    def _normalise(self, s: Spec, k: int) -> Spec:
        kind = ALIASES.get(s.kind, s.kind)
        if kind not in KINDS:
            raise EstimatorError(f"measurement {k}: unknown kind {s.kind!r}; use one of {KINDS}")
        if kind in BUS_KINDS:
            if s.bus is None or not 0 <= s.bus < self.net.n_bus:
                raise EstimatorError(f"measurement {k} ({kind}): bus index {s.bus} is not a bus")
        else:
            if s.branch is None or not 0 <= s.branch < self.net.n_branch:
                raise EstimatorError(f"measurement {k} ({kind}): branch index {s.branch} is "
                                     "not a branch")
            if s.end not in ("from", "to"):
                raise EstimatorError(f"measurement {k} ({kind}): end must be 'from' or 'to'")
        if not (s.sigma > 0 or s.rel > 0) or s.sigma < 0 or s.rel < 0:
            raise EstimatorError(f"measurement {k} ({kind}): needs sigma > 0 or rel > 0")
        return Spec(kind, s.bus, s.branch, s.end, float(s.sigma), float(s.rel), s.name)

    def _default_name(self, s: Spec) -> str:
        net = self.net
        if s.kind in BUS_KINDS:
            return f"{s.kind}@{int(net.bus_ids[s.bus])}"  # type: ignore[index]
        return f"{s.kind}@{net.branches.names[s.branch]}:{s.end}"  # type: ignore[index]

    def _build_slots(self) -> None:
        net = self.net
        yf, yt = net.branch_admittance()
        ybus = net.ybus()
        #: the network's bus admittance matrix, built once with the model (fixed topology)
        self.ybus = ybus
        n = net.n_bus
        br = net.branches
        slots: list[tuple[int, tuple[Any, ...]]] = []  # (type, location key)
        members: list[list[int]] = []
        open_slots: dict[tuple[Any, ...], list[int]] = {}
        slot_of = np.empty(self.m, np.int64)
        comp = np.empty(self.m, np.int8)
        for k, s in enumerate(self.specs):
            st, c = _SLOT_OF[s.kind]
            key = (st, s.bus, s.branch, s.end if s.kind in BRANCH_KINDS else None)
            target = -1
            for g in open_slots.get(key, []):
                if members[g][c] < 0:
                    target = g
                    break
            if target < 0:
                target = len(slots)
                slots.append((st, key))
                members.append([-1, -1])
                open_slots.setdefault(key, []).append(target)
            members[target][c] = k
            slot_of[k] = target
            comp[k] = c
        g = len(slots)
        self.g = g
        self.slot = slot_of
        self.comp = comp
        self.members = np.asarray(members, np.int64).reshape(g, 2)
        self.slot_type = np.array([t for t, _ in slots], np.int8)
        rows = []
        vbus = np.zeros(g, np.int64)
        for i, (st, key) in enumerate(slots):
            _, bus_k, branch_k, end = key
            bus = int(bus_k) if bus_k is not None else -1
            branch = int(branch_k) if branch_k is not None else -1
            if st == SLOT_V:
                rows.append(sp.csr_matrix(([1.0 + 0j], ([0], [bus])), shape=(1, n)))
                vbus[i] = bus
            elif st in (SLOT_I, SLOT_S):
                rows.append((yf if end == "from" else yt)[branch])
                vbus[i] = br.from_idx[branch] if end == "from" else br.to_idx[branch]
            else:
                rows.append(ybus[bus])
                vbus[i] = bus
        self.vbus = vbus
        # X = A @ V : the complex model value of every slot (voltage or current phasor)
        self.A = sp.csr_matrix(sp.vstack(rows, format="csr"), dtype=complex)
        # small models: a dense copy (a dense product beats the sparse call overhead)
        self._a_dense = self.A.toarray() if g * n <= DENSE_A_LIMIT else None
        self.is_power = np.isin(self.slot_type, [SLOT_S, SLOT_J, SLOT_PV])
        # rectangular real rows, interleaved per slot: [Re X_0, Im X_0, Re X_1, ...]
        # Re X = Re(A) Vr - Im(A) Vi ; Im X = Im(A) Vr + Re(A) Vi
        ar = sp.csr_matrix(self.A.real)
        ai = sp.csr_matrix(self.A.imag)
        top = sp.hstack([ar, -ai])
        bot = sp.hstack([ai, ar])
        perm = np.empty(2 * g, np.int64)
        perm[0::2] = np.arange(g)
        perm[1::2] = g + np.arange(g)
        self.H = sp.csr_matrix(sp.vstack([top, bot], format="csr")[perm])
        self.H.eliminate_zeros()
        self._build_raw_jacobian_pattern()

    @staticmethod
    def default_zero_injection(net: Network, pv_nodes: Sequence[int] = ()) -> list[int]:
        """Buses with no load, generation or shunt, other than the slack and PV nodes."""
        empty = ((net.p_load == 0) & (net.q_load == 0) & (net.p_gen == 0) & (net.q_gen == 0)
                 & (net.gs == 0) & (net.bs == 0))
        empty[net.slack] = False
        for b in pv_nodes:
            empty[int(b)] = False
        return [int(b) for b in np.flatnonzero(empty)]

    @property
    def n_pseudo(self) -> int:
        return int(self.pseudo_idx.size)

    def values_to_pu(self, values: np.ndarray, pseudo: np.ndarray | None = None) -> np.ndarray:
        """Measurement vector(s) in pu from snapshot values (engineering units, config
        channel order, shape ``(..., n_channels)``) and pseudo-measurements in engineering
        units (``(..., n_pseudo)``, e.g. PV forecasts in MW; NaN/None = not available)."""
        vals = np.asarray(values, float)
        out = np.empty((*vals.shape[:-1], self.m))
        # z_pu = value * scale (1/base kV, 1/I_base, 1/S_base; 1 for angles)
        out[..., self.real_idx] = vals[..., self.channel_real] * self.scale_real
        if self.pseudo_idx.size:
            if pseudo is None:
                out[..., self.pseudo_idx] = np.nan
            else:
                out[..., self.pseudo_idx] = np.asarray(pseudo, float) * self.scale_pseudo
        return out

    # ------------------------------------------------------------------ accuracy
    def sigma(self, z: np.ndarray) -> np.ndarray:
        """Standard deviation per measurement at value ``z``: max(rel |z|, floor)."""
        # sigma_i = max(rel_i * |z_i|, floor_i)
        # fmax takes the floor for a NaN value
        s = np.fmax(self.rel * np.abs(z), self.floor)
        if self._floored or (s.min() > 0 and s.max() < np.inf):
            # every measurement has a floor, or no value hit the cases below
            return s
        a = np.abs(z)
        s = np.maximum(self.rel * np.where(a < np.inf, a, 0.0), self.floor)
        # a relative-only accuracy without a usable value: take it at the nominal value
        return np.where(s > 0, s, np.maximum(self.rel * np.abs(self.nominal), 1e-6))

    # ------------------------------------------------------------------ model functions
    def slot_values(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(X, V_k)`` per slot: model phasor and the voltage of its converting bus."""
        x = self._a_dense @ v if self._a_dense is not None else self.A @ v
        return x, v[self.vbus]

    def h(self, v: np.ndarray) -> np.ndarray:
        """Raw measurement functions at complex bus voltages ``v`` (pu, rad)."""
        x = self._a_dense @ v if self._a_dense is not None else self.A @ v
        out = np.empty(self.m)
        g = self._by_code
        out[g[0]] = np.abs(x[self._slot_mag])
        xa = x[self._slot_ang]
        out[g[1]] = np.arctan2(xa.imag, xa.real)
        # S = V_k conj(X) per power slot (X is the current into the branch / network);
        # P = Re S, Q = Im S picked from the interleaved real view
        s = v[self._pvbus] * np.conj(x[self._pslots])
        out[g[4]] = s.view(np.float64)[self._pq_pick]
        return out

    def residual(self, z: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``z - h(v)`` with angle differences wrapped to (-pi, pi]."""
        r = z - self.h(v)
        ang = self._by_code[1]
        ra = r[ang]
        if (np.abs(ra) > np.pi).any():  # a wrapped difference (rare): rewrap
            r[ang] = np.angle(np.exp(1j * ra))
        return r

    def _build_raw_jacobian_pattern(self) -> None:
        """Fixed sparsity of the raw Jacobian d h / d [Vr, Vi] (m x 2n).

        Terms per spec ``k`` of slot ``s``: the row pattern of ``A[s]`` (in the Vr and Vi
        halves), plus for power kinds the converting bus ``V_k``.
        """
        n = self.n_bus
        a_rows = self.A[self.slot]  # m x n, row k = A[slot[k]]
        coo = a_rows.tocoo()
        self._ja_row = coo.row.astype(np.int64)
        self._ja_col = coo.col.astype(np.int64)
        self._ja_val = coo.data.astype(complex)
        self._ja_slot = self.slot[self._ja_row]
        power = np.flatnonzero(np.isin(self.eval_code, [2, 3]))
        self._je_row = power
        self._je_col = self.vbus[self.slot[power]]
        rows = np.r_[self._ja_row, self._ja_row, self._je_row, self._je_row]
        cols = np.r_[self._ja_col, n + self._ja_col, self._je_col, n + self._je_col]
        key = rows * (2 * n) + cols
        uniq, inv = np.unique(key, return_inverse=True)
        self._jac_pos = inv.astype(np.int64)
        self._jac_nnz = uniq.size
        jr = uniq // (2 * n)
        jc = uniq % (2 * n)
        self._jac_indices = jc.astype(np.int32)
        self._jac_indptr = np.r_[0, np.cumsum(np.bincount(jr, minlength=self.m))].astype(
            np.int32)
        self._jac_rows = jr
        self._jac_cols = jc

    def jacobian_data(self, v: np.ndarray) -> np.ndarray:
        """Values of d h / d [Vr, Vi] in the fixed CSR pattern (see :meth:`jacobian`)."""
        x, vk = self.slot_values(v)
        code = self.eval_code
        r = self._ja_row
        xs = x[self._ja_slot]
        a = self._ja_val
        cr = code[r]
        absx = np.abs(xs)
        safe = np.where(absx > 1e-12, absx, 1e-12)
        # magnitude: d|X| = Re(u dX), u = conj(X)/|X| ; angle: u = -j conj(X)/|X|^2
        u = np.where(cr == 0, np.conj(xs) / safe, -1j * np.conj(xs) / safe**2)
        ua = u * a
        # power: dS = conj(X) dV_k + V_k conj(A) conj(dV); T = V_k conj(A)
        t = vk[self._ja_slot] * np.conj(a)
        is_p = cr == 2
        is_q = cr == 3
        # d/dVr:  |X|,angle: Re(u A) ; P: Re(T) ; Q: Im(T)
        d_vr = np.where(is_p, t.real, np.where(is_q, t.imag, ua.real))
        # d/dVi:  |X|,angle: -Im(u A) ; P: Im(T) ; Q: -Re(T)
        d_vi = np.where(is_p, t.imag, np.where(is_q, -t.real, -ua.imag))
        er = self._je_row
        cx = np.conj(x[self.slot[er]])
        ce = code[er]
        # converting-bus terms: P: Vr Re(cX), Vi -Im(cX) ; Q: Vr Im(cX), Vi Re(cX)
        e_vr = np.where(ce == 2, cx.real, cx.imag)
        e_vi = np.where(ce == 2, -cx.imag, cx.real)
        vals = np.r_[d_vr, d_vi, e_vr, e_vi]
        return np.bincount(self._jac_pos, weights=vals, minlength=self._jac_nnz)

    def jacobian(self, v: np.ndarray) -> sp.csr_matrix:
        """Raw Jacobian d h / d [Vr, Vi] at ``v`` (``m x 2n`` CSR)."""
        return sp.csr_matrix((self.jacobian_data(v), self._jac_indices, self._jac_indptr),
                             shape=(self.m, 2 * self.n_bus))
