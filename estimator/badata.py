"""Bad-data baseline: the largest normalized residual test with re-estimation.

Standard method (Handschin, Schweppe, Kohlas & Fiechter 1975; Abur & Exposito 2004,
ch. 5): estimate; if the largest |r_N| exceeds the threshold (3.0: a 99.7 % two-sided
test for a Gaussian residual), drop that measurement and re-estimate; repeat until every
|r_N| is below the threshold (which also brings J(x) under its chi-square quantile when
the remaining errors are Gaussian), the removal budget is spent or removing more would
make the feeder unobservable.
"""

from __future__ import annotations

import numpy as np

from estimator.errors import DidNotConverge, NotObservableError
from estimator.state import State

__all__ = ["largest_normalized_residual"]

#: normalized residuals this close (relative) to the largest count as tied with it
TIE_RTOL = 1e-9


def largest_normalized_residual(estimator: object, z: np.ndarray, *,
                                active: np.ndarray | None = None, threshold: float = 3.0,
                                max_removals: int | None = None, now: float = 0.0,
                                warm_start: bool | np.ndarray = False) -> State:
    """Estimate with LNR bad-data removal; ``State.removed`` lists the dropped indices.

    ``max_removals`` defaults to a fifth of the measurements. The first solve starts flat
    by default: with gross errors the equivalent-current iteration can settle on another
    fixed point near a (possibly wrong) previous state; re-estimations after a removal
    start from the current estimate.

    ``estimator``: anything with ``model`` and ``solve(z, *, active, warm_start, now) ->
    State`` that fills ``normalized_residual`` (the linear SE and the baselines do). If
    the first solve does not converge (gross errors), the measurement with the largest
    weighted residual at the last iterate is dropped and the solve repeated.
    """
    solve = estimator.solve  # type: ignore[attr-defined]
    model = estimator.model  # type: ignore[attr-defined]
    if max_removals is None:
        # default budget: a fifth of the measurements (the paper's worst case is 15 % bad)
        max_removals = max(1, model.m // 5)
    z = np.asarray(z, float)
    act = np.isfinite(z) if active is None else (np.asarray(active, bool) & np.isfinite(z))
    act = act.copy()
    removed: list[int] = []
    start: bool | np.ndarray = warm_start
    retried = False
    while True:
        try:
            state: State = solve(z, active=act, warm_start=start, now=now)
        except DidNotConverge as exc:
            if not retried and start is not False:
                # a warm start far from this snapshot's state: retry from a flat start
                retried, start = True, False
                continue
            # gross errors can stall the iteration: drop the worst weighted residual at
            # the last iterate (r / sigma) and try again
            if exc.last is None or len(removed) >= max_removals:
                raise
            r = np.abs(model.residual(np.where(act, z, 0.0), exc.last)) / model.sigma(z)
            k = int(np.argmax(np.where(act, r, -1.0)))
            act[k] = False
            removed.append(k)
            start = False
            continue
        break
    keep = np.zeros(act.shape, bool)  # critical: their removal fails
    while len(removed) < max_removals:
        rn = np.abs(state.normalized_residual)
        rn = np.where(act & ~keep & np.isfinite(rn), rn, 0.0)
        top = float(rn.max())
        if top <= threshold:
            break
        # the lowest index among those tied with the largest to TIE_RTOL: structurally
        # equivalent measurements (the two ends of a redundant pair) have equal r_N in
        # exact arithmetic, and without this the last bits of the sensitivities (which
        # any change of their computation moves) chose between them
        k = int(np.flatnonzero(rn >= top * (1.0 - TIE_RTOL))[0])
        trial = act.copy()
        trial[k] = False
        try:
            new = solve(z, active=trial, warm_start=state.v, now=now)
        except (NotObservableError, DidNotConverge):
            # k is critical (or its removal stalls the iteration): try the next largest
            keep[k] = True
            continue
        act = trial
        removed.append(k)
        state = new
    state.removed = removed
    return state
