"""Compile (or load) the linear SE's kernels ahead of use: ``python -m estimator.warm``.

Why: numba compiles :mod:`estimator.kernels` on their first use on a machine (tens of
seconds on a busy 2-core VM) and keeps the machine code beside the module; a process that
hits that first use on a deadline (an estimator worker before READY, a timed test) pays
it there. Running this once after installing (or in CI before the tests) moves the cost
out of the way: it solves a few snapshots of the bundled IEEE33 with its PV plants, one
by one, once with a gross error (the bad-data search) and as a batch, which calls every
kernel with the argument types the live path uses.
"""

from __future__ import annotations

import time

import numpy as np

from estimator.linear import LinearStateEstimator
from estimator.measurement import MeasurementModel
from estimator.synthetic import ieee33_with_plants, paper_specs, truth


def warm() -> float:
    """Run every kernel once; the seconds it took."""
    t0 = time.perf_counter()
    net = ieee33_with_plants()
    model = MeasurementModel(net, paper_specs(net))
    _, z = truth(model)
    rng = np.random.default_rng(0)
    zs = z + rng.standard_normal((8, z.size)) * model.sigma(z)
    est = LinearStateEstimator(model)
    for row in zs:
        est.solve(row)
    bad = zs[0].copy()
    bad[0] *= 1.3  # a gross error: the bad-data search's fill iteration (kernels.fill_run)
    est.solve_clean(bad)
    est.solve_batch(zs)
    est._drifted_rows(zs, np.isfinite(zs))  # rule (a) for rows, outside a batch's scan
    # a re-weighting (the gain and operator kernels), then a batch on it
    est._rebase(zs[0], model.sigma(zs[0]), np.isfinite(zs[0]), full=False)
    est.solve_batch(zs)
    # the direct-form rows of a factorization with zero-injection rows (no such bus here:
    # the same kernel on this one's fast path)
    fac = est.last_factor
    assert fac is not None
    est._dense_step(fac, est._flat, zs[0]).run_rows(
        np.tile(est._flat.view(np.float64), (2, 1)), zs[:2], est.tolerance,
        est.max_iterations)
    return time.perf_counter() - t0


if __name__ == "__main__":
    print(f"estimator kernels ready in {warm():.1f} s")
