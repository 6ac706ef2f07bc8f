"""Baseline estimators behind the same call as the linear SE, for comparison.

Every estimator here has ``solve(z, *, active=None, warm_start=True, now=0.0) -> State``
over the same :class:`~estimator.measurement.MeasurementModel` (pu, model order):

* :class:`WlsPolar` -- classical WLS in polar coordinates (Gauss-Newton; Schweppe &
  Wildes 1970, Abur & Exposito 2004 ch. 2), the Jacobian rebuilt every iteration, equality
  constraints (zero injection, PV ``Q = 0``) in the KKT (Hachtel) matrix.
* :class:`Wlav` -- weighted least absolute value (Celik & Abur 1992): successive
  linearisation, each step a linear program solved by scipy's HiGHS.
* :class:`PgmEstimator` -- power-grid-model's ``iterative_linear`` or ``newton_raphson``
  state estimation, the same measurements mapped to its sensors.
* :class:`PandapowerEstimator` -- pandapower's WLS (``bench`` extra; imported lazily).

:func:`make_estimator` builds any of them (and the linear SE) by name.
"""

from __future__ import annotations

import logging
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from estimator.blas import single_threaded
from estimator.errors import DidNotConverge, EstimatorError, NotObservableError
from estimator.kalman import KalmanStateEstimator
from estimator.linear import LinearStateEstimator, chi2_quantile, sensitivity
from estimator.measurement import MeasurementModel, Spec
from estimator.observability import check_observable
from estimator.state import State
from estimator.tracking import TrackingStateEstimator

__all__ = [
    "METHODS",
    "Estimator",
    "PandapowerEstimator",
    "PgmEstimator",
    "Wlav",
    "WlsPolar",
    "make_estimator",
]

METHODS = ("linear", "tracking", "kalman", "wls", "wlav", "pgm_il", "pgm_nr", "pandapower")


class Estimator(Protocol):
    method: str

    def solve(self, z: np.ndarray, *, active: np.ndarray | None = None,
              warm_start: bool | np.ndarray = True, now: float = 0.0) -> State: ...


def make_estimator(name: str, model: MeasurementModel, *, tolerance: float = 1e-7,
                   max_iterations: int = 20, **kw: Any) -> Estimator:
    """An estimator by method name (one of :data:`METHODS`)."""
    if name == "linear":
        return LinearStateEstimator(model, tolerance=tolerance, max_iterations=max_iterations,
                                    **kw)
    if name == "tracking":
        return TrackingStateEstimator(model, tolerance=tolerance,
                                      max_iterations=max_iterations, **kw)
    if name == "kalman":
        return KalmanStateEstimator(model, tolerance=tolerance,
                                    max_iterations=max_iterations, **kw)
    if name == "wls":
        return WlsPolar(model, tolerance=tolerance, max_iterations=max_iterations, **kw)
    if name == "wlav":
        return Wlav(model, tolerance=max(tolerance, 1e-7), max_iterations=max_iterations,
                    **kw)
    if name in ("pgm_il", "pgm_nr"):
        return PgmEstimator(model, method="iterative_linear" if name == "pgm_il"
                            else "newton_raphson", tolerance=tolerance,
                            max_iterations=max(max_iterations, 20), **kw)
    if name == "pandapower":
        return PandapowerEstimator(model, tolerance=max(tolerance, 1e-8),
                                   max_iterations=max(max_iterations, 20), **kw)
    raise EstimatorError(f"unknown SE method {name!r}; use one of {', '.join(METHODS)}")


