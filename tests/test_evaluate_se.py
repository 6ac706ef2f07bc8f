"""``gridtwin evaluate``'s SE harness runs the estimators as the live worker runs them: a
snapshot whose J(x) is far above its quantile goes through the largest-normalized-residual
search (issue "Fidelity": the evaluate rows must be the twin's own path)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from estimator import pgm
from estimator.errors import EstimatorError
from estimator.linear import LinearStateEstimator
from gateway.config import load_config
from gateway.estimator_worker import GROSS_CHI2
from gateway.se_model import measurement_model
from models.evaluate import _se_run


@pytest.fixture(scope="module")
def model() -> Any:
    return measurement_model(load_config("ieee33"))


def _snapshots(model: Any, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noisy snapshots of one operating point and its true voltages."""
    net = model.net
    p = net.p_gen - 0.9 * net.p_load
    q = net.q_gen - 0.9 * net.q_load
    p[model.pv_nodes] = 0.05
    v = pgm.power_flow(net, p[None], q[None], tolerance=1e-12, max_iterations=50)[0]
    z0 = model.h(v)
    rng = np.random.default_rng(seed)
    z = z0 + rng.standard_normal((n, z0.size)) * model.sigma(z0)
    return z, v


def test_gross_snapshot_is_cleaned_and_reported_as_it_arrived(model: Any) -> None:
    z, v = _snapshots(model, 3, seed=5)
    vm = int(np.flatnonzero([s.kind == "vm" for s in model.specs])[3])
    z[1, vm] *= 1.3  # one gross error the quality stage "let through"
    acts = np.isfinite(z)
    times = np.arange(3, dtype=float) + 1.0

    def run(cleaner: Any) -> tuple[np.ndarray, np.ndarray]:
        est = LinearStateEstimator(model)
        vs = np.full((3, model.n_bus), np.nan, complex)
        failed = _se_run(est, vs, z, acts, model.sigma(z[0])[None].repeat(3, 0),
                         [None] * 3, times, EstimatorError,
                         cleaner=None if cleaner is None else cleaner(est),
                         gross=GROSS_CHI2)
        return vs, failed

    raw, failed_raw = run(None)
    clean, failed_clean = run(lambda est: est.solve_clean)
    # the chi-square verdict is the snapshot's as it arrived, with or without the fallback
    assert failed_raw.tolist() == failed_clean.tolist() == [False, True, False]
    err = np.abs(np.abs(raw[1]) - np.abs(v)).max(), np.abs(np.abs(clean[1]) - np.abs(v)).max()
    assert err[1] < 1e-3 < err[0]  # the gross error moved the raw estimate, not the clean
    # a snapshot before the gross one is not re-solved: the identical estimate; the one
    # after it is as good either way (the weights it starts from may differ)
    np.testing.assert_array_equal(raw[0], clean[0])
    assert np.abs(np.abs(raw[2]) - np.abs(v)).max() < 1e-3
    assert np.abs(np.abs(clean[2]) - np.abs(v)).max() < 1e-3
