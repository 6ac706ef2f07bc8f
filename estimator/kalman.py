"""A Kalman-type linear state estimator whose process noise is driven by the bus injections.

The paper's static estimator (:mod:`estimator.linear`) starts every snapshot from nothing;
a feeder's voltages, though, move only as far as its loads and PV plants move between two
snapshots. This estimator keeps the previous state and its covariance as the prior of the
next snapshot and lets the grid's own physics say how that prior spreads: a change of the
current injected at bus ``k`` moves the voltages along the ``k``-th column of the
network's impedance matrix, so the process noise is

    Q = A diag(q) A^T dt

with ``A`` the map from injection changes to state changes of the linear model
(:func:`injection_map`: the columns of ``Z = Y_NN^-1`` for the real and the imaginary
current of every non-slack bus, and the slack voltage's own two directions), ``dt`` the
time since the previous snapshot (one step when the caller gives no times) and ``q`` the
per-bus injection rates (pu^2 per second), LEARNED from the data: a zero-injection bus
never moves (``q = 0`` there), a bus with a PV plant under moving clouds moves a lot, a
residential load a little. A random walk on the state with a full learned matrix
(:mod:`estimator.tracking`) has 2n(2n+1)/2 unknowns to learn from the same innovations;
this model has 2n, each one a physical quantity.

Learning ``q`` (adaptive Kalman filtering by covariance matching of the state
corrections, Mohamed & Schwarz 1999, in injection coordinates): the filter's correction
``x - x_prior = K nu`` is, in the mean, the part of the step the grid really took, so
with ``u = A^-1 (x - x_prior)`` and ``m_k`` the exponentially weighted mean of
``u_k^2 / dt`` (weight ``adapt`` for the newest), ``q_k = m_k`` (zero at zero-injection
buses, plus a floor that keeps ``S`` invertible). It starts at the static estimate's own
noise seen per injection (the first snapshots follow the static estimate) and is
forgotten by :meth:`reset` (the worker calls it on a restart; a topology change builds a
new estimator for the new network, since ``A`` and the gain are the topology's). Measured
on the evaluation trace (ieee33, 500 s at 1 s): matching the innovations instead
(``E[u^2] = d + q dt``) learns rates ten times too large (the static estimate's noise
dominates every innovation and the difference is mostly its sampling error).

PV pseudo-measurements: a forecast's error is not white (lag-1 autocorrelation ~0.9 at
1 s), so a filter that took each snapshot's forecast as new information would follow the
forecast's slow swings. Inside the filter their sigma is widened by ``pv_scale`` (default
:data:`PV_SCALE` at one snapshot a second, the square root of the long-run variance
factor ``(1 + rho)/(1 - rho)`` of such an error; ``PV_SCALE / sqrt(period_s)`` at another
period, since the error's persistence is a time: n snapshots a second see the same
forecast error n times), through the static estimator's ``sigma_scale`` (one fixed pattern,
factorized once): the PV plant node then leans on its prior and the flows around it.

Measurement update: the static estimator's own solve of the snapshot (the paper's
estimator, unchanged, its factorization reused): its estimate ``y`` and covariance ``E``
(the state block of the inverse KKT matrix, ``_Factor.e``). For a linear measurement
model updating the prior with the WLS estimate and its covariance is the update with the
measurements themselves (information form ``P^-1 = P_prior^-1 + H^T W H``)::

    predict:  x_prior = x,  P_prior = P + A diag(q) A^T dt
    update:   nu = y - x_prior,  S = P_prior + E,  K = P_prior S^-1
              x = x_prior + K nu,  P = (I - K) P_prior (symmetrized)

A step the model cannot explain (a switched load, an unreported switching, a tap): the
normalized innovation ``nu^T S^-1 nu`` above its 99.99 % chi-square quantile restarts the
filter on the static estimate (``x = y``, ``P = E``); the learned rates are kept (they
describe the loads, which a switching does not change).

The chi-square test and the normalized residuals stay the static fit's (they test the
measurement set's consistency, which a prior must not mask); the innovation statistic is
reported beside them (``State.innovation``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from estimator.blas import single_threaded
from estimator.errors import EstimatorError
from estimator.linear import chi2_quantile
from estimator.measurement import MeasurementModel
from estimator.state import State
from estimator.tracking import dense_static, kalman_update

__all__ = ["KalmanStateEstimator", "injection_map"]

#: weight of the newest correction in the learned injection rates (about 30 snapshots)
ADAPT = 0.03
#: the PV pseudo-measurements' sigma factor inside the filter: a forecast's error is not
#: white but persists (lag-1 autocorrelation rho ~ 0.89 at 1 s on the evaluation trace),
#: and the long-run variance of such an error is (1 + rho) / (1 - rho) ~ 17 times its
#: marginal one: sqrt(17) ~ 4
PV_SCALE = 4.0
#: confidence of the innovation test that restarts the filter
RESTART_CONFIDENCE = 0.9999
#: smallest injection rate (pu^2 per second): keeps S invertible along zero injections
Q_FLOOR = 1e-12


def injection_map(model: MeasurementModel) -> tuple[np.ndarray, np.ndarray]:
    """``(A, fixed)``: ``A`` (2n x 2n, interleaved state ``[Vr_0, Vi_0, ...]``) maps
    injection changes to state changes of the linear network model ``Y V = I``; column
    pair ``k`` is bus ``k``'s real and imaginary current (the slack's: its voltage).
    ``fixed`` marks the columns that cannot move (zero-injection buses)."""
    net = model.net
    n, s = net.n_bus, net.slack
    y = net.ybus().toarray()
    ns = np.array([k for k in range(n) if k != s], np.int64)
    cols = np.zeros((n, n), complex)  # complex dV / dI_k (k != s), dV / dV_s (k = s)
    z = np.linalg.inv(y[np.ix_(ns, ns)])
    cols[np.ix_(ns, ns)] = z
    cols[ns, s] = -z @ y[ns, s]
    cols[s, s] = 1.0
    a = np.empty((2 * n, 2 * n))
    a[0::2, 0::2] = cols.real  # real current (or slack Vr) -> Vr, Vi
    a[1::2, 0::2] = cols.imag
    a[0::2, 1::2] = -cols.imag  # imaginary current: j * column
    a[1::2, 1::2] = cols.real
    fixed = np.zeros(2 * n, bool)
    zi = np.asarray(model.zero_injection, np.int64)
    fixed[2 * zi] = True
    fixed[2 * zi + 1] = True
    return a, fixed


class KalmanStateEstimator:
    """Kalman filter over the static linear SE with injection-driven process noise (see
    the module docstring).

    Keyword-only options: ``adapt`` (weight of the newest correction in the learned
    rates), ``q_floor`` (smallest rate), ``period_s`` (the snapshot period: the PV
    pseudo-measurements' factor is ``PV_SCALE / sqrt(period_s)`` unless ``pv_scale``
    gives it), everything else goes to the static
    :class:`~estimator.linear.LinearStateEstimator` (dense mode: the filter keeps the full
    state covariance).
    """

    method = "kalman"

    def __init__(self, model: MeasurementModel, *, adapt: float = ADAPT,
                 q_floor: float = Q_FLOOR, pv_scale: float | None = None,
                 period_s: float = 1.0, **static: Any) -> None:
        self.model = model
        self.net = model.net
        self.static = dense_static(model, "kalman", adapt, static)
        n2 = 2 * model.n_bus
        self.adapt = float(adapt)
        self.q_floor = float(q_floor)
        if not period_s > 0:
            raise EstimatorError(f"period_s must be > 0, not {period_s!r}")
        # the forecast's error persists for a time, not for a number of snapshots: the
        # more snapshots a second, the less each one's forecast is new information
        self.pv_scale = (PV_SCALE / np.sqrt(period_s) if pv_scale is None
                         else float(pv_scale))
        self._is_pv = np.array([sp.kind == "ppv" for sp in model.specs], bool)
        self.a, self.fixed = injection_map(model)
        self.a_inv = np.linalg.inv(self.a)
        self._restart = chi2_quantile(n2, RESTART_CONFIDENCE)
        self.restarts = 0
        self.reset()

    def reset(self) -> None:
        """Forget the filter and the learned rates (next snapshot starts on its static
        estimate)."""
        self.x: np.ndarray | None = None
        self.p: np.ndarray | None = None
        self.q: np.ndarray | None = None  # learned injection rates, per A column
        self.m: np.ndarray | None = None  # running mean of u^2 / dt
        self._t = float("nan")
        self._before: tuple[Any, ...] | None = None
        self.static.reset()

    def forget_weights(self) -> None:
        self.static.forget_weights()

    @property
    def nominal_sigma(self) -> np.ndarray:
        return self.static.nominal_sigma

    @property
    def last_factor(self) -> Any:
        return self.static.last_factor

    def solve(self, z: np.ndarray, *, active: np.ndarray | None = None,
              warm_start: bool | np.ndarray = True, now: float = 0.0,
              **kw: Any) -> State:
        """The static estimate of ``z`` filtered with the previous ones; same arguments as
        :meth:`LinearStateEstimator.solve`. Every call is one filter step."""
        self._before = (self.x, self.p, self.q, self.m, self._t)
        kw["sigma_scale"] = self._scaled(kw.get("sigma_scale"))
        st = self.static.solve(z, active=active, warm_start=warm_start, now=now, **kw)
        return self._filter(st, now)

    def solve_clean(self, z: np.ndarray, *, active: np.ndarray | None = None,
                    warm_start: bool | np.ndarray = True, now: float = 0.0,
                    sigma: np.ndarray | None = None) -> State:
        """The LAST snapshot again with the static estimator's largest-normalized-residual
        search (gross errors removed): its filter step is taken back and redone with the
        cleaned static estimate (the worker calls it after :meth:`solve` when J(x) says
        gross errors got through)."""
        if self._before is not None:
            self.x, self.p, self.q, self.m, self._t = self._before
        st = self.static.solve_clean(z, active=active, warm_start=warm_start, now=now,
                                     sigma=sigma)
        return self._filter(st, now)

    def hold(self) -> np.ndarray | None:
        """The LAST snapshot's step taken back and replaced by the prediction alone (no
        measurement update): the state stays the previous posterior, its covariance grows
        by one step of process noise, the learned rates stay. Returns that predicted
        state (complex voltages), or None when there is no previous state to predict from
        (the filter's first snapshot, or just after :meth:`reset`).

        Why: the estimator worker calls it instead of the bad-data search when J(x) says
        gross errors got through and a search would not fit in the snapshot period
        (1 kHz: a search costs 2-6 ms and delays the next snapshots; the prediction one
        period ahead is what the filter coasts on for a missing snapshot). The
        static estimator takes its solve back too
        (:meth:`~estimator.linear.LinearStateEstimator.hold`: its warm start, and rule
        (b) forgets the slots this snapshot drifted: its values were judged gross as a
        whole).
        """
        if self._before is None or self._before[0] is None:
            return None
        x, p, q, m, t = self._before
        assert p is not None and q is not None
        self.x, self.q, self.m, self._t = x, q, m, t
        # one step of process noise; with snapshot times the next step's dt spans the
        # held snapshot as well (the prediction is a random walk: x stays)
        self.p = p if t > 0 else p + (self.a * (q + self.q_floor)) @ self.a.T
        # a second hold of the same snapshot (or a solve_clean after it) starts here
        self._before = (self.x, self.p, self.q, self.m, self._t)
        self.static.hold()
        assert self.x is not None
        return self.x.view(complex).copy()

    def discard(self) -> None:
        """The LAST snapshot's step taken back with nothing in its place (no prediction
        step: the filter is where it was before it; after its first snapshot, not
        started), and the static estimator's solve (:meth:`LinearStateEstimator.discard`)."""
        if self._before is not None:
            self.x, self.p, self.q, self.m, self._t = self._before
        self.static.discard()

    def _scaled(self, scale: np.ndarray | None) -> np.ndarray | None:
        """The caller's sigma factors with the PV pseudo-measurements' widened by
        ``pv_scale`` (see the module docstring)."""
        if self.pv_scale == 1.0 or not self._is_pv.any():
            return scale
        out = np.ones(self.model.m) if scale is None else np.array(scale, float)
        out[self._is_pv] *= self.pv_scale
        return out

    def _filter(self, st: State, now: float) -> State:
        fac = self.static.last_factor
        if fac is None or fac.e is None:
            raise EstimatorError("the kalman estimator needs the static estimator's dense "
                                 "mode (raise dense_limit)")
        dt = now - self._t if now > 0 and self._t > 0 and now > self._t else 1.0
        self._t = now
        #: the static estimate of the last snapshot (before filtering), for comparison
        self.static_v = np.asarray(st.v).copy()
        y = np.ascontiguousarray(st.v).view(np.float64)
        with single_threaded():  # small dense products: BLAS threads only add hand-offs
            d2 = self._step(y, fac.e, dt)
        assert self.x is not None
        st.method = self.method
        st.v = self.x.view(complex).copy()
        st.innovation = d2
        return st

    def _noise(self, cov: np.ndarray) -> np.ndarray:
        """diag(A^-1 cov A^-T): a state covariance seen per injection column."""
        return np.einsum("ij,jk,ik->i", self.a_inv, cov, self.a_inv)

    def _step(self, y: np.ndarray, e: np.ndarray, dt: float) -> float:
        """One predict/update step (posterior in ``self.x``, ``self.p``); returns the
        normalized innovation ``nu^T S^-1 nu`` (NaN on the first snapshot)."""
        if self.x is None or self.p is None or self.q is None or self.m is None:
            self.x, self.p = y.copy(), e.copy()
            d = self._noise(e)
            self.q = np.where(self.fixed, 0.0, d)
            self.m = self.q.copy()
            return float("nan")
        q = self.q + self.q_floor
        x_prior = self.x
        p_prior = self.p + (self.a * (q * dt)) @ self.a.T
        d2, x, p = kalman_update(x_prior, p_prior, y, e, self._restart)
        if x is None or p is None:
            self.restarts += 1
            self.x, self.p = y.copy(), e.copy()
            return d2
        # learned rates (Mohamed & Schwarz 1999: Q from the state corrections K nu),
        # per injection column: the correction mapped to injections, squared, averaged
        u = self.a_inv @ (x - x_prior)
        a = self.adapt
        self.m = (1.0 - a) * self.m + a * (u * u) / dt
        self.q = np.where(self.fixed, 0.0, self.m)
        self.x, self.p = x, p
        return d2