# --------------------------------------------------------------------------- shared parts
class _Base:
    method = "base"

    def __init__(self, model: MeasurementModel, *, tolerance: float, max_iterations: int,
                 constraints: bool = True, normalized_residuals: bool | None = None) -> None:
        self.model = model
        self.net = model.net
        self.tolerance = float(tolerance)
        self.max_iterations = int(max_iterations)
        self.constraints = bool(constraints)
        self.normalized_residuals = (model.n_bus <= 2000 if normalized_residuals is None
                                     else bool(normalized_residuals))
        self._last_v: np.ndarray | None = None
        self._checked: dict[bytes, tuple[int, float]] = {}
        self._sens: dict[bytes, np.ndarray] = {}
        n_con = 0
        if self.constraints:
            n_con = 2 * model.zero_injection.size + model.pv_nodes.size
        self._n_con = n_con
        # exact constraints as raw functions: P, Q = 0 at zero-injection buses, Q = 0 at PV
        cspecs = []
        if self.constraints:
            for b in model.zero_injection:
                cspecs += [Spec("pinj", bus=int(b), sigma=1.0), Spec("qinj", bus=int(b),
                                                                     sigma=1.0)]
            for b in model.pv_nodes:
                cspecs.append(Spec("qinj", bus=int(b), sigma=1.0))
        self.cmodel = (MeasurementModel(model.net, cspecs, zero_injection=[])
                       if cspecs else None)

    def _prepare(self, z: np.ndarray, active: np.ndarray | None) -> tuple[np.ndarray, int,
                                                                         float]:
        z = np.asarray(z, float)
        finite = np.isfinite(z)
        act = finite if active is None else (np.asarray(active, bool) & finite)
        key = act.tobytes()
        if key not in self._checked:
            with single_threaded():
                check_observable(self.model, act, pv_constraints=self.constraints)
            angle_ref = bool(np.any(act & self.model.is_angle))
            dof = (int(act.sum()) + self._n_con - 2 * self.model.n_bus
                   + (0 if angle_ref else 1))
            self._checked[key] = (dof, chi2_quantile(dof))
        dof, chi2 = self._checked[key]
        return act, dof, chi2

    def _start(self, warm_start: bool | np.ndarray) -> np.ndarray:
        if isinstance(warm_start, np.ndarray):
            return warm_start.astype(complex)
        if warm_start and self._last_v is not None:
            return self._last_v.copy()
        return np.full(self.net.n_bus, self.net.vm_slack * np.exp(1j * self.net.va_slack))

    def _state(self, v: np.ndarray, z: np.ndarray, act: np.ndarray, it: int, dv: float,
               dof: int, chi2: float, now: float, t0: float) -> State:
        model = self.model
        self._last_v = v
        r = np.full(model.m, np.nan)
        ra = model.residual(np.where(act, z, 0.0), v)
        r[act] = ra[act]
        sig = model.sigma(z)
        w = r[act] / sig[act]
        rn = np.full(model.m, np.nan)
        if self.normalized_residuals:
            key = act.tobytes()
            if key not in self._sens:
                with single_threaded():
                    self._sens[key] = sensitivity(model, v, sig, act,
                                                  constraints=self.constraints)
            rn[act] = w / np.sqrt(self._sens[key][act])
        st = State(method=self.method, v=v, time=now, iterations=it, mismatch=dv, residual=r,
                   normalized_residual=rn, active=act, objective=float(w @ w), dof=dof,
                   chi2_threshold=chi2)
        st.timings = {"total_s": time.perf_counter() - t0}
        return st

    def reset(self) -> None:
        self._last_v = None


def _polar_transform(v: np.ndarray, keep: np.ndarray) -> sp.csr_matrix:
    """d[Vr, Vi]/d[theta, |V|] restricted to the kept polar columns.

    dVr/dtheta = -Vi, dVi/dtheta = Vr; dVr/d|V| = cos theta, dVi/d|V| = sin theta.
    """
    n = v.size
    ang = np.angle(v)
    t = sp.bmat([[sp.diags(-v.imag), sp.diags(np.cos(ang))],
                 [sp.diags(v.real), sp.diags(np.sin(ang))]], format="csc")
    return sp.csr_matrix(t[:, keep]) if keep.size < 2 * n else sp.csr_matrix(t)


def _polar_update(v: np.ndarray, dx: np.ndarray, keep: np.ndarray) -> np.ndarray:
    n = v.size
    full = np.zeros(2 * n)
    full[keep] = dx
    ang = np.angle(v) + full[:n]
    mag = np.abs(v) + full[n:]
    # V = |V| e^{j theta}
    return mag * np.exp(1j * ang)


# --------------------------------------------------------------------------- WLS polar
_Step = Callable[[np.ndarray, sp.csr_matrix, sp.csr_matrix, np.ndarray], np.ndarray]


class _StepFailed(Exception):
    """A polar step could not be computed; :meth:`_PolarBase.solve` reports it as
    :class:`DidNotConverge` with the iteration's state."""


