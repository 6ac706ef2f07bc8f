"""A STALE value weighs less in the live estimator (its sigma times the stale factor)."""

from __future__ import annotations

import numpy as np

from gateway.config import load_config
from gateway.estimator_worker import STALE_SIGMA_FACTOR, solver_for
from gateway.evaluate_sensors import _truth
from gateway.snapshot import Flag
from hil.scenario import ScenarioSpec, make_trace


def test_a_stale_value_pulls_the_estimate_less() -> None:
    cfg = load_config("ieee33")
    trace = make_trace(ScenarioSpec(config="ieee33", start="1990-06-01T10:00", hours=0.01,
                                    step_s=1.0, bad_pct=0, seed=3))
    values = _truth(cfg, trace)[5].copy()
    i = cfg.channel_index["flow.6-26.p"]
    values[i] *= 1.3  # an old value: the lateral's load has moved on since
    flags = np.zeros(len(cfg.channels), np.uint32)
    pv = np.asarray(trace.pv_mw[5])
    v_true = np.asarray(trace.v[5])
    _, solve = solver_for(cfg, "linear")

    def error(fl: np.ndarray) -> float:
        vm, va, _chi2, _thr, _it, ok = solve(values, fl, pv, pv * 0)
        assert ok
        return float(np.abs(vm * np.exp(1j * va) - v_true).max())

    fresh = error(flags)
    flags[i] = Flag.STALE
    aged = error(flags)
    assert STALE_SIGMA_FACTOR > 1 and aged < fresh / 2
    flags[i] = 0
    # back to the unscaled weights (equal up to the solver's tolerance: a warm start)
    assert abs(error(flags) - fresh) < 1e-3 * fresh
