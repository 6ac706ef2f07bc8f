"""The estimator's answer for one snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from estimator.network import Network

__all__ = ["BatchStates", "State", "branch_quantities"]


def branch_quantities(net: Network, v: np.ndarray) -> dict[str, np.ndarray]:
    """Branch currents and flows at voltages ``v`` (pu): I and S at both ends, bus injection."""
    yf, yt = net.branch_admittance()
    br = net.branches
    i_from = yf @ v
    i_to = yt @ v
    return {
        "i_from": i_from,
        "i_to": i_to,
        # S = V conj(I) at each end, flowing into the branch
        "s_from": v[br.from_idx] * np.conj(i_from),
        "s_to": v[br.to_idx] * np.conj(i_to),
        # S_inj = V conj(Ybus V)
        "s_inj": v * np.conj(net.ybus() @ v),
    }


@dataclass
class State:
    """Estimated state of the feeder at ``time``.

    ``v``: complex bus voltages (pu, network internal order). Per measurement (the
    measurement model's order): ``residual`` (z - h(x), pu/rad; NaN where inactive),
    ``normalized_residual`` (residual / sqrt(Omega_ii); NaN where inactive or not
    computed), ``active`` (used in this solve). ``objective`` is J(x) = sum (r/sigma)^2
    over the active measurements, tested against the chi-square quantile with ``dof``
    degrees of freedom (m - n, equality constraints counted as exact measurements).
    ``timings`` holds seconds per stage. ``innovation`` (tracking estimator only): the
    normalized innovation ``nu^T S^-1 nu`` of the filter step (see :mod:`estimator.tracking`).
    """

    method: str
    v: np.ndarray
    time: float = 0.0
    iterations: int = 0
    mismatch: float = 0.0
    residual: np.ndarray = field(default_factory=lambda: np.zeros(0))
    normalized_residual: np.ndarray = field(default_factory=lambda: np.zeros(0))
    active: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    objective: float = float("nan")
    dof: int = 0
    chi2_threshold: float = float("nan")
    timings: dict[str, float] = field(default_factory=dict)
    innovation: float = float("nan")
    removed: list[int] = field(default_factory=list)
    i_from: np.ndarray | None = None
    i_to: np.ndarray | None = None
    s_from: np.ndarray | None = None
    s_to: np.ndarray | None = None
    s_inj: np.ndarray | None = None

    @property
    def vm(self) -> np.ndarray:
        return np.abs(self.v)

    @property
    def va(self) -> np.ndarray:
        return np.angle(self.v)

    @property
    def chi2_ok(self) -> bool:
        """True when J(x) is below the chi-square quantile (no bad data suspected)."""
        return bool(self.objective <= self.chi2_threshold)

    def with_flows(self, net: Network) -> State:
        """Fill branch currents/flows and injections from ``v`` (in place; returns self)."""
        q = branch_quantities(net, self.v)
        self.i_from, self.i_to = q["i_from"], q["i_to"]
        self.s_from, self.s_to, self.s_inj = q["s_from"], q["s_to"], q["s_inj"]
        return self


@dataclass
class BatchStates:
    """The answers of a batch solve (:meth:`~estimator.linear.LinearStateEstimator.
    solve_batch`), one row per snapshot: the fields of :class:`State` as arrays
    (``v``: ``B x n``; ``residual``, ``normalized_residual``: ``B x m``). A row that
    failed is NaN, ``converged`` False, its error message in ``errors``."""

    method: str
    v: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray
    residual: np.ndarray
    normalized_residual: np.ndarray
    objective: np.ndarray
    dof: np.ndarray
    chi2_threshold: np.ndarray
    errors: dict[int, str] = field(default_factory=dict)

    @classmethod
    def empty(cls, nb: int, m: int, n: int, method: str) -> BatchStates:
        nan = np.full(nb, np.nan)
        return cls(method=method, v=np.full((nb, n), np.nan + 0j),
                   iterations=np.zeros(nb, np.int64), converged=np.zeros(nb, bool),
                   residual=np.full((nb, m), np.nan), normalized_residual=np.full((nb, m),
                                                                                  np.nan),
                   objective=nan.copy(), dof=np.zeros(nb, np.int64),
                   chi2_threshold=nan.copy())

    def __len__(self) -> int:
        return int(self.v.shape[0])

    @property
    def chi2_ok(self) -> np.ndarray:
        """Per row: J(x) below its quantile (False for a failed row)."""
        return np.asarray(self.objective <= self.chi2_threshold)

    def put(self, k: int, st: State) -> None:
        """Row ``k`` from a single solve."""
        self.v[k] = st.v
        self.iterations[k] = st.iterations
        self.converged[k] = True
        self.residual[k] = st.residual
        self.normalized_residual[k] = st.normalized_residual
        self.objective[k] = st.objective
        self.dof[k] = st.dof
        self.chi2_threshold[k] = st.chi2_threshold

    def fail(self, k: int, exc: Exception) -> None:
        last = getattr(exc, "last", None)
        if last is not None:
            self.v[k] = last
        self.converged[k] = False
        self.errors[k] = f"{type(exc).__name__}: {exc}"

    def set_rows(self, rows: np.ndarray | slice, v: np.ndarray, it: np.ndarray,
                 conv: np.ndarray, r: np.ndarray, rn: np.ndarray, obj: np.ndarray,
                 dof: np.ndarray | int, thr: np.ndarray | float) -> None:
        """Rows ``rows`` (indices, or a slice of consecutive rows) from a shared-gain
        segment; ``dof`` and ``thr`` one per row or one for all."""
        self.v[rows] = v
        self.iterations[rows] = it
        self.converged[rows] = conv
        self.residual[rows] = r
        self.normalized_residual[rows] = rn
        self.objective[rows] = obj
        self.dof[rows] = dof
        self.chi2_threshold[rows] = thr
        if conv.all():
            return
        idx = np.arange(len(self.v))[rows] if isinstance(rows, slice) else rows
        for k in idx[~conv]:
            self.errors[int(k)] = "DidNotConverge: batch iteration limit reached"