class _PolarBase(_Base, ABC):
    """Shared by the polar Gauss-Newton methods (WLS, WLAV): unknowns, linearisation and
    the iteration; a subclass supplies the step ``dx`` from ``(v, T, H, r)``."""

    label = "polar"

    @abstractmethod
    def _stepper(self, z: np.ndarray, keep: np.ndarray, idx: np.ndarray) -> _Step:
        """The step function for measurements ``z`` (all), unknowns ``keep`` and active
        measurement indices ``idx``."""

    def solve(self, z: np.ndarray, *, active: np.ndarray | None = None,
              warm_start: bool | np.ndarray = True, now: float = 0.0) -> State:
        t0 = time.perf_counter()
        z = np.asarray(z, float)
        act, dof, chi2 = self._prepare(z, active)
        keep, idx = self._polar_unknowns(act)
        za = z[idx]
        step = self._stepper(z, keep, idx)
        v = self._start(warm_start)
        dxmax = np.inf
        for it in range(1, self.max_iterations + 1):
            t, h, r = self._linearise(v, keep, idx, za)
            try:
                dx = step(v, t, h, r)
            except _StepFailed as exc:
                raise DidNotConverge(f"{self.label} {exc}", mismatch=dxmax, iterations=it,
                                     last=v) from None
            v = _polar_update(v, dx, keep)
            dxmax = float(np.max(np.abs(dx)))
            if dxmax < self.tolerance:
                return self._state(v, z, act, it, dxmax, dof, chi2, now, t0)
        raise DidNotConverge(f"{self.label} did not converge in {self.max_iterations} "
                             f"iterations (max |dx| = {dxmax:.3e})", mismatch=dxmax,
                             iterations=self.max_iterations, last=v)

    def _polar_unknowns(self, act: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Polar unknowns kept (the slack angle is dropped when no angle is measured) and
        the indices of the active measurements."""
        keep = np.arange(2 * self.model.n_bus)
        if not np.any(act & self.model.is_angle):
            keep = np.delete(keep, self.net.slack)
        return keep, np.flatnonzero(act)

    def _linearise(self, v: np.ndarray, keep: np.ndarray, idx: np.ndarray, za: np.ndarray
                   ) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
        """Transform to the kept polar unknowns, Jacobian ``H`` and residual ``r`` at ``v``
        (angle residuals wrapped to (-pi, pi])."""
        t = _polar_transform(v, keep)
        h = sp.csr_matrix(self.model.jacobian(v)[idx] @ t)
        # r = z - h(v)
        r = za - self.model.h(v)[idx]
        ang = self.model.is_angle[idx]
        r[ang] = np.angle(np.exp(1j * r[ang]))
        return t, h, r


class WlsPolar(_PolarBase):
    """Classical WLS SE in polar coordinates (Gauss-Newton, Jacobian rebuilt each iteration).

    Each iteration solves the KKT system
    ``[[H^T W H, C^T], [C, 0]] [dx; lambda] = [H^T W r; -c(x)]``
    with ``H`` the measurement Jacobian w.r.t. ``(theta, |V|)`` and ``c(x) = 0`` the
    zero-injection and PV reactive-power constraints; the reference angle is fixed at the
    slack bus when no angle is measured.
    """

    method = "wls"
    label = "WLS"

    def _stepper(self, z: np.ndarray, keep: np.ndarray, idx: np.ndarray) -> _Step:
        w = sp.diags(1.0 / self.model.sigma(z)[idx] ** 2)

        def step(v: np.ndarray, t: sp.csr_matrix, h: sp.csr_matrix, r: np.ndarray
                 ) -> np.ndarray:
            # G = H^T W H ; rhs = H^T W r
            g = h.T @ w @ h
            rhs = h.T @ (w @ r)
            if self.cmodel is not None:
                c = sp.csr_matrix(self.cmodel.jacobian(v) @ t)
                cval = self.cmodel.h(v)
                k = sp.bmat([[g, c.T], [c, None]], format="csc")
                b = np.r_[rhs, -cval]
            else:
                k = sp.csc_matrix(g)
                b = rhs
            try:
                sol = spla.splu(k).solve(b)
            except RuntimeError as exc:
                raise NotObservableError(f"WLS gain matrix singular: {exc}") from exc
            return sol[: keep.size]

        return step


# --------------------------------------------------------------------------- WLAV
class Wlav(_PolarBase):
    """Weighted least absolute value SE: ``min sum |r_i| / sigma_i`` s.t. ``c(x) = 0``.

    Successive linearisation in polar coordinates; each step is the linear program
    ``min sum (u_i + w_i) / sigma_i`` s.t. ``H dx + u - w = r``, ``C dx = -c(x)``,
    ``u, w >= 0`` (HiGHS via :func:`scipy.optimize.linprog`).
    """

    method = "wlav"
    label = "WLAV"

    def _stepper(self, z: np.ndarray, keep: np.ndarray, idx: np.ndarray) -> _Step:
        from scipy.optimize import linprog

        nx = keep.size
        m = idx.size
        sig = self.model.sigma(z)[idx]
        cost = np.r_[np.zeros(nx), 1.0 / sig, 1.0 / sig]
        bounds = [(None, None)] * nx + [(0, None)] * (2 * m)
        eye = sp.identity(m, format="csr")

        def step(v: np.ndarray, t: sp.csr_matrix, h: sp.csr_matrix, r: np.ndarray
                 ) -> np.ndarray:
            a_eq = sp.hstack([h, eye, -eye])
            b_eq = r
            if self.cmodel is not None:
                c = sp.csr_matrix(self.cmodel.jacobian(v) @ t)
                nc = c.shape[0]
                a_eq = sp.vstack([a_eq, sp.hstack([c, sp.csr_matrix((nc, 2 * m))])])
                b_eq = np.r_[b_eq, -self.cmodel.h(v)]
            res = linprog(cost, A_eq=sp.csr_matrix(a_eq), b_eq=b_eq, bounds=bounds,
                          method="highs")
            if res.status != 0:
                raise _StepFailed(f"linear program failed: {res.message}")
            return np.asarray(res.x[:nx])

        return step


# --------------------------------------------------------------------------- PGM
class PgmEstimator(_Base):
    """power-grid-model state estimation with the model's measurements as PGM sensors.

    Mapping: (vm[, va]) -> ``sym_voltage_sensor`` (PGM has one ``u_sigma`` for the phasor:
    the magnitude's sigma is used); (p, q) at a branch end -> ``sym_power_sensor`` on the
    branch terminal; (im, ia) -> ``sym_current_sensor`` with a global angle; (pinj, qinj)
    and the PV pseudo (ppv with Q = 0, sigma_Q = 1e-3 sigma_P) -> ``sym_power_sensor`` on
    the node. Zero-injection buses carry no appliance (PGM's implicit zero injection).
    Measurement components without their partner (|I| alone, P alone, ...) are dropped.
    """

    def __init__(self, model: MeasurementModel, *, method: str = "iterative_linear",
                 tolerance: float = 1e-8, max_iterations: int = 30,
                 constraints: bool = True, normalized_residuals: bool | None = None,
                 threading: int = -1) -> None:
        super().__init__(model, tolerance=tolerance, max_iterations=max_iterations,
                         constraints=constraints, normalized_residuals=normalized_residuals)
        self.calc_method = method
        self.method = "pgm_il" if method == "iterative_linear" else "pgm_nr"
        self.threading = threading
        self._models: dict[bytes, tuple[Any, dict[Any, Any]]] = {}

    # the dataset pieces for one active mask; values filled by _values()
    def _layout(self, act: np.ndarray) -> dict[str, Any]:
        from power_grid_model import ComponentType, initialize_array

        from estimator import pgm

        model, net = self.model, self.net
        base = pgm.input_data(net)
        loads = base[ComponentType.sym_load]
        keep = np.ones(net.n_bus, bool)
        if self.constraints:
            keep[model.zero_injection] = False
        base[ComponentType.sym_load] = loads[keep]
        next_id = int(max(int(a["id"].max()) for a in base.values() if a.size)) + 1
        mem = model.members
        full = (mem >= 0) & act[np.maximum(mem, 0)]
        st = model.slot_type
        lay: dict[str, Any] = {"input": base}
        v_slots = np.flatnonzero((st == 0) & full[:, 0])
        i_slots = np.flatnonzero((st == 1) & full[:, 0] & full[:, 1])
        s_slots = np.flatnonzero((st == 2) & full[:, 0] & full[:, 1])
        j_slots = np.flatnonzero(((st == 3) & full[:, 0] & full[:, 1])
                                 | ((st == 4) & full[:, 0]))
        end_from = np.array([model.specs[mem[g, 0]].end == "from" for g in range(model.g)])
        branch_of = np.array([model.specs[mem[g, 0]].branch if model.specs[mem[g, 0]].branch
                              is not None else -1 for g in range(model.g)]) if model.g else \
            np.zeros(0, int)
        bus_of = model.vbus
        nb = net.n_bus
        vs = initialize_array("input", ComponentType.sym_voltage_sensor, v_slots.size)
        vs["id"] = next_id + np.arange(v_slots.size)
        next_id += v_slots.size
        vs["measured_object"] = bus_of[v_slots]
        ps = initialize_array("input", ComponentType.sym_power_sensor,
                              s_slots.size + j_slots.size)
        ps["id"] = next_id + np.arange(ps.size)
        next_id += ps.size
        ps["measured_object"] = np.r_[nb + branch_of[s_slots], bus_of[j_slots]]
        ps["measured_terminal_type"] = np.r_[np.where(end_from[s_slots], 0, 1),
                                             np.full(j_slots.size, 9)]
        cs = initialize_array("input", ComponentType.sym_current_sensor, i_slots.size)
        cs["id"] = next_id + np.arange(i_slots.size)
        cs["measured_object"] = nb + branch_of[i_slots]
        cs["measured_terminal_type"] = np.where(end_from[i_slots], 0, 1)
        cs["angle_measurement_type"] = 1
        lay.update(v=v_slots, i=i_slots, s=s_slots, j=j_slots, vs_in=vs, ps_in=ps, cs_in=cs)
        # update buffers (same ids) refilled per snapshot
        for key, comp, arr in (("vs", ComponentType.sym_voltage_sensor, vs),
                               ("ps", ComponentType.sym_power_sensor, ps),
                               ("cs", ComponentType.sym_current_sensor, cs)):
            upd = initialize_array("update", comp, arr.size)
            upd["id"] = arr["id"]
            lay[key] = upd
        return lay

    @staticmethod
    def _copy_into_input(lay: dict[str, Any]) -> None:
        for key in ("vs", "ps", "cs"):
            src, dst = lay[key], lay[key + "_in"]
            for field in src.dtype.names:
                if field in dst.dtype.names:
                    dst[field] = src[field]

    def _fill(self, lay: dict[str, Any], z: np.ndarray) -> None:
        model, net = self.model, self.net
        mem = model.members
        sig = model.sigma(z)
        base_va = net.base_mva * 1e6
        v, i, s, j = lay["v"], lay["i"], lay["s"], lay["j"]
        vs, ps, cs = lay["vs"], lay["ps"], lay["cs"]
        kv = net.base_kv[model.vbus] * 1e3
        vs["u_measured"] = z[mem[v, 0]] * kv[v]
        vs["u_sigma"] = sig[mem[v, 0]] * kv[v]
        has_a = mem[v, 1] >= 0
        ang = np.where(has_a, z[np.maximum(mem[v, 1], 0)], np.nan)
        vs["u_angle_measured"] = ang
        sj = np.r_[s, j]
        q_has = mem[sj, 1] >= 0
        ps["p_measured"] = z[mem[sj, 0]] * base_va
        ps["q_measured"] = np.where(q_has, z[np.maximum(mem[sj, 1], 0)], 0.0) * base_va
        ps["p_sigma"] = sig[mem[sj, 0]] * base_va
        ps["q_sigma"] = np.where(q_has, sig[np.maximum(mem[sj, 1], 0)],
                                 1e-3 * sig[mem[sj, 0]]) * base_va
        if "power_sigma" in ps.dtype.names:
            ps["power_sigma"] = np.nan
        # I_base (A) = S_base / (sqrt(3) U_base)
        ib = base_va / (np.sqrt(3.0) * kv[i])
        cs["i_measured"] = z[mem[i, 0]] * ib
        cs["i_sigma"] = sig[mem[i, 0]] * ib
        cs["i_angle_measured"] = z[mem[i, 1]]
        cs["i_angle_sigma"] = sig[mem[i, 1]]

    def solve(self, z: np.ndarray, *, active: np.ndarray | None = None,
              warm_start: bool | np.ndarray = True, now: float = 0.0) -> State:
        from power_grid_model import CalculationMethod, ComponentType, PowerGridModel
        from power_grid_model.errors import PowerGridError

        t0 = time.perf_counter()
        z = np.asarray(z, float)
        act, dof, chi2 = self._prepare(z, active)
        key = act.tobytes()
        if key not in self._models:
            lay = self._layout(act)
            self._fill(lay, z)
            self._copy_into_input(lay)
            data = dict(lay["input"])
            data[ComponentType.sym_voltage_sensor] = lay["vs_in"]
            data[ComponentType.sym_power_sensor] = lay["ps_in"]
            if lay["cs"].size:
                data[ComponentType.sym_current_sensor] = lay["cs_in"]
            try:
                pgm_model = PowerGridModel(data)
            except PowerGridError as exc:
                raise EstimatorError(f"power-grid-model rejected the SE input: {exc}") from exc
            self._models[key] = (pgm_model, lay)
        pgm_model, lay = self._models[key]
        self._fill(lay, z)
        upd = {ComponentType.sym_voltage_sensor: lay["vs"],
               ComponentType.sym_power_sensor: lay["ps"]}
        if lay["cs"].size:
            upd[ComponentType.sym_current_sensor] = lay["cs"]
        try:
            pgm_model.update(update_data=upd)
            res = pgm_model.calculate_state_estimation(
                calculation_method=CalculationMethod[self.calc_method],
                error_tolerance=self.tolerance, max_iterations=self.max_iterations,
                output_component_types={ComponentType.node: ["u_pu", "u_angle"]})
        except PowerGridError as exc:
            name = type(exc).__name__
            if "Observ" in name:
                raise NotObservableError(f"power-grid-model: {exc}") from exc
            if "Converge" in name or "Iteration" in name:
                raise DidNotConverge(f"power-grid-model: {exc}", mismatch=float("nan"),
                                     iterations=self.max_iterations) from exc
            raise EstimatorError(f"power-grid-model SE failed: {exc}") from exc
        nd = res[ComponentType.node]
        v = nd["u_pu"] * np.exp(1j * nd["u_angle"])
        return self._state(v, z, act, 0, 0.0, dof, chi2, now, t0)


# --------------------------------------------------------------------------- pandapower
class PandapowerEstimator(_Base):
    """pandapower's WLS estimator (``pandapower.estimation.estimate``) on the same data.

    Lines only (ratio 1, no phase shift). Mapping: vm -> ``v`` (pu), va/ia -> ``va``/``ia``
    (degrees), im -> ``i`` (kA), p/q -> line ``p``/``q`` (MW, MVAr), pinj/qinj and PV pseudo
    -> bus ``p``/``q`` in pandapower's load convention (consumption positive; the PV's
    Q = 0 with a tight sigma). Zero injection: pandapower's ``aux_bus`` handling.
    """

    method = "pandapower"

    def __init__(self, model: MeasurementModel, *, tolerance: float = 1e-6,
                 max_iterations: int = 50, constraints: bool = True,
                 normalized_residuals: bool | None = None) -> None:
        super().__init__(model, tolerance=tolerance, max_iterations=max_iterations,
                         constraints=constraints, normalized_residuals=normalized_residuals)
        br = model.net.branches
        if np.any(br.ratio != 1.0) or np.any(br.shift != 0.0):
            raise EstimatorError("the pandapower baseline supports lines only (no taps)")
        self._pp: Any = None

    def _build(self) -> Any:
        import pandapower as pp

        net = self.net
        pnet = pp.create_empty_network(sn_mva=net.base_mva)
        for i in range(net.n_bus):
            pp.create_bus(pnet, vn_kv=float(net.base_kv[i]), index=i)
        pp.create_ext_grid(pnet, bus=net.slack, vm_pu=net.vm_slack,
                           va_degree=float(np.rad2deg(net.va_slack)))
        br = net.branches
        for k in range(net.n_branch):
            # pandapower turns a line's ohms into per unit with its from-bus voltage, so
            # the ohms are written with the same base (two voltage levels: 110/20 kV)
            kv = float(net.base_kv[br.from_idx[k]])
            zb = kv**2 / net.base_mva
            # b = omega C Z_base  ->  C (nF) = b / (2 pi 50 Z_base) * 1e9
            pp.create_line_from_parameters(
                pnet, from_bus=int(br.from_idx[k]), to_bus=int(br.to_idx[k]), length_km=1.0,
                r_ohm_per_km=float(br.r[k] * zb), x_ohm_per_km=float(br.x[k] * zb),
                c_nf_per_km=float(br.b[k] / (2 * np.pi * 50 * zb) * 1e9), max_i_ka=1e3,
                in_service=bool(br.in_service[k]), index=k)
        return pnet

    def solve(self, z: np.ndarray, *, active: np.ndarray | None = None,
              warm_start: bool | np.ndarray = True, now: float = 0.0) -> State:
        import pandapower as pp
        from pandapower.estimation import estimate

        t0 = time.perf_counter()
        model = self.model
        net = self.net
        z = np.asarray(z, float)
        act, dof, chi2 = self._prepare(z, active)
        if self._pp is None:
            self._pp = self._build()
        pnet = self._pp
        pnet.measurement.drop(pnet.measurement.index, inplace=True)
        sig = model.sigma(z)
        base = net.base_mva
        for k in np.flatnonzero(act):
            s = model.specs[k]
            kind = s.kind
            if kind in ("vm", "va"):
                val, sd = (z[k], sig[k]) if kind == "vm" else (np.rad2deg(z[k]),
                                                               np.rad2deg(sig[k]))
                pp.create_measurement(pnet, "v" if kind == "vm" else "va", "bus", val, sd,
                                      int(s.bus), check_existing=False)  # type: ignore[arg-type]
            elif kind in ("p", "q", "im", "ia"):
                kv = net.base_kv[net.branches.from_idx[s.branch] if s.end == "from"
                                 else net.branches.to_idx[s.branch]]
                if kind == "im":
                    ib = base / (np.sqrt(3.0) * kv)
                    val, sd, typ = z[k] * ib, sig[k] * ib, "i"
                elif kind == "ia":
                    val, sd, typ = np.rad2deg(z[k]), np.rad2deg(sig[k]), "ia"
                else:
                    val, sd, typ = z[k] * base, sig[k] * base, kind
                pp.create_measurement(pnet, typ, "line", val, sd, int(s.branch),  # type: ignore[arg-type]
                                      side=s.end, check_existing=False)
            else:
                typ = "p" if kind in ("pinj", "ppv") else "q"
                pp.create_measurement(pnet, typ, "bus", -z[k] * base, sig[k] * base,
                                      int(s.bus), check_existing=False)  # type: ignore[arg-type]
                if kind == "ppv":
                    pp.create_measurement(pnet, "q", "bus", 0.0, 1e-3 * sig[k] * base,
                                          int(s.bus), check_existing=False)  # type: ignore[arg-type]
        with warnings.catch_warnings():
            # pandapower's estimator warns on pandas chained assignment for every call
            warnings.simplefilter("ignore")
            ok = self._estimate(estimate, pnet, model)
        if not ok:
            raise DidNotConverge("pandapower WLS did not converge", mismatch=float("nan"),
                                 iterations=self.max_iterations)
        res = pnet.res_bus_est
        v = (res.vm_pu.to_numpy() * np.exp(1j * np.deg2rad(res.va_degree.to_numpy())))
        return self._state(v, z, act, 0, 0.0, dof, chi2, now, t0)

    def _estimate(self, estimate: Any, pnet: Any, model: MeasurementModel) -> bool:
        # pandapower logs every non-converged estimate at ERROR; we raise instead
        logging.getLogger("pandapower").setLevel(logging.CRITICAL)
        zero = ([int(b) for b in model.zero_injection]
                if self.constraints and model.zero_injection.size else "aux_bus")
        return bool(estimate(pnet, algorithm="wls", init="flat", tolerance=self.tolerance,
                             maximum_iterations=self.max_iterations, zero_injection=zero))
