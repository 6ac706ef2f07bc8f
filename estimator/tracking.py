"""A tracking (forecasting-aided, Kalman-type) linear state estimator.

The paper uses the temporal correlation of the measurements to clean bad data; this
estimator uses the temporal correlation of the *state*: the feeder's voltages move little
from one snapshot to the next (a second apart, or 20 ms at 50 Hz), while every snapshot's
meter noise is new. Filtering the paper's static estimate over time averages that noise
away where the state is steady and follows it where it moves.

Model (state ``x = [Vr_0, Vi_0, Vr_1, ...]``, interleaved rectangular voltages, as in
:mod:`estimator.linear`)::

    x_k = x_{k-1} + w_k,         w_k ~ N(0, Q)      (random walk: no load model assumed)
    y_k = x_k + v_k,             v_k ~ N(0, E_k)    (the static estimate of snapshot k)

``y_k`` is the static constant-gain estimate (the paper's estimator, unchanged) and ``E_k``
its covariance, the state block of the inverse KKT matrix the static estimator factorized
anyway (``_Factor.e``). For a linear measurement model, updating the prior with the static
WLS estimate and its covariance is the same as updating it with the measurements
themselves (information form: ``P^-1 = P_prior^-1 + H^T W H``), so this is the Kalman
filter of the measurements, reusing the static solve. One filter step (names as in the
usual Kalman notation; Labbe, *Kalman and Bayesian Filters in Python*, ch. 6)::

    predict:  x_prior = x                        (random walk)
              P_prior = P + Q
    update:   nu      = y - x_prior              (innovation)
              S       = P_prior + E              (innovation covariance)
              K       = P_prior S^-1             (Kalman gain)
              x       = x_prior + K nu
              P       = (I - K) P_prior          (symmetrized)

Process noise learned from the data (covariance matching on the innovation sequence,
Myers & Tapley 1976): ``E[nu nu^T] = P + Q + E`` (``P`` the previous posterior), so with
``m_k`` an exponentially weighted mean of ``nu * nu`` (per state component, weight
``adapt``), ``Q = diag(max(m_k - diag(P + E), q_floor))``. It starts at ``diag(E)`` (the
first snapshots follow the static estimate) and settles to the grid's own step-to-step
movement: small around a steady operating point, large while the clouds move the PV.

A step the model cannot explain (a switched load, a topology change, a tap): the
normalized innovation ``nu^T S^-1 nu`` above its 99.99 % chi-square quantile restarts the
filter on the static estimate (``x = y``, ``P = E``) for that snapshot.

The chi-square test of the measurements and the normalized residuals are the static
fit's (they test the measurement set's consistency, which the prior must not mask); the
innovation statistic is reported beside them (``State.innovation``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg as sla

from estimator.blas import single_threaded
from estimator.errors import EstimatorError
from estimator.linear import LinearStateEstimator, chi2_quantile
from estimator.measurement import MeasurementModel
from estimator.state import State

__all__ = ["TrackingStateEstimator"]

#: weight of the newest innovation in the running mean of nu * nu
ADAPT = 0.1
#: confidence of the innovation test that restarts the filter
RESTART_CONFIDENCE = 0.9999


class TrackingStateEstimator:
    """Kalman-type tracking on top of the static linear SE (see module docstring).

    Keyword-only options: ``adapt`` (weight of the newest innovation in the learned process
    noise), ``q_floor`` (smallest process noise variance, pu^2), everything else goes to
    the static :class:`~estimator.linear.LinearStateEstimator` (dense mode only: the
    filter keeps the full state covariance).
    """

    method = "tracking"

    def __init__(self, model: MeasurementModel, *, adapt: float = ADAPT,
                 q_floor: float = 1e-14, **static: Any) -> None:
        self.model = model
        self.net = model.net
        self.static = dense_static(model, "tracking", adapt, static)
        n2 = 2 * model.n_bus
        self.adapt = float(adapt)
        self.q_floor = float(q_floor)
        self._restart = chi2_quantile(n2, RESTART_CONFIDENCE)
        self.restarts = 0
        self.reset()

    # the static estimator's controls, so callers (bad-data loops, the worker) see one
    # estimator
    def reset(self) -> None:
        """Forget the filter (next snapshot starts on its static estimate)."""
        self.x: np.ndarray | None = None
        self.p: np.ndarray | None = None
        self.q: np.ndarray | None = None
        self.nu2: np.ndarray | None = None
        self._before: tuple[Any, ...] | None = None
        self._now = float("nan")
        self.static.reset()

    def forget_weights(self) -> None:
        self.static.forget_weights()

    @property
    def nominal_sigma(self) -> np.ndarray:
        return self.static.nominal_sigma

    def solve(self, z: np.ndarray, *, active: np.ndarray | None = None,
              warm_start: bool | np.ndarray = True, now: float = 0.0,
              **kw: Any) -> State:
        """The static estimate of ``z`` filtered with the previous ones (see module
        docstring); same arguments as :meth:`LinearStateEstimator.solve`."""
        st = self.static.solve(z, active=active, warm_start=warm_start, now=now, **kw)
        fac = self.static.last_factor
        if fac is None or fac.e is None:
            raise EstimatorError("the tracking estimator needs the static estimator's dense "
                                 "mode (raise dense_limit)")
        if now > 0 and now == self._now and self._before is not None:
            # the same snapshot again (a bad-data loop re-estimating it): redo its step
            self.x, self.p, self.q, self.nu2 = self._before
        else:
            self._before = (self.x, self.p, self.q, self.nu2)
        self._now = now
        y = np.ascontiguousarray(st.v).view(np.float64)
        with single_threaded():  # small dense products: BLAS threads only add hand-offs
            d2 = self._step(y, fac.e)
        assert self.x is not None
        st.method = self.method
        st.v = self.x.view(complex).copy()
        st.innovation = d2
        return st

    def _step(self, y: np.ndarray, e: np.ndarray) -> float:
        """One predict/update step (posterior in ``self.x``, ``self.p``); returns the
        normalized innovation ``nu^T S^-1 nu`` (NaN on the first snapshot)."""
        if self.x is None or self.p is None or self.q is None or self.nu2 is None:
            # first snapshot: the static estimate is the state
            self.x, self.p = y.copy(), e.copy()
            self.q = e + self.q_floor * np.eye(e.shape[0])
            self.nu2 = e + self.q
            return float("nan")
        # predict: random walk
        x_prior = self.x
        p_prior = self.p + self.q
        # update with the static estimate y (covariance E)
        nu = y - x_prior
        d2, x, p = kalman_update(x_prior, p_prior, y, e, self._restart)
        if x is None or p is None:
            self.restarts += 1
            self.x, self.p = y.copy(), e.copy()
            return d2
        # process noise by covariance matching: E[nu nu^T] = P + Q + E, the running mean
        # of nu nu^T less the previous P and E, projected on the positive semidefinite
        # matrices (the grid moves coherently: a PV plant's swing moves every voltage
        # downstream together, so Q is a full matrix, not a diagonal)
        a = self.adapt
        self.nu2 = (1.0 - a) * self.nu2 + a * np.outer(nu, nu)
        self.q = _psd(self.nu2 - self.p - e, self.q_floor)
        self.x, self.p = x, p
        return d2


def dense_static(model: MeasurementModel, method: str, adapt: float,
                 static: dict[str, Any]) -> LinearStateEstimator:
    """The static estimator a filter over it (``tracking``, ``kalman``) updates with, after
    the checks both need: ``adapt`` in (0, 1], and the dense mode (the filter keeps the
    full state covariance, and reads the static one, ``E``, from a dense factorization)."""
    if not 0 < adapt <= 1:
        raise EstimatorError(f"adapt must be in (0, 1], not {adapt!r}")
    est = LinearStateEstimator(model, **static)
    n2 = 2 * model.n_bus
    if n2 > est.dense_limit:
        raise EstimatorError(f"the {method} estimator keeps a dense {n2}x{n2} state "
                             f"covariance: {model.net.name} needs dense_limit >= {n2}")
    return est


def _psd(a: np.ndarray, floor: float) -> np.ndarray:
    """The symmetric positive semidefinite matrix nearest to ``a`` (Frobenius norm: its
    negative eigenvalues set to zero), plus ``floor`` on the diagonal."""
    w, u = np.linalg.eigh(0.5 * (a + a.T))
    out = (u * np.maximum(w, 0.0)) @ u.T
    out[np.diag_indices_from(out)] += floor
    return out


def kalman_update(x_prior: np.ndarray, p_prior: np.ndarray, y: np.ndarray, e: np.ndarray,
                  limit: float) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    """One Kalman measurement update of a prior (x, P) by a static estimate y with
    covariance E: (d2, x, P), with x and P None when the normalized innovation d2 exceeds
    ``limit`` (a step the process model cannot explain: the caller restarts on y).

    Why shared: the tracking and the Kalman estimators differ in their process models,
    not in this step."""
    nu = y - x_prior
    try:
        cho = sla.cho_factor(p_prior + e, check_finite=False)
    except np.linalg.LinAlgError:
        cho = None
    # normalized innovation nu^T S^-1 nu
    d2 = float(nu @ sla.cho_solve(cho, nu, check_finite=False)) if cho else np.inf
    if not d2 <= limit:
        return d2, None, None
    # K = P_prior S^-1  (S, P_prior symmetric: K^T = S^-1 P_prior)
    k = sla.cho_solve(cho, p_prior, check_finite=False).T
    x = x_prior + k @ nu
    p = p_prior - k @ p_prior
    return d2, x, 0.5 * (p + p.T)
